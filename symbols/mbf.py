"""MobileFaceNet: a MobileNetV2-style network for face verification on small devices.

Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile Devices",
CCBR 2018 (arXiv 1804.07573), Table 1: inverted-residual bottlenecks with PReLU, and a global depthwise
convolution (GDC) instead of global average pooling, so each position of the 7x7 map gets its own weight.
The paper's last linear 1x1 convolution is the FullyConnected ``pre_fc1`` + BatchNorm ``fc1`` here.

Shapes with embedding D: data [B,3,112,112] -> conv1 [B,64,56,56] -> stage1 [B,64,28,28]
-> stage2/3 [B,128,14,14] -> stage4/5 [B,128,7,7] -> conv6 [B,512,7,7] -> gdc [B,512,1,1] -> fc1 [B,D].
"""
from .common import (batchnorm, check_args, conv, embedding, normalized_input, prelu,
                     to_float32)
import mxnet as mx

# (expansion t, output channels c, units n, stride of the first unit s), as in the paper's Table 1.
BOTTLENECKS = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
STEM_WIDTH = 64
LAST_WIDTH = 512
FINAL_MAP = 7  # 112 / 16: the GDC kernel covers the whole map, so the input must be 112x112


def conv_bn_prelu(x, num_filter, kernel, stride, pad, name, prelu_impl, num_group=1):
    """conv -> BN -> PReLU, the non-linear block; names ``<name>_conv``, ``<name>_bn``, ``<name>_relu``."""
    x = conv(x, num_filter, kernel, stride, pad, name + "_conv", num_group=num_group)
    x = batchnorm(x, name + "_bn")
    return prelu(x, num_filter, name + "_relu", prelu_impl)


def conv_bn(x, num_filter, kernel, stride, pad, name, num_group=1):
    """conv -> BN without activation, the linear block."""
    x = conv(x, num_filter, kernel, stride, pad, name + "_conv", num_group=num_group)
    return batchnorm(x, name + "_bn")


def bottleneck(x, in_channels, out_channels, expansion, stride, name, prelu_impl):
    """Inverted residual: 1x1 expand -> 3x3 depthwise(stride) -> linear 1x1 project (+ x when shapes match).

    x: [B, in_channels, H, W] -> [B, out_channels, H / stride, W / stride].
    """
    hidden = in_channels * expansion
    y = conv_bn_prelu(x, hidden, kernel=1, stride=1, pad=0, name=name + "_expand", prelu_impl=prelu_impl)
    y = conv_bn_prelu(y, hidden, kernel=3, stride=stride, pad=1, name=name + "_dw", prelu_impl=prelu_impl,
                      num_group=hidden)
    y = conv_bn(y, out_channels, kernel=1, stride=1, pad=0, name=name + "_project")
    if stride == 1 and in_channels == out_channels:
        y = mx.sym.elemwise_add(y, x, name=name + "_plus")
    return y


def get_symbol(embedding_size=512, fp16=False, dropout=0.0, prelu_impl="leakyrelu"):
    """MobileFaceNet: raw pixels ``data`` -> float32 ``fc1`` [B, embedding_size] (the paper uses 128).

    ``fp16`` runs the trunk (up to and including the GDC) in float16 and the head in float32; ``dropout`` is
    the head's dropout rate; ``prelu_impl`` picks how PReLU is computed (see common.prelu; the parameters are
    the same either way).
    """
    check_args(embedding_size, dropout, prelu_impl)

    x = normalized_input(fp16)
    x = conv_bn_prelu(x, STEM_WIDTH, kernel=3, stride=2, pad=1, name="conv1", prelu_impl=prelu_impl)
    x = conv_bn_prelu(x, STEM_WIDTH, kernel=3, stride=1, pad=1, name="conv2_dw", prelu_impl=prelu_impl,
                      num_group=STEM_WIDTH)
    channels = STEM_WIDTH
    for stage, (expansion, width, units, stride) in enumerate(BOTTLENECKS, start=1):
        for unit in range(1, units + 1):
            x = bottleneck(x, channels, width, expansion, stride=stride if unit == 1 else 1,
                           name=f"stage{stage}_unit{unit}", prelu_impl=prelu_impl)
            channels = width
    x = conv_bn_prelu(x, LAST_WIDTH, kernel=1, stride=1, pad=0, name="conv6_sep", prelu_impl=prelu_impl)
    # GDC: a linear depthwise convolution whose kernel is the whole 7x7 map -> [B, 512, 1, 1].
    x = conv_bn(x, LAST_WIDTH, kernel=FINAL_MAP, stride=1, pad=0, name="gdc", num_group=LAST_WIDTH)

    x = to_float32(x, fp16)
    return embedding(x, embedding_size, dropout)
