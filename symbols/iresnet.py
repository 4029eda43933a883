"""IResNet: the residual network of ArcFace (the "IR" unit) for 112x112 face crops.

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019 (arXiv 1801.07698),
the LResNet-IR setting: a 3x3 stride-1 stem (no max pooling, so 112x112 reaches the last stage as 7x7) and
a residual unit that normalises before its first convolution and strides in its second.

Layer names follow the insightface MXNet checkpoints (conv0, stage1_unit1_conv1, ..., pre_fc1, fc1).

Shapes with embedding D: data [B,3,112,112] -> stem [B,64,112,112] -> stage1 [B,64,56,56]
-> stage2 [B,128,28,28] -> stage3 [B,256,14,14] -> stage4 [B,512,7,7] -> fc1 [B,D].
"""
from .common import (batchnorm, check_args, conv, embedding, normalized_input, prelu,
                     to_float32)
import mxnet as mx

# Units per stage for each depth (depth counts the convolutions: 2 per unit, plus stem and head).
UNITS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64


def residual_unit(x, num_filter, stride, project, name, prelu_impl):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the shortcut.

    x: [B, C_in, H, W] -> [B, num_filter, H / stride, W / stride]. ``project`` adds a 1x1 conv + BN on the
    shortcut, needed whenever the unit changes the width or the resolution.
    """
    y = batchnorm(x, name + "_bn1")
    y = conv(y, num_filter, kernel=3, stride=1, pad=1, name=name + "_conv1")
    y = batchnorm(y, name + "_bn2")
    y = prelu(y, num_filter, name + "_relu1", prelu_impl)
    y = conv(y, num_filter, kernel=3, stride=stride, pad=1, name=name + "_conv2")
    y = batchnorm(y, name + "_bn3")
    if project:
        shortcut = conv(x, num_filter, kernel=1, stride=stride, pad=0, name=name + "_conv1sc")
        shortcut = batchnorm(shortcut, name + "_sc")
    else:
        shortcut = x
    return mx.sym.elemwise_add(y, shortcut, name=name + "_plus")


def get_symbol(num_layers=50, embedding_size=512, fp16=False, dropout=0.0, prelu_impl="leakyrelu"):
    """IResNet-``num_layers`` (18, 34, 50, 100 or 200): raw pixels ``data`` -> float32 ``fc1`` [B, embedding_size].

    ``fp16`` runs the trunk in float16 and the head in float32; ``dropout`` is the head's dropout rate;
    ``prelu_impl`` picks how PReLU is computed (see common.prelu; the parameters are the same either way).
    """
    if num_layers not in UNITS:
        raise ValueError(f"num_layers must be one of {sorted(UNITS)}, got {num_layers!r}")
    check_args(embedding_size, dropout, prelu_impl)

    x = normalized_input(fp16)
    x = conv(x, STEM_WIDTH, kernel=3, stride=1, pad=1, name="conv0")
    x = batchnorm(x, "bn0")
    x = prelu(x, STEM_WIDTH, "relu0", prelu_impl)
    for stage, (units, width) in enumerate(zip(UNITS[num_layers], STAGE_WIDTHS), start=1):
        for unit in range(1, units + 1):
            first = unit == 1  # every stage halves the resolution in its first unit
            x = residual_unit(x, width, stride=2 if first else 1, project=first,
                              name=f"stage{stage}_unit{unit}", prelu_impl=prelu_impl)

    x = to_float32(x, fp16)
    x = batchnorm(x, "bn1")
    return embedding(x, embedding_size, dropout)
