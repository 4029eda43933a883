"""The backbone registry and the graph contract every network keeps (see symbols/common.py)."""
import json

import mxnet as mx
import numpy as np
import pytest

import symbols

BATCH = (2, 3, 112, 112)
# Published parameter counts (millions, embedding 512) of the insightface IResNets.
PUBLISHED_MILLIONS = {"r50": 43.6, "r100": 65.1}
PRELU_IMPLS = ("leakyrelu", "depthwise")


def graph_nodes(sym):
    return json.loads(sym.tojson())["nodes"]


def first_conv(sym):
    """The first Convolution node of the graph and the node that feeds its data input."""
    nodes = graph_nodes(sym)
    conv = next(node for node in nodes if node["op"] == "Convolution")
    return conv, nodes[conv["inputs"][0][0]]


def types_by_name(sym):
    arg_types, out_types, aux_types = sym.infer_type(data=np.float32)
    return dict(zip(sym.list_arguments(), arg_types)), out_types


def bind_initialised(sym, seed):
    """simple_bind on CPU for training, parameters set as Module.init_params would (honouring variable attrs)."""
    exe = sym.simple_bind(mx.cpu(), data=BATCH, grad_req={name: ("null" if name == "data" else "write")
                                                          for name in sym.list_arguments()})
    mx.random.seed(seed)
    initializer = mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
    attrs = sym.attr_dict()
    for name, array in list(exe.arg_dict.items()) + list(exe.aux_dict.items()):
        if name != "data":
            initializer(mx.init.InitDesc(name, attrs.get(name, {})), array)
    return exe


def test_registry_lists_the_networks():
    assert symbols.NETWORKS == ("r18", "r34", "r50", "r100", "r200", "mbf", "mnas05", "tiny")


@pytest.mark.parametrize("name", symbols.NETWORKS)
def test_every_network_builds_with_the_contracted_output(name):
    for dim in (512, 128):
        sym = symbols.get_symbol(name, embedding_size=dim)
        assert sym.list_outputs() == ["fc1_output"]
        assert sym.list_inputs()[0] == "data"
        _, out_shapes, _ = sym.infer_shape(data=BATCH)
        assert out_shapes == [(2, dim)]
        _, out_types = types_by_name(sym)
        assert out_types == [np.float32]
        # Names are checkpoint keys: unique, and no layer may silently share another's variable.
        internals = sym.get_internals().list_outputs()
        assert len(internals) == len(set(internals))
        assert len(sym.list_auxiliary_states()) == len(set(sym.list_auxiliary_states()))


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = symbols.get_symbol("r18").tojson()
    symbols.get_symbol("mbf", fp16=True, dropout=0.2)
    mx.sym.FullyConnected(mx.sym.Variable("x"), num_hidden=3)  # moves MXNet's global name counters
    assert symbols.get_symbol("r18").tojson() == first


@pytest.mark.parametrize("prelu_impl", PRELU_IMPLS)
@pytest.mark.parametrize("name", symbols.NETWORKS)
def test_graph_avoids_the_onnx_export_traps(name, prelu_impl):
    nodes = graph_nodes(symbols.get_symbol(name, dropout=0.1, prelu_impl=prelu_impl))
    batchnorms = [node for node in nodes if node["op"] == "BatchNorm"]
    fcs = [node for node in nodes if node["op"] == "FullyConnected"]
    assert batchnorms and fcs
    assert all(node["attrs"]["fix_gamma"] == "False" for node in batchnorms)
    assert all(node["attrs"].get("flatten") == "True" for node in fcs)


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_count_matches_the_published_one(name):
    millions = symbols.num_parameters(symbols.get_symbol(name, embedding_size=512)) / 1e6
    published = PUBLISHED_MILLIONS[name]
    assert abs(millions - published) <= 0.02 * published, \
        f"{name}: {millions:.3f} M parameters, published {published} M (2% tolerance)"


# This project's own counts (no published figure fits: mnas05 is MNasNet-B1 at width 0.5 with the face head).
OWN_COUNTS = {("mnas05", 512): 1_668_600, ("mnas05", 128): 1_176_312}


@pytest.mark.parametrize("name,dim", sorted(OWN_COUNTS))
def test_parameter_count_of_the_networks_without_a_published_one(name, dim):
    assert symbols.num_parameters(symbols.get_symbol(name, embedding_size=dim)) == OWN_COUNTS[name, dim]


