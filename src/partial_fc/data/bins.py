"""Verification `.bin` files (lfw.bin, cfp_fp.bin, agedb_30.bin style): reading them safely and decoding.

A `.bin` is a pickle of (list of encoded images, list of bools): images 2i and 2i+1 form pair i, and the
bool says whether they show the same identity. Each encoded image is bytes, or (as some of insightface's
tools write them, e.g. straight from cv2.imencode) a numpy uint8 array of those bytes, shape (n,) or (n, 1);
insightface's loaders decode both. Loading never executes code from the file: the unpickler admits only
the builtin containers, bytes and the numpy names that rebuild a plain array, and refuses anything else (a
pickle can otherwise call any importable function); after loading, an image that is not bytes or such a
uint8 array (another dtype, an object array, decoded pixels) is refused.
"""
from __future__ import annotations

import io
import pickle

import numpy as np

from ..errors import UserError


class BinError(UserError, ValueError):
    """A verification .bin that is missing or not in the expected format."""


class _RestrictedUnpickler(pickle.Unpickler):
    # The format is lists/tuples of bytes and bools; numpy arrays appear in published sets for issame (bool)
    # and for the images (uint8). These names only rebuild a plain ndarray from its dtype and raw data.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("_codecs", "encode"),
    }
    # numpy 2 pickles the same functions under numpy._core; numpy 1.23 has them under numpy.core.
    _RENAMED = {"numpy._core.multiarray": "numpy.core.multiarray"}

    def find_class(self, module, name):
        module = self._RENAMED.get(module, module)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the .bin format")


def _image_bytes(image, i: int, path: str) -> bytes:
    """One entry of the image list as encoded bytes: bytes, or a uint8 array of them, shape (n,) or (n, 1)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and (image.ndim == 1 or (image.ndim == 2 and image.shape[1] == 1)):
            return image.tobytes()
        raise BinError(f"{path}: image {i} is a numpy array of {image.dtype}, shape {image.shape}; the image list "
                       f"must hold encoded image bytes (bytes, or a uint8 array of shape (n,) or (n, 1))")
    raise BinError(f"{path}: image {i} is a {type(image).__name__}; the image list must hold encoded image bytes")


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
    if not isinstance(images, (list, tuple)):
        raise BinError(f"{path}: the image list must be a list of encoded images, got {type(images).__name__}")
    images = [_image_bytes(image, i, path) for i, image in enumerate(images)]
    issame = np.asarray(issame)
    if issame.ndim != 1 or issame.dtype != np.bool_:
        raise BinError(f"{path}: the issame list must hold booleans, got {issame.dtype}")
    if len(images) != 2 * len(issame) or len(issame) == 0:
        raise BinError(f"{path}: {len(images)} images for {len(issame)} pairs (need exactly two per pair)")
    return images, issame


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
