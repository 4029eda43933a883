"""Backbone networks: one family per file, each with get_symbol(**kwargs), chosen here by name.

    import symbols
    sym = symbols.get_symbol("r100", embedding_size=512, fp16=False)

Networks: iresnet r18 ... r200 (iresnet.py), MobileFaceNet mbf (mbf.py), MNasNet at width 0.5 mnas05 (mnas.py),
and tiny (tiny.py), a four-layer network for simulations of scale (`partial-fc bench scale`).
Every network maps ``data`` (float32 [B,3,112,112], raw RGB pixels 0..255) to the float32 embedding ``fc1``
[B, embedding_size]; see symbols/common.py for the whole contract. Builders never read a global config.
"""
from functools import partial

from . import iresnet, mbf, mnas, tiny
from .common import num_parameters

_BUILDERS = {
    "r18": partial(iresnet.get_symbol, num_layers=18),
    "r34": partial(iresnet.get_symbol, num_layers=34),
    "r50": partial(iresnet.get_symbol, num_layers=50),
    "r100": partial(iresnet.get_symbol, num_layers=100),
    "r200": partial(iresnet.get_symbol, num_layers=200),
    "mbf": mbf.get_symbol,
    "mnas05": partial(mnas.get_symbol, width=0.5),  # MNasNet width 0.5: 1,668,600 parameters at D = 512
    "tiny": tiny.get_symbol,  # four convolutions, for simulations of scale (bench scale), not for accuracy
}
NETWORKS = tuple(_BUILDERS)

__all__ = ["NETWORKS", "get_symbol", "num_parameters"]


def get_symbol(name, embedding_size=512, fp16=False, **kwargs):
    """The network ``name`` (one of NETWORKS) as an mx.sym.Symbol whose single output is ``fc1``.

    ``fp16`` runs the trunk in float16 (the output stays float32); other keyword arguments go to the
    family's builder. All accept ``dropout`` (the head's dropout rate, default 0) and ``prelu_impl``
    ("leakyrelu", MXNet's PReLU operator, the default; or "depthwise", the same function and parameters
    computed in a way whose backward is several times faster on CPU; see common.prelu).
    """
    try:
        builder = _BUILDERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(NETWORKS)}") from None
    return builder(embedding_size=embedding_size, fp16=fp16, **kwargs)
