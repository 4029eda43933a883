"""PFC_PRETRAINED: a run starts from this project's checkpoint or from a plain MXNet model in the insightface
layout, computes exactly the source's embeddings before its first step, and refuses a model of another
network with one line."""
import contextlib
import json

import mxnet as mx
import numpy as np
import pytest

from partial_fc import checkpoint, config
from partial_fc.training import pretrained
from partial_fc.training import trainer as train
from support import insightface_model as insightface
from support import trainer_cases as cases
from support.cli import one_line_error, run_cli

PIXELS = np.random.default_rng(0).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32)


@contextlib.contextmanager
def started(output, **overrides):
    """The Trainer of a fresh run (setup() done, no step taken) with the TINY settings and `overrides`."""
    cfg = config.load({}, **dict(cases.TINY, output=str(output), max_steps=2, comm="local", **overrides))
    comm, sync, ctx = train.init(cfg)
    with contextlib.ExitStack() as cleanup:
        yield train.setup(cfg, comm, sync, ctx, cleanup)


def first_forward(t, images=PIXELS):
    """The run's backbone on raw pixels before any step (inference mode, as verification runs it)."""
    t.mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    return t.mod.get_outputs()[0].asnumpy()


def normalised(pixels):
    # The same float32 operations as the graph's: (x - 127.5) * 0.0078125.
    return (pixels - np.float32(127.5)) * np.float32(0.0078125)


def test_a_checkpoint_of_this_project_starts_a_run_with_its_embeddings(tmp_path):
    cases.run(tmp_path / "source", 2, comm="local")
    sym, arg, aux = mx.model.load_checkpoint(str(tmp_path / "source" / "model"), 2)
    with started(tmp_path / "run", num_classes=23, pretrained=str(tmp_path / "source" / "model-0002.json")) as t:
        np.testing.assert_array_equal(first_forward(t), insightface.embed(sym, arg, aux, PIXELS))
        assert t.start_step == 0 and t.fc.count == 23  # a new run: its own head for its own classes
        assert t.cfg.pretrained_from["kind"] == "checkpoint" and t.cfg.pretrained_from["step"] == 2


@pytest.mark.parametrize("in_graph", [True, False])
def test_a_plain_mxnet_model_in_the_insightface_layout_starts_a_run_with_its_embeddings(tmp_path, in_graph):
    sym, arg, aux = insightface.save(tmp_path / "model-y1", 1, normalised_in_graph=in_graph)
    with started(tmp_path / "run", pretrained=f"{tmp_path}/model-y1,1") as t:
        # Without normalisation in its graph, the source is fed pixels normalised outside; this run's graph
        # normalises raw pixels inside. Either way the numbers are the source's, bit for bit.
        source = insightface.embed(sym, arg, aux, PIXELS if in_graph else normalised(PIXELS))
        np.testing.assert_array_equal(first_forward(t), source)
        start = t.cfg.pretrained_from
        assert start["normalisation"] == ("same" if in_graph else "none")
        assert start["gamma_reset_to_1"] == ["conv1_bn_gamma", "fc1_gamma"]   # fix_gamma: computed as 1
        assert start["dropped"] == ["fc7_weight"]                             # its training head
        assert "normalisation in" in start["summary"] and "optimizer starts fresh" in start["summary"]


def test_a_bias_before_the_embedding_batchnorm_is_folded_into_its_mean(tmp_path):
    sym, arg, aux = insightface.save(tmp_path / "r", 3, bias=True)
    with started(tmp_path / "run", pretrained=f"{tmp_path}/r,3") as t:
        source = insightface.embed(sym, arg, aux, PIXELS)
        # BN(x + b) with mean m equals BN(x) with mean m - b up to the rounding of the subtraction.
        np.testing.assert_allclose(first_forward(t), source, rtol=1e-5, atol=1e-6 * np.abs(source).max())
        assert t.cfg.pretrained_from["folded_bias"] == ["pre_fc1_bias"]


def test_config_json_records_where_the_run_started(tmp_path):
    insightface.save(tmp_path / "m", 1)
    losses = cases.run(tmp_path / "run", 2, comm="local", pretrained=f"{tmp_path}/m,1")
    assert len(losses) == 2 and np.isfinite(losses).all()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["pretrained"] == f"{tmp_path}/m,1"
    assert saved["pretrained_from"]["source"] == f"{tmp_path}/m-symbol.json + {tmp_path}/m-0001.params"
    meta = json.loads(open(checkpoint.latest(str(tmp_path / "run"))).read())
    assert meta["config"]["pretrained_from"]["kind"] == "mxnet"   # the checkpoint carries it too