@pytest.mark.parametrize("dim", [8, 16, 512])
def test_tiny_has_the_parameters_of_its_four_layers(dim):
    # tiny (bench scale's simulation network): 3x3 convolutions 3 -> 8 -> 16 -> 16 -> 32 without bias, each with
    # BatchNorm (gamma, beta) and a PReLU slope per channel, then fc1 (weights and bias) from the 32 x 7 x 7 map.
    from symbols import tiny
    widths = (3, *tiny.WIDTHS)
    convs = sum(9 * a * b for a, b in zip(widths, widths[1:]))
    per_channel = 3 * sum(tiny.WIDTHS)
    expected = convs + per_channel + 32 * 7 * 7 * dim + dim
    assert expected == {8: 21_048, 16: 33_600, 512: 811_824}[dim]
    assert symbols.num_parameters(symbols.get_symbol("tiny", embedding_size=dim)) == expected


def test_mnasnet_width_rounding_and_final_map():
    from symbols import mnas
    # torchvision's mnasnet0_5 widths: 32, 16, 24, 40, 80, 96, 192, 320 at width 0.5 -> multiples of 8.
    widths = [mnas.scaled_width(c, 0.5) for c in (32, 16, 24, 40, 80, 96, 192, 320)]
    assert widths == [16, 8, 16, 24, 40, 48, 96, 160]
    internals = symbols.get_symbol("mnas05").get_internals()
    assert internals["conv_last_relu_output"].infer_shape(data=BATCH)[1] == [(2, 1280, 7, 7)]


def test_mobilefacenet_is_about_the_size_of_the_paper():
    # The paper reports 0.99 M parameters with a 128-d embedding.
    assert 0.9e6 < symbols.num_parameters(symbols.get_symbol("mbf", embedding_size=128)) < 1.1e6


@pytest.mark.parametrize("name,dim", [("r18", 512), ("mbf", 128)])
def test_forward_and_backward_on_cpu(name, dim):
    sym = symbols.get_symbol(name, embedding_size=dim)
    exe = bind_initialised(sym, seed=0)
    rng = np.random.default_rng(0)
    exe.arg_dict["data"][:] = rng.uniform(0, 255, BATCH).astype(np.float32)

    out = exe.forward(is_train=True)[0]
    assert out.shape == (2, dim) and out.dtype == np.float32
    assert np.isfinite(out.asnumpy()).all()

    exe.backward([mx.nd.array(rng.standard_normal((2, dim)), dtype=np.float32)])
    conv, _ = first_conv(sym)
    grad = exe.grad_dict[conv["name"] + "_weight"].asnumpy()
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() > 0


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("name", symbols.NETWORKS)
def test_pixel_normalisation_is_inside_the_graph(name, fp16):
    sym = symbols.get_symbol(name, fp16=fp16)
    # `data` feeds one node only, so nothing can reach the trunk un-normalised...
    nodes = graph_nodes(sym)
    data_id = next(i for i, node in enumerate(nodes) if node["name"] == "data")
    consumers = [node for node in nodes if any(src == data_id for src, _, _ in node["inputs"])]
    assert len(consumers) == 1
    # ...and what the first convolution sees is (pixels - 127.5) / 128, evaluated by MXNet itself.
    _, conv_input = first_conv(sym)
    seen = sym.get_internals()[conv_input["name"] + "_output"]
    pixels = np.random.default_rng(1).integers(0, 256, BATCH).astype(np.float32)
    pixels[0] = 127.5  # a grey image must look like zeros to the network
    got = seen.eval(ctx=mx.cpu(), data=mx.nd.array(pixels))[0]
    assert got.dtype == (np.float16 if fp16 else np.float32)
    np.testing.assert_allclose(got.asnumpy().astype(np.float64), (pixels - 127.5) / 128.0, rtol=1e-3, atol=0)
    assert not got[0].asnumpy().any()


def prelu_slopes(name):
    return [node["name"] + "_gamma" for node in graph_nodes(symbols.get_symbol(name)) if node["op"] == "LeakyReLU"]


@pytest.mark.parametrize("prelu_impl", PRELU_IMPLS)
@pytest.mark.parametrize("name", symbols.NETWORKS)
def test_fp16_runs_the_trunk_in_float16_and_returns_float32(name, prelu_impl):
    sym = symbols.get_symbol(name, fp16=True, prelu_impl=prelu_impl)
    types, out_types = types_by_name(sym)
    assert out_types == [np.float32]
    convs = [node["name"] + "_weight" for node in graph_nodes(sym)
             if node["op"] == "Convolution" and node["name"] + "_weight" in types]
    slopes = prelu_slopes(name)
    assert convs and slopes
    assert all(types[arg] == np.float16 for arg in convs + slopes)
    # The embedding layer runs in float32 (tiny's is a plain FullyConnected fc1, the others' pre_fc1 + BatchNorm).
    head = ["fc1_weight", "fc1_bias"] if name == "tiny" else ["pre_fc1_weight", "fc1_gamma"]
    assert all(types[arg] == np.float32 for arg in head)
    # The same parameter names in both precisions, so one checkpoint serves both.
    assert sym.list_arguments() == symbols.get_symbol(name).list_arguments()


