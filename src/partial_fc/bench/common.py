"""What every benchmark shares: the machine header printed beside every figure, tables, JSON output, memory
checks and the shared arguments.

Figures from one machine do not transfer to another: the header names the CPU model, the BLAS libraries
loaded in the process (MXNet's bundled OpenBLAS and numpy's are separate builds; each one's build string
names the kernel it chose for this CPU), their thread counts and the thread settings of the launch. On a
virtual machine it also gives the share of CPU time the hypervisor gave to other guests while the benchmark
ran ("steal"): a few percent or more means the figures of that run are noisy, whatever the code did.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np

from .. import config
from ..args import positive_int
from ..errors import UserError
from ..head import precision

BANK_DTYPES = precision.DTYPES
GIB = 2.0 ** 30
NOISY_STEAL = 0.02  # steal share above which a run's timings are flagged as noisy


class BenchError(UserError, ValueError):
    """A benchmark cannot run as asked (an unsupported option, a missing launcher)."""


def executable(name: str) -> str:
    """`name` from this Python's bin folder (the venv), else from PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.access(here, os.X_OK) else shutil.which(name)
    if not found:
        raise BenchError(f"{name}: not found next to {sys.executable} nor on PATH (install the project first)")
    return found


def horovodrun_local(workers: int) -> list[str]:
    """Horovod: one process per worker on this machine over Gloo, as scripts/example.sh launches training."""
    return [executable("horovodrun"), "-np", str(workers), "-H", f"localhost:{workers}", "--gloo"]


def check_bank_dtype(dtype: str) -> None:
    if dtype not in BANK_DTYPES:
        raise BenchError(f"unknown bank dtype {dtype!r} (known: {', '.join(BANK_DTYPES)})")


def add_bank_dtype(parser, what: str = "the memory bank") -> None:
    parser.add_argument("--bank-dtype", choices=BANK_DTYPES, default="float32",
                        help=f"storage of the centers and momentum of {what} (default: %(default)s)")


def add_dim(parser) -> None:
    parser.add_argument("--dim", type=positive_int, default=512, help="embedding size D (default: %(default)s)")


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def heap_in_use() -> int | None:
    """Bytes this process's C heap has handed out and not got back (glibc mallinfo2's uordblks, every arena), or
    None without glibc 2.33+. Unlike the resident size it moves by the bytes allocated, not by whole pages the
    allocator keeps or returns: a leak of a few bytes per step shows within a few thousand steps."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return int(libc.mallinfo2().uordblks)
    except (OSError, AttributeError):
        return None


def skip_record(n: int, rates, need: int, have: int, log) -> dict:
    message = f"skipped: needs {need / GIB:.1f} GiB, {have / GIB:.1f} available"
    print(f"bench: N_local={n}: {message}", file=log, flush=True)
    return {"n_local": n, "rates": list(rates), "needs_bytes": need, "available_bytes": have, "message": message}


def median_time(fn, repeat: int) -> float:
    fn(0)  # warm-up
    times = []
    for step in range(1, repeat + 1):
        t0 = time.perf_counter()
        fn(step)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memcpy_bandwidth(nbytes: int = 256 << 20, repeat: int = 5) -> float:
    """Bytes per second a numpy copy moves (read + write) between two pre-touched buffers."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    dst.fill(1.0)  # pre-touch: first-touch page faults are not bandwidth
    seconds = median_time(lambda _: np.copyto(dst, src), repeat)
    return 2.0 * nbytes / seconds


