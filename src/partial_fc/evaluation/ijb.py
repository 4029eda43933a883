"""`partial-fc ijb`: 1:1 template verification on IJB-B / IJB-C, as insightface's evaluation scripts lay it out.

    partial-fc ijb MODEL IJB_DIR [--target IJBC] [--roc PNG] [--no-detector-score] [--json]

IJB_DIR holds (prefix ijbc_ or ijbb_, chosen by --target):
    meta/ijbc_face_tid_mid.txt           "img_name template_id media_id"   one line per face image
    meta/ijbc_name_5pts_score.txt        "img_name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score"   five landmarks
                                         (left eye, right eye, nose, left and right mouth corner) in the
                                         loose crop, and the detector's score
    meta/ijbc_template_pair_label.txt    "template_1 template_2 label"   label 1 = same subject
    loose_crop/img_name                  the images
Faces are matched to their landmarks by image name.

Per face: a similarity transform (rotation, uniform scale, translation; least squares) maps its five
landmarks onto the ArcFace 112x112 template, and the loose crop is warped with it. The image feature is
emb(aligned) + emb(flipped aligned), not normalised (its norm acts as a quality weight), multiplied by the
detection score unless --no-detector-score (on by default, as in insightface's IJB evaluation, so the
numbers are comparable with published ones). A template's feature is the mean over its media (a media: one
photo or one video) of the mean of that media's image features, L2-normalised; a pair's score is the
cosine of its two templates' features. TAR at FAR 1e-6 ... 1e-1 comes from one ROC over all pairs
(protocol.tar_at_far: sklearn's roc_curve, duplicate FARs resolved, linear interpolation); a FAR
below 1 / #negative pairs cannot be measured and is reported as n/a.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from functools import partial

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from .protocol import tar_at_far

SIZE = 112
# The five landmarks of an aligned 112x112 ArcFace crop (x, y): left eye, right eye, nose tip, left and
# right mouth corner (the template insightface aligns its training data to).
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
TARGETS = ("IJBB", "IJBC")


class IJBError(UserError, ValueError):
    """An IJB layout that is missing files or has malformed lines."""


@dataclass
class Layout:
    names: list            # [n] image file names in loose_crop/, in the order of face_tid_mid
    templates: np.ndarray  # int64 [n]
    medias: np.ndarray     # int64 [n]
    landmarks: np.ndarray  # float32 [n, 5, 2]
    scores: np.ndarray     # float32 [n] detection scores
    pairs: np.ndarray      # int64 [P, 2] template ids
    labels: np.ndarray     # bool [P]
    crop_dir: str


def meta_paths(root: str, target: str) -> dict:
    prefix = target.lower() + "_"
    meta = os.path.join(root, "meta")
    return {"faces": os.path.join(meta, prefix + "face_tid_mid.txt"),
            "landmarks": os.path.join(meta, prefix + "name_5pts_score.txt"),
            "pairs": os.path.join(meta, prefix + "template_pair_label.txt"),
            "crops": os.path.join(root, "loose_crop")}


def _lines(path: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise IJBError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise IJBError(f"{path}: not a text file") from None
    out = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not out:
        raise IJBError(f"{path}: empty")
    return out


def _bad(path, n, expected, fields):
    shown = " ".join(fields)
    return IJBError(f"{path}:{n}: expected '{expected}', got '{shown[:80]}'")


def _read_faces(path):
    names, templates, medias = [], [], []
    for n, f in _lines(path):
        if len(f) != 3 or not (_is_int(f[1]) and _is_int(f[2])):
            raise _bad(path, n, "img_name template_id media_id", f)
        names.append(f[0])
        templates.append(int(f[1]))
        medias.append(int(f[2]))
    return names, np.array(templates, np.int64), np.array(medias, np.int64)


def _read_landmarks(path):
    table = {}
    for n, f in _lines(path):
        try:
            values = [float(x) for x in f[1:]]
        except ValueError:
            values = None
        if len(f) != 12 or values is None or not all(math.isfinite(v) for v in values):
            raise _bad(path, n, "img_name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score", f)
        if f[0] in table:
            raise IJBError(f"{path}:{n}: {f[0]} appears a second time")
        table[f[0]] = (np.array(values[:10], np.float32).reshape(5, 2), values[10])
    return table


def _read_pairs(path):
    if not os.path.isfile(path):
        _lines(path)  # raises the one-line error for a missing file
    try:  # numpy's C reader: IJB-C has 15.7 M pairs, which a Python loop over split lines reads slowly
        rows = np.loadtxt(path, dtype=np.int64, ndmin=2)
        if rows.shape[1] == 3 and len(rows) and np.isin(rows[:, 2], (0, 1)).all():
            return rows[:, :2].copy(), rows[:, 2].astype(bool)
    except (ValueError, UnicodeDecodeError):
        pass
    for n, f in _lines(path):  # find and name the offending line
        if len(f) != 3 or not all(_is_int(x) for x in f) or f[2] not in ("0", "1"):
            raise _bad(path, n, "template_1 template_2 label(0|1)", f)
    raise IJBError(f"{path}: cannot be read as template pairs")


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def read_layout(root: str, target: str = "IJBC") -> Layout:
    """Read and cross-check the meta files of an IJB folder (images are read later, one batch at a time)."""
    if target.upper() not in TARGETS:
        raise IJBError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    paths = meta_paths(root, target)
    if not os.path.isdir(paths["crops"]):
        raise IJBError(f"{paths['crops']}: no such folder (the IJB layout has meta/ and loose_crop/)")
    names, templates, medias = _read_faces(paths["faces"])
    marks = _read_landmarks(paths["landmarks"])
    missing = [n for n in names if n not in marks]
    if missing:
        raise IJBError(f"{paths['landmarks']}: no landmarks for {len(missing)} face(s) of "
                       f"{os.path.basename(paths['faces'])}, e.g. {missing[0]}")
    landmarks = np.stack([marks[n][0] for n in names])
    scores = np.array([marks[n][1] for n in names], np.float32)
    pairs, labels = _read_pairs(paths["pairs"])
    if labels.all() or not labels.any():
        raise IJBError(f"{paths['pairs']}: needs both same (1) and different (0) pairs for a ROC")
    unknown = np.setdiff1d(pairs.ravel(), templates)
    if unknown.size:
        raise IJBError(f"{paths['pairs']}: pairs name {unknown.size} template(s) with no face in "
                       f"{os.path.basename(paths['faces'])}, e.g. {unknown[0]}")
    absent = [n for n in names if not os.path.isfile(os.path.join(paths["crops"], n))]
    if absent:  # before hours of embedding, not in the middle of them
        raise IJBError(f"{paths['crops']}: {len(absent)} image(s) of {os.path.basename(paths['faces'])} missing, "
                       f"e.g. {absent[0]}")
    return Layout(names, templates, medias, landmarks, scores, pairs, labels, paths["crops"])


def similarity(landmarks: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the similarity transform that best maps `landmarks` [5, 2] onto TEMPLATE."""
    from skimage.transform import SimilarityTransform

    tform = SimilarityTransform()
    if not tform.estimate(np.asarray(landmarks, np.float64), TEMPLATE.astype(np.float64)):
        raise ValueError("degenerate landmarks")
    return tform.params[:2].astype(np.float32)


