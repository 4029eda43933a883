"""Fine-tuning at the launcher's world size: a run from a pretrained model with imprinted centers (also in a
compact host bank) starts with a lower loss than with random ones, and a triplet run (P x K batches mined
over the allgathered global batch) gives every rank the same loss."""
import mxnet as mx
import numpy as np
import pytest

from partial_fc import config
from partial_fc.data import synth
from support import trainer_cases as cases


@pytest.fixture(scope="module")
def finetune_dir(comm, tmp_path_factory):
    """A folder every rank sees, for the whole module: rank 0's, its name broadcast to the others."""
    name = str(tmp_path_factory.mktemp("finetune")).encode()
    buf = np.zeros(1024, np.uint8)
    buf[:len(name)] = np.frombuffer(name, np.uint8)
    got = comm.broadcast(mx.nd.array(buf, dtype=np.uint8), 0, "test.finetune_dir").asnumpy()
    return bytes(got[got != 0]).decode()


@pytest.fixture(scope="module")
def finetune_case(comm, finetune_dir):
    """(data folder, pretrained manifest) in the folder every rank sees (paths are settings every rank compares):
    a tiny synthetic dataset, and a model this project trained on other identities at this world size, long
    enough for its BatchNorm statistics to fit the images (a random model's inference-mode embeddings are
    not the ones training sees)."""
    shared_dir = finetune_dir
    data, other = f"{shared_dir}/data", f"{shared_dir}/other"
    if comm.rank == 0:
        synth.write_dataset(data, identities=12, images_per_identity=4, val_pairs=8, seed=5, progress=False)
        synth.write_dataset(other, identities=12, images_per_identity=4, val_pairs=8, seed=6, progress=False)
    comm.barrier("test.finetune_data")
    cases.run(f"{shared_dir}/base", 24, data_dir=other, num_classes=0, sample_rate=1.0, comm=config.load().comm)
    return data, f"{shared_dir}/base/model-0024.json"


def same_on_every_rank(comm, values, name):
    got = comm.allgather(mx.nd.array(np.array([values], np.float64), dtype=np.float64), name).asnumpy()
    assert (got == got[0]).all()


def test_imprinted_centers_start_with_a_lower_loss_than_random_ones(comm, shared_dir, finetune_case):
    data, model = finetune_case
    # A compact host bank (the device float32 one and the others: tests/parallel/test_imprint.py).
    run = dict(data_dir=data, num_classes=0, pretrained=model, save_checkpoints=False, sample_rate=1.0,
               comm=config.load().comm, memory_bank="host", bank_dtype="float16")
    imprinted = cases.run(f"{shared_dir}/imprinted", 2, init_centers="imprint", **run)
    random = cases.run(f"{shared_dir}/random", 2, **run)
    same_on_every_rank(comm, imprinted + random, "test.imprint_losses")
    assert imprinted[0] < random[0]


def test_triplet_runs_give_every_rank_the_same_loss(comm, shared_dir, finetune_case):
    data, model = finetune_case
    losses = cases.run(f"{shared_dir}/triplet", 3, data_dir=data, num_classes=0, pretrained=model, loss="triplet",
                       triplet_images=2, save_checkpoints=False, comm=config.load().comm)
    assert len(losses) == 3 and np.isfinite(losses).all() and max(losses) > 0
    same_on_every_rank(comm, losses, "test.triplet_losses")
