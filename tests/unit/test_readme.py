"""The README's generated blocks (scripts/readme_blocks.py): written from real runs, and refused once stale."""
import importlib.util
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("readme_blocks", os.path.join(ROOT, "scripts", "readme_blocks.py"))
blocks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(blocks)

LOG = """\
[1]<stdout>:partial-fc: something rank 1 said
[0]<stdout>:Partial FC training: 2 worker(s), FC collectives via horovod, CPU
[0]<stdout>:  sampling: each step keeps max(100, #positives) of the shard's 1000 centers: ...
[0]<stdout>:step     20/40  loss  50.0000  lr 0.800000     15.0 samples/s per rank,     30.0 total  ETA 1m00s
[0]<stdout>:step     40/40  loss  40.0000  lr 0.080000     15.0 samples/s per rank,     30.0 total  ETA 0m00s
[0]<stdout>:verification at step 40:
[0]<stdout>:  set  pairs  accuracy
[0]<stdout>:  synth_val  300  0.9000
[0]<stdout>:step     60/40  loss  30.0000  lr 0.080000     15.0 samples/s per rank,     30.0 total  ETA 0m00s
[0]<stdout>:verification at step 60:
[0]<stdout>:  synth_val  300  0.9500
[0]<stdout>:loss 50.0000 -> 30.0000 over steps 0..60 (fell)
[0]<stdout>:trained for 1m00s; peak resident memory 2.00 GiB on rank 0
[example] checkpoints ... are in work/example/model
"""


def test_the_readme_blocks_are_as_new_as_their_inputs():
    assert blocks.check() == []  # else: re-run the script each problem names (scripts/readme_example.sh, ...)


def test_a_changed_input_makes_its_block_stale(tmp_path):
    for path in ("README.md", "config.sh", "scripts/example.sh", "scripts/study_rates.sh"):
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        shutil.copy(os.path.join(ROOT, path), tmp_path / path)
    assert blocks.check(str(tmp_path)) == blocks.check()
    with open(tmp_path / "config.sh", "a") as f:
        f.write("export PFC_MAX_STEPS=300\n")
    problems = blocks.check(str(tmp_path))
    assert len(problems) == 2 and all("config.sh" in p and "re-run scripts/" in p for p in problems)


def test_the_example_block_is_rank_0s_output_in_order():
    body = blocks.example_body(LOG)
    lines = [l[4:] for l in body.split("\n\n")[0].splitlines()]
    assert lines[0].startswith("  sampling: each step keeps max(100")
    assert lines[1:4] == ["...", LOG.splitlines()[3].split(":", 1)[1], "..."]
    assert lines[4].startswith("step     60/40") and lines[5] == "verification at step 60:"
    assert lines[-2].startswith("loss 50.0000") and lines[-1].startswith("trained for 1m00s")
    assert len(lines) == 9
    assert not any("rank 1" in l or "[example]" in l or "Partial FC training" in l for l in lines)
    assert "scripts/readme_example.sh wrote this" in body


def test_replace_keeps_the_rest_of_the_readme(tmp_path):
    text = ("before\n<!-- generated: example by scripts/readme_example.sh, inputs 000000000000 -->\nold\n"
            "<!-- end of generated: example -->\nafter\n")
    new = blocks.replace(text, "example", "    new\n")
    assert new.startswith("before\n") and new.endswith("<!-- end of generated: example -->\nafter\n")
    assert "old" not in new and "    new\n<!-- end" in new
    assert blocks.recorded(new, "example") == blocks.fingerprint("example")
