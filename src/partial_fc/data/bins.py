"""Verification `.bin` files (lfw.bin, cfp_fp.bin, agedb_30.bin style): reading them safely and decoding.

A `.bin` is a pickle of (list of encoded images, list of bools): images 2i and 2i+1 form pair i, and the
bool says whether they show the same identity. Loading never executes code from the file: the unpickler
admits only the builtin containers and bytes the format needs and refuses anything else (a pickle can
otherwise call any importable function).
"""
from __future__ import annotations

import io
import pickle

import numpy as np

from ..errors import UserError


class BinError(UserError, ValueError):
    """A verification .bin that is missing or not in the expected format."""


class _RestrictedUnpickler(pickle.Unpickler):
    # The format is lists/tuples of bytes and bools; numpy arrays of bools appear in some published sets.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the .bin format")


def load_pairs(path: str) -> tuple[list[bytes], np.ndarray]:
    """(encoded images [2P], issame bool [P]) from a .bin, without executing anything from the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BinError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise BinError(f"{path}: not a verification .bin: {e}") from None
    except Exception as e:  # truncated or garbage bytes raise many kinds of errors inside pickle
        raise BinError(f"{path}: not a verification .bin ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise BinError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise BinError(f"{path}: the image list must hold encoded image bytes")
    issame = np.asarray(issame)
    if issame.ndim != 1 or issame.dtype != np.bool_:
        raise BinError(f"{path}: the issame list must hold booleans, got {issame.dtype}")
    if len(images) != 2 * len(issame) or len(issame) == 0:
        raise BinError(f"{path}: {len(images)} images for {len(issame)} pairs (need exactly two per pair)")
    return list(images), issame


def decode(images: list[bytes], path: str = "", size=(112, 112), first: int = 0) -> np.ndarray:
    """Encoded images -> float32 [n, 3, H, W] RGB 0..255 (the network normalises inside its graph).
    `first`: the index of images[0] in its set, for the error message."""
    import cv2

    out = np.empty((len(images), 3) + tuple(size), dtype=np.float32)
    for i, b in enumerate(images):
        img = cv2.imdecode(np.frombuffer(b, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise BinError(f"{path}: image {first + i} cannot be decoded")
        if img.shape[:2] != tuple(size):
            img = cv2.resize(img, (size[1], size[0]))
        out[i] = img[:, :, ::-1].transpose(2, 0, 1)
    return out
