"""MNasNet at a width multiplier (mnas05: width 0.5), the mobile network of arcface_mxnet's `fmnasnet`.

Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile", CVPR 2019 (arXiv 1807.11626),
the searched B1 layout: a 3x3 stem, a separable 3x3 block, then six stacks of inverted residuals with 3x3 or
5x5 depthwise kernels, and a 1x1 convolution to 1280 channels. Channel counts (except the last 1280) are
scaled by the width and rounded to a multiple of 8, never more than 10 % below the scaled value.

Adapted to 112x112 faces as mbf is: the fifth stack keeps stride 1 (ImageNet's stride 2 there would end on a
4x4 map), so the last map is 7x7 (total stride 16); PReLU instead of ReLU; and global average pooling
replaced by the global depthwise convolution (GDC) and the embedding head of common.embedding.

Shapes at width 0.5 with embedding D: data [B,3,112,112] -> conv1 [B,16,56,56] -> sep [B,8,56,56]
-> stage1 [B,16,28,28] -> stage2 [B,24,14,14] -> stage3 [B,40,7,7] -> stage4 [B,48,7,7] -> stage5 [B,96,7,7]
-> stage6 [B,160,7,7] -> conv_last [B,1280,7,7] -> gdc [B,1280,1,1] -> fc1 [B,D].
"""
import mxnet as mx

from .common import batchnorm, check_args, conv, embedding, normalized_input, prelu, to_float32

# (expansion t, output channels c at width 1, units n, stride of the first unit s, depthwise kernel k).
STACKS = (
    (3, 24, 3, 2, 3),
    (3, 40, 3, 2, 5),
    (6, 80, 3, 2, 5),
    (6, 96, 2, 1, 3),
    (6, 192, 4, 1, 5),   # stride 2 on ImageNet; 1 here so that 112x112 ends on 7x7
    (6, 320, 1, 1, 3),
)
STEM_WIDTH, SEP_WIDTH, LAST_WIDTH = 32, 16, 1280
FINAL_MAP = 7


def scaled_width(channels, width, divisor=8):
    """channels * width rounded to the nearest multiple of `divisor` (at least `divisor`), one step up when
    rounding would lose more than 10 % of it."""
    value = channels * width
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded if rounded >= 0.9 * value else rounded + divisor


def _conv_bn(x, num_filter, kernel, stride, name, num_group=1, act=None):
    x = conv(x, num_filter, kernel, stride, kernel // 2, name + "_conv", num_group=num_group)
    x = batchnorm(x, name + "_bn")
    return prelu(x, num_filter, name + "_relu", act) if act else x


def inverted_residual(x, in_channels, out_channels, expansion, stride, kernel, name, prelu_impl):
    """1x1 expand -> kxk depthwise(stride) -> linear 1x1 project (+ x when the shapes match)."""
    hidden = in_channels * expansion
    y = _conv_bn(x, hidden, 1, 1, name + "_expand", act=prelu_impl)
    y = _conv_bn(y, hidden, kernel, stride, name + "_dw", num_group=hidden, act=prelu_impl)
    y = _conv_bn(y, out_channels, 1, 1, name + "_project")
    if stride == 1 and in_channels == out_channels:
        y = mx.sym.elemwise_add(y, x, name=name + "_plus")
    return y


def get_symbol(embedding_size=512, fp16=False, dropout=0.0, prelu_impl="leakyrelu", width=0.5):
    """MNasNet at `width`: raw pixels ``data`` -> float32 ``fc1`` [B, embedding_size]."""
    check_args(embedding_size, dropout, prelu_impl)
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")

    x = normalized_input(fp16)
    stem = scaled_width(STEM_WIDTH, width)
    x = _conv_bn(x, stem, 3, 2, "conv1", act=prelu_impl)
    x = _conv_bn(x, stem, 3, 1, "sep_dw", num_group=stem, act=prelu_impl)
    channels = scaled_width(SEP_WIDTH, width)
    x = _conv_bn(x, channels, 1, 1, "sep_pw")
    for stage, (expansion, base, units, stride, kernel) in enumerate(STACKS, start=1):
        out = scaled_width(base, width)
        for unit in range(1, units + 1):
            x = inverted_residual(x, channels, out, expansion, stride if unit == 1 else 1, kernel,
                                  f"stage{stage}_unit{unit}", prelu_impl)
            channels = out
    x = _conv_bn(x, LAST_WIDTH, 1, 1, "conv_last", act=prelu_impl)
    # GDC: a linear depthwise convolution whose kernel is the whole 7x7 map -> [B, 1280, 1, 1].
    x = conv(x, LAST_WIDTH, FINAL_MAP, 1, 0, "gdc_conv", num_group=LAST_WIDTH)
    x = batchnorm(x, "gdc_bn")

    x = to_float32(x, fp16)
    return embedding(x, embedding_size, dropout)
