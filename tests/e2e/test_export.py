"""partial-fc export: ONNX models that onnxruntime and insightface run to MXNet's embeddings; bad input.

The checkpoints are made here: random He-initialised mbf (D=128, the built-in example's network) and r18,
with every BatchNorm's moving statistics set from a batch so that activations and embeddings have a trained
network's scale (about 1). Without that, a random mbf's embeddings are ~1e-4 and any comparison would pass.
The reference is MXNet running the checkpoint's own graph (for the trainer's checkpoint: the depthwise
PReLU form the CPU trainer trains, not the graph the exporter converts).
"""
import json
import os

import mxnet as mx
import numpy as np
import onnx
import onnxruntime
import pytest

import symbols
from partial_fc import checkpoint, cli, dist
from partial_fc.evaluation import export

D_MBF = 128
D_R18 = 64


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 112, 112)).astype(np.float32)


def _forward(sym, arg, aux, images):
    """MXNet's output of `sym` on float32 images, BatchNorm in inference mode (bound for training: see
    verification.Verifier for why)."""
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", images.shape)], for_training=True)
    mod.set_params(arg, aux, allow_missing=False, allow_extra=True)
    mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


def _random_backbone(network, dim, prelu_impl, seed):
    """(symbol, arg, aux) of a randomly initialised network whose embeddings have unit scale."""
    mx.random.seed(seed)
    sym = symbols.get_symbol(network, embedding_size=dim, prelu_impl=prelu_impl)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", (2, 3, 112, 112))], for_training=True)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    arg, aux = mod.get_params()
    _calibrate_batchnorm(sym, arg, aux, _images(8, seed + 100))
    return sym, arg, aux


def _calibrate_batchnorm(sym, arg, aux, images):
    """Set every BatchNorm's moving statistics to its input's statistics on `images`, as training would.

    One training-mode forward: there each BatchNorm normalises by the batch's own statistics, so every
    BatchNorm input is what it will be in inference mode once all the moving statistics are set.
    """
    nodes = json.loads(sym.tojson())["nodes"]
    # (moving mean, moving var, input) of each BatchNorm, named by its input nodes (fc1's differ from its op's)
    bns = [([nodes[n["inputs"][k][0]]["name"] for k in (3, 4)], nodes[n["inputs"][0][0]]["name"] + "_output")
           for n in nodes if n["op"] == "BatchNorm"]
    internals = sym.get_internals()
    group = mx.sym.Group([internals[source] for _, source in bns])
    mod = mx.mod.Module(group, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", images.shape)], for_training=True)
    mod.set_params(arg, aux, allow_missing=False, allow_extra=True)
    mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=True)
    for ((mean, var), _), x in zip(bns, mod.get_outputs()):
        x = x.asnumpy()
        axes = (0,) + tuple(range(2, x.ndim))  # all but the channel axis
        aux[mean] = mx.nd.array(x.mean(axis=axes))
        aux[var] = mx.nd.array(x.var(axis=axes))


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory):
    """A trainer checkpoint of mbf, D=128, as the CPU trainer writes it (depthwise PReLU graph)."""
    out = tmp_path_factory.mktemp("run")
    sym, arg, aux = _random_backbone("mbf", D_MBF, "depthwise", seed=1)
    classes = 10
    zeros = np.zeros((classes, D_MBF), np.float32)
    manifest = checkpoint.save(str(out), 7, comm=dist.LocalComm(), symbol=sym, arg_params=arg, aux_params=aux,
                               save_states=lambda p: open(p, "wb").write(b"states"), centers=(zeros, zeros),
                               meta=dict(network="mbf", num_classes=classes, embedding_size=D_MBF, fp16=False),
                               keep=3)
    return out, manifest, sym, arg, aux


@pytest.fixture(scope="module")
def r18_prefix(tmp_path_factory):
    """A plain MXNet checkpoint (prefix-symbol.json + prefix-0003.params) of r18, D=64."""
    prefix = str(tmp_path_factory.mktemp("r18") / "r18")
    sym, arg, aux = _random_backbone("r18", D_R18, "leakyrelu", seed=2)
    mx.model.save_checkpoint(prefix, 3, sym, arg, aux)
    return prefix + "-0003.params", sym, arg, aux


@pytest.fixture(scope="module")
def mbf_onnx(trainer_checkpoint, tmp_path_factory):
    out, _, _, _, _ = trainer_checkpoint
    path = str(tmp_path_factory.mktemp("onnx") / "mbf.onnx")
    result = export.export(str(out), path)  # the output folder: its newest checkpoint
    assert result.path == path and result.max_abs_diff <= export.TOLERANCE
    return path


def _session(path):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def _assert_close(got, want):
    assert np.abs(want).max() > 0.1  # a comparison of near-zero embeddings would prove nothing
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= export.TOLERANCE


