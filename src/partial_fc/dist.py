"""Every collective the project uses, behind one flat interface. The only importer of horovod and mpi4py.

Three transports with the same methods:
    LocalComm    world size 1, no communication: lets the math run in plain pytest
    HorovodComm  horovod.mxnet (default; launched by horovodrun, or mpirun with Horovod built with MPI)
    MpiComm      mpi4py (PFC_COMM=mpi; launched by mpirun)

Each collective takes and returns MXNet NDArrays and carries an explicit, stable name ("pfc.logits_max"):
Horovod matches collectives across ranks by name, and a name shows which op stalled when ranks disagree.
Row splits follow rank order: allgather stacks rank 0's rows first; reducescatter hands rank k the k-th
equal block of rows, so it undoes an allgather of equal-sized batches.
"""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager

import mxnet as mx
import numpy as np

TRANSPORTS = ("horovod", "mpi", "local")


class LocalComm:
    """A world of one process. Collectives return their input (a copy-free identity)."""
    rank, size, local_rank, transport = 0, 1, 0, "local"
    last_collective = None

    def allgather(self, x, name):
        return x

    def allreduce(self, x, op, name):
        _check_op(op)
        return x

    def reducescatter(self, x, name):
        return x

    def broadcast(self, x, root, name):
        return x

    def barrier(self, name="pfc.barrier"):
        pass


class HorovodComm:
    transport = "horovod"
    last_collective = None

    def __init__(self):
        import horovod.mxnet as hvd
        hvd.init()
        self._hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def allgather(self, x, name):
        self.last_collective = name
        return self._hvd.allgather(x, name=name)

    def allreduce(self, x, op, name):
        hvd_op = {"sum": self._hvd.Sum, "max": self._hvd.Max}[_check_op(op)]
        self.last_collective = name
        return self._hvd.allreduce(x, op=hvd_op, name=name)

    def reducescatter(self, x, name):
        # Horovod's default op is Average; the operator needs the plain sum of every rank's part.
        self.last_collective = name
        return self._hvd.reducescatter(x, op=self._hvd.Sum, name=name)

    def broadcast(self, x, root, name):
        self.last_collective = name
        return _broadcast_by_sum(self._hvd, x, root, name)

    def barrier(self, name="pfc.barrier"):
        self.allreduce(mx.nd.zeros((1,)), "sum", name).wait_to_read()


