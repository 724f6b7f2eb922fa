"""Freed memory kept for reuse while an estimator runs on the CPU, instead of handed back to the system at once.

An estimator allocates and frees the same large tensors at every step: a refinement step of the Table 1 S-VAE at
d = 40 (256 images, 4 starts, 8 draws) makes logits of 25 MB and factors of 55 MB. glibc's malloc serves a block
above its mmap threshold (at most 32 MB by its own adjustment) from fresh pages, and gives the top of its heap back
above its trim threshold, so each step's blocks were new pages, each zero-filled by the kernel on first touch: 1.8
million page faults in 25 seconds of refinement, against 0.4 million with both thresholds at 1 GB, 18% less time
on the 2-core AMD EPYC of BENCHMARKS.md (a virtual machine, where a fault costs more than on bare metal).

So while an estimator runs, both thresholds are raised; at its end they are set to 32 and 64 MB (where glibc's own
adjustment ends once a process has freed a block that large, as a torch process soon has) and the freed memory is
given back (``malloc_trim``): the process's resident memory is what it was, not the estimator's peak. Nothing is
done where the C library is not glibc, or where the user has configured malloc (any ``MALLOC_*_`` environment
variable): their choice stands.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections.abc import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
KEPT = 1 << 30  # both thresholds while an estimator runs
AFTER = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}  # where glibc's adjustment ends on 64-bit

_lock = threading.Lock()
_depth = 0


def _glibc():
    """The C library where it is glibc and the user has not configured malloc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[None]:
    """Within the block (and any nested in it, from any thread), freed memory is kept for the process's next
    allocations; at the outermost block's end it is given back (see the module's documentation)."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, KEPT)
            libc.mallopt(_M_TRIM_THRESHOLD, KEPT)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for parameter, value in AFTER.items():
                    libc.mallopt(parameter, value)
                libc.malloc_trim(0)


__all__ = ["freed_memory_kept"]
