"""`partial-fc plot`: the curves come from the metrics.jsonl that callbacks.Reporter writes."""
import io
import json

import cv2
import pytest

from partial_fc import cli
from partial_fc.evaluation import plot
from partial_fc.training.report import Reporter
from partial_fc.evaluation.protocol import Result


def _run_log(out, steps=8, frequent=2):
    """A metrics.jsonl written by the trainer's own Reporter: losses, lrs, and two verifications."""
    r = Reporter(str(out), active=True, world_size=2, batch_size=4, total_steps=steps, frequent=frequent,
                 tensorboard=False, stream=io.StringIO())
    for step in range(steps):
        r.step(step, loss=50.0 - 3 * step + 0.5 * (step % 3), lr=0.1 if step < 5 else 0.01)
        if step + 1 in (4, 8):
            r.verification(step + 1, [Result("synth_val", 0.6 + 0.04 * step, 0.01, 20.0, 1.1, 20),
                                      Result("synth_hard", 0.55 + 0.02 * step, 0.02, 21.0, 1.3, 20)])
    r.close()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_plotted_data_is_the_logged_data(tmp_path):
    out = tmp_path / "run"
    records = _run_log(out)
    series = plot.read_series(str(out / "metrics.jsonl"))
    reports = [r for r in records if "loss" in r]
    assert series.loss == ([r["step"] for r in reports], [r["loss"] for r in reports])
    assert series.lr == ([r["step"] for r in reports], [r["lr"] for r in reports])
    assert series.loss[0] == [2, 4, 6, 8] and series.lr[1] == [0.1, 0.1, 0.01, 0.01]
    for name in ("synth_val", "synth_hard"):
        vals = [r for r in records if f"val/{name}/accuracy" in r]
        assert series.accuracy[name] == ([4, 8], [r[f"val/{name}/accuracy"] for r in vals])
    drawn = plot.draw(series, str(tmp_path / "c.png"))
    assert drawn["loss"] == series.loss and drawn["lr"] == series.lr
    assert drawn["accuracy/synth_val"] == series.accuracy["synth_val"]
    assert drawn["accuracy/synth_hard"] == series.accuracy["synth_hard"]
    img = cv2.imread(str(tmp_path / "c.png"))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 500 and img.std() > 0


def test_a_resumed_run_reporting_a_step_again_keeps_the_later_value(tmp_path):
    out = tmp_path / "run"
    _run_log(out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "time": 1.0, "loss": 1.25, "lr": 0.01}) + "\n")
    series = plot.read_series(str(out / "metrics.jsonl"))
    assert series.loss[0] == [2, 4, 6, 8] and series.loss[1][2] == 1.25


def test_command_writes_the_png(tmp_path, capsys):
    out = tmp_path / "run"
    _run_log(out)
    assert cli.main(["plot", str(out)]) == 0
    assert "loss over 4 reports, accuracy of synth_hard, synth_val" in capsys.readouterr().out
    assert cv2.imread(str(out / "curves.png")) is not None
    assert cli.main(["plot", str(out / "metrics.jsonl"), "--out", str(tmp_path / "x.png")]) == 0
    assert cv2.imread(str(tmp_path / "x.png")) is not None
    # A run without verification: one panel, still a picture.
    (tmp_path / "lossonly").mkdir()
    (tmp_path / "lossonly" / "metrics.jsonl").write_text('{"step": 2, "loss": 3.0, "lr": 0.1}\n')
    assert cli.main(["plot", str(tmp_path / "lossonly")]) == 0
    assert cv2.imread(str(tmp_path / "lossonly" / "curves.png")) is not None


@pytest.mark.parametrize("content, message", [
    (None, "metrics.jsonl: cannot read"),
    ("", "metrics.jsonl: holds no loss or accuracy reports (empty)"),
    ('{"step": 2, "loss": 3.0}\n{"step": 4, "loss": 3\n', "metrics.jsonl:2: not a JSON line"),
    ('[1, 2]\n', "metrics.jsonl:1: expected a JSON object, got list"),
    ('{"loss": 3.0}\n', "metrics.jsonl:1: no integer 'step'"),
    ('{"step": 2, "loss": "high"}\n', "metrics.jsonl:1: loss is 'high', not a number"),
    ('{"step": 2, "time": 5.0}\n', "metrics.jsonl: holds no loss or accuracy reports"),
])
def test_bad_logs_are_one_line_errors(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    assert cli.main(["plot", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("partial-fc: error: ") and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (run / "curves.png").exists()
