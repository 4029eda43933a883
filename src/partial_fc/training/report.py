"""What the trainer reports on rank 0: log lines, a progress bar on a terminal, TensorBoard scalars, and
a machine-readable metrics file (metrics.jsonl, one JSON object per line) that tools can plot.

Other ranks get a Reporter that stays silent, so the loop calls the same methods everywhere.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class SamplingWindow:
    """What the center sampler did on this rank's shard over one report window (head/sampler.py).

    Per step the shard keeps `kept` of its `count` centers: `positives` are classes of the global batch, the
    rest are negatives drawn at random. The mean of both, and the share of the shard's negative classes
    (count - positives) drawn per step, show Partial FC at work: at r = 1.0 every negative is used, at
    r = 0.1 about a tenth."""

    def __init__(self):
        self.steps = self.kept = self.positives = 0
        self.seen = 0.0

    def add(self, kept: int, positives: int, count: int) -> None:
        self.steps += 1
        self.kept += kept
        self.positives += positives
        self.seen += (kept - positives) / max(count - positives, 1)

    def metrics(self) -> dict:
        n = max(self.steps, 1)
        return {"sampled_rows": round(self.kept / n, 1), "sampled_positives": round(self.positives / n, 1),
                "sampled_negatives": round((self.kept - self.positives) / n, 1),
                "negatives_seen": round(self.seen / n, 4)}

    def text(self) -> str:
        m = self.metrics()
        return (f"  kept {m['sampled_rows']:g}: {m['sampled_positives']:g} pos + {m['sampled_negatives']:g} neg "
                f"({100 * m['negatives_seen']:.1f}% of negatives)")


class Reporter:
    def __init__(self, output: str, *, active: bool, world_size: int, batch_size: int, total_steps: int,
                 frequent: int, start_step: int = 0, tensorboard: bool = True, stream=None):
        self.active = active
        self.world_size, self.batch_size = world_size, batch_size
        self.total_steps, self.frequent = total_steps, frequent
        self.stream = stream or sys.stdout
        self.writer = self.metrics = self.log = self.bar = None
        self._window_start, self._window_step = time.perf_counter(), start_step
        self._start, self._start_step = self._window_start, start_step
        self._losses = []
        self._sampling = SamplingWindow()
        self.first_loss = self.last_loss = None   # means of the first and the latest report window
        if not active:
            return
        if self.stream.isatty():
            # Between the log lines: steps done, rate and the last loss (log lines are written above it).
            self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit="step", leave=False,
                            dynamic_ncols=True)
        os.makedirs(output, exist_ok=True)
        self.log = open(os.path.join(output, "train.log"), "a", buffering=1)
        self.metrics = open(os.path.join(output, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(output, "tensorboard"), purge_step=start_step or None)

    def info(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
        self.log.write(text + "\n")

    def _record(self, step: int, **values) -> None:
        self.metrics.write(json.dumps(dict(step=step, time=round(time.time(), 3), **values)) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def step(self, step: int, loss: float, lr: float, sampled: tuple[int, int, int] | None = None, **extra) -> None:
        """Called after every step (0-based `step` has just been applied). sampled: (rows kept, of them
        positives, rows of the shard) of this rank's center sampling, or None (no FC head)."""
        if not self.active:
            return
        self._losses.append(loss)
        if sampled is not None:
            self._sampling.add(*sampled)
        done = step + 1
        if done % self.frequent == 0 or done == self.total_steps:
            now = time.perf_counter()
            per_rank = (done - self._window_step) * self.batch_size / max(now - self._window_start, 1e-9)
            rate_all = (done - self._start_step) / max(now - self._start, 1e-9)
            eta = (self.total_steps - done) / max(rate_all, 1e-9)
            mean_loss = sum(self._losses) / len(self._losses)
            self.first_loss = mean_loss if self.first_loss is None else self.first_loss
            self.last_loss = mean_loss
            sampling = self._sampling if self._sampling.steps else None
            self.info(f"step {done:>6d}/{self.total_steps}  loss {mean_loss:8.4f}  lr {lr:.6f}  "
                      f"{per_rank:7.1f} samples/s per rank, {per_rank * self.world_size:8.1f} total  "
                      f"ETA {_duration(eta)}" + (sampling.text() if sampling else "")
                      + "".join(f"  {k} {v}" for k, v in extra.items()))
            self._record(done, loss=mean_loss, lr=lr, samples_per_s=per_rank * self.world_size,
                         samples_per_s_per_rank=per_rank, **(sampling.metrics() if sampling else {}), **extra)
            self._window_start, self._window_step, self._losses = now, done, []
            self._sampling = SamplingWindow()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)

    def verification(self, step: int, results) -> None:
        if not self.active:
            return
        from ..evaluation.protocol import table

        self.info(table(results, step))
        self._record(step, **{f"val/{r.name}/accuracy": r.accuracy for r in results},
                     **{f"val/{r.name}/xnorm": r.xnorm for r in results})

    def summary(self) -> None:
        if self.active and self.first_loss is not None:
            trend = "fell" if self.last_loss < self.first_loss else "DID NOT FALL"
            self.info(f"loss {self.first_loss:.4f} -> {self.last_loss:.4f} over steps {self._start_step}.."
                      f"{self._window_step} ({trend})")
            # Linux reports ru_maxrss in KiB: the peak resident memory of this process, the rank's trainer.
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.info(f"trained for {_duration(time.perf_counter() - self._start)}; peak resident memory "
                      f"{peak / 2 ** 30:.2f} GiB on rank 0")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for f in (self.log, self.metrics):
            if f is not None:
                f.close()
        if self.writer is not None:
            self.writer.close()
