"""glibc allocator tuning for the serving process.

Every forward allocates and frees activations of tens of MB. By default glibc serves those with
mmap/munmap and trims the heap on free, so each forward pays page faults for fresh zeroed
pages. Raising the mmap threshold to 32 MiB and effectively disabling trimming keeps the pages
in the heap for reuse (what MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=... do,
but applied by the process itself so nobody has to remember the environment variables).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int; the largest value keeps freed memory


def tune_glibc_malloc() -> bool:
    """Apply the thresholds via mallopt; False (and nothing changed) when not on glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