def cpu_times() -> tuple[int, int] | None:
    """(steal, wanted) clock ticks of all CPUs since boot, from the first line of /proc/stat: steal is time a
    virtual CPU wanted to run while the hypervisor ran another guest; wanted is every tick that was not idle
    (steal included). None where /proc/stat is not Linux's."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user.
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return steal, user + nice + system + irq + softirq + steal


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the CPU time wanted between two cpu_times() readings that went to other guests."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# The benchmarks import this module before they start, so this reading marks the start of the run.
_CPU_TIMES_AT_START = cpu_times()


def machine_info() -> dict:
    """CPU, cores, library versions and thread pools, as far as they can be read without the environment."""
    import mxnet as mx

    features = mx.runtime.Features()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mxnet": mx.__version__,
        "mxnet_features": [f for f in ("OPENMP", "BLAS_OPEN", "BLAS_MKL", "MKLDNN", "CUDA")
                           if features.is_enabled(f)],
        "numpy": np.__version__,
        "numpy_blas": ",".join(k.removesuffix("_info") for k in _numpy_blas_sections()) or None,
        "blas": _blas_libraries(),
        "process_threads": _process_threads(),
        # Reported, not set: the launch environment decides these (config.sh / the user's shell).
        "thread_settings": config.thread_settings(),
        "mxnet_blas": os.path.realpath(config.mxnet_openblas_path() or "") or None,
        "blas_kernel_choice": config.blas_kernel_choice(),
        "cpu_steal_share": steal_share(_CPU_TIMES_AT_START, cpu_times()),
    }


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (a VM may show a generic one; the BLAS build string then tells
    which kernel the library picked)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _numpy_blas_sections() -> list[str]:
    try:
        from numpy import __config__ as cfg
    except ImportError:
        return []
    return [k for k in dir(cfg) if k.endswith("_info") and "blas" in k and "lapack" not in k
            and not k.startswith("blas_")]


def _blas_libraries() -> dict:
    """Each OpenBLAS loaded in this process (MXNet's and numpy's are separate builds) with its thread
    count and build string, keyed by file name; what threadpoolctl would report. Best effort."""
    found = {}
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line and line.split()[-1].startswith("/")})
    except OSError:
        return found
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
        except OSError:
            continue
        for suffix in ("", "64_"):  # numpy's ILP64 build suffixes its symbols with 64_
            threads = getattr(lib, "openblas_get_num_threads" + suffix, None)
            config = getattr(lib, "openblas_get_config" + suffix, None)
            if threads is not None:
                threads.restype, info = ctypes.c_int, {"threads": int(threads())}
                if config is not None:
                    config.restype = ctypes.c_char_p
                    info["config"] = config().decode(errors="replace").strip()
                found[os.path.basename(path)] = info
                break
    return found


def _process_threads() -> int | None:
    """Threads of this process now (MXNet engine workers, OpenMP and BLAS pools)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration, ValueError):
        return None


def processes_with_env(item: bytes):
    """(pid, environment, command line) of each process whose environment holds `item` (b"NAME=value"),
    read from /proc, both as lists of bytes; a process that ends or cannot be read meanwhile is skipped.
    How the soak benchmark and the tests find the trainer ranks of one run (by its PFC_OUTPUT)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if item in env:
            yield int(pid), env, cmd


# ---- output -----------------------------------------------------------------------------------------------

def emit(report: dict, formatter, as_json: bool, out) -> None:
    """Print the report as JSON or through its table formatter."""
    if as_json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        out.write(formatter(report))
    out.flush()


def machine_lines(m: dict) -> list[str]:
    """The header lines every benchmark prints: cores, libraries, BLAS pools and thread settings."""
    settings = " ".join(f"{k}={v}" for k, v in m["thread_settings"].items() if v is not None) or "none set"
    return [
        f"machine: {m.get('cpu_model') or 'unknown CPU'}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable); mxnet {m['mxnet']} "
        f"[{' '.join(m['mxnet_features'])}]; numpy {m['numpy']} [{m['numpy_blas']}]",
        *(f"blas: {name}: {b['threads']} threads, {b.get('config', '?')}" for name, b in m["blas"].items()),
        f"mxnet's blas: {m.get('mxnet_blas') or 'none found'}; {m.get('blas_kernel_choice')}",
        f"thread settings: {settings}; process threads after the run: {m['process_threads']}",
        *_steal_lines(m.get("cpu_steal_share")),
    ]


def _steal_lines(share: float | None) -> list[str]:
    """The header's steal line, none where the share could not be read (not Linux)."""
    if share is None:
        return []
    noisy = " (noisy: other guests held this machine's cores)" if share >= NOISY_STEAL else ""
    return [f"cpu time stolen by the hypervisor during the run: {share:.1%}{noisy}"]


def table(head, rows) -> list[str]:
    """Lines of a plain-text table: numbers right-aligned, the last (text) column left-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    return [_row(head, widths), _row(tuple("-" * w for w in widths), widths)] + [_row(row, widths) for row in rows]


def target_labels(targets: list[dict], key, label) -> dict:
    """{key(target): ["<label> PASS|FAIL", ...]} for a table's target column."""
    found = {}
    for t in targets:
        found.setdefault(key(t), []).append(f"{label(t)} {'PASS' if t['pass'] else 'FAIL'}")
    return found


def ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"


def _row(cells, widths) -> str:
    """Numbers right-aligned; the last (text) column left-aligned."""
    return "  ".join(x.rjust(w) for x, w in zip(cells[:-1], widths)) + "  " + cells[-1]
