"""Failures that involve every rank: one rank cannot write its part of a checkpoint (a full disk), and the
save must fail on every rank at once, not leave the others waiting, and keep the previous checkpoint."""
import errno
import os

import numpy as np
import pytest

from support import trainer_cases as cases
from partial_fc import checkpoint, config


def test_a_save_that_fails_on_one_rank_fails_on_every_rank_and_keeps_the_previous(comm, shared_dir, monkeypatch):
    transport = config.load().comm
    out = f"{shared_dir}/model"
    cases.run(out, 2, checkpoint_steps=2, comm=transport)
    good = checkpoint.latest(out)
    assert good.endswith("model-0002.json")
    with open(good) as f:
        manifest_before = f.read()

    victim = comm.size - 1  # rank 0 alone at W = 1
    if comm.rank == victim:
        real = checkpoint._write_npy

        def full_disk(path, array):
            real(path, array[:1])  # a partial file first, as a filling disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        monkeypatch.setattr(checkpoint, "_write_npy", full_disk)
    with pytest.raises(checkpoint.CheckpointError) as e:
        cases.run(out, 4, checkpoint_steps=2, resume="1", comm=transport)
    message = str(e.value)
    assert message.startswith("checkpoint at step 2 not saved") or message.startswith("checkpoint at step 4 not saved")
    if comm.rank == victim:
        assert f"rank {victim} could not write" in message and "No space left on device" in message
    else:
        assert f"rank(s) {victim} could not write their part" in message
    assert f"the previous checkpoint {good} is intact" in message
    comm.barrier("test.after_failed_save")
    # The previous checkpoint is untouched and still the newest; nothing of the failed step is left.
    assert checkpoint.latest(out) == good
    with open(good) as f:
        assert f.read() == manifest_before
    assert not os.path.exists(f"{out}/model-0004.json") and not os.path.exists(f"{out}/model-0004.params")
    leftovers = [n for _, _, files in os.walk(out) for n in files if ".tmp-" in n or "model-0004" in n]
    assert not leftovers, leftovers
    ckpt = checkpoint.load(good)
    w, m = ckpt.centers(0, ckpt.meta["num_classes"])
    assert np.isfinite(w).all() and np.isfinite(m).all()
