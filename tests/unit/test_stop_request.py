"""training/preemption.py without a launcher: what a signal records, when a second one exits, what the stop
saves. The launched cases (horovodrun, mpirun, a signal to one rank) are tests/e2e/test_preemption.py."""
import io
import os
import signal

import pytest

from partial_fc.dist import LocalComm
from partial_fc.training.preemption import EXIT_PREEMPTED, SAME_REQUEST_S, Preempted, Preemption, leave


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Checkpointer:
    def __init__(self, enabled=True, last_saved=None):
        self.enabled, self.last_saved, self.last_path, self.saved = enabled, last_saved, None, []
        if last_saved is not None:
            self.last_path = f"out/model-{last_saved:04d}.json"

    def save(self, done):
        self.saved.append(done)
        return f"out/model-{done:04d}.json"


def _preemption():
    exits, stream, clock = [], io.StringIO(), Clock()
    p = Preemption(LocalComm(), exit=exits.append, stream=stream, clock=clock)
    return p, exits, stream, clock


def test_a_signal_is_recorded_and_agreed_on_at_the_next_boundary():
    p, exits, stream, _ = _preemption()
    assert p.stop_agreed() == 0
    p._on_signal(signal.SIGTERM)
    assert p.stop_agreed() == signal.SIGTERM and not exits
    assert "rank 0: SIGTERM received: every rank stops at the next step boundary" in stream.getvalue()


def test_a_repeat_within_the_same_request_window_or_after_the_stop_is_ignored_and_a_later_one_exits():
    p, exits, stream, clock = _preemption()
    p._on_signal(signal.SIGTERM)
    clock.now += SAME_REQUEST_S / 2  # the launcher passing the same request on
    p._on_signal(signal.SIGTERM)
    assert not exits
    p.saving = True
    clock.now += SAME_REQUEST_S
    p._on_signal(signal.SIGINT)
    assert exits == [EXIT_PREEMPTED]
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("partial-fc: error: rank 0: a second signal (SIGINT) while saving the stop's checkpoint")
    assert "the previous complete one is intact" in last
    q, exits, _, clock = _preemption()
    q._on_signal(signal.SIGTERM)
    q.finished = True
    clock.now += 10
    q._on_signal(signal.SIGTERM)
    assert not exits


@pytest.mark.parametrize("case", ["save", "already saved", "no step since start", "checkpoints off"])
def test_the_stop_saves_once_and_names_what_it_left(case, tmp_path):
    p, _, _, _ = _preemption()
    ckpt = {"save": Checkpointer(), "already saved": Checkpointer(last_saved=7),
            "no step since start": Checkpointer(), "checkpoints off": Checkpointer(enabled=False)}[case]
    start = 7 if case == "no step since start" else 0
    error = p.stop(signal.SIGTERM, 7, start, ckpt, str(tmp_path))
    assert isinstance(error, Preempted) and error.EXIT_STATUS == EXIT_PREEMPTED == 4 and error.rank == 0
    assert p.finished and not p.saving
    text = str(error)
    assert text.startswith("stopped by SIGTERM after step 7: ")
    if case in ("save", "already saved"):
        assert text.endswith("checkpoint out/model-0007.json saved; PFC_RESUME=1 resumes it")
        assert ckpt.saved == ([7] if case == "save" else [])
    elif case == "no step since start":
        assert "no step ran since start-up, nothing was saved" in text and ckpt.saved == []
    else:
        assert "PFC_SAVE_CHECKPOINTS=0" in text and ckpt.saved == []


def test_install_takes_over_sigterm_and_sigint_and_close_gives_them_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    p, exits, _, _ = _preemption()
    p.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: recorded, not fatal
        assert p.received == signal.SIGTERM
    finally:
        p.close()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before and not exits


def test_after_a_completed_stop_the_handler_stays_so_the_launchers_follow_up_sigterm_cannot_kill_the_exit(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    p, exits, _, _ = _preemption()
    p.install()
    try:
        p._on_signal(signal.SIGTERM)
        p.stop(signal.SIGTERM, 3, 0, Checkpointer(), str(tmp_path))
        p.close()
        assert signal.getsignal(signal.SIGTERM) == p._on_signal
        os.kill(os.getpid(), signal.SIGTERM)  # horovodrun's, once another rank has exited: ignored
        assert not exits
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


def test_leaving_after_a_stop_under_a_launcher_is_at_once_with_rank_0s_line(capsys):
    exits = []
    assert leave(Preempted("stopped by SIGTERM after step 3: ...", rank=0), launched=True, exit=exits.append) == 4
    assert capsys.readouterr().err == "partial-fc: error: stopped by SIGTERM after step 3: ...\n" and exits == [4]
    assert leave(Preempted("same", rank=1), launched=True, exit=exits.append) == 4
    assert capsys.readouterr().err == "" and exits == [4, 4]
    # Without a launcher rank 0's error goes back to the command line, which prints it.
    with pytest.raises(Preempted):
        leave(Preempted("stopped", rank=0), launched=False, exit=exits.append)
    assert leave(Preempted("stopped", rank=1), launched=False, exit=exits.append) == 4 and exits == [4, 4]