@pytest.mark.parametrize("prelu_impl", PRELU_IMPLS)
def test_prelu_slopes_start_at_a_quarter_under_module_init(prelu_impl):
    sym = symbols.get_symbol("mbf", embedding_size=128, prelu_impl=prelu_impl)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", BATCH)], for_training=False)
    mod.init_params(mx.init.Xavier())
    arg_params, _ = mod.get_params()
    slopes = prelu_slopes("mbf")
    assert slopes and all(np.all(arg_params[name].asnumpy() == 0.25) for name in slopes)


@pytest.mark.parametrize("name", symbols.NETWORKS)
def test_prelu_impls_share_one_parameter_set(name):
    shapes = []
    for prelu_impl in PRELU_IMPLS:
        sym = symbols.get_symbol(name, prelu_impl=prelu_impl)
        arg_shapes, _, aux_shapes = sym.infer_shape(data=BATCH)
        shapes.append((dict(zip(sym.list_arguments(), arg_shapes)), dict(zip(sym.list_auxiliary_states(), aux_shapes))))
    assert shapes[0] == shapes[1]


def test_prelu_impls_compute_the_same_function_and_gradients():
    # One checkpoint, two graphs: train with the fast CPU form, export or serve with MXNet's PReLU operator.
    executors = [bind_initialised(symbols.get_symbol("mbf", embedding_size=128, prelu_impl=prelu_impl), seed=0)
                 for prelu_impl in PRELU_IMPLS]
    rng = np.random.default_rng(2)
    pixels = rng.uniform(0, 255, BATCH).astype(np.float32)
    head_grad = mx.nd.array(rng.standard_normal((2, 128)), dtype=np.float32)
    for exe in executors:
        if exe is not executors[0]:
            for name, array in executors[0].arg_dict.items():
                array.copyto(exe.arg_dict[name])
        # Distinct slopes per channel, so a slope applied to the wrong channel cannot pass.
        for name in prelu_slopes("mbf"):
            exe.arg_dict[name][:] = mx.nd.array(np.linspace(0.05, 0.6, exe.arg_dict[name].shape[0]))
        exe.arg_dict["data"][:] = pixels
        exe.forward(is_train=True)
        exe.backward([head_grad])
    reference, fast = executors
    np.testing.assert_allclose(fast.outputs[0].asnumpy(), reference.outputs[0].asnumpy(), rtol=1e-4, atol=1e-4)
    for name, grad in reference.grad_dict.items():
        if name != "data":
            expected = grad.asnumpy()
            np.testing.assert_allclose(fast.grad_dict[name].asnumpy(), expected, rtol=1e-3,
                                       atol=1e-4 * np.abs(expected).max(), err_msg=name)


def test_dropout_is_in_the_head_only_when_asked_for():
    def dropouts(sym):
        return [node for node in graph_nodes(sym) if node["op"] == "Dropout"]

    assert not dropouts(symbols.get_symbol("r18"))
    [node] = dropouts(symbols.get_symbol("r18", dropout=0.4))
    assert float(node["attrs"]["p"]) == 0.4


def test_unknown_network_names_the_known_ones():
    with pytest.raises(ValueError, match="r100.*mbf"):
        symbols.get_symbol("r101")


def test_unknown_prelu_impl_is_a_value_error():
    with pytest.raises(ValueError, match="prelu_impl"):
        symbols.get_symbol("r18", prelu_impl="fast")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "512"])
def test_bad_embedding_size_is_a_value_error(bad):
    with pytest.raises(ValueError, match="embedding_size"):
        symbols.get_symbol("mbf", embedding_size=bad)


def test_mbf_at_512_runs_inference_forwards_on_cpu():
    """MXNet 1.9.1's CPU BatchNorm segfaulted on mbf's [B, 512] embedding in inference; in a child process
    so that a crash fails this test instead of the whole run."""
    import subprocess
    import sys
    code = (
        "import mxnet as mx, numpy as np, symbols\n"
        "sym = symbols.get_symbol('mbf', embedding_size=512, prelu_impl='depthwise')\n"
        "mod = mx.mod.Module(sym, data_names=['data'], label_names=None)\n"
        "mod.bind(data_shapes=[('data', (2, 3, 112, 112))], for_training=True)\n"
        "mod.init_params(mx.init.Xavier())\n"
        "for _ in range(2):\n"
        "    mod.forward(mx.io.DataBatch([mx.nd.ones((2, 3, 112, 112))]), is_train=False)\n"
        "    out = mod.get_outputs()[0].asnumpy()\n"
        "assert out.shape == (2, 512) and np.isfinite(out).all()\n"
        "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), (p.returncode, p.stderr[-2000:])
