"""The parallel tier runs under a launcher, one pytest per rank:

    horovodrun -np 2 -H localhost:2 --gloo python -m pytest tests/parallel       (Horovod transport)
    mpirun -np 3 --oversubscribe -x PFC_COMM=mpi python -m pytest tests/parallel (mpi4py transport)

Run plainly (python -m pytest tests/parallel) it is the same tests at world size 1. Every rank builds the
whole problem from one seed and compares its own slice with a dense reference computed locally.
"""
import pytest

from partial_fc import config, dist


@pytest.fixture(scope="session")
def comm():
    return dist.init(config.load().comm)


@pytest.fixture
def shared_dir(comm, tmp_path):
    """A folder every rank sees: rank 0's tmp_path, its name broadcast to the others."""
    import mxnet as mx
    import numpy as np

    name = str(tmp_path).encode()
    buf = np.zeros(1024, np.uint8)
    buf[:len(name)] = np.frombuffer(name, np.uint8)
    got = comm.broadcast(mx.nd.array(buf, dtype=np.uint8), 0, "test.shared_dir").asnumpy()
    return bytes(got[got != 0]).decode()
