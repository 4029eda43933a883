"""startup.check_output_shared, the start-up check that PFC_OUTPUT is one folder every rank sees, on ranks that
are threads of this process (a communicator whose allgather meets at a barrier): a folder rank 1 does not
see (here: another path, as a host without the shared mount has its own folder of that name), a folder rank
0 cannot write, several runs at once, world size 1. The launched cases, with a real second host, are in
test_two_hosts.py."""
import os
import socket
import threading

import mxnet as mx
import numpy as np
import pytest

from partial_fc import config, dist
from partial_fc.config import ConfigError
from partial_fc.training import startup


class ThreadComm:
    """Rank `rank` of `size` threads; allgather stacks every thread's rows in rank order."""

    def __init__(self, rank, world):
        self.rank, self.world = rank, world
        self.size = world["size"]
        self.names = []

    def allgather(self, x, name):
        self.names.append(name)
        w = self.world
        w["slots"][self.rank] = x.asnumpy()
        w["barrier"].wait()
        out = np.concatenate(w["slots"], axis=0)
        w["barrier"].wait()
        return mx.nd.array(out, dtype=out.dtype)


def _run_ranks(outputs, **settings):
    """check_output_shared on len(outputs) thread ranks, rank k with PFC_OUTPUT=outputs[k]: each rank's
    exception (or None), and each rank's collective names."""
    world = {"size": len(outputs), "slots": [None] * len(outputs), "barrier": threading.Barrier(len(outputs))}
    comms = [ThreadComm(k, world) for k in range(len(outputs))]
    errors = [None] * len(outputs)

    def rank(k):
        try:
            startup.check_output_shared(config.load({}, output=str(outputs[k]), **settings), comms[k])
        except Exception as e:  # noqa: BLE001 - the test compares what each rank raised
            errors[k] = e

    threads = [threading.Thread(target=rank, args=(k,)) for k in range(len(outputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors, [c.names for c in comms]


def test_a_folder_every_rank_sees_passes_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "model"
    errors, names = _run_ranks([out, out, out])
    assert errors == [None, None, None]
    assert os.listdir(out) == []  # rank 0 made the folder; its check file is gone
    assert names[0] == names[1] == names[2] == ["pfc.output_check.token", "pfc.output_check.seen"]


def test_a_rank_that_does_not_see_the_folder_stops_every_rank_with_the_same_line(tmp_path):
    shared, elsewhere = tmp_path / "model", tmp_path / "not-shared"
    elsewhere.mkdir()
    errors, _ = _run_ranks([shared, elsewhere, shared, elsewhere])
    assert all(isinstance(e, ConfigError) for e in errors), errors
    assert str(errors[0]) == str(errors[2])  # (ranks 1 and 3 name their own PFC_OUTPUT, the other path)
    host = socket.gethostname()
    message = str(errors[0])
    assert message == (f"PFC_OUTPUT={shared} is not one folder every host shares: ranks 1, 3 (host {host}, the same "
                       f"host name as rank 0's: another container or mount namespace) do not see the file rank 0 "
                       f"(host {host}) wrote there; every rank writes its checkpoint shard into PFC_OUTPUT, so it "
                       f"must be a shared folder (NFS, ...) mounted at that path on every host")
    assert "\n" not in message and ConfigError.EXIT_STATUS == 2
    assert os.listdir(shared) == [] and os.listdir(elsewhere) == []


def test_a_folder_rank_0_cannot_write_stops_every_rank(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "model"  # under a regular file: makedirs fails with ENOTDIR
    errors, _ = _run_ranks([out, out])
    assert all(isinstance(e, ConfigError) for e in errors), errors
    assert str(errors[0]) == (f"PFC_OUTPUT={out}: rank 0 (host {socket.gethostname()}) cannot write there (Not a "
                              f"directory); it must be a folder every host can write")
    assert str(errors[1]).startswith(f"PFC_OUTPUT={out}: rank 0 (host {socket.gethostname()}) cannot write there")


def test_every_run_uses_its_own_check_file(tmp_path, monkeypatch):
    """Two runs checking one folder at once (or one killed during its check) never read each other's file."""
    out = tmp_path / "model"
    out.mkdir()
    (out / (startup.OUTPUT_CHECK_PREFIX + "0" * 32)).write_text("0" * 32)  # what a killed run left
    seen = []
    real_open = open

    def spying_open(path, *args, **kwargs):
        if startup.OUTPUT_CHECK_PREFIX in str(path):
            seen.append(os.path.basename(str(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spying_open)
    results = []
    runs = [threading.Thread(target=lambda: results.append(_run_ranks([out, out]))) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(60)
    monkeypatch.undo()
    assert [r[0] for r in results] == [[None, None], [None, None]]
    tokens = set(seen)
    assert len(tokens) == 2 and startup.OUTPUT_CHECK_PREFIX + "0" * 32 not in tokens
    assert os.listdir(out) == [startup.OUTPUT_CHECK_PREFIX + "0" * 32]  # the stale one is not this run's to remove


@pytest.mark.parametrize("settings", [{}, {"save_checkpoints": False}], ids=["world-size-1", "no-checkpoints"])
def test_nothing_to_check_writes_nothing(tmp_path, settings):
    out = tmp_path / "model"
    if settings:  # two ranks that save nothing and resume nothing: only rank 0 writes PFC_OUTPUT
        errors, names = _run_ranks([out, tmp_path / "elsewhere"], **settings)
        assert errors == [None, None] and names == [[], []]
    else:
        startup.check_output_shared(config.load({}, output=str(out)), dist.LocalComm())
    assert not out.exists()
