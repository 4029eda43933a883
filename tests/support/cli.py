"""Running `partial-fc` in the test's own process, and reading its one-line errors."""
from partial_fc import cli


def run_cli(args, capsys):
    """(exit status, stdout, stderr) of `partial-fc ARGS` run in this process."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err, ignore=()):
    """The single error line of stderr (progress lines, with a carriage return or starting with one of the
    `ignore` prefixes, aside); fails unless there is exactly one and it is the command's own."""
    lines = [line for line in err.splitlines()
             if line.strip() and "\r" not in line and not line.startswith(tuple(ignore))]
    assert len(lines) == 1, err
    assert lines[0].startswith("partial-fc: error: ")
    return lines[0]