def align(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112 crop of `image` (H x W x 3) whose five landmarks land on the ArcFace template."""
    import cv2

    return cv2.warpAffine(image, similarity(landmarks), (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=0.0)


def _aligned_batch(layout: Layout, indices) -> np.ndarray:
    """float32 [len(indices), 3, 112, 112] RGB 0..255 of the aligned faces."""
    import cv2

    out = np.empty((len(indices), 3, SIZE, SIZE), np.float32)
    for k, i in enumerate(indices):
        path = os.path.join(layout.crop_dir, layout.names[i])
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise IJBError(f"{path}: missing or not a readable image")
        try:
            face = align(img, layout.landmarks[i])
        except ValueError:
            raise IJBError(f"{path}: its five landmarks are degenerate (no similarity transform)") from None
        out[k] = face[:, :, ::-1].transpose(2, 0, 1)
    return out


def image_features(embed, layout: Layout, *, detector_score: bool = True, chunk: int = 256,
                   progress=None) -> np.ndarray:
    """float32 [n, D]: embed(aligned images) (flip-summed), times the detection score if `detector_score`."""
    n = len(layout.names)
    feats = None
    for start in range(0, n, chunk):
        idx = range(start, min(start + chunk, n))
        emb = np.asarray(embed(_aligned_batch(layout, idx)), np.float32)
        if feats is None:
            feats = np.empty((n, emb.shape[1]), np.float32)
        feats[start:start + len(idx)] = emb
        if progress is not None:
            progress(start + len(idx), n)
    if detector_score:
        feats *= layout.scores[:, None]
    return feats


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray):
    """(sorted template ids [T], unit features [T, D]): per template, the mean over its media of each
    media's mean image feature, then L2-normalised."""
    ids = np.unique(templates)
    out = np.empty((len(ids), features.shape[1]), np.float64)
    order = np.argsort(templates, kind="stable")
    bounds = np.searchsorted(templates[order], ids, side="left").tolist() + [len(order)]
    for t in range(len(ids)):
        rows = order[bounds[t]:bounds[t + 1]]
        media_ids, inverse = np.unique(medias[rows], return_inverse=True)
        sums = np.zeros((len(media_ids), features.shape[1]), np.float64)
        np.add.at(sums, inverse, features[rows])
        out[t] = (sums / np.bincount(inverse)[:, None]).mean(axis=0)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return ids, out


def pair_scores(ids: np.ndarray, feats: np.ndarray, pairs: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Cosine similarity [P] of each template pair (ids sorted, feats unit rows)."""
    a, b = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    out = np.empty(len(pairs), np.float64)
    for s in range(0, len(pairs), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", feats[a[s:s + chunk]], feats[b[s:s + chunk]])
    return out


def draw_roc(scores, labels, path: str, title: str) -> None:
    """The ROC (TAR against FAR on a log axis) as a PNG, with the FARs of the table marked."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from .. import atomic

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    keep = fpr > 0
    ax.plot(fpr[keep], tpr[keep], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlim(min(FARS) / 2, 1)
    ax.set_ylim(0, 1.01)
    for far in FARS:
        ax.axvline(far, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    try:
        atomic.replace(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    except OSError as e:
        raise IJBError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def _far_key(far: float) -> str:
    return f"{far:.0e}"


def _advance(bar, done: int, _total: int) -> None:
    """image_features' progress(done, total) on a tqdm bar."""
    bar.update(done - bar.n)


def evaluate_ijb(model_spec: str, root: str, *, target: str = "IJBC", roc: str | None = None,
                 detector_score: bool = True, batch_size: int = 32, gpu: int | None = None, stream=None) -> dict:
    """Evaluate; returns the result dict (what --json prints) and writes the ROC PNG. Progress to `stream`."""
    from .protocol import Verifier
    from .models import context, load_model

    stream = stream or sys.stderr
    target = target.upper()
    layout = read_layout(root, target)
    ctx = context(gpu)
    model = load_model(model_spec, ctx)
    verifier = Verifier([], model.symbol, batch_size=batch_size, ctx=ctx)
    verifier.set_params(model.arg_params, model.aux_params)
    n = len(layout.names)
    print(f"ijb: {target}: {n} faces, {len(np.unique(layout.templates))} templates, {len(layout.pairs)} pairs",
          file=stream, flush=True)
    with tqdm(total=n, desc="ijb: embedded", unit="face", file=stream, disable=not stream.isatty()) as bar:
        feats = image_features(verifier.embed, layout, detector_score=detector_score, chunk=batch_size * 8,
                               progress=partial(_advance, bar))
    ids, tfeats = template_features(feats, layout.templates, layout.medias)
    scores = pair_scores(ids, tfeats, layout.pairs)
    tars = tar_at_far(scores, layout.labels, FARS)
    roc = roc or f"{target.lower()}_roc.png"
    draw_roc(scores, layout.labels, roc, f"{target} 1:1 verification, {os.path.basename(model.source)}")
    positives = int(layout.labels.sum())
    return {"model": model.source, "step": model.step, "target": target, "faces": n, "templates": len(ids),
            "pairs": len(scores), "positives": positives, "negatives": len(scores) - positives,
            "detector_score": detector_score, "roc": roc,
            "tar_at_far": {_far_key(f): (None if not math.isfinite(t) else float(t)) for f, t in zip(FARS, tars)}}


def table(result: dict) -> str:
    tars = result["tar_at_far"]
    head = "  " + f"{'FAR':<6}" + "".join(f"{k:>9}" for k in tars)
    row = "  " + f"{'TAR':<6}" + "".join(f"{'n/a' if v is None else f'{v:.4f}':>9}" for v in tars.values())
    return "\n".join([
        f"{result['target']} 1:1 verification of {result['model']}: {result['faces']} faces, "
        f"{result['templates']} templates, {result['pairs']} pairs ({result['positives']} same, "
        f"{result['negatives']} different); detector-score weighting {'on' if result['detector_score'] else 'off'}",
        head, row, f"ROC: {result['roc']}"])


DESCRIPTION = ("1:1 template verification on the IJB-B or IJB-C layout (meta/ and loose_crop/): 5-point alignment, "
               "flip features, media-then-template pooling, TAR at FAR 1e-6 .. 1e-1 and a ROC plot.")


def add_arguments(p) -> None:
    p.add_argument("model", help="as for verify: output folder, manifest, PREFIX,EPOCH or PREFIX-NNNN.params")
    p.add_argument("root", help="the IJB folder holding meta/ and loose_crop/")
    p.add_argument("--target", default="IJBC", type=str.upper, choices=TARGETS,
                   help="which release: files named ijbb_* or ijbc_* (default: %(default)s)")
    p.add_argument("--roc", default=None, metavar="PNG", help="where to draw the ROC (default: <target>_roc.png)")
    p.add_argument("--no-detector-score", dest="detector_score", action="store_false",
                   help="do not weight each image's feature by its detection score (weighted by default)")
    # --batch-size, --gpu (args.INFERENCE) and --json (args.JSON) come from the table's parents.


def run(args) -> int:
    """`partial-fc ijb`: the table (or JSON) on stdout, the ROC as a PNG."""
    result = evaluate_ijb(args.model, args.root, target=args.target, roc=args.roc,
                          detector_score=args.detector_score, batch_size=args.batch_size, gpu=args.gpu)
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0
