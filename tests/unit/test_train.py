import json

import numpy as np
import pytest

from partial_fc import checkpoint
from partial_fc.config import ConfigError
from support import trainer_cases as cases


def test_resumed_run_repeats_the_uninterrupted_losses(tmp_path):
    full, rest = cases.check_exact_resume(tmp_path / "full", tmp_path / "split", comm="local")
    np.testing.assert_array_equal(rest, full[3:])  # bit for bit: every random choice is a function of the step


def test_resume_with_host_memory_bank_and_dropout(tmp_path):
    full, rest = cases.check_exact_resume(tmp_path / "full", tmp_path / "split", comm="local",
                                          memory_bank="host", dropout=0.3, stop=2, total=4)
    np.testing.assert_array_equal(rest, full[2:])


def test_outputs_of_a_run(tmp_path):
    out = tmp_path / "run"
    losses = cases.run(out, 4, comm="local", checkpoint_steps=2, keep_checkpoints=1, tensorboard=True)
    assert len(losses) == 4 and all(np.isfinite(losses))
    saved = json.loads((out / "config.json").read_text())
    assert saved["network"] == "mbf" and saved["max_steps"] == 4
    manifest = checkpoint.latest(str(out))
    assert manifest.endswith("model-0004.json") and not (out / "model-0002.json").exists()
    meta = json.loads(open(manifest).read())
    assert meta["world_size"] == 1 and meta["num_classes"] == 37 and meta["shards"][0]["count"] == 37
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [2, 4] and all("loss" in l and "lr" in l for l in lines)
    # What the sampler did: r = 0.3 of 37 centers is 11 rows, the batch's (at most 4) classes among them.
    log = (out / "train.log").read_text()
    assert "sampling: each step keeps max(11, #positives) of the shard's 37 centers" in log
    for l in lines:
        assert l["sampled_rows"] == 11 and 1 <= l["sampled_positives"] <= 4
        assert l["sampled_positives"] + l["sampled_negatives"] == 11
        assert abs(l["negatives_seen"] - l["sampled_negatives"] / (37 - l["sampled_positives"])) < 0.01
    assert f"kept 11: {lines[0]['sampled_positives']:g} pos + {lines[0]['sampled_negatives']:g} neg" in log
    # TensorBoard can read the scalars back.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [2, 4]
    np.testing.assert_allclose([e.value for e in acc.Scalars("loss")], [l["loss"] for l in lines], rtol=1e-6)


def test_the_backbone_checkpoint_is_an_mxnet_model(tmp_path):
    import mxnet as mx

    out = tmp_path / "run"
    cases.run(out, 2, comm="local")
    sym, arg, aux = mx.model.load_checkpoint(str(out / "model"), 2)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (3, 3, 112, 112))], for_training=False)
    mod.set_params(arg, aux)
    mod.forward(mx.io.DataBatch([mx.nd.ones((3, 3, 112, 112)) * 100]), is_train=False)
    emb = mod.get_outputs()[0].asnumpy()
    assert emb.shape == (3, 16) and np.isfinite(emb).all()


def test_fresh_run_refuses_to_overwrite_and_resume_needs_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    cases.run(out, 2, comm="local")
    with pytest.raises(ConfigError, match="already holds a checkpoint.*PFC_RESUME=1"):
        cases.run(out, 4, comm="local")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        cases.run(tmp_path / "empty", 4, comm="local", resume="1")


def test_checkpoint_of_another_network_is_refused(tmp_path):
    out = tmp_path / "run"
    cases.run(out, 2, comm="local")
    with pytest.raises(checkpoint.CheckpointError, match="embedding_size=16, this run has 8"):
        cases.run(out, 4, comm="local", resume="1", embedding_size=8)
