"""The watchdog: ends a rank that waits too long, so a dead or stuck peer never hangs the whole job."""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager

EXIT_STALLED = 3  # the exit status of a rank whose watchdog gave up on a stalled step


class Watchdog:
    """Ends a rank that waits too long, so a dead or stuck peer never hangs the whole job.

    A collective blocks until every rank has joined it; when one rank died or hangs, the others would wait
    forever. The trainer wraps each phase of work in `with watch(what, limit, setting)`; a thread wakes at
    the running phase's deadline and, when that phase outlives its limit, prints one line naming the phase
    and the last collective this rank issued (the one it is most likely waiting in), then ends the process
    with EXIT_STALLED. It must end the process from the thread: the main thread is blocked inside a C call
    (the collective) and cannot raise. The launcher (horovodrun, mpirun) then stops the other ranks.

    The thread sleeps until a deadline (at most timeout / 2 at a time, so a phase that starts while it sleeps is
    judged at most half a limit late) instead of polling: Python code running beside MXNet's and Horovod's
    C calls is kept to a wake-up every minute or so at the default limit. close() ends the thread.

    A step's limit is `timeout` plus 5x the median of the recent step times, so slow configurations
    (large models on CPU) do not trip it while a stalled job is still caught within about 1.5 x `timeout`.
    """

    def __init__(self, comm, timeout: float, *, exit=os._exit, stream=None, poll: float = 0.05):
        self.comm, self.timeout = comm, float(timeout)
        self._exit, self._stream, self._poll = exit, stream, poll
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._phase = None              # (what, started, limit, setting) of the running phase, or None
        self._recent = deque(maxlen=20)  # seconds of the last completed steps
        self._thread = None

    def step_limit(self) -> float:
        return self.timeout + (5 * statistics.median(self._recent) if self._recent else 0.0)

    @contextmanager
    def watch(self, what: str, limit: float | None = None, setting: str | None = None, *, step: bool = False):
        """While the block runs, `what` is the running phase, with `limit` seconds (default: step_limit(),
        taken when the block starts); timeout <= 0: no limit.

        `setting` names the option an explicit limit comes from, for the message (e.g. "PFC_SLOW_TIMEOUT").
        step=True: the block's duration joins the recent step times (also when it raises).
        """
        self._arm(what, limit, setting)
        try:
            yield
        finally:
            self._disarm(step=step)

    def close(self) -> None:
        self._disarm()
        self._closed.set()

    def _arm(self, what: str, limit: float | None, setting: str | None) -> None:
        if self.timeout <= 0:
            return
        if limit is None:
            limit, setting = self.step_limit(), f"PFC_COLLECTIVE_TIMEOUT={self.timeout:g}"
        elif setting is not None:
            setting = f"{setting}={limit:g}"
        with self._lock:
            self._phase = (what, time.monotonic(), limit, setting)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pfc-watchdog", daemon=True)
                self._thread.start()

    def _disarm(self, *, step: bool = False) -> None:
        with self._lock:
            phase, self._phase = self._phase, None
        if step and phase is not None:
            self._recent.append(time.monotonic() - phase[1])

    def _run(self):
        nap = max(self._poll, self.timeout / 2)
        while not self._closed.is_set():
            with self._lock:
                phase = self._phase
            if phase is None:
                self._closed.wait(nap)
                continue
            what, started, limit, setting = phase
            waited = time.monotonic() - started
            if waited <= limit:
                self._closed.wait(max(self._poll, min(limit - waited, nap)))
                continue
            with self._lock:
                if self._phase is not phase:  # it finished, or another began, while this thread woke
                    continue
            last = getattr(self.comm, "last_collective", None)
            print(f"partial-fc: error: rank {self.comm.rank}: {what} did not finish within {waited:.0f} s "
                  f"(limit {limit:.0f} s{', ' + setting if setting else ''}); the last collective "
                  f"this rank issued is '{last}': another rank is dead or stuck, or the ranks disagree on "
                  f"the collectives they run; stopping this rank", file=self._stream or sys.stderr, flush=True)
            self._exit(EXIT_STALLED)
            return
