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
    """Keeps the data-parallel backbone identical on every rank (docs/design.md §3 step 9).

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


def max_over_ranks(comm, value: float, name: str) -> float:
    """The largest of every rank's `value` (one allreduce Max of one float): a flag any rank may raise, such
    as the trainer's stop request at each step boundary (`pfc.stop_requested`)."""
    return float(comm.allreduce(mx.nd.array([value]), "max", name).asscalar())


def init(transport: str = "horovod"):
    """Start the chosen transport. Called once by the program, never at import time."""
    if transport == "horovod":
        return HorovodComm()
    if transport == "mpi":
        return MpiComm()
    if transport == "local":
        return LocalComm()
    raise ValueError(f"unknown communication transport {transport!r} (known: {', '.join(TRANSPORTS)})")
