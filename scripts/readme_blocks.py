"""The README's generated blocks: output of real runs, pasted by a script, never by hand.

    python scripts/readme_blocks.py example LOG [DATA] [--source TEXT]   (scripts/readme_example.sh: the
                          example's output, and what raw pixels score on DATA's .bin sets)
    python scripts/readme_blocks.py rates TABLE      (scripts/study_rates.sh --readme: the rates study's table)
    python scripts/readme_blocks.py --check          (exit 1 if a block's inputs changed since it was written)

A block sits between two HTML comments, invisible on the rendered page:

    <!-- generated: NAME by SCRIPT, inputs FINGERPRINT -->
    ...
    <!-- end of generated: NAME -->

FINGERPRINT is a hash of the files that decide what the run prints (config.sh, the scripts): a test compares
it with the files on disk, so changing the example's settings without re-running the script fails the tests
instead of leaving a stale block. (A change in the trainer's code is not caught this way; re-run the script
after one that moves the figures.)
"""
from __future__ import annotations

import hashlib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# name -> (the script that writes it, the files whose content decides the run)
BLOCKS = {
    "example": ("scripts/readme_example.sh", ("config.sh", "scripts/example.sh")),
    "rates": ("scripts/study_rates.sh", ("config.sh", "scripts/example.sh", "scripts/study_rates.sh")),
}
RANK0 = re.compile(r"^\[0\]<std(?:out|err)>:")
OTHER_RANK = re.compile(r"^\[\d+\]<std(?:out|err)>:")


def fingerprint(name: str, root: str = ROOT) -> str:
    digest = hashlib.sha256()
    for path in BLOCKS[name][1]:
        with open(os.path.join(root, path), "rb") as f:
            digest.update(path.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:12]


def _markers(name: str):
    begin = re.compile(rf"<!-- generated: {name} by \S+, inputs (\w+) -->\n")
    end = f"<!-- end of generated: {name} -->"
    return begin, end


def recorded(text: str, name: str) -> str | None:
    """The fingerprint a block was written with, or None when the README has no such block."""
    match = _markers(name)[0].search(text)
    return match.group(1) if match else None


def replace(text: str, name: str, body: str, root: str = ROOT) -> str:
    """`text` with block `name` holding `body` and the current fingerprint of its inputs."""
    begin, end = _markers(name)
    match = begin.search(text)
    stop = text.find(end, match.end()) if match else -1
    if not match or stop < 0:
        raise SystemExit(f"readme_blocks: README.md has no block {name!r} (its two marker comments)")
    head = f"<!-- generated: {name} by {BLOCKS[name][0]}, inputs {fingerprint(name, root)} -->\n"
    return text[:match.start()] + head + body.rstrip("\n") + "\n" + text[stop:]


def pixel_baseline(data_dir: str) -> str:
    """What raw pixels score on the data's .bin sets (mean-subtracted per image, compared by the same 10-fold
    protocol as the network's embeddings): the floor a trained network must clear."""
    import glob

    import numpy as np

    from partial_fc.data import bins
    from partial_fc.evaluation import protocol

    scores = []
    for path in sorted(glob.glob(os.path.join(data_dir, "*.bin"))):
        images, same = bins.load_pairs(path)
        pixels = bins.decode(images, path).reshape(len(images), -1).astype(np.float64)
        accuracy = protocol.evaluate(pixels - pixels.mean(axis=1, keepdims=True), same)[0]
        scores.append(f"{accuracy:.4f} on {os.path.basename(path)[:-4]}")
    return ", ".join(scores)


def example_body(log: str, data_dir: str | None = None, source: str = "a run of scripts/example.sh") -> str:
    """The README's excerpt of the example's output: rank 0's lines, the horovodrun prefix removed; the
    sampler's line, the first step's line, and the last step's line to the end (its verification table, the
    loss summary, time and memory)."""
    lines = []
    for line in log.splitlines():
        if OTHER_RANK.match(line) and not RANK0.match(line):
            continue
        line = RANK0.sub("", line).rstrip()
        if line.startswith("[example]") or not line.strip():
            continue
        lines.append(line)
    steps = [i for i, l in enumerate(lines) if l.startswith("step ") and "samples/s" in l]
    sampling = [l for l in lines if l.strip().startswith("sampling:")]
    if len(steps) < 2 or not sampling or not any(l.startswith("verification at step") for l in lines[steps[-1]:]):
        raise SystemExit("readme_blocks: the log lacks the sampling line, two step lines or the last "
                         "verification: not the example's output?")
    keep = sampling[:1] + ["...", lines[steps[0]], "..."] + lines[steps[-1]:]
    from partial_fc.bench.common import cpu_model  # the machine header's CPU name, as every benchmark prints it

    where = (f"(scripts/readme_example.sh wrote this from {source}, on {cpu_model() or 'an unknown CPU'}, "
             f"{os.cpu_count()} cores" + (f"; raw pixels of the same pairs score {pixel_baseline(data_dir)}"
                                          if data_dir else "") + ".)")
    return "\n".join("    " + l for l in keep) + "\n\n" + where + "\n"


def check(root: str = ROOT) -> list[str]:
    """Problems: blocks whose recorded fingerprint is not that of their inputs now."""
    with open(os.path.join(root, "README.md")) as f:
        text = f.read()
    problems = []
    for name, (script, inputs) in BLOCKS.items():
        found = recorded(text, name)
        if found is None:
            problems.append(f"README.md: no generated block {name!r}")
        elif found != fingerprint(name, root):
            problems.append(f"README.md: block {name!r} was written before {', '.join(inputs)} changed: "
                            f"re-run {script}")
    return problems


def main(argv) -> int:
    if argv == ["--check"]:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    described = None
    if "--source" in argv:  # what the log is a run of, for the note under the block
        at = argv.index("--source")
        described, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    if len(argv) not in (2, 3) or argv[0] not in BLOCKS:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    name, source = argv[:2]
    with open(source) as f:
        content = f.read()
    if name == "example":
        body = example_body(content, argv[2] if len(argv) == 3 else None,
                            **({"source": described} if described else {}))
    else:
        body = "\n".join("    " + l for l in content.splitlines()) + "\n"
    with open(README) as f:
        text = f.read()
    with open(README + ".tmp", "w") as f:
        f.write(replace(text, name, body))
    os.replace(README + ".tmp", README)
    print(f"readme_blocks: README.md block {name!r} rewritten from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
