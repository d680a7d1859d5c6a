"""Host memory housekeeping, called at the edges (train loop, benchmarks).

XLA's compiler allocates and frees a lot of scratch memory while it compiles a large
step (about 0.7 GB for the ResNet-101 training step at 128x128 on XLA:CPU). glibc
keeps freed pages mapped in the heap, so without a trim that memory stays in the
process's resident set for the whole run, and a CPU training run holds ~35% more
memory than its buffers need (benchmarks/train_step.py, "step MB").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (not musl)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Returns heap pages that are free to the OS (glibc `malloc_trim(0)`).

    Cheap (milliseconds) and harmless: it only unmaps memory nobody uses. Call it after
    a large compilation. Returns False where it is not available (not Linux / glibc).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
