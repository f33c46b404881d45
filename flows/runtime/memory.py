"""Keep the process's memory flat under glibc's malloc.

glibc serves allocations of 128 KiB and more with mmap and returns them to the system when
freed, but when such a block is freed it raises that threshold to the block's size (up to
32 MiB), so from then on blocks of that size come from the heap, where freed space is kept
and fragments. The customer cache churns at its size limit, and its dict's table (a few
MiB for 100,000 entries) is reallocated now and then: with the threshold raised, each
reallocation can leave the old table's space behind, and RSS climbs in steps (the unit
test churns a cache and shows it). Pinning the threshold at glibc's own default keeps large
blocks on mmap for good. A `MALLOC_MMAP_THRESHOLD_` set in the environment wins; on a C
library without `mallopt` (macOS) or where it has no effect (musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
DEFAULT_THRESHOLD = 128 * 1024  # glibc's default before any dynamic adjustment


def pin_mmap_threshold(environ: Mapping[str, str] = os.environ, threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold (disabling its dynamic adjustment); True when applied."""
    if "MALLOC_MMAP_THRESHOLD_" in environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