def test_resuming_wins_over_the_pretrained_model(tmp_path):
    insightface.save(tmp_path / "m", 1)
    cases.run(tmp_path / "run", 2, comm="local", pretrained=f"{tmp_path}/m,1")
    rest = cases.run(tmp_path / "run", 3, comm="local", pretrained=f"{tmp_path}/m,1", resume="1")
    assert len(rest) == 1


def test_another_network_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    insightface.save(tmp_path / "m", 1)
    for key, value in dict(cases.TINY, network="mnas05", output=tmp_path / "run", max_steps=1, comm="local",
                           pretrained=f"{tmp_path}/m,1").items():
        monkeypatch.setenv(f"PFC_{key.upper()}", str(value))
    status, _, err = run_cli(["train"], capsys)
    line = one_line_error(err)
    assert status == 2
    assert f"PFC_PRETRAINED={tmp_path}/m,1" in line and "does not fit PFC_NETWORK=mnas05" in line
    assert "missing (" in line and "extra (" in line and "PFC_PRETRAINED_STRICT=0" in line


def test_a_checkpoint_of_another_network_is_refused_by_name(tmp_path):
    cases.run(tmp_path / "source", 2, comm="local")
    with pytest.raises(pretrained.PretrainedError, match="is a mbf checkpoint, this run's PFC_NETWORK is mnas05"):
        with started(tmp_path / "run", network="mnas05", pretrained=str(tmp_path / "source" / "model-0002.json")):
            pass


def test_another_embedding_size_is_refused_unless_not_strict(tmp_path):
    _, arg, aux = insightface.save(tmp_path / "m", 1)  # D = 16
    with pytest.raises(pretrained.PretrainedError, match=r"5 of another shape \(fc1_beta \(16,\) vs \(8,\)"):
        with started(tmp_path / "a", embedding_size=8, pretrained=f"{tmp_path}/m,1"):
            pass
    with started(tmp_path / "b", embedding_size=8, pretrained=f"{tmp_path}/m,1", pretrained_strict=False) as t:
        start = t.cfg.pretrained_from
        assert start["reshaped_from_seed"] == ["fc1_beta", "fc1_gamma", "fc1_moving_mean", "fc1_moving_var",
                                               "pre_fc1_weight"]
        params = {**t.mod.get_params()[0], **t.mod.get_params()[1]}
        # Everything else is the source's (the trunk's fix_gamma BatchNorm computed with gamma = 1).
        np.testing.assert_array_equal(params["conv1_bn_gamma"].asnumpy(), 1.0)
        for name in ("conv1_conv_weight", "gdc_bn_moving_var", "stage1_unit1_dw_relu_gamma"):
            np.testing.assert_array_equal(params[name].asnumpy(), {**arg, **aux}[name].asnumpy())
        assert params["pre_fc1_weight"].shape == (8, 512)


def test_the_input_chain_is_read_from_the_graph():
    data = mx.sym.var("data")
    assert pretrained.input_chain(mx.sym.Convolution(data, num_filter=2, kernel=(1, 1)))[0] == "none"
    own = mx.sym.Convolution((data - 127.5) * 0.0078125, num_filter=2, kernel=(1, 1))
    assert pretrained.input_chain(own) == ("same", [("_minus_scalar", 127.5), ("_mul_scalar", 0.0078125)])
    kind, chain = pretrained.input_chain(mx.sym.Convolution(data / 255.0, num_filter=2, kernel=(1, 1)))
    assert kind == "other" and pretrained.affine(chain) == pytest.approx((1 / 255.0, 0.0))


def test_frozen_steps_train_only_the_head(tmp_path):
    _, arg, aux = insightface.save(tmp_path / "m", 1)
    out = tmp_path / "run"
    cases.run(out, 3, comm="local", pretrained=f"{tmp_path}/m,1", freeze_backbone_steps=2, checkpoint_steps=2,
              keep_checkpoints=2)
    frozen, frozen_aux = checkpoint.load(str(out / "model-0002.json")).backbone()
    after, _ = checkpoint.load(str(out / "model-0003.json")).backbone()
    expected = dict(arg, conv1_bn_gamma=mx.nd.ones(arg["conv1_bn_gamma"].shape), fc1_gamma=mx.nd.ones(16), **aux)
    for name, value in {**frozen, **frozen_aux}.items():   # two steps: nothing of the backbone moved
        np.testing.assert_array_equal(value.asnumpy(), expected[name].asnumpy(), err_msg=name)
    assert not np.array_equal(after["conv1_conv_weight"].asnumpy(), arg["conv1_conv_weight"].asnumpy())
    centers, _ = checkpoint.load(str(out / "model-0002.json")).centers(0, 37)
    from partial_fc.head.memory_bank import MemoryBank
    start = MemoryBank.create(37, 16, seed=0, rank=0).numpy()[0]   # the run's seeded centers
    assert not np.array_equal(centers, start)   # while the head did learn
