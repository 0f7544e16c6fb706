"""Opt-in: keep freed activation buffers in the process (glibc), which speeds up CPU meta-training.

glibc's ``malloc`` serves every block above its mmap threshold (dynamic, at most 32 MiB by default) with a
fresh ``mmap`` and returns it with ``munmap`` when freed, and trims the heap top above 128 KiB. A meta-step
allocates and frees the same large activation buffers over and over, so each one is mapped again and touched
page by page: many minor page faults per iteration. :func:`keep_freed_memory` sets
``M_MMAP_THRESHOLD = 32 MiB`` and ``M_TRIM_THRESHOLD = 4 GiB`` with ``mallopt``, so freed buffers stay in the
heap and are reused (the same effect as
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296``).

32 MiB is glibc's largest threshold, so blocks above it (the largest query activations of 20-way tasks) are
still mapped afresh. ``M_MMAP_MAX = 0`` would serve them from the heap too: it speeds up torch's batch-norm
forward on such a block (``benchmarks/kernels.py``) but made a whole task only a little faster and raised its
peak memory noticeably (heap fragmentation; measurements in ``benchmarks/README.md``), so it is left at glibc's
default.

The cost: memory freed after a peak is kept by the process (reused by the next meta-step, not returned to
the system). It is process-wide, so the library never calls it on its own: an application opts in by calling
it once (the ``torchmaml`` command line does, and the benchmarks), unless the environment sets
``TORCHMAML_MALLOC_TUNING=0`` or tunes glibc's allocator itself (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_`` or ``glibc.malloc`` in ``GLIBC_TUNABLES``: the user's choice
wins; the memory benchmarks use ``MALLOC_MMAP_THRESHOLD_=131072`` so that RSS follows live memory).
Elsewhere than glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for the mmap threshold on 64-bit systems
TRIM_THRESHOLD = 4 * 1024**3 - 1
OPT_OUT = "TORCHMAML_MALLOC_TUNING"
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's allocator as described in the module docstring, once per process; whether it was done."""
    if os.environ.get(OPT_OUT, "1") == "0" or platform.libc_ver()[0] != "glibc" or _user_tuned():
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _user_tuned() -> bool:
    """Whether the environment already sets glibc's mmap or trim threshold."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in tunables