def test_cli_prints_the_difference_and_the_file(trainer_checkpoint, tmp_path, capsys):
    path = str(tmp_path / "m.onnx")
    assert cli.main(["export", trainer_checkpoint[1], "--output", path, "--batch-check", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "mbf, D=128, step 7" in out and path in out
    diff = float(out.split("max abs diff ")[1].split()[0])
    assert 0 <= diff <= export.TOLERANCE
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_export_of_the_trainer_checkpoint_runs_to_mxnet_embeddings(trainer_checkpoint, mbf_onnx):
    _, _, sym, arg, aux = trainer_checkpoint
    images = _images(5, seed=3)
    want = _forward(sym, arg, aux, images)
    session = _session(mbf_onnx)
    _assert_close(session.run(["fc1"], {"data": images})[0], want)
    # The batch dimension is free: one image gives the same row as in a batch of five.
    _assert_close(session.run(["fc1"], {"data": images[2:3]})[0], want[2:3])


def test_model_has_only_the_image_input_and_onnx_shaped_prelu_slopes(mbf_onnx):
    model = onnx.load(mbf_onnx)
    onnx.checker.check_model(model)
    session = _session(mbf_onnx)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("data", ["N", 3, 112, 112])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("fc1", ["N", D_MBF])]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", export.DEFAULT_OPSET)]
    initializers = {t.name: t for t in model.graph.initializer}
    slopes = [initializers[n.input[1]] for n in model.graph.node if n.op_type == "PRelu"]
    assert len(slopes) > 10
    assert all(len(s.dims) == 3 and s.dims[1:] == [1, 1] for s in slopes)
    assert [n.op_type for n in model.graph.node[:2]] == ["Sub", "Mul"]


def _insightface_model(path):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = get_model(path, providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX)
    # It saw the Sub/Mul normalisation in the graph, so it feeds raw pixels instead of normalising again.
    assert (model.input_mean, model.input_std, model.input_size) == (0.0, 1.0, (112, 112))
    return model


def test_insightface_get_feat_gives_mxnet_embedding_of_the_same_face(trainer_checkpoint, mbf_onnx):
    _, _, sym, arg, aux = trainer_checkpoint
    model = _insightface_model(mbf_onnx)
    rgb = _images(2, seed=4)                                             # [2, 3, 112, 112], RGB
    bgr = [np.ascontiguousarray(x.transpose(1, 2, 0)[:, :, ::-1]).astype(np.uint8) for x in rgb]  # cv2 images
    want = _forward(sym, arg, aux, rgb)
    _assert_close(model.get_feat(bgr), want)
    _assert_close(model.get_feat(bgr[1]), want[1:])


def test_plain_mxnet_r18_checkpoint_exports_and_matches(r18_prefix, tmp_path):
    params, sym, arg, aux = r18_prefix
    path = str(tmp_path / "r18.onnx")
    result = export.export(params, path, batch_check=2)
    assert result.path == path and result.embedding_size == D_R18 and result.max_abs_diff <= export.TOLERANCE
    images = _images(3, seed=5)
    _assert_close(_session(path).run(["fc1"], {"data": images})[0], _forward(sym, arg, aux, images))
    _insightface_model(path)


def test_plain_model_with_fixed_gamma_and_implicit_flatten(tmp_path):
    """An insightface-style graph: BatchNorm with MXNet's default fix_gamma=True holding a gamma that is not
    1 (MXNet ignores it) and a FullyConnected without a flatten attribute; written as PREFIX,EPOCH."""
    x = mx.sym._internal._minus_scalar(mx.sym.var("data"), scalar=127.5, name="_minusscalar0")
    x = mx.sym._internal._mul_scalar(x, scalar=0.0078125, name="_mulscalar0")
    x = mx.sym.Convolution(x, num_filter=8, kernel=(8, 8), stride=(8, 8), name="conv0")
    x = mx.sym.BatchNorm(x, eps=2e-5, name="bn0")                    # fix_gamma=True by default
    x = mx.sym.LeakyReLU(x, act_type="prelu", name="relu0")
    x = mx.sym.FullyConnected(x, num_hidden=16, name="pre_fc1")        # flatten left implicit
    sym = mx.sym.BatchNorm(x, eps=2e-5, name="fc1")
    assert "flatten" not in sym.tojson()
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", (2, 3, 112, 112))], for_training=True)
    mod.init_params(mx.init.Xavier(magnitude=2))
    arg, aux = mod.get_params()
    arg["bn0_gamma"] = mx.nd.full(arg["bn0_gamma"].shape, 3.0)
    arg["fc1_gamma"] = mx.nd.full(arg["fc1_gamma"].shape, 5.0)
    _calibrate_batchnorm(sym, arg, aux, _images(8, seed=6))
    mx.model.save_checkpoint(str(tmp_path / "plain"), 1, sym, arg, aux)
    path = str(tmp_path / "plain.onnx")
    export.export(str(tmp_path / "plain") + ",1", path, batch_check=2)
    images = _images(3, seed=7)
    _assert_close(_session(path).run(["fc1"], {"data": images})[0], _forward(sym, arg, aux, images))
    _insightface_model(path)


def test_graph_without_normalisation_is_left_for_insightface_to_normalise(tmp_path):
    x = mx.sym.Convolution(mx.sym.var("data"), num_filter=4, kernel=(16, 16), stride=(16, 16), name="conv0")
    x = mx.sym.Activation(x, act_type="relu", name="relu0")
    x = mx.sym.FullyConnected(x, num_hidden=8, flatten=True, name="pre_fc1")
    x = mx.sym._internal._minus_scalar(x, scalar=1.0, name="shift")  # a Sub and a Mul, but not of the input
    sym = mx.sym._internal._mul_scalar(x, scalar=2.0, name="fc1")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", (2, 3, 112, 112))], for_training=True)
    mod.init_params(mx.init.Xavier(magnitude=2))
    arg, aux = mod.get_params()
    arg["conv0_weight"] /= 128  # inputs are 0..255 here: keep the embedding near unit scale
    mx.model.save_checkpoint(str(tmp_path / "raw"), 2, sym, arg, aux)
    path = str(tmp_path / "raw.onnx")
    export.export(str(tmp_path / "raw-symbol.json"), path, batch_check=2)
    from insightface.model_zoo import get_model
    assert (get_model(path, providers=["CPUExecutionProvider"]).input_mean,) == (127.5,)


def test_a_mismatch_exits_1_and_leaves_the_previous_file(trainer_checkpoint, tmp_path, monkeypatch, capsys):
    out = trainer_checkpoint[0]
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    real = export.reference_embeddings
    monkeypatch.setattr(export, "reference_embeddings", lambda source, x: real(source, x) + 1e-3)
    assert cli.main(["export", str(out), "--output", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ by up to 0.001" in err and "not written" in err
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.onnx"]  # no temporary file left behind


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _bad_manifest(tmp_path, trainer_checkpoint, **changes):
    """A copy of the trainer checkpoint's manifest with `changes`, next to (a link to) its parameters."""
    run, manifest = trainer_checkpoint[:2]
    doc = dict(json.load(open(manifest)), **changes)
    os.symlink(run / "model-0007.params", tmp_path / "model-0007.params")
    return _write(tmp_path / "model-0009.json", json.dumps(doc).encode())


def _params_without(tmp_path, r18_prefix, name):
    _, sym, arg, aux = r18_prefix
    arg = {k: v for k, v in arg.items() if k != name}
    mx.model.save_checkpoint(str(tmp_path / "cut"), 1, sym, arg, aux)
    return str(tmp_path / "cut-0001.params")


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("empty folder", "holds no complete checkpoint"),
    ("text file", "not an output folder"),
    ("not a manifest", "not a checkpoint manifest"),
    ("manifest without params", "model-9999.params, which is missing"),
    ("params without symbol", "lonely-symbol.json: no such symbol file"),
    ("garbage params", "cannot be read as MXNet parameters"),
    ("params missing a weight", "lacks: stage1_unit1_conv1_weight"),
    ("manifest of another embedding size", "pre_fc1_weight has shape (128, 512), the graph needs (64, 512)"),
    ("output folder missing", "does not exist"),
    ("opset too old", "opset 11 is too old"),
])
def test_bad_input_is_one_line_and_exit_1(case, message, tmp_path, trainer_checkpoint, r18_prefix, capsys):
    out = str(tmp_path / "model.onnx")
    extra = []
    if case == "missing":
        source = str(tmp_path / "nothing-here")
    elif case == "empty folder":
        source = str(tmp_path)
    elif case == "text file":
        source = _write(tmp_path / "notes.txt", b"hello")
    elif case == "not a manifest":
        source = _write(tmp_path / "model-0001.json", b'{"step": 1}')
    elif case == "manifest without params":
        source = _bad_manifest(tmp_path, trainer_checkpoint, params="model-9999.params")
    elif case == "manifest of another embedding size":
        source = _bad_manifest(tmp_path, trainer_checkpoint, embedding_size=64)
    elif case == "params without symbol":
        source = _write(tmp_path / "lonely-0001.params", b"x")
    elif case == "garbage params":
        _write(tmp_path / "junk-symbol.json", open(r18_prefix[0].replace("-0003.params", "-symbol.json"), "rb").read())
        source = _write(tmp_path / "junk-0001.params", b"not parameters at all")
    elif case == "params missing a weight":
        source = _params_without(tmp_path, r18_prefix, "stage1_unit1_conv1_weight")
    elif case == "output folder missing":
        source, out = trainer_checkpoint[1], str(tmp_path / "no" / "model.onnx")
    else:
        source, extra = trainer_checkpoint[1], ["--opset", "11"]
    before = set(os.listdir(tmp_path))
    assert cli.main(["export", source, "--output", out] + extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("partial-fc: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert set(os.listdir(tmp_path)) == before  # nothing written
