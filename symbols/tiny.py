"""tiny: a four-layer network for simulations of scale, not for accuracy.

`partial-fc bench scale` runs 64 training processes on one 2-core, 24 GiB machine to exercise what breaks at
100 M classes and W = 64 (start-up, collectives, sharding, checkpoints of 64 shards, re-sharding). There
MobileFaceNet would hold ~0.06 GiB per image of batch in every process; this network holds a few MB, so the
head's memory (what the simulation measures) is not buried under the backbone's.

Shapes with embedding D: data [B,3,112,112] -> conv1 [B,8,56,56] -> conv2 [B,16,28,28] -> conv3 [B,16,14,14]
-> conv4 [B,32,7,7] -> fc1 [B,D]. Each convolution is 3x3 with stride 2, followed by BatchNorm and PReLU;
the embedding is one FullyConnected `fc1` (with bias), without the other networks' BatchNorm (see below).
"""
import mxnet as mx

from .common import batchnorm, check_args, conv, normalized_input, prelu, to_float32

# (output channels) of the stride-2 3x3 convolutions: 112 -> 56 -> 28 -> 14 -> 7.
WIDTHS = (8, 16, 16, 32)


def get_symbol(embedding_size=512, fp16=False, dropout=0.0, prelu_impl="leakyrelu"):
    """tiny: raw pixels ``data`` -> float32 ``fc1`` [B, embedding_size]; the options are the other networks'."""
    check_args(embedding_size, dropout, prelu_impl)
    x = normalized_input(fp16)
    for layer, width in enumerate(WIDTHS, start=1):
        x = conv(x, width, kernel=3, stride=2, pad=1, name=f"conv{layer}")
        x = batchnorm(x, f"conv{layer}_bn")
        x = prelu(x, width, f"conv{layer}_relu", prelu_impl)
    x = to_float32(x, fp16)
    # No BatchNorm on the embedding, unlike the other networks' head: a simulation runs 2 images per rank,
    # and a BatchNorm over two rows outputs beta +- gamma in every dimension whatever the images are, so an
    # identity's embedding would be set by the image it shares its rank's batch with, and the loss could not
    # fall past the first steps. The convolutions' BatchNorms pool over the pixels too and stay stable.
    if dropout > 0:
        x = mx.sym.Dropout(x, p=dropout, name="dropout")
    return mx.sym.FullyConnected(x, num_hidden=embedding_size, flatten=True, name="fc1")
