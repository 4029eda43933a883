"""Reading what a training run wrote."""
import json
import os


def losses_by_step(output) -> dict:
    """{step: loss} from the run's metrics.jsonl; a resumed run repeats steps, and the last one counts."""
    by_step = {}
    with open(os.path.join(output, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                by_step[row["step"]] = row["loss"]
    return by_step
