import os
import pickle

import numpy as np
import pytest

from partial_fc.evaluation import protocol as verification
from partial_fc.data.bins import BinError, decode, load_pairs
from partial_fc.evaluation.protocol import evaluate


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
    pixels = decode(got)
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


def _brute_tar(scores, labels, far):
    """TAR at `far` from every threshold written out: accept a pair when score >= t, for t over all scores."""
    neg, pos = scores[~labels], scores[labels]
    if far < 1 / len(neg):
        return float("nan")
    points = [(np.mean(neg >= t), np.mean(pos >= t)) for t in np.concatenate([[np.inf], np.unique(scores)])]
    far_lo = max(f for f, _ in points if f <= far)
    tar_lo = max(t for f, t in points if f == far_lo)
    if far_lo == far:
        return tar_lo
    far_hi = min(f for f, _ in points if f > far)
    tar_hi = min(t for f, t in points if f == far_hi)
    return tar_lo + (far - far_lo) / (far_hi - far_lo) * (tar_hi - tar_lo)


@pytest.mark.parametrize("ties", [False, True])
def test_tar_at_far_matches_a_brute_force_threshold_sweep(ties):
    rng = np.random.default_rng(3)
    labels = rng.random(3000) < 0.3
    scores = rng.standard_normal(3000) + 1.5 * labels
    if ties:  # many equal scores: the ROC has vertical and diagonal steps, FARs repeat
        scores = np.round(scores * 4) / 4
    fars = [1 / (~labels).sum(), 1e-3, 3.3e-3, 1e-2, 0.05, 0.1, 0.5, 1.0]
    got = verification.tar_at_far(scores, labels, fars)
    want = [_brute_tar(scores, labels, f) for f in fars]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(got) >= 0) and got[-1] == 1.0


def test_tar_at_far_is_not_invented_below_one_negative():
    labels = np.array([True] * 150 + [False] * 150)
    scores = np.where(labels, 1.0, 0.0) + np.linspace(0, 0.5, 300)
    tar = verification.tar_at_far(scores, labels, [1e-3, 1 / 150, 1e-1])
    assert np.isnan(tar[0]) and not np.isnan(tar[1:]).any()
    # Where a threshold gives exactly the FAR, the TAR is that threshold's: the conservative reading.
    neg, pos = scores[~labels], scores[labels]
    t = np.sort(neg)[-15]  # 15 of 150 negatives accepted: FAR 0.1
    assert tar[2] == pytest.approx(np.mean(pos >= t))
    assert np.isnan(verification.tar_at_far(scores[:150], labels[:150], [0.1])).all()  # no negatives at all


def test_results_and_table_carry_tar_at_far():
    rng = np.random.default_rng(4)
    P, D = 4000, 8
    issame = np.arange(P) % 2 == 0
    a = rng.standard_normal((P, D))
    emb = np.empty((2 * P, D))
    emb[0::2], emb[1::2] = a, np.where(issame[:, None], a + 0.9 * rng.standard_normal((P, D)),
                                       rng.standard_normal((P, D)))
    dist = ((emb[0::2] / np.linalg.norm(emb[0::2], axis=1, keepdims=True)
             - emb[1::2] / np.linalg.norm(emb[1::2], axis=1, keepdims=True)) ** 2).sum(1)
    np.testing.assert_allclose(verification.distances(emb), dist, rtol=1e-12)
    tar = verification.tar_at_far(-dist, issame, [verification.FAR])[0]
    assert tar == pytest.approx(_brute_tar(-dist, issame, 1e-3), abs=1e-12) and 0 < tar < 1
    rows = verification.table([verification.Result("big", 0.9, 0.01, 20.0, 1.2, P, tar),
                               verification.Result("small", 0.8, 0.02, 21.0, 1.3, 300)]).splitlines()
    assert "TAR@FAR=1e-3" in rows[1]
    assert rows[2].split()[-1] == f"{tar:.4f}" and rows[3].split()[-1] == "n/a"


# ---- the trainer's verifier shares the training Module's memory ------------------------------------------

TRAIN_BATCH, DIM = 4, 16


def _training_module(seed=0):
    """mbf in the trainer's CPU form, bound and initialised as startup.bind_backbone does, with an SGD."""
    import mxnet as mx
    import symbols

    sym = symbols.get_symbol("mbf", embedding_size=DIM, prelu_impl="depthwise")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", (TRAIN_BATCH, 3, 112, 112))], for_training=True)
    mx.random.seed(seed)
    mod.init_params(initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1, "momentum": 0.9})
    return sym, mod


def _train_step(mod, step):
    """One forward + backward + update on seeded images, so BN statistics and weights move."""
    import mxnet as mx

    rng = np.random.default_rng(100 + step)
    mod.forward(mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, (TRAIN_BATCH, 3, 112, 112)))]), is_train=True)
    out = mod.get_outputs()[0]
    mod.backward(out_grads=[mx.nd.array(rng.standard_normal(out.shape))])
    mod.update()


def _images(n, seed=7):
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, 112, 112)).astype(np.float32)


@pytest.mark.parametrize("eval_batch", [3, TRAIN_BATCH, 6])  # smaller, equal, larger than the training batch
def test_shared_verifier_embeds_exactly_as_its_own_executor(eval_batch):
    # Today's verifier (its own executor, the CLI's) against the trainer's (in the training Module's memory):
    # the same embeddings bit for bit, hence the same accuracies, on a trained-for-one-step model.
    sym, mod = _training_module()
    _train_step(mod, 0)
    images = _images(10)   # 10 images: the last batch is padded at every eval batch here
    own = verification.Verifier([], sym, batch_size=eval_batch)
    own.set_params(*mod.get_params())
    expected = own.embed(images)
    shared = verification.Verifier([], sym, batch_size=eval_batch, shared_module=mod)
    shared.set_params(*mod.get_params())
    got = shared.embed(images)
    assert got.shape == (10, DIM) and np.isfinite(got).all()
    np.testing.assert_array_equal(got, expected)
    issame = np.arange(5) % 2 == 0
    np.testing.assert_equal(vars(verification.result("s", got, issame)), vars(verification.result("s", expected, issame)))


def test_verifying_in_the_training_modules_memory_leaves_training_unchanged():
    # Two identical runs of three steps; one verifies after each step through a verifier sharing its Module.
    # Its parameters, BN statistics and later embeddings must be exactly the other run's.
    _, plain = _training_module()
    sym, verified = _training_module()
    verifier = verification.Verifier([], sym, batch_size=TRAIN_BATCH, shared_module=verified)
    images = _images(6)
    embeddings = []
    for step in range(3):
        _train_step(plain, step)
        _train_step(verified, step)
        embeddings.append(verifier.embed(images))
    for got, expected in zip(verified.get_params(), plain.get_params()):
        assert sorted(got) == sorted(expected)
        for name in expected:
            np.testing.assert_array_equal(got[name].asnumpy(), expected[name].asnumpy(), err_msg=name)
    reference = verification.Verifier([], sym, batch_size=TRAIN_BATCH)
    reference.set_params(*plain.get_params())
    np.testing.assert_array_equal(embeddings[-1], reference.embed(images))
    assert not np.array_equal(embeddings[0], embeddings[-1])  # the steps did change the model
