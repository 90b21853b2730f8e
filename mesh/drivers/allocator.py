"""The C allocator's settings for an agent process: chunk-sized buffers are reused, not remapped.

An agent allocates and frees buffers of about a chunk (1 MiB) all the time: a record's plaintext,
a piece for the store, a read for a peer. glibc serves an allocation that large with a fresh
`mmap` and returns the memory when it is freed (or, once its adaptive threshold has moved, from
the heap, whose free top it gives back to the kernel as soon as it exceeds twice that size). Either
way the next buffer's every page is faulted in and zeroed again: ~256 faults per MiB, measured at
an edge as 13,000-22,000 faults per 256 MiB received on a capped link and ~65,000 uncapped, where
the kernel's share of the agent's CPU is largest. With the mmap threshold above a chunk and a trim
threshold above the few chunks in flight at once, freed buffers stay mapped in the heap and are
reused (4,000-4,600 faults capped). The cost is memory: up to TRIM_THRESHOLD_BYTES of free heap
kept per arena instead of returned.
"""

from __future__ import annotations

import ctypes
import functools

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # allocations below this come from the heap (a record is 1 MiB + 4 KiB)
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024  # free heap kept at the top before it is given back
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_chunk_buffers() -> bool:
    """Set the allocator so freed chunk-sized buffers are reused (process-wide, once). False
    where the C library has no glibc `mallopt` (musl accepts and ignores it; macOS lacks it)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
