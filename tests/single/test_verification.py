import os
import pickle

import numpy as np
import pytest

from partial_fc import verification
from partial_fc.verification import BinError, evaluate, load_pairs


def _dense_accuracy(emb, issame, folds=10):
    """The protocol written out the slow way: per fold, try every grid threshold on the other folds."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = ((unit[0::2] - unit[1::2]) ** 2).sum(1)
    P = len(issame)
    fold = np.array([i * folds // P for i in range(P)])
    accs = []
    for f in range(folds):
        best_t, best_acc = None, -1
        for t in np.arange(0, 4, 0.01):
            acc = np.mean((dist[fold != f] < t) == issame[fold != f])
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(np.mean((dist[fold == f] < best_t) == issame[fold == f]))
    return np.mean(accs), np.std(accs)


def test_evaluate_matches_the_protocol_written_out():
    rng = np.random.default_rng(0)
    P, D = 300, 16
    issame = rng.random(P) < 0.5
    a = rng.standard_normal((P, D))
    b = np.where(issame[:, None], a + 0.8 * rng.standard_normal((P, D)), rng.standard_normal((P, D)))
    emb = np.empty((2 * P, D))
    emb[0::2], emb[1::2] = a, b
    acc, std, xnorm, thr = evaluate(emb, issame)
    ref_acc, ref_std = _dense_accuracy(emb, issame)
    assert acc == pytest.approx(ref_acc) and std == pytest.approx(ref_std)
    assert 0.75 < acc < 1.0  # separable but not trivially
    assert xnorm == pytest.approx(np.linalg.norm(emb, axis=1).mean())
    assert 0 < thr < 4


def test_evaluate_extremes():
    rng = np.random.default_rng(1)
    P, D = 200, 8
    issame = np.arange(P) % 2 == 0
    a = rng.standard_normal((P, D))
    b = np.where(issame[:, None], a, -a)   # same: identical; different: opposite
    emb = np.empty((2 * P, D))
    emb[0::2], emb[1::2] = a, b
    assert evaluate(emb, issame)[0] == 1.0
    # Random embeddings: near chance.
    acc = evaluate(rng.standard_normal((2 * P, D)), issame)[0]
    assert 0.35 < acc < 0.65


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def _jpeg(value):
    import cv2
    ok, buf = cv2.imencode(".jpg", np.full((112, 112, 3), value, np.uint8))
    return buf.tobytes()


def test_load_pairs_round_trip_and_decode(tmp_path):
    images = [_jpeg(v) for v in (10, 20, 30, 40)]
    p = tmp_path / "x.bin"
    _write(p, (images, [True, False]))
    got, issame = load_pairs(str(p))
    assert got == images and issame.tolist() == [True, False]
    pixels = verification.decode(got)
    assert pixels.shape == (4, 3, 112, 112) and pixels.dtype == np.float32
    assert abs(pixels[2].mean() - 30) < 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.bin"
    _write(p, ([_jpeg(1), _jpeg(2)], [_Evil()]))
    with pytest.raises(BinError, match=r"evil\.bin.*refusing to load (posix|os)\.system"):
        load_pairs(str(p))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("obj, message", [
    ({"a": 1}, "expected a pair"),
    (([_jpeg(1)], [True]), "1 images for 1 pairs"),
    (([1, 2], [True]), "encoded image bytes"),
    (([b"x", b"y"], [1]), "booleans"),
])
def test_bad_bins_are_named(tmp_path, obj, message):
    p = tmp_path / "bad.bin"
    _write(p, obj)
    with pytest.raises(BinError, match=f"bad.bin.*{message}"):
        load_pairs(str(p))


def test_truncated_and_missing(tmp_path):
    p = tmp_path / "t.bin"
    _write(p, ([_jpeg(1), _jpeg(2)], [True]))
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(BinError, match="t.bin: not a verification .bin"):
        load_pairs(str(p))
    with pytest.raises(BinError, match="nope.bin: cannot read"):
        load_pairs(str(tmp_path / "nope.bin"))
