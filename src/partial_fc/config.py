"""The configuration: one typed reader of PFC_* environment variables (docs/design.md §4).

Defaults live in the Config dataclass below, next to the reason for each; dataset and loss presets are tables.
Unknown PFC_* keys and malformed values are errors that name the key, never silently ignored.
This is the only module that reads os.environ.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Mapping, MutableMapping

from .errors import UserError


PREFIX = "PFC_"


class ConfigError(UserError, ValueError):
    """A PFC_* setting that is unknown or malformed."""
    EXIT_STATUS = 2


# Dataset presets: class counts of the public training sets, plus synthetic sizes for benchmarks.
DATASETS: dict[str, dict] = {
    "webface":       {"num_classes": 10_575},
    "emore":         {"num_classes": 85_742},
    "ms1mv2":        {"num_classes": 85_742},
    "glint360k":     {"num_classes": 360_232},
    "synthetic":     {"num_classes": 1_000},
    "synthetic_1m":  {"num_classes": 1_000_000},
    "synthetic_10m": {"num_classes": 10_000_000},
    "synthetic_20m": {"num_classes": 20_000_000},
    "synthetic_30m": {"num_classes": 30_000_000},
    "synthetic_100m": {"num_classes": 100_000_000},
}

# PFC_LOSS=triplet trains the embedding with a margin triplet loss and no FC head (head/triplet.py).
TRIPLET = "triplet"

# Margin presets users pick with PFC_LOSS: (m1, m2, m3) of z_y = s * (cos(m1 * theta + m2) - m3) (head/margin.py).
LOSSES: dict[str, tuple[float, float, float]] = {
    "arcface": (1.0, 0.5, 0.0),     # ArcFace, arXiv 1801.07698
    "cosface": (1.0, 0.0, 0.4),     # CosFace, arXiv 1801.09414
    "combined": (1.0, 0.3, 0.2),
    "softmax": (1.0, 0.0, 0.0),
}


@dataclass
class Config:
    # --- data ---
    dataset: str = "emore"             # a key of DATASETS; sets num_classes unless PFC_NUM_CLASSES is given
    num_classes: int = 0               # 0: take it from the dataset preset
    data_dir: str = ""                 # folder with train.rec / train.idx / property and the .bin sets;
                                       # empty: random synthetic images (benchmarks, smoke runs)
    val_targets: str = ""              # comma-separated .bin names in data_dir to verify on; empty: every *.bin
    data_threads: int = 2              # JPEG decode threads per worker
    synthetic_identities: int = 0      # without data_dir: 0 = labels uniform over all classes (benchmarks);
                                       # K = K recurring identities, each its own image, so the loss can fall
    max_bad_fraction: float = 0.001    # stop when more than this fraction of decoded records is corrupt
    # --- head ---
    loss: str = "arcface"              # arcface | cosface | combined | softmax (a preset of m1, m2, m3);
                                       # triplet: P x K batches, margin triplet loss, no FC head
    margin_s: float = 64.0             # logit scale s
    margin_m1: float = -1.0            # < 0: take m1, m2, m3 from the loss preset
    margin_m2: float = -1.0
    margin_m3: float = -1.0
    embedding_size: int = 512
    sample_rate: float = 1.0           # r: fraction of each shard's centers used per step (1.0 = all)
    memory_bank: str = "device"        # device | host: where centers and their momentum live
    bank_dtype: str = "float32"        # float32 | float16 | bfloat16: storage of centers and momentum; compact
                                       # halves the bank (10 M classes on one machine), math stays float32
    # --- optimisation (reference defaults) ---
    batch_size: int = 64               # per worker
    lr: float = 0.1                    # backbone lr for a global batch of 512; scaled linearly with W*B
    memory_bank_lr: float = 0.1        # lr of the centers, scaled like lr
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_steps: str = "100000,160000,220000"  # steps at which lr is divided by 10
    warmup_steps: int = 0
    max_steps: int = 0                 # 0: the last lr step + 20000 (the dataset schedule)
    lr_schedule: str = "step"          # step: lr / 10 at each of lr_steps; poly: (1 - progress)^lr_power after
                                       # the warmup (arcface_torch's default); both warm up linearly
    lr_power: float = 2.0              # exponent of the poly schedule
    # --- starting from a model (training/pretrained.py) ---
    pretrained: str = ""               # PREFIX,EPOCH of an MXNet model, or a model-NNNN.json manifest: the
                                       # backbone starts from it (new head, fresh optimizer); "" from the seed
    pretrained_strict: bool = True     # False: parameters the network has and the file lacks start from the
                                       # seed, and the file's extra ones are ignored (both listed at start)
    init_centers: str = "random"       # random | imprint: each center the normalised mean embedding of its
                                       # class's training images under the pretrained backbone
    freeze_backbone_steps: int = 0     # the first K steps update only the head (the backbone is not updated)
    triplet_margin: float = 0.3        # PFC_LOSS=triplet: margin of max(d(a,p) - d(a,n) + margin, 0)
    triplet_images: int = 4            # PFC_LOSS=triplet: K images per identity in a batch (B = P x K)
    # --- run ---
    network: str = "r100"              # a name of symbols.NETWORKS
    dropout: float = 0.0               # dropout before the embedding FC (0.4 helps small datasets)
    comm: str = "horovod"              # horovod | mpi | local: transport of the FC's collectives
    collective_timeout: float = 120.0  # seconds a step may wait on the other ranks before this rank stops
                                       # with an error (a dead or stuck peer would hang it forever); 0: never
    slow_timeout: float = 1800.0       # the same for start-up, the first step, verification and checkpoint saving,
                                       # where ranks wait for one rank's long work (indexing, lazy init, evaluation,
                                       # the slowest writer)
    seed: int = 0
    frequent: int = 20                 # log every this many steps
    verbose: int = 2000                # verify on the .bin sets every this many steps
    output: str = "models"             # checkpoints, logs and config.json go here
    checkpoint_steps: int = 0          # save every this many steps (0: every `verbose` steps) and at the end
    keep_checkpoints: int = 3          # how many of the latest checkpoints to keep (older ones are removed)
    save_checkpoints: bool = True      # False: write no checkpoint at all (benchmarks, smoke runs)
    resume: str = ""                   # "" start fresh; "1"/"latest": the newest complete checkpoint in
                                       # `output`; or the path of a checkpoint manifest (model-NNNN.json)
    tensorboard: bool = True           # write TensorBoard scalars to output/tensorboard (rank 0)
    eval_batch_size: int = 32          # batch of the verification forward passes (memory grows with it)
    fp16: bool = False                 # fp16 trunk, fp32 head and master weights, dynamic loss scaling
    profile: bool = False              # time the FC head every step (fc_s in metrics.jsonl); waits for MXNet
                                       # around the head, so leave it off for real runs (bench train sets it)
    # fields derived in __post_init__ (not environment keys)
    margins: tuple = field(default=(), init=False, repr=False)
    pretrained_from: dict = field(default_factory=dict, init=False, repr=False)  # set by training/pretrained.py:
                                       # what the backbone was loaded from, recorded in config.json

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ConfigError(f"PFC_DATASET={self.dataset!r} is not a known dataset "
                              f"(known: {', '.join(DATASETS)})")
        # With a data folder the class count comes from its property file (the trainer reads it), unless
        # PFC_NUM_CLASSES is given, which must then agree with it.
        if self.num_classes == 0 and not self.data_dir:
            self.num_classes = DATASETS[self.dataset]["num_classes"]
        if self.loss not in LOSSES and self.loss != TRIPLET:
            known = ", ".join((*LOSSES, TRIPLET))
            raise ConfigError(f"PFC_LOSS={self.loss!r} is not a known loss (known: {known})")
        preset = LOSSES.get(self.loss, LOSSES["softmax"])  # triplet has no margin softmax
        self.margins = tuple(p if v < 0 else v for p, v in zip(preset, (self.margin_m1, self.margin_m2, self.margin_m3)))
        checks = [
            (self.num_classes >= 1 or (self.data_dir and self.num_classes == 0), "PFC_NUM_CLASSES", "must be >= 1"),
            (0.0 < self.sample_rate <= 1.0, "PFC_SAMPLE_RATE", "must be in (0, 1]"),
            (self.embedding_size >= 1, "PFC_EMBEDDING_SIZE", "must be >= 1"),
            (self.batch_size >= 1, "PFC_BATCH_SIZE", "must be >= 1"),
            (self.margin_s > 0, "PFC_MARGIN_S", "must be > 0"),
            (self.lr >= 0 and self.memory_bank_lr >= 0, "PFC_LR / PFC_MEMORY_BANK_LR", "must be >= 0"),
            (0.0 <= self.momentum < 1.0, "PFC_MOMENTUM", "must be in [0, 1)"),
            (self.weight_decay >= 0, "PFC_WEIGHT_DECAY", "must be >= 0"),
            (self.memory_bank in ("device", "host"), "PFC_MEMORY_BANK", "must be 'device' or 'host'"),
            (self.bank_dtype in ("float32", "float16", "bfloat16"), "PFC_BANK_DTYPE",
             "must be 'float32', 'float16' or 'bfloat16'"),
            (self.comm in ("horovod", "mpi", "local"), "PFC_COMM", "must be 'horovod', 'mpi' or 'local'"),
            (self.frequent >= 1 and self.verbose >= 1, "PFC_FREQUENT / PFC_VERBOSE", "must be >= 1"),
            (self.warmup_steps >= 0 and self.max_steps >= 0, "PFC_WARMUP_STEPS / PFC_MAX_STEPS", "must be >= 0"),
            (self.checkpoint_steps >= 0, "PFC_CHECKPOINT_STEPS", "must be >= 0"),
            (self.keep_checkpoints >= 1, "PFC_KEEP_CHECKPOINTS", "must be >= 1"),
            (self.data_threads >= 1, "PFC_DATA_THREADS", "must be >= 1"),
            (0 <= self.synthetic_identities <= max(self.num_classes, 0) or bool(self.data_dir),
             "PFC_SYNTHETIC_IDENTITIES", "must be in [0, PFC_NUM_CLASSES]"),
            (0.0 <= self.max_bad_fraction < 1.0, "PFC_MAX_BAD_FRACTION", "must be in [0, 1)"),
            (0.0 <= self.dropout < 1.0, "PFC_DROPOUT", "must be in [0, 1)"),
            (self.eval_batch_size >= 1, "PFC_EVAL_BATCH_SIZE", "must be >= 1"),
            (self.collective_timeout >= 0 and self.slow_timeout >= 0, "PFC_COLLECTIVE_TIMEOUT / PFC_SLOW_TIMEOUT",
             "must be >= 0 seconds"),
            (self.lr_schedule in ("step", "poly"), "PFC_LR_SCHEDULE", "must be 'step' or 'poly'"),
            (self.lr_power > 0, "PFC_LR_POWER", "must be > 0"),
            (self.init_centers in ("random", "imprint"), "PFC_INIT_CENTERS", "must be 'random' or 'imprint'"),
            (self.init_centers == "random" or bool(self.pretrained), "PFC_INIT_CENTERS",
             "=imprint needs PFC_PRETRAINED (the centers are the pretrained backbone's embeddings)"),
            (self.init_centers == "random" or bool(self.data_dir), "PFC_INIT_CENTERS",
             "=imprint needs PFC_DATA_DIR (the training images to embed)"),
            (self.freeze_backbone_steps >= 0, "PFC_FREEZE_BACKBONE_STEPS", "must be >= 0"),
            (self.triplet_margin >= 0, "PFC_TRIPLET_MARGIN", "must be >= 0"),
            (self.triplet_images >= 2, "PFC_TRIPLET_IMAGES", "must be >= 2 (an anchor needs a positive)"),
            (self.loss != TRIPLET or self.batch_size % max(self.triplet_images, 1) == 0, "PFC_BATCH_SIZE",
             f"must be a multiple of PFC_TRIPLET_IMAGES={self.triplet_images} with PFC_LOSS=triplet"),
            (self.loss != TRIPLET or bool(self.data_dir), "PFC_LOSS", "=triplet needs PFC_DATA_DIR (P x K batches)"),
            (self.loss != TRIPLET or self.init_centers == "random", "PFC_INIT_CENTERS",
             "=imprint has no centers to fill with PFC_LOSS=triplet"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"{key} {why}")
        steps = self.lr_step_list
        if steps != sorted(steps) or any(s <= 0 for s in steps):
            raise ConfigError(f"PFC_LR_STEPS={self.lr_steps!r} must be increasing positive integers")

    @property
    def total_steps(self) -> int:
        """max_steps, or the dataset schedule: the last lr step plus 20000."""
        return self.max_steps or (self.lr_step_list[-1] + 20_000 if self.lr_step_list else 20_000)

    @property
    def save_every(self) -> int:
        return self.checkpoint_steps or self.verbose

    @property
    def lr_step_list(self) -> list[int]:
        try:
            return [int(s) for s in self.lr_steps.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"PFC_LR_STEPS={self.lr_steps!r} must be comma-separated integers") from None

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["margins"] = list(self.margins)
        return json.dumps(d, indent=2, sort_keys=True)


def env_key(name: str) -> str:
    return PREFIX + name.upper()


_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse(key: str, raw: str, typ):
    try:
        if typ is bool:
            return _BOOL[raw.strip().lower()]
        value = typ(raw.strip()) if typ is not str else raw
        if typ is float and not math.isfinite(value):
            raise ValueError  # nan passes every range check below as False, inf as True: neither is meant
        return value
    except (KeyError, ValueError):
        kind = {bool: "a boolean (0/1/true/false)", int: "an integer", float: "a finite number"}.get(typ, typ.__name__)
        raise ConfigError(f"{key}={raw!r} is not {kind}") from None


# Library settings (not PFC_*) that benchmarks report beside their figures; read here, never set.
THREAD_SETTINGS = ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "OPENBLAS_NUM_THREADS", "MXNET_ENGINE_TYPE",
                   "HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD")


# What each launcher tells a worker its rank is: horovodrun, Open MPI's mpirun, MPICH / Intel MPI / srun.
LAUNCHER_RANKS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launcher_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This worker's rank as its launcher set it, before any collective starts; None without a launcher."""
    environ = os.environ if environ is None else environ
    for key in LAUNCHER_RANKS:
        if environ.get(key, "").strip().isdigit():
            return int(environ[key])
    return None


