"""What the memory bank needs from outside Python: the native sampled-row update, and glibc's malloc_trim.

row_update.cc is an MXNet custom-operator library (built by setup.py against the installed mxnet's lib_api):
`pfc_sgd_mom_rows` updates rows `index` of a float32 CPU bank's centers and momentum in place, reading and
writing each row once, bit-identical to sgd_mom_update on gathered copies. MXNet's stock operators can
only update gathered copies and scatter them back, twice the memory traffic.
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


def native_row_update(ctx):
    """mx.nd.pfc_sgd_mom_rows (row_update.cc: SGD with momentum on rows of the bank, in place), or None
    where the bank's context cannot run it.

    The operator is CPU only; GPU banks and a CPU bank without the compiled library (the project not
    installed by scripts/install.sh) take the stock-operator path, which computes the same numbers with about
    twice the memory traffic. The library is loaded once per process, on first use."""
    kind = ctx.device_type
    if kind not in _native:
        _native[kind] = _load_native() if kind == "cpu" else None
    return _native[kind]


def _load_native():
    path = os.path.join(_NATIVE_DIR, NATIVE_LIBRARY)
    if not os.path.exists(path):
        _log.warning("%s: missing (the project was not installed by scripts/install.sh); the sampled center "
                     "update uses stock MXNet operators, about twice as slow", path)
        return None
    # Loading registers an operator, which writes MXNet's operator tables; no queued operator may be reading
    # them from an engine thread meanwhile.
    mx.nd.waitall()
    try:
        mx.library.load(path, verbose=False)
    except mx.base.MXNetError as e:
        _log.warning("%s: cannot be loaded by this MXNet (%s); rebuild it with scripts/install.sh. The sampled "
                     "center update uses stock MXNet operators, about twice as slow", path,
                     str(e).strip().splitlines()[-1])
        return None
    return mx.nd.pfc_sgd_mom_rows
