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
