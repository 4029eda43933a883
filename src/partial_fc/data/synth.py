"""A small, learnable synthetic face dataset: train.rec/train.idx/property plus verification `.bin` sets.

    partial-fc synth --output DIR [--identities N] [--images-per-identity K] [--pairs P] [--seed S]

Each identity is a random parameter vector (skin tone and texture, face and hair shape and colour, eye
position, size and colour, brows, nose, mouth, beard, glasses) rendered as a face-like picture. Every image
puts it on a random background (flat, gradient or blotches: what defeats raw-pixel matching) and adds
nuisances scaled by one strength: expression, rotation/scale/shift, directional light, colour and
contrast jitter, blur, noise, and JPEG. The verification sets use held-out identities (never in
train.rec), half same-identity and half different-identity pairs, in the reference `.bin` format: pickle
(protocol 4) of (list of encoded image bytes, list of bool), two images per pair. `synth_hard.bin` has
HARD_FACTOR times the nuisance strength and random occluding bars.

Calibration of the defaults (500 identities x 24 images, nuisance 0.3), measured on a 2-core CPU: cosine
similarity of raw pixels (mean-subtracted, L2-normalised) reaches about 0.70 verification accuracy on
synth_val and 0.67 on synth_hard, while a MobileFaceNet-like network trained with ArcFace (s=64, m=0.5)
from scratch on 12,800 images reaches about 0.9 on synth_val: the task is learnable in minutes and not
solvable from pixels. Stronger nuisances make it harder for both (nuisance 1.0: raw pixels 0.66, the same
network 0.78).

Every image is a pure function of (seed, split, identity, image number), so the same arguments write
byte-identical files. Files appear atomically (temporary name, then os.replace).
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import cv2
import numpy as np
from tqdm import tqdm

from .. import atomic
from ..args import positive_int
from .records import FaceRecWriter

SIZE = 112
DEFAULT_IDENTITIES = 500
DEFAULT_IMAGES_PER_IDENTITY = 24
DEFAULT_PAIRS = 2000
DEFAULT_NUISANCE = 0.3
HARD_FACTOR = 2.5          # synth_hard's nuisance strength relative to synth_val's (plus occlusions)
BIN_IMAGES_PER_IDENTITY = 6
JPEG_QUALITY = 90

_TRAIN, _VAL, _HARD = 0, 1, 2
_SPLITS = {"train": _TRAIN, "synth_val": _VAL, "synth_hard": _HARD}

# Palettes (RGB). Skin tones are interpolated between the first and last entry.
_SKIN = np.array([[244, 208, 184], [225, 180, 150], [198, 145, 110], [160, 108, 75], [110, 72, 50],
                  [75, 50, 38]], np.float32)
_HAIR = np.array([[20, 18, 18], [60, 40, 28], [110, 75, 45], [190, 150, 90], [150, 60, 30], [150, 150, 150],
                  [230, 220, 200]], np.float32)
_IRIS = np.array([[60, 40, 25], [110, 75, 40], [70, 110, 160], [80, 130, 80], [110, 110, 120]], np.float32)

_SHIFT = 4                 # cv2 drawing: coordinates carry 4 fractional bits
_ONE = 1 << _SHIFT


def _pt(x, y):
    return int(round(x * _ONE)), int(round(y * _ONE))


def _ax(a, b):
    return int(round(max(a, 0.3) * _ONE)), int(round(max(b, 0.3) * _ONE))


def _bgr(rgb):
    return float(rgb[2]), float(rgb[1]), float(rgb[0])


def _ellipse(img, mask, c, axes, angle, color, start=0, end=360, thickness=-1):
    cv2.ellipse(img, _pt(*c), _ax(*axes), angle, start, end, _bgr(color), thickness, cv2.LINE_AA, _SHIFT)
    if mask is not None:
        cv2.ellipse(mask, _pt(*c), _ax(*axes), angle, start, end, 255, thickness, cv2.LINE_AA, _SHIFT)


def identity_params(seed: int, split: int, identity: int) -> dict:
    """The random parameters of one identity: a pure function of (seed, split, identity)."""
    r = np.random.default_rng([seed, 1, split, identity])
    u = r.uniform
    tone = u(0, len(_SKIN) - 1)
    lo = int(tone)
    skin = _SKIN[lo] + (tone - lo) * (_SKIN[min(lo + 1, len(_SKIN) - 1)] - _SKIN[lo]) + r.normal(0, 8, 3)
    hair = _HAIR[r.integers(len(_HAIR))] + r.normal(0, 12, 3)
    return {
        "skin": np.clip(skin, 0, 255),
        "hair": np.clip(hair, 0, 255),
        "hair_style": int(r.integers(4)),            # short, long, bald, fringe
        "hairline": u(30, 42),
        "face_ax": u(29, 38), "face_ay": u(38, 47), "face_cy": u(58, 64),
        "eye_dx": u(12, 19), "eye_y": u(48, 56), "eye_rx": u(4.5, 7.5), "eye_ry": u(2.2, 3.8),
        "eye_tilt": u(-12, 12), "iris": np.clip(_IRIS[r.integers(len(_IRIS))] + r.normal(0, 10, 3), 0, 255),
        "iris_r": u(1.8, 3.2),
        "brow_dy": u(5, 10), "brow_len": u(6, 11), "brow_thick": u(1.0, 3.5), "brow_tilt": u(-14, 14),
        "nose_len": u(12, 21), "nose_w": u(3, 7),
        "mouth_y": u(76, 88), "mouth_w": u(7, 14), "lip_h": u(1.0, 3.2),
        "lip": np.clip(skin * np.array([1.0, 0.62, 0.62]) + r.normal(0, 10, 3), 0, 255),
        "smile": u(-2.5, 3.5),
        "ear_ry": u(6, 11),
        "beard": r.random() < 0.2, "moustache": r.random() < 0.2, "glasses": r.random() < 0.15,
        "moles": [(u(-0.7, 0.7), u(-0.6, 0.7), u(0.8, 1.8)) for _ in range(int(r.integers(0, 4)))],
        # A low-frequency texture (mostly luminance) over the face layer.
        "texture": (r.normal(0, 0.09, (4, 4, 1)) + r.normal(0, 0.03, (4, 4, 3))).astype(np.float32),
    }


def _draw_face(p: dict, r: np.random.Generator, nuisance: float):
    """The face layer (BGR uint8 [112,112,3]) and its coverage mask (uint8 [112,112]).
    `r` perturbs the expression and feature positions by the nuisance strength."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    j = lambda s: r.normal(0, s * nuisance)  # noqa: E731  a per-image jitter
    cx, cy, ax, ay = 56.0, p["face_cy"], p["face_ax"], p["face_ay"]
    skin, hair = p["skin"], p["hair"]
    top = cy - ay

    if p["hair_style"] == 1:  # long hair falls behind the face down to the jaw
        _ellipse(img, mask, (cx, cy - 2), (ax + 7, ay + 6), 0, hair)
    _ellipse(img, mask, (cx, cy + ay * 0.8), (ax * 0.45, 18), 0, skin * 0.85)              # neck
    for side in (-1, 1):                                                                   # ears
        _ellipse(img, mask, (cx + side * ax * 0.98, p["eye_y"] + 4), (4.5, p["ear_ry"]), 0, skin * 0.93)
    _ellipse(img, mask, (cx, cy), (ax, ay), 0, skin)                                       # face
    if p["hair_style"] != 2:                                                               # hair cap
        hl = p["hairline"] + j(0.5)
        _ellipse(img, mask, (cx, hl), (ax + 2.5, hl - top + 5), 0, hair, 180, 360)
        if p["hair_style"] == 3:  # a fringe falling to one side
            _ellipse(img, mask, (cx - 6, hl), (ax * 0.8, 7), -12, hair, 0, 180)
    if p["beard"]:
        _ellipse(img, None, (cx, cy + 4), (ax * 0.95, ay * 0.97), 0, hair * 0.9 + skin * 0.1, 0, 180)

    tex = cv2.resize(p["texture"], (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    if tex.ndim == 2:
        tex = tex[:, :, None]
    img = np.clip(img * (1.0 + tex[:, :, ::-1]), 0, 255).astype(np.uint8)

    for mx_, my_, mr in p["moles"]:
        _ellipse(img, None, (cx + mx_ * ax, cy + my_ * ay * 0.6), (mr, mr), 0, skin * 0.45)

    opening = float(np.clip(1 - abs(j(0.25)), 0.15, 1))
    brow_raise = j(0.8)
    for side in (-1, 1):
        ex, ey = cx + side * (p["eye_dx"] + j(0.4)), p["eye_y"] + j(0.4)
        tilt = side * p["eye_tilt"]
        _ellipse(img, None, (ex, ey), (p["eye_rx"] + 1.2, p["eye_ry"] * opening + 1.2), tilt, skin * 0.7)
        _ellipse(img, None, (ex, ey), (p["eye_rx"], p["eye_ry"] * opening), tilt, (235, 235, 230))
        ir = min(p["iris_r"], p["eye_ry"] * opening + 0.3)
        _ellipse(img, None, (ex + j(0.8), ey), (ir, ir), 0, p["iris"])
        _ellipse(img, None, (ex, ey), (ir * 0.4, ir * 0.4), 0, (15, 15, 15))
        by = ey - p["brow_dy"] - brow_raise
        _ellipse(img, None, (ex + side * 1.5, by + 3), (p["brow_len"], 3), side * p["brow_tilt"],
                 hair * 0.8, 200, 340, max(1, int(round(p["brow_thick"]))))
        if p["glasses"]:
            _ellipse(img, None, (ex, ey), (p["eye_rx"] + 4.5, p["eye_ry"] + 4.5), 0, (30, 30, 30), thickness=1)
    if p["glasses"]:
        cv2.line(img, _pt(cx - p["eye_dx"] + p["eye_rx"] + 4.5, p["eye_y"]),
                 _pt(cx + p["eye_dx"] - p["eye_rx"] - 4.5, p["eye_y"]), (30, 30, 30), 1, cv2.LINE_AA, _SHIFT)

    ny = p["eye_y"] + p["nose_len"]                                                       # nose
    cv2.line(img, _pt(cx + 1, p["eye_y"] + 2), _pt(cx + 2, ny - 1), _bgr(skin * 0.8), 1, cv2.LINE_AA, _SHIFT)
    _ellipse(img, None, (cx, ny), (p["nose_w"], 3), 0, skin * 0.88)
    for side in (-1, 1):
        _ellipse(img, None, (cx + side * p["nose_w"] * 0.55, ny + 1), (1.6, 1.1), 0, skin * 0.45)

    my, mw = p["mouth_y"] + j(0.5), p["mouth_w"] * (1 + j(0.05))                          # mouth
    smile = p["smile"] + j(1.2)
    if p["moustache"]:
        _ellipse(img, None, (cx, my - 4), (mw * 0.9, 2.5), 0, hair * 0.9)
    _ellipse(img, None, (cx, my - smile * 0.5), (mw, abs(smile) + p["lip_h"]), 0, p["lip"],
             0 if smile >= 0 else 180, 180 if smile >= 0 else 360, max(1, int(p["lip_h"])))
    open_mouth = abs(j(1.0))
    if open_mouth > 0.8:
        _ellipse(img, None, (cx, my), (mw * 0.6, min(open_mouth, 4)), 0, (60, 20, 25))
    return img, mask


_GRID = (np.arange(SIZE, dtype=np.float32) - (SIZE - 1) / 2) / (SIZE / 2)


def _ramp(angle: float) -> np.ndarray:
    """float32 [112,112]: a linear ramp across the image in direction `angle`, about -1 .. 1."""
    return np.float32(math.cos(angle)) * _GRID[None, :] + np.float32(math.sin(angle)) * _GRID[:, None]


def _background(r: np.random.Generator) -> np.ndarray:
    """A random background: flat, a two-colour gradient, or low-frequency noise (BGR float32)."""
    kind = r.integers(3)
    c1, c2 = r.uniform(0, 255, 3), r.uniform(0, 255, 3)
    if kind == 0:
        return np.broadcast_to(c1.astype(np.float32), (SIZE, SIZE, 3)).copy()
    if kind == 1:
        t = _ramp(r.uniform(0, 2 * math.pi))
        t = ((t - t.min()) / (t.max() - t.min() + 1e-6))[:, :, None]
        return (c1 * (1 - t) + c2 * t).astype(np.float32)
    field = r.uniform(0, 255, (3, 3, 3)).astype(np.float32)
    return cv2.resize(field, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


def render(p: dict, r: np.random.Generator, nuisance: float, occlude: float = 0.0) -> np.ndarray:
    """One image (BGR uint8 [112,112,3]) of identity `p`, nuisances drawn from `r` at strength `nuisance`;
    `occlude` is the probability of a random occluding bar."""
    face, mask = _draw_face(p, r, nuisance)
    angle = r.normal(0, 6 * nuisance)
    scale = 1 + np.clip(r.normal(0, 0.05 * nuisance), -0.15, 0.15)
    shift = np.clip(r.normal(0, 3.0 * nuisance, 2), -10, 10)
    m = cv2.getRotationMatrix2D((56.0, 60.0), angle, scale)
    m[:, 2] += shift
    face = cv2.warpAffine(face, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(mask, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = (alpha.astype(np.float32) * (1 / 255))[:, :, None]
    img = face.astype(np.float32) * alpha + _background(r) * (1 - alpha)

    # Directional light, then global contrast / brightness / per-channel colour.
    ramp = _ramp(r.uniform(0, 2 * math.pi))
    img *= (1 + np.float32(r.uniform(-0.15, 0.15) * nuisance) * ramp)[:, :, None]
    mean = img.mean()
    contrast = 1 + np.clip(r.normal(0, 0.08 * nuisance), -0.4, 0.4)
    gain = 1 + np.clip(r.normal(0, 0.03 * nuisance, 3), -0.2, 0.2)
    img = (img - mean) * np.float32(contrast) + np.float32(mean + r.normal(0, 8 * nuisance))
    img *= gain.astype(np.float32)
    if occlude and r.random() < occlude:
        y = r.uniform(10, 100)
        color = r.uniform(0, 255, 3)
        cv2.rectangle(img, _pt(r.uniform(-20, 40), y), _pt(r.uniform(70, 130), y + r.uniform(8, 18)),
                      tuple(float(c) for c in color), -1, cv2.LINE_AA, _SHIFT)
    sigma = r.uniform(0, 1.0 * nuisance)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += r.standard_normal(img.shape, dtype=np.float32) * np.float32(r.uniform(1, 1 + 5 * nuisance))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _encode(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def image(seed: int, split: int, identity: int, number: int, nuisance: float, params: dict | None = None,
          occlude: float = 0.0) -> np.ndarray:
    """Image `number` of an identity, BGR uint8 [112,112,3]; a pure function of its arguments."""
    p = params if params is not None else identity_params(seed, split, identity)
    return render(p, np.random.default_rng([seed, 2, split, identity, number]), nuisance, occlude)


def _identity_images(seed, split, numbers, nuisance, occlude, identity) -> list[bytes]:
    """JPEG bytes of the given image numbers of one identity."""
    p = identity_params(seed, split, identity)
    return [_encode(image(seed, split, identity, k, nuisance, p, occlude)) for k in numbers]


def make_pairs(seed: int, split: int, identities: int, images_per_identity: int, pairs: int) -> list:
    """`pairs` pairs ((identity, number), (identity, number), same) of a held-out split: the first half
    same-identity (two different images), the rest different identities; shuffled."""
    r = np.random.default_rng([seed, 3, split])
    out = []
    for n in range(pairs):
        if n < (pairs + 1) // 2:
            i = int(r.integers(identities))
            a, b = r.choice(images_per_identity, 2, replace=False)
            out.append(((i, int(a)), (i, int(b)), True))
        else:
            i, k = r.choice(identities, 2, replace=False)
            out.append(((int(i), int(r.integers(images_per_identity))),
                        (int(k), int(r.integers(images_per_identity))), False))
    return [out[i] for i in r.permutation(pairs)]


def write_dataset(output_dir: str, identities: int = DEFAULT_IDENTITIES,
                  images_per_identity: int = DEFAULT_IMAGES_PER_IDENTITY, val_pairs: int = DEFAULT_PAIRS,
                  seed: int = 0, nuisance: float = DEFAULT_NUISANCE, progress=True,
                  workers: int = min(2, os.cpu_count() or 1)) -> dict:
    """Write train.rec/train.idx/property (insightface layout) and synth_val.bin / synth_hard.bin into
    `output_dir`. Returns a summary: counts, sizes in bytes, seconds, and the held-out identity counts."""
    if identities < 2 or images_per_identity < 1 or val_pairs < 2 or seed < 0 or nuisance < 0:
        raise ValueError("need identities >= 2, images_per_identity >= 1, val_pairs >= 2, seed >= 0, "
                         "nuisance >= 0")
    stream = (sys.stderr if progress is True else progress) or None
    os.makedirs(output_dir, exist_ok=True)
    t0 = time.time()
    held_out = max(2, val_pairs // 4)  # identities per verification set: each in ~2 same-identity pairs
    sets = {"synth_val": (_VAL, nuisance, 0.0), "synth_hard": (_HARD, nuisance * HARD_FACTOR, 0.25)}
    total = identities * images_per_identity + len(sets) * held_out * BIN_IMAGES_PER_IDENTITY

    rec, idx = os.path.join(output_dir, "train.rec"), os.path.join(output_dir, "train.idx")
    # OpenCV releases the GIL while drawing, warping and encoding, so a few threads help; map() keeps the
    # order, and each image has its own generator, so the files do not depend on the thread count.
    # The insightface layout, byte for byte as its dataset tools write it (records.FaceRecWriter): images on
    # keys 1.., then one identity record per class, then the header on key 0.
    with ThreadPoolExecutor(max(1, workers)) as pool, FaceRecWriter(rec, idx) as w, \
            tqdm(total=total, desc="synth", unit="image", file=stream,
                 disable=not (stream and stream.isatty())) as bar:
        n_images = identities * images_per_identity
        render_train = partial(_identity_images, seed, _TRAIN, range(images_per_identity), nuisance, 0.0)
        for i, encoded in enumerate(pool.map(render_train, range(identities))):
            w.add(i, encoded)
            bar.update(images_per_identity)

        summary = {"output": output_dir, "identities": identities, "images": n_images, "sets": {}}
        for name, (split, strength, occlude) in sets.items():
            render_set = partial(_identity_images, seed, split, range(BIN_IMAGES_PER_IDENTITY), strength, occlude)
            encoded = {}
            for i, images in enumerate(pool.map(render_set, range(held_out))):
                encoded.update({(i, k): data for k, data in enumerate(images)})
                bar.update(BIN_IMAGES_PER_IDENTITY)
            bins, issame = [], []
            for a, b, same in make_pairs(seed, split, held_out, BIN_IMAGES_PER_IDENTITY, val_pairs):
                bins += [encoded[a], encoded[b]]
                issame.append(bool(same))
            path = os.path.join(output_dir, f"{name}.bin")
            atomic.write_bytes(path, pickle.dumps((bins, issame), protocol=4))
            summary["sets"][name] = {"path": path, "pairs": val_pairs, "identities": held_out,
                                     "nuisance": strength, "occlusion": occlude, "bytes": os.path.getsize(path)}
    atomic.write_bytes(os.path.join(output_dir, "property"), f"{identities},{SIZE},{SIZE}\n".encode())
    summary["rec_bytes"] = os.path.getsize(rec)
    summary["seconds"] = time.time() - t0
    return summary


DESCRIPTION = ("Write train.rec/train.idx/property (insightface layout) of synthetic face-like identities plus "
               "verification .bin pair sets of held-out identities: the built-in example for the trainer.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="folder to write train.rec/.idx/property and the .bin sets to")
    p.add_argument("--identities", type=positive_int, default=DEFAULT_IDENTITIES,
                   help="training identities (default: %(default)s)")
    p.add_argument("--images-per-identity", type=positive_int, default=DEFAULT_IMAGES_PER_IDENTITY,
                   help="training images per identity (default: %(default)s)")
    p.add_argument("--pairs", type=positive_int, default=DEFAULT_PAIRS,
                   help="pairs per verification set, half same identity (default: %(default)s)")
    p.add_argument("--nuisance", type=float, default=DEFAULT_NUISANCE,
                   help=f"strength of the per-image nuisances (pose, light, background, blur, noise): 0 = only "
                        f"background and noise vary, 1 = strong; synth_hard uses {HARD_FACTOR}x "
                        f"(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of identities, images and pairs (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    """`partial-fc synth`: one line on stderr and status 2 on values write_dataset refuses."""
    try:
        s = write_dataset(args.output, args.identities, args.images_per_identity, args.pairs, args.seed,
                          args.nuisance, progress=not args.quiet)
    except ValueError as e:
        print(f"partial-fc synth: error: {e}", file=sys.stderr)
        return 2
    sets = ", ".join(f"{n}.bin ({v['pairs']} pairs)" for n, v in s["sets"].items())
    print(f"wrote {s['images']} images of {s['identities']} identities ({s['rec_bytes'] / 1e6:.1f} MB) and "
          f"{sets} to {s['output']} in {s['seconds']:.1f} s")
    return 0
