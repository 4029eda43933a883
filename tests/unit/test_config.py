import json

import pytest

from partial_fc import config
from partial_fc.config import ConfigError


def test_defaults_and_presets():
    c = config.load({})
    assert c.dataset == "emore" and c.num_classes == 85742
    assert c.margins == (1.0, 0.5, 0.0) and c.margin_s == 64.0
    assert (c.momentum, c.weight_decay, c.embedding_size) == (0.9, 5e-4, 512)
    assert config.load({"PFC_DATASET": "glint360k"}).num_classes == 360232
    assert config.load({"PFC_DATASET": "webface"}).num_classes == 10575
    assert config.load({"PFC_DATASET": "ms1mv2"}).num_classes == 85742
    for n, C in (("1m", 10**6), ("10m", 10**7), ("20m", 2 * 10**7), ("30m", 3 * 10**7), ("100m", 10**8)):
        assert config.load({"PFC_DATASET": f"synthetic_{n}"}).num_classes == C


def test_environment_overrides_are_typed():
    c = config.load({"PFC_SAMPLE_RATE": "0.1", "PFC_NUM_CLASSES": "1000", "PFC_FP16": "true",
                     "PFC_LOSS": "cosface", "PFC_COMM": "mpi", "PATH": "/bin", "OMPI_X": "1"})
    assert c.sample_rate == 0.1 and c.num_classes == 1000 and c.fp16 is True and c.comm == "mpi"
    assert c.margins == (1.0, 0.0, 0.4)
    assert config.load({"PFC_LOSS": "arcface", "PFC_MARGIN_M2": "0.4"}).margins == (1.0, 0.4, 0.0)


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ConfigError, match="unknown setting PFC_SAMPLERATE"):
        config.load({"PFC_SAMPLERATE": "0.1"})


@pytest.mark.parametrize("key,value,message", [
    ("PFC_SAMPLE_RATE", "abc", "is not a finite number"),
    ("PFC_LR", "nan", "is not a finite number"),
    ("PFC_COLLECTIVE_TIMEOUT", "inf", "is not a finite number"),
    ("PFC_SAMPLE_RATE", "0", r"must be in \(0, 1\]"),
    ("PFC_SAMPLE_RATE", "1.5", r"must be in \(0, 1\]"),
    ("PFC_BATCH_SIZE", "3.5", "is not an integer"),
    ("PFC_BATCH_SIZE", "0", "must be >= 1"),
    ("PFC_FP16", "maybe", "is not a boolean"),
    ("PFC_DATASET", "imagenet", "not a known dataset"),
    ("PFC_LOSS", "triplet", "not a known loss"),
    ("PFC_COMM", "nccl", "PFC_COMM"),
    ("PFC_MEMORY_BANK", "disk", "PFC_MEMORY_BANK"),
    ("PFC_LR_STEPS", "10,x", "comma-separated integers"),
    ("PFC_LR_STEPS", "20,10", "increasing"),
    ("PFC_MOMENTUM", "1.0", "PFC_MOMENTUM"),
])
def test_bad_values_are_rejected_with_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config.load({key: value})


def test_json_round_trip():
    c = config.load({"PFC_DATASET": "webface", "PFC_SAMPLE_RATE": "0.3"})
    d = json.loads(c.to_json())
    assert d["num_classes"] == 10575 and d["sample_rate"] == 0.3 and d["margins"] == [1.0, 0.5, 0.0]


def test_use_every_core_only_where_no_thread_count_is_set():
    import os

    environ = {}
    config.use_every_core(environ)
    assert environ == {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    for key in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS"):
        environ = {key: "1"}
        config.use_every_core(environ)
        assert environ == {key: "1"}  # the user's setting stands


def test_importing_config_and_cli_does_not_load_mxnet():
    """cli sets the one-process thread count before MXNet loads (MXNet reads it once, at import)."""
    import subprocess
    import sys

    code = "import sys, partial_fc.config, partial_fc.cli; print('mxnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
