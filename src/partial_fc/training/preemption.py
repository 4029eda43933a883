"""Preemption: SIGTERM or SIGINT stops the run on every rank at the same step, after one checkpoint.

What clusters send to stop a job: SLURM's scancel and time limit, Kubernetes' pod deletion (SIGTERM, then
SIGKILL after a grace period), Ctrl-C (SIGINT). The signal may reach one rank, every rank, or only the
launcher, which passes it on as SIGTERM (measured with this project's pins):

    horovodrun  catches SIGTERM and SIGINT and sends SIGTERM to every rank at once, then SIGKILL 5 s later
                (horovod.runner's GRACEFUL_TERMINATION_TIME_S); it also sends SIGTERM to the other ranks when
                one rank exits non-zero
    mpirun      (Open MPI 4.1) on SIGTERM or SIGINT sends SIGTERM to every rank after
                odls_base_sigkill_timeout seconds (default 1) and SIGKILL after as many again: run.sh raises
                the timeout (STOP_GRACE, default 30) so a save has that long

The handler only records the signal. At every step boundary every rank contributes the signal it got (0 for
none) to one tiny allreduce Max, `pfc.stop_requested`: a signal to any one rank is then seen by all of them
at the same boundary, so every rank finishes the same steps. They save one checkpoint of the steps done
(unless the periodic save just wrote it), meet at a barrier (no rank exits before rank 0 has committed the
manifest and pruned), and exit with EXIT_PREEMPTED; rank 0 says so in one line. PFC_RESUME=1 continues from
that checkpoint exactly as from any other.

A second signal before the stop is complete exits at once (os._exit, EXIT_PREEMPTED): the checkpoint being
written then never gets its manifest, so the previous one stays the newest complete checkpoint
(checkpoint.py writes the manifest last). Signals within SAME_REQUEST_S of the first are the same request
arriving twice (SLURM signals the launcher and the ranks; mpirun passes its signal on a second later) and
are ignored, as is any signal once the stop is complete.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .. import checkpoint, dist
from ..errors import UserError

EXIT_PREEMPTED = 4  # the exit status of a run stopped by SIGTERM / SIGINT (docs/failures.md)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
SAME_REQUEST_S = 2.0


class Preempted(UserError, RuntimeError):
    """The run stopped on a signal, every rank at the same step (after saving, unless a second signal)."""
    EXIT_STATUS = EXIT_PREEMPTED

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


def leave(error: Preempted, launched: bool, *, exit=os._exit) -> int:
    """How `partial-fc train` ends after a stop: rank 0's line, then EXIT_PREEMPTED on every rank.

    Under a launcher the process ends at once (os._exit, after flushing): the launcher kills the ranks a few
    seconds after its signal (horovodrun 5 s), the checkpoint is complete, and MXNet's and Horovod's
    teardown at interpreter exit would spend that time, turning status 4 into SIGKILL's 137. Without one,
    rank 0's error goes back to the command line (cli.py prints it) like any other."""
    if not launched:
        if error.rank == 0:
            raise error
        return error.EXIT_STATUS
    if error.rank == 0:
        print(f"partial-fc: error: {error}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    exit(error.EXIT_STATUS)
    return error.EXIT_STATUS  # only when `exit` returns (tests)


class Preemption:
    """Records SIGTERM / SIGINT and turns them into one stop that every rank agrees on (module docstring)."""

    def __init__(self, comm, *, exit=os._exit, stream=None, clock=time.monotonic):
        self.comm = comm
        self._exit, self._stream, self._clock = exit, stream, clock
        self.received = 0          # the first signal's number, 0 before any
        self._first_at = None
        self.saving = False        # between the agreed stop and the end of its save
        self.finished = False      # the stop is complete: further signals change nothing
        self._previous = {}

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (only the main thread may; elsewhere the signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def close(self) -> None:
        """Give the signals their handlers back, unless a stop completed: the process is then on its way out
        with EXIT_PREEMPTED, and the SIGTERM horovodrun sends the other ranks as soon as one has exited must
        not kill it during its shutdown (status 143 instead of 4)."""
        if self.finished:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame=None) -> None:
        name = signal.Signals(signum).name
        now = self._clock()
        if not self.received:
            self.received, self._first_at = signum, now
            self._say(f"partial-fc: rank {self.comm.rank}: {name} received: every rank stops at the next step "
                      f"boundary and saves a checkpoint (a second signal exits at once, without it)")
            return
        if self.finished or now - self._first_at < SAME_REQUEST_S:
            return
        during = "while saving the stop's checkpoint" if self.saving else "before the stop's checkpoint"
        self._say(f"partial-fc: error: rank {self.comm.rank}: a second signal ({name}) {during}: exiting now; "
                  f"the checkpoint being written does not count, the previous complete one is intact "
                  f"(PFC_RESUME=1 continues from it)")
        self._exit(EXIT_PREEMPTED)

    def _say(self, line: str) -> None:
        print(line, file=self._stream or sys.stderr, flush=True)

    def stop_agreed(self) -> int:
        """Collective, at every step boundary on every rank: the number of a signal some rank received, or 0."""
        # Horovod: every rank runs this reduction at every boundary, signalled or not, so all agree.
        return int(dist.max_over_ranks(self.comm, float(self.received), "pfc.stop_requested"))

    def stop(self, signum: int, done: int, start_step: int, checkpointer, output: str) -> Preempted:
        """Save the checkpoint of `done` steps (every rank: the save is collective), wait for every rank, and
        return the Preempted error to raise (its message is rank 0's line)."""
        self.saving = True
        if not checkpointer.enabled:
            saved = "checkpoints are off (PFC_SAVE_CHECKPOINTS=0), nothing was saved"
        elif done == start_step:
            newest = checkpoint.latest(output)
            saved = (f"no step ran since start-up; the newest checkpoint is {newest}" if newest else
                     "no step ran since start-up, nothing was saved")
        else:
            path = checkpointer.last_path if checkpointer.last_saved == done else checkpointer.save(done)
            saved = f"checkpoint {path} saved; PFC_RESUME=1 resumes it"
        # Horovod: no rank exits (and makes the launcher stop the others) before every rank, rank 0 with its
        # manifest and pruning, has finished the save.
        self.comm.barrier("pfc.stop_saved")
        self.saving, self.finished = False, True
        name = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else f"signal {signum}"
        return Preempted(f"stopped by {name} after step {done}: {saved}", self.comm.rank)
