"""What rank 0 reports: log lines on the stream and in train.log, a progress bar only on a terminal."""
import io
import json
import re

from partial_fc.training.report import Reporter


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(tmp_path, stream, steps=6, frequent=3):
    report = Reporter(str(tmp_path), active=True, world_size=2, batch_size=4, total_steps=steps,
                      frequent=frequent, tensorboard=False, stream=stream)
    for step in range(steps):
        report.step(step, 10.0 - step, 0.1)
    report.summary()
    report.close()
    return (tmp_path / "train.log").read_text().splitlines()


def test_a_pipe_gets_the_log_lines_and_nothing_else(tmp_path):
    stream = io.StringIO()
    logged = _run(tmp_path, stream)
    assert stream.getvalue().splitlines() == logged
    assert [line.split()[1] for line in logged[:2]] == ["3/6", "6/6"]
    assert logged[-2] == "loss 9.0000 -> 6.0000 over steps 0..6 (fell)"
    assert re.fullmatch(r"trained for 0m0\ds; peak resident memory \d+\.\d\d GiB on rank 0", logged[-1])
    assert [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [9.0, 6.0]


def test_a_terminal_gets_a_bar_between_the_log_lines(tmp_path):
    stream = Terminal()
    logged = _run(tmp_path, stream)
    text = stream.getvalue()
    assert "6/6" in text and "loss=5.0000" in text          # the bar counted every step
    for line in logged:  # each log line whole, written where the bar was cleared, on a line of its own
        assert "\r" + line + "\n" in text
    assert all("%|" not in line for line in logged)          # the bar never reaches train.log


def test_other_ranks_report_nothing(tmp_path):
    stream = Terminal()
    report = Reporter(str(tmp_path / "r1"), active=False, world_size=2, batch_size=4, total_steps=2, frequent=1,
                      tensorboard=False, stream=stream)
    report.step(0, 1.0, 0.1)
    report.info("hello")
    report.close()
    assert stream.getvalue() == "" and not (tmp_path / "r1").exists()


def test_the_log_says_what_the_sampler_kept_averaged_over_each_window(tmp_path):
    stream = io.StringIO()
    report = Reporter(str(tmp_path), active=True, world_size=2, batch_size=4, total_steps=4, frequent=2,
                      tensorboard=False, stream=stream)
    # A shard of 1000 centers keeping 100 rows: 30 then 40 positives in the first window, 10 twice after.
    for step, positives in enumerate([30, 40, 10, 10]):
        report.step(step, 1.0, 0.1, sampled=(100, positives, 1000))
    report.close()
    first, second = (tmp_path / "train.log").read_text().splitlines()
    assert "kept 100: 35 pos + 65 neg (6.7% of negatives)" in first   # (70/970 + 60/960) / 2
    assert "kept 100: 10 pos + 90 neg (9.1% of negatives)" in second  # 90/990
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["sampled_rows"], r["sampled_positives"], r["sampled_negatives"]) for r in records] == \
        [(100, 35, 65), (100, 10, 90)]
    assert abs(records[0]["negatives_seen"] - (70 / 970 + 60 / 960) / 2) < 1e-4


def test_without_sampling_the_log_has_no_sampler_figures(tmp_path):
    logged = _run(tmp_path, io.StringIO())
    assert not any("kept" in line for line in logged)
    assert all("sampled_rows" not in x for x in (tmp_path / "metrics.jsonl").read_text().splitlines())
