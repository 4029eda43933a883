import json
import os

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
    ("PFC_LOSS", "focal", "not a known loss"),
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


# --- MXNet's BLAS kernel (config.prepare_libraries) ----------------------------------------------------------

AVX2 = {"avx", "avx2", "fma", "sse4_2"}


@pytest.mark.parametrize("detected, version, flags, chosen", [
    ("SkylakeX", (0, 3, 21), AVX2 | config.AVX512, None),        # recognised: left alone
    ("Zen", (0, 3, 13), AVX2, None),
    ("Prescott", (0, 3, 21), AVX2 | config.AVX512, "SkylakeX"),  # measured fastest on 0.3.21 (docstring)
    ("Prescott", (0, 3, 13), AVX2 | config.AVX512, "Haswell"),   # 0.3.13's SkylakeX kernel ran at a fifth of it
    ("Prescott", (0, 3, 21), AVX2, "Haswell"),
    ("Nehalem", (0, 3, 21), {"sse4_2", "avx"}, None),           # nothing better that this CPU runs
])
def test_openblas_kernel_choice(detected, version, flags, chosen):
    assert config.openblas_coretype(detected, version, frozenset(flags)) == chosen


def test_prepare_libraries_keeps_a_kernel_the_user_chose_and_sets_one_only_when_detection_failed(monkeypatch):
    env = {"OPENBLAS_CORETYPE": "Zen"}
    assert config.prepare_libraries(env) == {} and env == {"OPENBLAS_CORETYPE": "Zen"}
    monkeypatch.setattr(config, "_cpu_flags", lambda: frozenset(AVX2))
    monkeypatch.setattr(config, "_probe_mxnet_openblas", lambda: {"core": "Prescott", "version": (0, 3, 13)})
    env = {}
    assert config.prepare_libraries(env) == {"OPENBLAS_CORETYPE": "Haswell"} and env["OPENBLAS_CORETYPE"] == "Haswell"
    monkeypatch.setattr(config, "_probe_mxnet_openblas", lambda: {"core": "Haswell", "version": (0, 3, 21)})
    env = {}
    assert config.prepare_libraries(env) == {} and env == {}


def _loaded_openblas_core(code: str) -> str:
    """The core of the OpenBLAS libmxnet.so loaded in a fresh interpreter that ran `code` first."""
    import subprocess
    import sys
    script = code + (
        "\nimport ctypes, os, mxnet\n"
        "lib = ctypes.CDLL(os.path.join(os.path.dirname(mxnet.__file__), 'libopenblas.so.0'), mode=os.RTLD_NOLOAD)\n"
        "lib.openblas_get_corename.restype = ctypes.c_char_p\n"
        "print(lib.openblas_get_corename().decode())\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]


def test_mxnet_runs_a_kernel_made_for_this_cpu_after_prepare_libraries():
    """End to end in a fresh process, as cli.main starts: MXNet's OpenBLAS runs a kernel that this CPU's
    vector units fit, not a generic pre-AVX2 fallback (what MXNet's bundled 0.3.13 picks on CPUs it does not
    know, at a third of the speed)."""
    if not {"avx2", "fma"} <= config._cpu_flags():
        pytest.skip("a CPU without AVX2: the generic kernels are the right ones")
    core = _loaded_openblas_core("from partial_fc.config import prepare_libraries; prepare_libraries()")
    assert core.lower() not in config.GENERIC_OPENBLAS_CORES, core


def test_a_chosen_kernel_is_the_one_the_library_then_runs():
    """For every OpenBLAS that MXNet may load here (the installed one, and the bundled one install.sh keeps
    beside it): when the choice overrides its detection, the library loaded with the choice reports it."""
    path = config.mxnet_openblas_path()
    if path is None:
        pytest.skip("mxnet ships no libopenblas.so.0 here")
    candidates = [p for p in (path, path + ".bundled") if os.path.exists(p)]
    for lib in candidates:
        probed = config.probe_openblas(lib)
        assert probed is not None and probed["version"] >= (0, 3, 13), (lib, probed)
        chosen = config.openblas_coretype(probed["core"], probed["version"], config._cpu_flags())
        if chosen is not None:
            assert config.probe_openblas(lib, coretype=chosen)["core"] == chosen, lib
