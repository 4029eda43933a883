"""`partial-fc ijb` on a small IJB-C layout generated here: synthetic faces placed into larger loose crops
by known similarity transforms, so the five landmarks of every face are known exactly."""
import json

import cv2
import numpy as np
import pytest

from partial_fc import cli
from partial_fc.data import synth
from partial_fc.evaluation import ijb

IDENTITIES, TEMPLATES_PER_ID = 3, 2
MEDIA_IMAGES = (2, 1)          # images of each media of a template: a 2-frame video and a photo
CROP = (200, 196)              # loose crop width, height: room for a scaled, rotated 112x112 face


def _random_similarity(rng, scale_range=(1.1, 1.4)):
    """2x3 matrix: a rotation, uniform scale and shift that keep a 112x112 face inside the loose crop."""
    s, a = rng.uniform(*scale_range), np.deg2rad(rng.uniform(-15, 15))
    m = np.array([[s * np.cos(a), -s * np.sin(a), 0], [s * np.sin(a), s * np.cos(a), 0]])
    corners = np.array([[0, 0, 1], [112, 0, 1], [0, 112, 1], [112, 112, 1]]) @ m.T
    lo, hi = corners.min(0), corners.max(0)
    m[:, 2] = -lo + rng.uniform(0, 1, 2) * np.maximum(np.array(CROP) - (hi - lo), 0)
    return m


def _place(face, m):
    """The loose crop with `face` warped into it by `m`, and where the template landmarks land."""
    loose = cv2.warpAffine(face, m, CROP, flags=cv2.INTER_LINEAR, borderValue=(90, 90, 90))
    points = np.c_[ijb.TEMPLATE, np.ones(5)] @ m.T
    return loose, points


def make_layout(root, target="ijbc", seed=0):
    """Write the layout; returns (names, templates, medias, identity of each template, pairs, labels, scores)."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    faces, marks = [], []
    template_identity, names, templates, medias, scores = {}, [], [], [], []
    n = media = 0
    for i in range(IDENTITIES):
        params = synth.identity_params(seed, 1, i)
        for t in range(TEMPLATES_PER_ID):
            tid = 100 + i * TEMPLATES_PER_ID + t
            template_identity[tid] = i
            for count in MEDIA_IMAGES:
                media += 1
                for _ in range(count):
                    face = synth.image(seed, 1, i, n, 0.3, params)
                    loose, points = _place(face, _random_similarity(rng))
                    name = f"{n + 1}.jpg"
                    cv2.imwrite(str(root / "loose_crop" / name), loose, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    score = float(rng.uniform(0.5, 1.0))
                    faces.append(f"{name} {tid} {media}")
                    marks.append(" ".join([name] + [f"{v:.3f}" for v in points.ravel()] + [f"{score:.5f}"]))
                    names.append(name), templates.append(tid), medias.append(media)
                    scores.append(float(f"{score:.5f}"))  # as written
                    n += 1
    tids = sorted(template_identity)
    pairs = [(a, b) for k, a in enumerate(tids) for b in tids[k + 1:]]
    labels = [template_identity[a] == template_identity[b] for a, b in pairs]
    (root / "meta" / f"{target}_face_tid_mid.txt").write_text("\n".join(faces) + "\n")
    (root / "meta" / f"{target}_name_5pts_score.txt").write_text("\n".join(marks[::-1]) + "\n")  # other order
    (root / "meta" / f"{target}_template_pair_label.txt").write_text(
        "\n".join(f"{a} {b} {int(l)}" for (a, b), l in zip(pairs, labels)) + "\n")
    return names, np.array(templates), np.array(medias), np.array(pairs), np.array(labels), np.array(scores)


def test_alignment_puts_the_face_back_on_the_template():
    rng = np.random.default_rng(1)
    face = synth.image(0, 1, 0, 0, 0.3)
    for _ in range(3):
        m = _random_similarity(rng)
        loose, points = _place(face, m)
        # The estimated transform is the inverse of the one that placed the face.
        full = np.vstack([m, [0, 0, 1]])
        np.testing.assert_allclose(np.vstack([ijb.similarity(points), [0, 0, 1]]) @ full, np.eye(3), atol=1e-4)
        back = ijb.align(loose, points)
        inner = (slice(8, 104), slice(8, 104))
        err = np.abs(back[inner].astype(float) - face[inner].astype(float)).mean()
        assert back.shape == (112, 112, 3) and err < 4, err  # interpolation twice, nothing more
        # The test can fail: landmarks off by 4 pixels give a visibly worse crop.
        off = np.abs(ijb.align(loose, points + 4)[inner].astype(float) - face[inner].astype(float)).mean()
        assert off > 2 * err


def test_template_pooling_is_media_mean_then_template_mean():
    f = np.array([[1, 0, 0], [3, 0, 0], [0, 2, 0], [0, 0, 5], [1, 1, 1]], float)
    templates = np.array([7, 7, 7, 3, 3])
    medias = np.array([1, 1, 2, 9, 9])
    ids, feats = ijb.template_features(f, templates, medias)
    assert ids.tolist() == [3, 7]
    t7 = ((f[0] + f[1]) / 2 + f[2]) / 2          # media 1: mean of two frames; then the two media
    t3 = (f[3] + f[4]) / 2                         # one media of two images
    np.testing.assert_allclose(feats, [t3 / np.linalg.norm(t3), t7 / np.linalg.norm(t7)], rtol=1e-12)
    scores = ijb.pair_scores(ids, feats, np.array([[7, 3], [3, 3]]))
    np.testing.assert_allclose(scores, [t7 @ t3 / np.linalg.norm(t7) / np.linalg.norm(t3), 1.0], rtol=1e-12)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A randomly initialised mbf (D=16) saved as a plain MXNet model, as users bring them."""
    import mxnet as mx

    import symbols

    prefix = tmp_path_factory.mktemp("model") / "mbf"
    sym = symbols.get_symbol("mbf", embedding_size=16, prelu_impl="depthwise")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (1, 3, 112, 112))], for_training=True)
    mx.random.seed(0)
    mod.init_params(initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    arg, aux = mod.get_params()
    mx.model.save_checkpoint(str(prefix), 1, sym, arg, aux)
    return str(prefix), sym, arg, aux


def _embed_by_hand(sym, arg, aux, images):
    """emb(x) + emb(flip x) one image at a time with a separately bound Module."""
    import mxnet as mx

    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (2, 3, 112, 112))], for_training=True)
    mod.set_params(arg, aux)
    out = []
    for img in images:
        x = img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
        mod.forward(mx.io.DataBatch([mx.nd.array(np.stack([x, x[:, :, ::-1]]))]), is_train=False)
        out.append(mod.get_outputs()[0].asnumpy().sum(0))
    return np.array(out, np.float64)