def thread_settings(environ: Mapping[str, str] | None = None) -> dict:
    """The thread and Horovod settings of this process's launch environment (None where unset)."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(k) for k in THREAD_SETTINGS}


def use_every_core(environ: MutableMapping[str, str] | None = None) -> None:
    """Give MXNet every core (OMP_NUM_THREADS = the core count) unless a thread count is already set.

    Without OMP_NUM_THREADS, MXNet 1.x runs its operators (its matmuls included) on half the cores it sees (it
    assumes two hyper-threads per core). For a one-process benchmark timed against numpy, whose BLAS uses every
    core, that would measure the thread count rather than the operator. Effective only before MXNet is
    imported: it reads the setting once.
    """
    environ = os.environ if environ is None else environ
    if not any(k in environ for k in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")):
        environ["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)


# OpenBLAS picks its kernels from the CPU model when it loads. A model missing from its table (a CPU newer than
# the build, or a VM that masks the model) gets one of these generic pre-AVX2 kernels, a third of the speed.
GENERIC_OPENBLAS_CORES = frozenset({"prescott", "katmai", "coppermine", "northwood", "banias", "core2", "penryn",
                                    "dunnington", "nehalem", "atom", "unknown"})
AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def openblas_coretype(detected: str, version: tuple[int, ...], cpu_flags: set[str] | frozenset) -> str | None:
    """The OPENBLAS_CORETYPE to force on an OpenBLAS of `version` that detected core `detected` on a CPU with
    /proc/cpuinfo `cpu_flags`; None keeps the library's own choice (a core it recognised stays as it is).

    Measured (docs/performance.md, "BLAS kernel"), [128, 512] x [512, 1e5]^T on a 2-core AVX-512 Xeon whose
    model OpenBLAS 0.3.13 does not know: 0.3.13's SkylakeX kernel ran at 29 GFLOP/s, its Haswell one at 134;
    0.3.21's SkylakeX at 193, its Haswell at 151. Hence SkylakeX only from 0.3.21 on, Haswell otherwise."""
    if detected.strip().lower() not in GENERIC_OPENBLAS_CORES:
        return None
    if AVX512 <= cpu_flags and version >= (0, 3, 21):
        return "SkylakeX"
    if {"avx2", "fma"} <= cpu_flags:
        return "Haswell"
    return None