class MpiComm:
    transport = "mpi"
    last_collective = None

    def __init__(self):
        from mpi4py import MPI
        self._mpi = MPI
        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self.local_rank = self._comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()

    def allgather(self, x, name):
        self.last_collective = name
        a = _host(x)
        # Row counts first, so ranks whose batches differ are caught rather than mis-sliced.
        counts = self._comm.allgather(a.shape[0])
        row = int(np.prod(a.shape[1:], dtype=np.int64))
        out = np.empty((sum(counts),) + a.shape[1:], dtype=a.dtype)
        self._comm.Allgatherv(a, [out, [c * row for c in counts]])
        return _like(out, x)

    def allreduce(self, x, op, name):
        self.last_collective = name
        a = _host(x)
        out = np.empty_like(a)
        mpi_op = {"sum": self._mpi.SUM, "max": self._mpi.MAX}[_check_op(op)]
        self._comm.Allreduce(a, out, op=mpi_op)
        return _like(out, x)

    def reducescatter(self, x, name):
        self.last_collective = name
        a = _host(x)
        if a.shape[0] % self.size:
            raise ValueError(f"{name}: {a.shape[0]} rows do not split evenly over {self.size} ranks")
        out = np.empty((a.shape[0] // self.size,) + a.shape[1:], dtype=a.dtype)
        self._comm.Reduce_scatter_block(a, out, op=self._mpi.SUM)
        return _like(out, x)

    def broadcast(self, x, root, name):
        self.last_collective = name
        a = _host(x).copy()
        self._comm.Bcast(a, root=root)
        return _like(a, x)

    def barrier(self, name="pfc.barrier"):
        self.last_collective = name
        self._comm.Barrier()


def _check_op(op):
    if op not in ("sum", "max"):
        raise ValueError(f"unknown reduction {op!r} (known: 'sum', 'max')")
    return op


def _host(x):
    return np.ascontiguousarray(x.asnumpy() if isinstance(x, mx.nd.NDArray) else x)


def _like(a, x):
    return mx.nd.array(a, ctx=x.context, dtype=a.dtype) if isinstance(x, mx.nd.NDArray) else a


def _broadcast_by_sum(hvd, x, root, name):
    """Rank `root`'s `x` on every rank, carried by a sum-allreduce instead of Horovod's broadcast.

    Horovod 0.28's broadcast has a use-after-free: EnqueueTensorBroadcast (common/operations.cc) writes the
    op's name to a trace log after queueing the op, and the background thread may already have finished
    the op and freed the MXNet binding's copy of that name. When the race hits, the process dies with a
    segfault or heap corruption (here about 1 trainer start-up in 250, inside the parameter broadcast).
    Its allreduce reads nothing after queueing. Root contributes its values and every other rank zeros, so
    every rank receives root's values exactly (x + 0 == x; a -0.0 arrives as +0.0, on every rank alike).
    """
    part = x if hvd.rank() == root else mx.nd.zeros(x.shape, ctx=x.context, dtype=x.dtype)
    return hvd.allreduce(part, op=hvd.Sum, name=name)


class BackboneSync:
    """Keeps the data-parallel backbone identical on every rank (DESIGN §3 step 9).

    Horovod carries it whatever PFC_COMM says about the FC's collectives: mpirun starts Horovod over MPI,
    horovodrun over Gloo or MPI. With transport "local" (one process, no launcher) it does nothing.
    """

    def __init__(self, transport: str):
        self._hvd = None
        self.rank, self.size = 0, 1
        if transport != "local":
            import horovod.mxnet as hvd
            hvd.init()
            self._hvd = hvd
            self.rank, self.size = hvd.rank(), hvd.size()

    def broadcast_parameters(self, params: dict) -> None:
        """Overwrite `params` (name -> NDArray, in place) with rank 0's values.

        One packed collective per dtype rather than one per parameter (a backbone has hundreds), carried by
        _broadcast_by_sum: Horovod's own broadcast_parameters goes through its faulty broadcast.
        """
        if self._hvd is None or self.size == 1:
            return
        by_dtype = {}
        for name in sorted(params):
            by_dtype.setdefault(np.dtype(params[name].dtype).name, []).append(name)
        for dtype, names in sorted(by_dtype.items()):
            ctx = params[names[0]].context
            flat = mx.nd.concat(*[params[n].as_in_context(ctx).reshape(-1) for n in names], dim=0)
            flat = _broadcast_by_sum(self._hvd, flat, 0, f"pfc.backbone_parameters.{dtype}")
            offset = 0
            for n in names:
                p = params[n]
                p[:] = flat[offset:offset + p.size].reshape(p.shape).as_in_context(p.context)
                offset += p.size
        mx.nd.waitall()

    def optimizer(self, optimizer):
        """Wrap an MXNet optimizer so every update first averages gradients over the ranks.

        Horovod averages (divides by the world size); the caller scales rescale_grad by the world size when
        its gradients are already per-rank shares of a global mean, as the Partial FC head's are.
        """
        if self._hvd is None:
            return optimizer
        return self._hvd.DistributedOptimizer(optimizer)


def init(transport: str = "horovod"):
    """Start the chosen transport. Called once by the program, never at import time."""
    if transport == "horovod":
        return HorovodComm()
    if transport == "mpi":
        return MpiComm()
    if transport == "local":
        return LocalComm()
    raise ValueError(f"unknown communication transport {transport!r} (known: {', '.join(TRANSPORTS)})")


EXIT_STALLED = 3  # the exit status of a rank whose watchdog gave up on a stalled step


class Watchdog:
    """Ends a rank that waits too long, so a dead or stuck peer never hangs the whole job.

    A collective blocks until every rank has joined it; when one rank died or hangs, the others would wait
    forever. The trainer wraps each phase of work in `watch(what, limit)` (or arm/disarm); a thread wakes at
    the running phase's deadline and, when that phase outlives its limit, prints one line naming the phase
    and the last collective this rank issued (the one it is most likely waiting in), then ends the process
    with EXIT_STALLED. It must end the process from the thread: the main thread is blocked inside a C call
    (the collective) and cannot raise. The launcher (horovodrun, mpirun) then stops the other ranks.

    The thread sleeps until a deadline (at most timeout / 2 at a time, so a phase armed while it sleeps is
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
        self._phase = None              # (what, started, limit)
        self._recent = deque(maxlen=20)  # seconds of the last completed steps
        self._thread = None

    def step_limit(self) -> float:
        return self.timeout + (5 * statistics.median(self._recent) if self._recent else 0.0)

    def arm(self, what: str, limit: float | None = None, setting: str | None = None) -> None:
        """From now on `what` is running, with `limit` seconds (default: step_limit()); timeout <= 0: no limit.

        `setting` names the option an explicit limit comes from, for the message (e.g. "PFC_SLOW_TIMEOUT").
        """
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

    def disarm(self, *, step: bool = False) -> None:
        """The running phase finished; with step=True its duration joins the recent step times."""
        with self._lock:
            phase, self._phase = self._phase, None
        if step and phase is not None:
            self._recent.append(time.monotonic() - phase[1])

    def close(self) -> None:
        self.disarm()
        self._closed.set()

    @contextmanager
    def watch(self, what: str, limit: float | None = None, setting: str | None = None, *, step: bool = False):
        self.arm(what, limit, setting)
        try:
            yield
        finally:
            self.disarm(step=step)

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
