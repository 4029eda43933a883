"""Face verification on `.bin` pair sets (lfw, cfp_fp, agedb_30 style): the reference protocol.

A `.bin` is a pickle of (list of encoded images, list of bools): images 2i and 2i+1 form pair i, and the
bool says whether they show the same identity. Each image is embedded twice (as is and flipped left-right),
the two embeddings are summed and L2-normalised; the squared distance of a pair is compared with a
threshold. Accuracy is 10-fold: the threshold is chosen on nine folds (from a fixed grid, as the reference
does) and scored on the tenth. XNorm is the mean norm of the summed embeddings before normalisation.

TAR at FAR = 1e-3 is read off one ROC over all pairs (no folds), score = -squared distance (higher = more
alike), with `tar_at_far`: the ROC as a piecewise-linear curve through sklearn's roc_curve points, the
highest TAR reached at exactly that FAR, else linear interpolation along the segment that crosses it. A
FAR below 1 / #different-identity pairs cannot be measured on the set and is reported as n/a (NaN), not
extrapolated: a 300-pair set has 150 negatives, so its TAR@FAR=1e-3 is n/a; LFW's 3000 negatives suffice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..data.bins import decode, load_pairs

THRESHOLDS = np.arange(0, 4, 0.01)  # squared distances between unit vectors lie in [0, 4]
FOLDS = 10
FAR = 1e-3                          # the false accept rate at which verification reports the TAR


@dataclass
class Result:
    name: str
    accuracy: float      # mean of the 10 fold accuracies
    std: float           # their standard deviation
    xnorm: float         # mean norm of the (flip-summed) embeddings before normalisation
    threshold: float     # mean chosen threshold (squared distance)
    pairs: int
    tar: float = float("nan")   # TAR at FAR = 1e-3 over all pairs; NaN when the set has too few negatives


def tar_at_far(scores, labels, fars) -> np.ndarray:
    """True accept rate at each false accept rate in `fars` (NaN where it cannot be measured).

    scores: [P] higher = more likely the same identity; labels: [P] bool (True = same identity).
    The ROC points (FAR, TAR) of sklearn.metrics.roc_curve come in order of decreasing threshold, FAR and
    TAR non-decreasing, several points sharing one FAR (interpolating over duplicate FARs is ill-defined:
    scipy's interp1d refuses them). At a target f: if some point has FAR exactly f, the highest TAR among
    those; otherwise linear interpolation between the last point with FAR < f (the highest TAR there) and
    the first with FAR > f (the lowest TAR there): the straight segment of the curve that crosses f.
    f below 1/#negatives (the smallest non-zero FAR a threshold can give) is NaN, as is every f when one
    class of pairs is absent.
    """
    from sklearn.metrics import roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    fars = np.atleast_1d(np.asarray(fars, dtype=np.float64))
    negatives, positives = int((~labels).sum()), int(labels.sum())
    out = np.full(len(fars), np.nan)
    if negatives == 0 or positives == 0:
        return out
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for j, f in enumerate(fars):
        if f < 1.0 / negatives or f > 1.0:
            continue
        hi = int(np.searchsorted(fpr, f, side="right"))   # first point with FAR > f
        lo = hi - 1                                        # last point with FAR <= f: the highest TAR there
        if fpr[lo] == f or hi == len(fpr):
            out[j] = tpr[lo]
        else:
            w = (f - fpr[lo]) / (fpr[hi] - fpr[lo])
            out[j] = tpr[lo] + w * (tpr[hi] - tpr[lo])
    return out


def distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared distances [P] between the L2-normalised embeddings of each pair (2i, 2i+1)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1), 1e-12)[:, None]
    return np.sum((unit[0::2] - unit[1::2]) ** 2, axis=1)


def evaluate(embeddings: np.ndarray, issame: np.ndarray, folds: int = FOLDS) -> tuple[float, float, float, float]:
    """10-fold accuracy of pairs (embeddings[2i], embeddings[2i+1]); returns (acc, std, xnorm, threshold).

    embeddings: [2P, D], already the sum of the plain and flipped embedding of each image.
    """
    xnorm = float(np.linalg.norm(np.asarray(embeddings, dtype=np.float64), axis=1).mean())
    dist = distances(embeddings)
    issame = np.asarray(issame, dtype=bool)
    P = len(issame)
    k = min(folds, P)
    fold_of = np.arange(P) * k // P  # contiguous folds, as the reference's unshuffled KFold
    # predicted[t, i]: pair i is called "same" at threshold t.
    correct = (dist[None, :] < THRESHOLDS[:, None]) == issame[None, :]
    accs, thresholds = [], []
    for f in range(k):
        train, test = fold_of != f, fold_of == f
        best = int(np.argmax(correct[:, train].mean(axis=1)))
        thresholds.append(THRESHOLDS[best])
        accs.append(correct[best, test].mean())
    return float(np.mean(accs)), float(np.std(accs)), xnorm, float(np.mean(thresholds))


class Verifier:
    """Embeds .bin sets with a Module of the training graph, given the parameters to score.

    shared_module: the trainer's bound backbone Module (its symbol `symbol`, its context `ctx`). The executor
    then lives in that Module's memory (MXNet's shared_module: its parameters, and its pool of intermediate
    arrays, which a forward at an evaluation batch no larger than the training batch fits in), instead of a
    second training executor of its own, which doubled the memory of rank 0. The numbers are the same either
    way (the same graph, the same operators): tests/unit/test_verification.py compares the two. It is safe
    because verification runs between steps: the next training forward rewrites every intermediate array.
    """

    def __init__(self, paths: list[str], symbol, batch_size: int = 64, ctx=None, shared_module=None):
        import mxnet as mx

        self.sets = []
        for path in paths:
            images, issame = load_pairs(path)
            name = os.path.splitext(os.path.basename(path))[0]
            self.sets.append((name, decode(images, path), issame))
        self.batch_size = batch_size
        self.module = mx.mod.Module(symbol, data_names=["data"], label_names=None, context=ctx or mx.cpu())
        # Bound "for training" although only forward(is_train=False) runs: an inference-only bind on CPU
        # goes through MXNet 1.9.1's MKLDNN subgraph fusion, whose output of these graphs cannot be read
        # back ("can't generate TBlob for MKLDNN data"). BatchNorm still uses its moving statistics, and no
        # backward ever runs, so the gradient part of the executor is never written.
        self.module.bind(data_shapes=[("data", (batch_size, 3, 112, 112))], for_training=True,
                         shared_module=shared_module)

    def run(self, arg_params: dict, aux_params: dict) -> list[Result]:
        self.set_params(arg_params, aux_params)
        return [self.score(name, images, issame) for name, images, issame in self.sets]

    def set_params(self, arg_params: dict, aux_params: dict) -> None:
        self.module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)

    def embed(self, images: np.ndarray, progress=None) -> np.ndarray:
        """Flip-summed embeddings [n, D] of float32 images [n, 3, H, W]; progress(done, n) after each batch."""
        import mxnet as mx

        n, bs, out = len(images), self.batch_size, []
        for start in range(0, n, bs):
            chunk = images[start:start + bs]
            pad = bs - len(chunk)
            if pad:  # the bound shape is fixed: pad the last batch and drop the padding afterwards
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            total = 0
            for x in (chunk, chunk[:, :, :, ::-1]):
                self.module.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
                total = total + self.module.get_outputs()[0].asnumpy()
            out.append(total[:bs - pad])
            if progress is not None:
                progress(min(start + bs, n), n)
        return np.concatenate(out)

    def score(self, name: str, images: np.ndarray, issame: np.ndarray, progress=None) -> Result:
        """The protocol on one set with the current parameters: images [2P, 3, H, W], issame [P]."""
        return result(name, self.embed(images, progress), issame)


def result(name: str, embeddings: np.ndarray, issame: np.ndarray) -> Result:
    """The whole report of one set from its flip-summed embeddings [2P, D]."""
    acc, std, xnorm, thr = evaluate(embeddings, issame)
    tar = float(tar_at_far(-distances(embeddings), issame, [FAR])[0])
    return Result(name, acc, std, xnorm, thr, len(issame), tar)


def table(results: list[Result], step: int | None = None) -> str:
    head = f"verification{'' if step is None else f' at step {step}'}:"
    rows = [f"  {'set':<16} {'pairs':>6} {'accuracy':>9} {'std':>7} {'XNorm':>9} {'threshold':>9} "
            f"{'TAR@FAR=1e-3':>12}"]
    for r in results:
        tar = "n/a" if not np.isfinite(r.tar) else f"{r.tar:.4f}"
        rows.append(f"  {r.name:<16} {r.pairs:>6} {r.accuracy:>9.4f} {r.std:>7.4f} {r.xnorm:>9.3f} {r.threshold:>9.2f} "
                    f"{tar:>12}")
    return "\n".join([head] + rows)
