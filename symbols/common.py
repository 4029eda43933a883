"""Pieces every backbone shares: the input contract, layer helpers, the embedding head, fp16 casts.

Graph contract (the trainer, verification, IJB evaluation and ONNX export rely on it):

* input  ``data``: float32 [B, 3, 112, 112], raw RGB pixel values in 0..255. The normalisation
  (x - 127.5) * 0.0078125 is part of the graph, so every consumer feeds the same raw pixels;
* output ``fc1``: float32 [B, embedding_size], the embedding before L2 normalisation.

Every layer is named explicitly (the names are the keys of the saved ``.params``), so building a network
twice in one process gives the same graph; nothing here depends on MXNet's global name counters.

ONNX export traps avoided here (docs/design.md §2): FullyConnected always carries an explicit ``flatten``;
BatchNorm never uses ``fix_gamma=True``. One is left to the exporter: MXNet's PReLU operator (the default
``prelu_impl``) stores its slope with shape (C,), which the operator requires, and ONNX needs (C, 1, 1).
Both ``prelu_impl`` choices have the same parameters, so a checkpoint trained with either can be loaded
into a graph built with the other.
"""
import mxnet as mx
import numpy as np

PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125  # 1/128: maps 0..255 onto [-0.996, 0.996]
BN_EPS = 2e-5
BN_MOMENTUM = 0.9
PRELU_INIT_SLOPE = 0.25  # the slope MXNet's PReLU operator starts from (and He et al. 2015)
PRELU_IMPLS = ("leakyrelu", "depthwise")  # see prelu()


def normalized_input(fp16):
    """The ``data`` variable, normalised inside the graph; float16 afterwards when ``fp16``.

    Returns a symbol of shape [B, 3, 112, 112]: (data - 127.5) * 0.0078125.
    """
    data = mx.sym.Variable("data")
    # Named scalar ops (the arithmetic operators would take names from MXNet's global counters).
    x = mx.sym._internal._minus_scalar(data, scalar=PIXEL_MEAN, name="data_minus_mean")
    x = mx.sym._internal._mul_scalar(x, scalar=PIXEL_SCALE, name="data_scaled")
    if fp16:
        # `data` stays float32 (the contract); the trunk starts in float16 from here.
        x = mx.sym.Cast(x, dtype="float16", name="data_fp16")
    return x


def to_float32(x, fp16, name="trunk_fp32"):
    """Cast the trunk's output back to float32 (a no-op in float32 mode) so the head runs in float32."""
    return mx.sym.Cast(x, dtype="float32", name=name) if fp16 else x


def conv(x, num_filter, kernel, stride, pad, name, num_group=1):
    """Square convolution without bias (a BatchNorm always follows, so a bias would be redundant)."""
    return mx.sym.Convolution(
        x, num_filter=num_filter, kernel=(kernel, kernel), stride=(stride, stride), pad=(pad, pad),
        num_group=num_group, no_bias=True, name=name)


def batchnorm(x, name):
    """BatchNorm over channels with a learnable gamma (fix_gamma=True is an ONNX export trap)."""
    return mx.sym.BatchNorm(x, fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name=name)


