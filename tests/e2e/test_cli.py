"""The `partial-fc` command table: every command answers --help, a parser built for a command that is not an
MXNet program loads no MXNet, help texts show the defaults argparse holds, and errors are one line."""
import argparse
import subprocess
import sys

import pytest

from partial_fc import cli

# Commands whose module is an MXNet program: choosing them may load MXNet (bench: each benchmark is one).
MXNET_PROGRAMS = ("train", "demo", "bench")


def _leaves(table, prefix=()):
    for name, entry in table.items():
        if isinstance(entry, cli.Group):
            yield from _leaves(entry.commands, prefix + (name,))
        else:
            yield prefix + (name,)


COMMANDS = list(_leaves(cli.COMMANDS))
GROUPS = [(name,) for name, entry in cli.COMMANDS.items() if isinstance(entry, cli.Group)]
LIGHT = [()] + GROUPS + [c for c in COMMANDS if c[0] not in MXNET_PROGRAMS]


def _name(names):
    return " ".join(names) or "partial-fc"


def _subparser(names):
    """The parser cli.main builds for `partial-fc NAMES ...`, walked down to the command's own."""
    parser = cli.build_parser(list(names))
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_the_table_has_every_command():
    assert {" ".join(c) for c in COMMANDS} == {
        "train", "synth", "demo", "verify", "ijb", "plot", "export", "unpack", "pack", "make-bin", "memory-plan",
        "bench fc", "bench sampler", "bench comm", "bench memory", "bench train", "check-config", "check-data",
        "bench soak", "bench scale", "study rates"}
    every_core = {" ".join(c) for c in COMMANDS if cli._chosen(list(c)).every_core}
    assert every_core == {"bench fc", "bench sampler"}


@pytest.mark.parametrize("names", [()] + GROUPS + COMMANDS, ids=_name)
def test_every_command_answers_help(names, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*names, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith(f"usage: {' '.join(('partial-fc',) + names)} ")


@pytest.mark.parametrize("names", LIGHT, ids=_name)
def test_help_of_a_command_that_is_not_an_mxnet_program_loads_no_mxnet(names):
    code = ("import sys\n"
            "from partial_fc import cli\n"
            "try:\n"
            f"    cli.main({[*names, '--help']!r})\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print('mxnet' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False", f"partial-fc {_name(names)} --help imported mxnet"


def test_the_table_help_names_no_default():
    entries = [e for e in cli.COMMANDS.values()] + [e for g in cli.COMMANDS.values() if isinstance(g, cli.Group)
                                                   for e in g.commands.values()]
    for entry in entries:
        assert "default" not in entry.help and "\n" not in entry.help, entry.help


@pytest.mark.parametrize("names", COMMANDS, ids=_name)
def test_help_strings_show_the_default_argparse_holds(names):
    """A value written into a help string goes stale when the default changes: every help that names the
    default of an option with a value takes it from %(default)s. Options whose default is None (the value
    is worked out at run time, and the help says how) and on/off flags are exempt."""
    parser = _subparser(names)
    for action in parser._actions:
        text = action.help or ""
        if action.help == argparse.SUPPRESS or "%(default)" in text:
            continue
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action.default, bool):
            continue
        assert "default" not in text, f"partial-fc {_name(names)} {action.option_strings or action.dest}: " \
                                      f"{text!r} names its default {action.default!r} without %(default)s"
    parser.format_help()  # every %(default)s renders


@pytest.mark.parametrize("argv, prog", [(["nope"], "partial-fc"), (["bench", "nope"], "partial-fc bench"),
                                        ([], "partial-fc")])
def test_an_unknown_or_missing_command_is_one_line_and_exit_2(argv, prog, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    if argv:
        assert "invalid choice: 'nope'" in err


def test_a_user_error_is_one_line_and_its_exit_status(tmp_path, capsys, monkeypatch):
    assert cli.main(["plot", str(tmp_path / "none")]) == 1  # PlotError: EXIT_STATUS 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("partial-fc: error: ") and "cannot read" in err, err
    monkeypatch.setenv("PFC_NO_SUCH_SETTING", "1")
    assert cli.main(["demo", "--steps", "1"]) == 2  # ConfigError: EXIT_STATUS 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown setting PFC_NO_SUCH_SETTING" in err, err
