"""Process-wide memory settings (no dependencies: the API imports it). The API sets the threshold below; for the
model replicas `scripts/measure_replica_memory.py` weighs it first (docs/benchmarks.md, Memory after model jobs)."""

import ctypes
import ctypes.util

# glibc's M_MMAP_THRESHOLD, and the size from which allocations are their own mappings (1 MiB).
M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES = -3, 1024 * 1024


def return_large_buffers_to_the_system() -> bool:
    """Have glibc map every allocation of 1 MiB or more on its own, so that freeing it gives it back at once.

    By default glibc raises its mmap threshold to the size of any mapped block freed (up to 32 MiB): after that,
    large buffers (decoded pixels, PNGs, numpy arrays) come from the malloc arenas of the worker threads that use
    them, which keep them when they are freed. 50 uploads of 15 MB at once left the API at 942 MB for good (117 MB
    at rest), 158 MB with the threshold fixed, which also stops the adjusting (docs/benchmarks.md, Memory after
    upload bursts). Returns whether it was set (False off glibc: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))
    except (OSError, AttributeError):
        return False
