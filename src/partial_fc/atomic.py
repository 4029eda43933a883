"""Files that appear whole or not at all: write under a temporary name, fsync, rename over the target.

Readers see the old file or the complete new one, never a half-written one, even if the writer is killed.
"""
from __future__ import annotations

import os


def replace(path: str, write) -> None:
    """write(tmp_path) then rename over `path`; the temporary file is removed if writing fails."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_dir(os.path.dirname(path) or ".")
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _sync_dir(folder: str) -> None:
    """Make the rename itself durable: without it a power cut can lose the new directory entry."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    replace(path, write)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())