def prelu(x, channels, name, impl="leakyrelu"):
    """Per-channel PReLU, max(x, 0) + slope * min(x, 0); the slope variable ``<name>_gamma`` has shape (C,).

    impl "leakyrelu" is MXNet's PReLU operator. It tags the slope with a Constant(0.25) initializer, which
    Module.init_params honours before its generic rule for names ending in "gamma" (1.0, an identity PReLU).
    impl "depthwise" computes the same function with the same parameter from MKLDNN operators only, as
    relu(x) + (-slope) * relu(-x), with -x and the product as 1x1 depthwise convolutions (a fixed kernel of
    -1; the negated slopes). Every step of its forward is exact (a negation, a max with 0, one product, a sum
    with 0): its outputs are bit for bit those of the earlier form relu(x) + slope * min(x, 0), so a checkpoint
    embeds exactly as before. Gradients agree to rounding, not always bit for bit: MKLDNN may sum a weight
    or BatchNorm gradient in another order for the blocked layout these operators pass on (seen in mbf's
    first two layers on face images: 6 of 184 gradients, within 7e-4 of their largest entry), and at x = 0
    exactly the gradient to x is 0 here, the slope there. On CPU, MXNet's PReLU operator (its backward in
    particular) is about 5x slower than a depthwise form for forward+backward on one core at
    [32, 64, 112, 112], most of an mbf training step there. On GPU the operator is the safer default.

    Why only MKLDNN operators: on MXNet 1.9.1's CPU build a convolution or BatchNorm writes MKLDNN's blocked
    layout, and a non-MKLDNN operator reading it (the earlier form's `relu` and `_minimum_scalar`, and their
    backwards) falls back through a default-layout copy of its input that the executor keeps from one step to
    the next, outside its memory plan. With the earlier form mbf held 0.130 GiB per image of batch (fwd + bwd,
    its plan 0.056) and r50 0.198 (plan 0.098); with this one 0.058 and 0.100 (`partial-fc bench memory`,
    docs/performance.md "Memory").
    """
    if impl == "leakyrelu":
        return mx.sym.LeakyReLU(x, act_type="prelu", name=name)
    slope = mx.sym.Variable(name + "_gamma", shape=(channels,), init=mx.init.Constant(PRELU_INIT_SLOPE))
    kernel = mx.sym.reshape(slope, shape=(channels, 1, 1, 1), name=name + "_kernel")
    positive = mx.sym.Activation(x, act_type="relu", name=name + "_pos")
    # The fixed -1 kernel takes the slope's shape and dtype (float16 in an fp16 trunk); it has no gradient.
    flip = mx.sym.BlockGrad(mx.sym.negative(mx.sym.ones_like(kernel, name=name + "_ones"), name=name + "_minus_one"),
                            name=name + "_flip")
    negated = mx.sym.Convolution(x, weight=flip, num_filter=channels, num_group=channels, kernel=(1, 1),
                                 no_bias=True, name=name + "_negated")
    magnitude = mx.sym.Activation(negated, act_type="relu", name=name + "_neg")   # max(-x, 0) = -min(x, 0)
    scaled = mx.sym.Convolution(magnitude, weight=mx.sym.negative(kernel, name=name + "_minus_kernel"),
                                num_filter=channels, num_group=channels, kernel=(1, 1), no_bias=True,
                                name=name + "_scaled")
    return mx.sym.elemwise_add(positive, scaled, name=name)


def embedding(x, embedding_size, dropout):
    """Dropout (only when ``dropout`` > 0) -> FullyConnected ``pre_fc1`` -> BatchNorm ``fc1``.

    x: float32 [B, C, H, W] or [B, C]; returns the float32 ``fc1`` symbol [B, embedding_size].
    """
    if dropout > 0:
        x = mx.sym.Dropout(x, p=dropout, name="dropout")
    # No bias: the BatchNorm right after subtracts the batch mean, which cancels any bias exactly.
    x = mx.sym.FullyConnected(x, num_hidden=embedding_size, no_bias=True, flatten=True, name="pre_fc1")
    # The reference trainers freeze this BatchNorm's gamma at 1; it is learnable here because a frozen
    # gamma is one of the ONNX export traps, and a per-channel scale before L2 normalisation is harmless.
    # MXNet 1.9.1's CPU (MKLDNN) BatchNorm segfaults in inference on some [B, C] inputs (mbf at C = 512),
    # so it runs on [B, C, 1, 1]. Its variables keep the names fc1_* and the output stays `fc1`, so
    # checkpoints and consumers of fc1_output are unchanged.
    x = mx.sym.reshape(x, shape=(0, 0, 1, 1), name="fc1_4d")
    x = mx.sym.BatchNorm(x, gamma=mx.sym.var("fc1_gamma"), beta=mx.sym.var("fc1_beta"),
                         moving_mean=mx.sym.var("fc1_moving_mean"), moving_var=mx.sym.var("fc1_moving_var"),
                         fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name="fc1_bn")
    return mx.sym.Flatten(x, name="fc1")


def check_args(embedding_size, dropout, prelu_impl):
    """Reject settings that would otherwise fail deep inside MXNet's shape inference (or be ignored)."""
    if prelu_impl not in PRELU_IMPLS:
        raise ValueError(f"prelu_impl must be one of {PRELU_IMPLS}, got {prelu_impl!r}")
    if isinstance(embedding_size, bool) or not isinstance(embedding_size, (int, np.integer)) or embedding_size < 1:
        raise ValueError(f"embedding_size must be a positive integer, got {embedding_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def num_parameters(symbol, batch_shape=(1, 3, 112, 112)):
    """Number of learnable values of ``symbol``: weights, BatchNorm gamma/beta, PReLU slopes.

    BatchNorm moving statistics are auxiliary states, not arguments, so they are not counted.
    """
    arg_shapes, _, _ = symbol.infer_shape(data=batch_shape)
    return int(sum(np.prod(shape) for name, shape in zip(symbol.list_arguments(), arg_shapes) if name != "data"))