def prepare_libraries(environ: MutableMapping[str, str] | None = None) -> dict:
    """Settings that MXNet's native libraries read once, when they load; every entry point (cli.main, the test
    session) calls this before anything imports MXNet. Returns what it set, {} when nothing.

    OPENBLAS_CORETYPE: when MXNet's OpenBLAS does not recognise this CPU (openblas_coretype), it gets the best
    kernel the CPU runs, unless the user set one. numpy is imported first so that its own OpenBLAS, a separate
    library that reads the same variable, keeps the kernel it chose itself."""
    environ = os.environ if environ is None else environ
    chosen = {}
    if "OPENBLAS_CORETYPE" not in environ:
        import numpy
        del numpy  # imported for its effect: numpy's OpenBLAS loads with its own kernel choice
        probed = _probe_mxnet_openblas()
        if probed is not None:
            core = openblas_coretype(probed["core"], probed["version"], _cpu_flags())
            if core is not None:
                chosen["OPENBLAS_CORETYPE"] = core
    environ.update(chosen)
    _prepared.update(chosen)
    return chosen


_prepared: dict = {}  # what prepare_libraries set in this process


def blas_kernel_choice(environ: Mapping[str, str] | None = None) -> str:
    """One line for benchmark headers: the OPENBLAS_CORETYPE in force and who chose it."""
    environ = os.environ if environ is None else environ
    value = environ.get("OPENBLAS_CORETYPE")
    if value is None:
        return "OPENBLAS_CORETYPE unset (each OpenBLAS picked its kernel from the CPU)"
    who = "chosen by partial-fc: MXNet's OpenBLAS did not recognise this CPU" if _prepared.get(
        "OPENBLAS_CORETYPE") == value else "set in the environment"
    return f"OPENBLAS_CORETYPE={value} ({who})"


