"""`partial-fc plot`: a run's curves as a picture, from the metrics.jsonl the trainer writes.

    partial-fc plot RUN_DIR [--out PNG]          (default: RUN_DIR/curves.png)

metrics.jsonl (training.report.Reporter) holds one JSON object per report: every PFC_FREQUENT steps
{"step", "time", "loss", "lr", "samples_per_s", ...} (the loss is the mean over the steps since the previous
report), and at each verification {"step", "time", "val/<set>/accuracy", "val/<set>/xnorm", ...}. The
picture has the loss (left axis) and learning rate (right axis, log scale) against the step, and below it
the verification accuracy of every set against the step. A resumed run appends to the same file and may
report a step again; the later report of a step wins.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .. import atomic
from ..errors import UserError

METRICS = "metrics.jsonl"
DEFAULT_PNG = "curves.png"


class PlotError(UserError, ValueError):
    """A metrics log that is missing, empty or malformed."""


@dataclass
class Series:
    """Each curve as (steps, values), steps increasing."""
    loss: tuple[list, list] = ([], [])
    lr: tuple[list, list] = ([], [])
    accuracy: dict = field(default_factory=dict)   # set name -> (steps, values)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def metrics_path(run: str) -> str:
    return os.path.join(run, METRICS) if os.path.isdir(run) else run


def read_series(path: str) -> Series:
    """The curves in a metrics.jsonl; PlotError naming the file (and line) when it cannot be read."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise PlotError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PlotError(f"{path}: not a text file") from None
    curves: dict[str, dict[int, float]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise PlotError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        step = obj.get("step")
        if not _is_number(step) or step != int(step):
            raise PlotError(f"{path}:{n}: no integer 'step'")
        for key, value in obj.items():
            wanted = key in ("loss", "lr") or (key.startswith("val/") and key.endswith("/accuracy"))
            if not wanted:
                continue
            if not _is_number(value):
                raise PlotError(f"{path}:{n}: {key} is {value!r}, not a number")
            curves.setdefault(key, {})[int(step)] = float(value)  # a later report of a step wins
    if not curves:
        raise PlotError(f"{path}: holds no loss or accuracy reports" + ("" if lines else " (empty)"))

    def series(key):
        points = sorted(curves.get(key, {}).items())
        return [s for s, _ in points], [v for _, v in points]  # (steps, values)

    acc = {key[len("val/"):-len("/accuracy")]: series(key) for key in sorted(curves) if key.startswith("val/")}
    return Series(loss=series("loss"), lr=series("lr"), accuracy=acc)


def draw(series: Series, out: str, title: str = "") -> dict:
    """Write the curves to the PNG `out` (atomically). Returns what was drawn, read back from the figure's
    lines: {"loss" | "lr" | "accuracy/<set>": (steps, values)}."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = 2 if series.accuracy else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.2 * panels), sharex=True, squeeze=False)
    ax = axes[0, 0]
    if series.loss[0]:
        ax.plot(series.loss[0], series.loss[1], color="tab:blue", marker="." if len(series.loss[0]) < 50 else None,
                label="loss", gid="loss")
    ax.set_ylabel("loss (mean per report)")
    ax.grid(alpha=0.3)
    if series.lr[0]:
        lr_ax = ax.twinx()
        lr_ax.plot(series.lr[0], series.lr[1], color="tab:orange", linestyle="--", label="lr", gid="lr",
                   drawstyle="steps-pre")  # a report's lr held since the previous report
        if all(v > 0 for v in series.lr[1]):
            lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="tab:orange")
    if title:
        ax.set_title(title)
    if series.accuracy:
        acc_ax = axes[1, 0]
        for name, (steps, values) in series.accuracy.items():
            acc_ax.plot(steps, values, marker="o", label=name, gid=f"accuracy/{name}")
        acc_ax.set_ylabel("verification accuracy")
        acc_ax.grid(alpha=0.3)
        acc_ax.legend(loc="lower right")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    drawn = {line.get_gid(): ([int(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
             for a in fig.axes for line in a.get_lines() if line.get_gid()}
    try:
        atomic.replace(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    except OSError as e:
        raise PlotError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return drawn


DESCRIPTION = ("Draw the training loss, learning rate and verification accuracy per .bin against the step, from "
               "the metrics.jsonl the trainer writes.")


def add_arguments(p) -> None:
    p.add_argument("run", help="the trainer's output folder (or its metrics.jsonl)")
    p.add_argument("--out", default=None, metavar="PNG", help=f"the image to write (default: RUN/{DEFAULT_PNG})")


def run(args) -> int:
    """`partial-fc plot`: one line naming the PNG and what it shows."""
    path = metrics_path(args.run)
    series = read_series(path)
    out = args.out or os.path.join(os.path.dirname(path) or ".", DEFAULT_PNG)
    draw(series, out, title=os.path.basename(os.path.dirname(os.path.abspath(path))))
    points = len(series.loss[0]) + sum(len(s) for s, _ in series.accuracy.values())
    print(f"wrote {out}: loss over {len(series.loss[0])} reports"
          + (f", accuracy of {', '.join(series.accuracy)}" if series.accuracy else "") + f" ({points} points)")
    return 0

