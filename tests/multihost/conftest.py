"""The multi-host tier: a second "host" on this machine, an sshd of its own on 127.0.0.2 (support/sshd.py), that
horovodrun and mpirun reach over SSH exactly as they reach a cluster node. Every byte stays on loopback: the
launchers are pinned to `lo` (horovodrun --network-interface lo; Open MPI btl_tcp_if_include and
oob_tcp_if_include lo).

    python -m pytest tests/multihost          (scripts/test.sh runs it as its last tier)

The second host cannot be started without sshd (scripts/install.sh installs openssh-server) and its private
variant (a mount namespace) only as root. As root, or with CI set, that is a failure; a developer who is not
root gets a skip, announced at the end of the run.
"""
import os

import pytest

from support import sshd

SKIPPED = []


def _unavailable(why):
    if os.geteuid() == 0 or os.environ.get("CI"):
        pytest.fail(f"the second host could not be started: {why}", pytrace=False)
    SKIPPED.append(why)
    pytest.skip(f"MULTI-HOST TESTS SKIPPED (not root): {why}")


@pytest.fixture(scope="module")
def second_host(tmp_path_factory):
    """A host at 127.0.0.2 that sees this machine's folders."""
    try:
        host = sshd.Host(str(tmp_path_factory.mktemp("host")))
    except sshd.Unavailable as e:
        _unavailable(e)
    yield host
    host.stop()


@pytest.fixture(scope="module")
def private_outputs(tmp_path_factory):
    """(host, [folders]): a host at 127.0.0.2 in a mount namespace of its own, where each folder is an empty
    tmpfs: it sees every folder of this machine except these, which it has a private copy of."""
    root = tmp_path_factory.mktemp("private")
    folders = [str(root / name) for name in ("horovodrun", "mpirun")]
    for f in folders:
        os.makedirs(f)
    try:
        host = sshd.Host(str(root / "host"), private=folders)
    except sshd.Unavailable as e:
        _unavailable(e)
    yield host, folders
    host.stop()


def pytest_terminal_summary(terminalreporter):
    for why in SKIPPED:
        terminalreporter.write_sep("!", f"MULTI-HOST TESTS SKIPPED: {why}", red=True, bold=True)
