"""The process heap for inference on a CPU: keep freed memory for reuse instead of handing it back.

glibc serves every allocation above 32 MB (its largest mmap threshold) with a fresh mmap and
unmaps it on free, so each forward pass of a U-Net at 360x480 page-faults its biggest activations
in again (a 99-channel full-resolution bf16 map is 34 MB): about 40,000 page faults a pass, and
10-15% of predict's CPU time spent in the kernel zeroing pages (`scripts/bench.py predict`
records each side's page faults and kernel time).
`keep_freed_memory` makes glibc serve those from the heap and keep up to KEEP_BYTES of freed
memory there, so the next pass reuses the same pages: the process keeps its peak, which it
needed anyway. A no-op where the C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Freed memory kept in the heap before it is returned: above a forward pass's churn at the model
# sizes camseg uses (at 360x480 a pass page-faulted ~160 MB; 720x960 has four times the pixels).
KEEP_BYTES = 1 << 30

_applied = False


def keep_freed_memory() -> bool:
    """Serve big allocations from the heap and keep freed memory for reuse (process-wide, once).
    True when it applies (glibc), False otherwise."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")  # glibc's soname on every platform it runs on
    # mallopt returns 1 on success; both or neither
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )
    return _applied