def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


_PROBE = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
for name in ("openblas_get_corename", "openblas_get_config"):
    getattr(lib, name).restype = ctypes.c_char_p
print(lib.openblas_get_corename().decode(), lib.openblas_get_config().decode(), sep="\\n")
"""


def mxnet_openblas_path() -> str | None:
    """The OpenBLAS that libmxnet.so loads (the libopenblas.so.0 beside it), found without importing MXNet."""
    import importlib.util

    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "libopenblas.so.0")
    return path if os.path.exists(path) else None


def _probe_mxnet_openblas() -> dict | None:
    path = mxnet_openblas_path()
    return None if path is None else probe_openblas(path)


def probe_openblas(path: str, coretype: str | None = None) -> dict | None:
    """{"core", "version", "path"} of the OpenBLAS at `path` as it loads here (with OPENBLAS_CORETYPE=coretype
    when given), read in a child process: a library reads the variable only when it loads, so this process
    must not load it first. None when it cannot be read."""
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_VERBOSE", "OPENBLAS_CORETYPE")}
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    try:
        out = subprocess.run([sys.executable, "-S", "-c", _PROBE, path], capture_output=True, text=True,
                             timeout=30, env=env, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"OpenBLAS (\d+)\.(\d+)\.(\d+)", out[1] if len(out) > 1 else "")
    if not out or match is None:
        return None
    return {"core": out[0], "version": tuple(int(g) for g in match.groups()), "path": os.path.realpath(path)}


def load(environ: Mapping[str, str] | None = None, **overrides) -> Config:
    """Build the Config from PFC_* variables of `environ` (default: os.environ), then `overrides`."""
    environ = os.environ if environ is None else environ
    settable = {f.name: f for f in fields(Config) if f.init}
    types = {"str": str, "int": int, "float": float, "bool": bool}
    values = {}
    for key, raw in environ.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):].lower()
        if name not in settable:
            known = ", ".join(env_key(n) for n in settable)
            raise ConfigError(f"unknown setting {key} (known: {known})")
        values[name] = _parse(key, raw, types[settable[name].type])
    for name in overrides:
        if name not in settable:
            raise ConfigError(f"unknown setting {name!r}")
    values.update(overrides)
    return Config(**values)