def _brute_tar(scores, labels, far):
    neg, pos = scores[~labels], scores[labels]
    if far < 1 / len(neg):
        return None
    pts = [(np.mean(neg >= t), np.mean(pos >= t)) for t in np.concatenate([[np.inf], np.unique(scores)])]
    lo = max(f for f, _ in pts if f <= far)
    tar_lo = max(t for f, t in pts if f == lo)
    if lo == far:
        return tar_lo
    hi = min(f for f, _ in pts if f > far)
    return tar_lo + (far - lo) / (hi - lo) * (min(t for f, t in pts if f == hi) - tar_lo)


@pytest.fixture(scope="module")
def layout(tmp_path_factory, model):
    """The generated IJB-C folder and each face's emb(x) + emb(flip x), computed here independently:
    aligned with the known landmarks, embedded one image at a time by a separately bound Module."""
    _, sym, arg, aux = model
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    names, templates, medias, pairs, labels, scores = make_layout(root)
    marks = {l.split()[0]: np.array(l.split()[1:11], float).reshape(5, 2)
             for l in (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()}
    aligned = [ijb.align(cv2.imread(str(root / "loose_crop" / n)), marks[n]) for n in names]
    return root, _embed_by_hand(sym, arg, aux, aligned), templates, medias, pairs, labels, scores


def _expected_tars(layout, weighted):
    """TAR at each FAR by brute force from scores pooled with loops: media means, then their mean."""
    _, feats, templates, medias, pairs, labels, scores = layout
    feats = feats * (scores[:, None] if weighted else 1)
    pooled = {}
    for t in np.unique(templates):
        media_means = [feats[(templates == t) & (medias == m)].mean(0) for m in np.unique(medias[templates == t])]
        v = np.mean(media_means, axis=0)
        pooled[t] = v / np.linalg.norm(v)
    cos = np.array([pooled[a] @ pooled[b] for a, b in pairs])
    return [_brute_tar(cos, labels, far) for far in ijb.FARS]


def test_end_to_end_json_and_roc(tmp_path, model, layout, capsys):
    png = tmp_path / "roc.png"
    rc = cli.main(["ijb", f"{model[0]},1", str(layout[0]), "--roc", str(png), "--json", "--batch-size", "8"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)
    assert (doc["faces"], doc["templates"], doc["pairs"], doc["positives"]) == (18, 6, 15, 3)
    assert doc["detector_score"] is True and doc["target"] == "IJBC" and doc["roc"] == str(png)
    assert list(doc["tar_at_far"]) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    for (key, got), want in zip(doc["tar_at_far"].items(), _expected_tars(layout, weighted=True)):
        if want is None:
            assert got is None, key                       # 12 negative pairs: FAR < 1/12 is n/a
        else:
            assert got == pytest.approx(want, abs=1e-4), key
    assert [k for k, v in doc["tar_at_far"].items() if v is not None] == ["1e-01"]
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0


def test_ijbb_table_without_detector_scores(tmp_path, model, layout, capsys, monkeypatch):
    import shutil

    root = tmp_path / "IJBB"
    shutil.copytree(layout[0], root)
    for path in (root / "meta").iterdir():
        path.rename(path.with_name(path.name.replace("ijbc_", "ijbb_")))
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["ijb", f"{model[0]},1", str(root), "--target", "ijbb", "--no-detector-score", "--batch-size", "8"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("IJBB 1:1 verification of") and "18 faces, 6 templates, 15 pairs (3 same" in out[0]
    assert out[0].endswith("detector-score weighting off")
    assert out[1].split() == ["FAR", "1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    want = _expected_tars(layout, weighted=False)
    assert out[2].split() == ["TAR"] + ["n/a" if w is None else f"{w:.4f}" for w in want]
    assert out[3] == "ROC: ijbb_roc.png" and (tmp_path / "ijbb_roc.png").exists()


def _edit(path, line, text):
    lines = path.read_text().splitlines()
    lines[line] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "meta" / "ijbc_face_tid_mid.txt").unlink(), "ijbc_face_tid_mid.txt: cannot read"),
    (lambda r: _edit(r / "meta" / "ijbc_face_tid_mid.txt", 2, "3.jpg 101"),
     "ijbc_face_tid_mid.txt:3: expected 'img_name template_id media_id', got '3.jpg 101'"),
    (lambda r: _edit(r / "meta" / "ijbc_name_5pts_score.txt", 0, "18.jpg 1 2 3 4 5 6 7 8 9 ten 0.9"),
     "ijbc_name_5pts_score.txt:1: expected 'img_name x1 y1"),
    (lambda r: _edit(r / "meta" / "ijbc_name_5pts_score.txt", 0, "other.jpg 1 2 3 4 5 6 7 8 9 10 0.9"),
     "no landmarks for 1 face(s) of ijbc_face_tid_mid.txt, e.g. 18.jpg"),
    (lambda r: _edit(r / "meta" / "ijbc_template_pair_label.txt", 4, "100 101 2"),
     "ijbc_template_pair_label.txt:5: expected 'template_1 template_2 label(0|1)'"),
    (lambda r: _edit(r / "meta" / "ijbc_template_pair_label.txt", 4, "100 999 0"),
     "pairs name 1 template(s) with no face in ijbc_face_tid_mid.txt, e.g. 999"),
    (lambda r: (r / "meta" / "ijbc_template_pair_label.txt").write_text("100 101 1\n"),
     "needs both same (1) and different (0) pairs"),
    (lambda r: (r / "loose_crop" / "5.jpg").unlink(), "1 image(s) of ijbc_face_tid_mid.txt missing, e.g. 5.jpg"),
    (lambda r: (r / "loose_crop" / "5.jpg").write_bytes(b"not a jpeg"), "5.jpg: missing or not a readable image"),
    (lambda r: _edit(r / "meta" / "ijbc_name_5pts_score.txt", 0, "18.jpg" + " 7" * 10 + " 0.9"),
     "18.jpg: its five landmarks are degenerate"),
])
def test_bad_layouts_are_one_line_errors(tmp_path, model, capsys, damage, message):
    root = tmp_path / "IJBC"
    make_layout(root)
    damage(root)
    rc = cli.main(["ijb", f"{model[0]},1", str(root), "--roc", str(tmp_path / "r.png"), "--batch-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("partial-fc: error: ")]
    assert rc == 1 and len(errors) == 1 and errors[0] == err[-1], err  # one line, the last, no traceback
    assert message in errors[0], err
    assert not (tmp_path / "r.png").exists()


def test_wrong_target_and_missing_folder(tmp_path, model, capsys):
    make_layout(tmp_path / "IJBC")
    assert cli.main(["ijb", f"{model[0]},1", str(tmp_path / "IJBC"), "--target", "IJBB"]) == 1
    assert "ijbb_face_tid_mid.txt: cannot read" in capsys.readouterr().err
    assert cli.main(["ijb", f"{model[0]},1", str(tmp_path / "none")]) == 1
    assert "loose_crop: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["ijb", f"{model[0]},1", str(tmp_path / "IJBC"), "--target", "IJBX"])
    assert e.value.code == 2 and "invalid choice: 'IJBX'" in capsys.readouterr().err
