"""hostmem.release_freed_memory hands freed heap pages back to the OS."""

import ctypes
import ctypes.util
import sys

import pytest

from dlset_jax import hostmem


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / procfs only")
def test_freed_small_blocks_leave_the_resident_set():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 150 MB in 4 KB blocks: below the mmap threshold, so they come from the heap, as
    # XLA's compiler scratch does, and stay resident after free() until a trim.
    blocks = [libc.malloc(4096) for _ in range(150 * 256)]
    for b in blocks:
        ctypes.memset(b, 1, 4096)
    before_free = _rss_mb()
    for b in blocks[1:-1]:  # keep both ends: the freed run sits inside the heap, where
        libc.free(b)  # free() never returns it (only the heap's top is trimmed)
    after_free = _rss_mb()
    assert hostmem.release_freed_memory()
    after_trim = _rss_mb()
    libc.free(blocks[0])
    libc.free(blocks[-1])
    assert after_free > before_free - 50, (before_free, after_free)  # glibc kept them
    assert after_trim < after_free - 100, (after_free, after_trim)
