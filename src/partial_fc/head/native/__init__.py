"""What the head needs from outside Python: its native CPU operators, and glibc's malloc_trim.

One MXNet custom-operator library (built by setup.py against the installed mxnet's lib_api) holds
  row_update.cc  the operators on sampled rows of a float32 CPU bank: `pfc_gather_rows` copies rows `index`
                 out with their 1 / |w| in one pass; `pfc_sgd_mom_rows` updates the rows' centers and momentum
                 in place, reading and writing each row once, bit-identical to sgd_mom_update on gathered copies
                 (MXNet's stock operators can only update gathered copies and scatter them back, twice the
                 traffic);
  kernels.cc     the step's large elementwise passes, one loop each (head/kernels.py is their Python face).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sysconfig

import mxnet as mx

def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc malloc_trim; nothing elsewhere).

    Building a multi-GB shard goes through many row blocks of temporaries (random draws, dtype conversions,
    copies in and out of MXNet); glibc keeps their freed pages, about 0.1 GiB at N_local = 1e6, which would
    otherwise stay resident next to the bank for the whole run."""
    global _malloc_trim
    if _malloc_trim is None:
        name = ctypes.util.find_library("c")
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        _malloc_trim = trim or (lambda _pad: 0)
    _malloc_trim(0)


_malloc_trim = None


_NATIVE_DIR = os.path.dirname(os.path.abspath(__file__))
# setup.py builds the library as an extension of this interpreter, hence its file name suffix.
NATIVE_LIBRARY = "_row_update" + sysconfig.get_config_var("EXT_SUFFIX")
_native = {}  # device type -> the loaded operator, or None where it is not available
_log = logging.getLogger(__name__)


def native_ops(ctx):
    """The module holding the library's operators (mx.nd: pfc_sgd_mom_rows, pfc_exp_row_sum, ...), or None where
    the context cannot run them.

    The operators are CPU only; GPU contexts and a CPU without the compiled library (the project not installed
    by scripts/install.sh) take stock operators, which compute the same numbers with more memory traffic. The
    library is loaded once per process, on first use."""
    kind = ctx.device_type
    if kind not in _native:
        _native[kind] = _load_native() if kind == "cpu" else None
    return _native[kind]


def native_row_update(ctx):
    """mx.nd.pfc_sgd_mom_rows (row_update.cc: SGD with momentum on rows of the bank, in place), or None."""
    ops = native_ops(ctx)
    return None if ops is None else ops.pfc_sgd_mom_rows


def native_gather(ctx):
    """mx.nd.pfc_gather_rows (row_update.cc: rows of the bank and their 1 / |w| in one pass), or None."""
    ops = native_ops(ctx)
    return None if ops is None else ops.pfc_gather_rows


def _load_native():
    path = os.path.join(_NATIVE_DIR, NATIVE_LIBRARY)
    if not os.path.exists(path):
        _log.warning("%s: missing (the project was not installed by scripts/install.sh); the FC head uses stock "
                     "MXNet operators, several times slower on CPU", path)
        return None
    # Loading registers operators, which writes MXNet's operator tables; no queued operator may be reading
    # them from an engine thread meanwhile.
    mx.nd.waitall()
    try:
        mx.library.load(path, verbose=False)
    except mx.base.MXNetError as e:
        _log.warning("%s: cannot be loaded by this MXNet (%s); rebuild it with scripts/install.sh. The FC head "
                     "uses stock MXNet operators, several times slower on CPU", path,
                     str(e).strip().splitlines()[-1])
        return None
    return mx.nd
