"""`partial-fc verify`: a trainer checkpoint scored again from disk gives the accuracy the trainer logged."""
import json
import os
import pickle

import numpy as np
import pytest

from support import trainer_cases as cases
from partial_fc import cli
from partial_fc.data import synth
from partial_fc.evaluation import models, verify

STEPS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic dataset with two .bin sets and a 2-step run that verifies on them at its end."""
    root = tmp_path_factory.mktemp("verify")
    data, out = root / "data", root / "run"
    synth.write_dataset(str(data), identities=8, images_per_identity=4, val_pairs=20, progress=False, workers=1)
    cases.run(out, STEPS, comm="local", data_dir=str(data), num_classes=0, data_threads=1)
    logged = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key, value in rec.items():
            if key.startswith("val/") and rec["step"] == STEPS:
                logged[key] = value
    assert set(logged) == {f"val/{s}/{m}" for s in ("synth_hard", "synth_val") for m in ("accuracy", "xnorm")}
    return data, out, logged


def _verify(argv, capsys):
    rc = cli.main(["verify"] + [str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _check_against_log(doc, logged, sets=("synth_hard", "synth_val")):
    got = {s["name"]: s for s in doc["sets"]}
    assert sorted(got) == list(sets)
    for name, s in got.items():
        assert s["pairs"] == 20
        assert s["accuracy"] == pytest.approx(logged[f"val/{name}/accuracy"], abs=1e-12)
        assert s["xnorm"] == pytest.approx(logged[f"val/{name}/xnorm"], rel=1e-5)
        assert s["tar_at_far"] is None  # 10 different-identity pairs cannot measure FAR 1e-3


def test_verify_reproduces_the_accuracy_the_trainer_logged(trained, capsys):
    data, out, logged = trained
    rc, stdout, err = _verify([out, data / "synth_val.bin", data / "synth_hard.bin", "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(stdout)
    assert doc["step"] == STEPS and doc["model"].endswith(f"model-{STEPS:04d}.json") and doc["far"] == 1e-3
    _check_against_log(doc, logged)
    assert "synth_val: 20 pairs" in err  # progress goes to stderr, JSON alone to stdout


@pytest.mark.parametrize("form", ["manifest", "prefix,epoch"])
def test_a_manifest_and_a_plain_mxnet_model_give_the_same_numbers(trained, capsys, monkeypatch, form):
    data, out, logged = trained
    monkeypatch.setattr(verify, "DECODE_CHUNK", 11)  # sets decoded in chunks, batches across their ends
    model = {"manifest": out / f"model-{STEPS:04d}.json", "prefix,epoch": f"{out / 'model'},{STEPS}"}[form]
    bins = [data] if form == "manifest" else [data / "synth_val.bin"]  # a folder stands for every *.bin
    rc, stdout, err = _verify([model, *bins, "--json", "--batch-size", "7"], capsys)
    assert rc == 0, err
    sets = ("synth_hard", "synth_val") if form == "manifest" else ("synth_val",)
    _check_against_log(json.loads(stdout), logged, sets)


def test_the_other_names_of_a_plain_model_load_the_same_files(trained):
    _, out, _ = trained
    ref = models.load_model(f"{out / 'model'},{STEPS}")
    for spec in (out / f"model-{STEPS:04d}.params", out / "model-symbol.json"):
        model = models.load_model(str(spec))
        assert model.source == ref.source and model.symbol.tojson() == ref.symbol.tojson()
        assert sorted(model.arg_params) == sorted(ref.arg_params) and sorted(model.aux_params) == sorted(ref.aux_params)
        for k, v in model.arg_params.items():
            np.testing.assert_array_equal(v.asnumpy(), ref.arg_params[k].asnumpy())


def test_table_output(trained, capsys):
    data, out, logged = trained
    rc, stdout, _ = _verify([out, data / "synth_val.bin", "--batch-size", "7"], capsys)
    assert rc == 0
    lines = stdout.splitlines()
    assert lines[1] == f"verification at step {STEPS}:"
    assert lines[2].split() == ["set", "pairs", "accuracy", "std", "XNorm", "threshold", "TAR@FAR=1e-3"]
    row = lines[3].split()
    assert row[0] == "synth_val" and float(row[2]) == pytest.approx(logged["val/synth_val/accuracy"], abs=5e-5)
    assert row[-1] == "n/a"


def test_a_bin_of_uint8_arrays_scores_as_the_same_pairs_stored_as_bytes(trained, tmp_path, capsys):
    """Some of insightface's tools store each encoded image as a uint8 array ((n,) or (n, 1), as cv2.imencode
    gives it); verify reads them as the bytes they hold, so the numbers are the trainer's."""
    data, out, logged = trained
    images, issame = pickle.loads((data / "synth_val.bin").read_bytes())
    assert all(type(b) is bytes for b in images)
    flat = [np.frombuffer(b, dtype=np.uint8).copy() for b in images]
    # Half of each shape in one file, and each shape alone.
    mixed = [a if i % 2 else a.reshape(-1, 1) for i, a in enumerate(flat)]
    rc, stdout, err = _verify([out, data / "synth_val.bin", "--json"], capsys)
    assert rc == 0, err
    as_bytes = json.loads(stdout)["sets"]
    for name, arrays in (("flat", flat), ("column", [a.reshape(-1, 1) for a in flat]), ("mixed", mixed)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "synth_val.bin").write_bytes(pickle.dumps((arrays, np.asarray(issame)), protocol=2))
        rc, stdout, err = _verify([out, tmp_path / name / "synth_val.bin", "--json"], capsys)
        assert rc == 0, err
        doc = json.loads(stdout)
        assert doc["sets"] == as_bytes  # every number: accuracy, std, XNorm, threshold
        _check_against_log(doc, logged, ("synth_val",))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_bad_input_is_one_line_and_nonzero(trained, tmp_path, capsys, monkeypatch):
    data, out, _ = trained
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([b"a", b"b"], [_Evil()]), protocol=4))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model-0001.json").write_text("{not json")
    noparams = tmp_path / "noparams"
    noparams.mkdir()
    (noparams / "model-symbol.json").write_text((out / "model-symbol.json").read_text())
    cases_ = [
        ([out, tmp_path / "nope.bin"], "nope.bin: no such file"),
        ([out, evil], r"evil.bin: not a verification .bin: refusing to load"),
        ([tmp_path, data], "no complete checkpoint"),
        ([broken / "model-0001.json", data], "model-0001.json: not a checkpoint manifest"),
        ([f"{noparams / 'model'},3", data], "model-0003.params: no such parameter file"),
        ([noparams / "model-symbol.json", data], "no model-NNNN.params next to it"),
        ([f"{out / 'model'},x", data], "expected PREFIX,EPOCH"),
        ([tmp_path / "what.txt", data], "not an output folder"),
    ]
    for argv, message in cases_:
        rc, stdout, err = _verify(argv, capsys)
        assert rc == 1 and stdout == "", (argv, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("partial-fc: error: "), err
        assert message.replace(".", "") in err.replace(".", ""), (message, err)
    assert not (tmp_path / "PWNED").exists()
    images, issame = pickle.loads((data / "synth_val.bin").read_bytes())
    images[13] = b"not an image"
    (tmp_path / "broken.bin").write_bytes(pickle.dumps((images, issame), protocol=4))
    monkeypatch.setattr(verify, "DECODE_CHUNK", 5)
    rc, _, err = _verify([out, tmp_path / "broken.bin"], capsys)
    assert rc == 1 and err.strip().splitlines()[-1].endswith("broken.bin: image 13 cannot be decoded"), err
    assert _verify([out, data, "--gpu", "7"], capsys)[:2] == (2, "")  # a setting this machine cannot honour


def test_a_plain_mxnet_model_with_its_training_head_is_cut_at_fc1(trained, tmp_path):
    """Released insightface models often keep the head after fc1; verify must embed with fc1."""
    import mxnet as mx

    _, out, _ = trained
    sym, arg, aux = mx.model.load_checkpoint(str(out / "model"), STEPS)
    head = mx.sym.FullyConnected(sym, num_hidden=5, name="fc7")
    head = mx.sym.SoftmaxOutput(head, name="softmax")
    arg = dict(arg, fc7_weight=mx.nd.ones((5, 16)), fc7_bias=mx.nd.zeros(5))
    mx.model.save_checkpoint(str(tmp_path / "released"), 1, head, arg, aux)
    model = models.load_model(f"{tmp_path / 'released'},1")
    assert model.symbol.list_outputs() == ["fc1_output"] and "softmax_label" not in model.symbol.list_arguments()
    assert model.step is None
    with pytest.raises(models.CheckpointError, match="lacks: fc1_gamma"):
        arg.pop("fc1_gamma")
        mx.model.save_checkpoint(str(tmp_path / "partial"), 1, head, arg, aux)
        models.load_model(f"{tmp_path / 'partial'},1")
