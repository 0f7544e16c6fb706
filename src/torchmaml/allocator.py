"""Keep freed activation buffers in the process (glibc), a measured speed-up of CPU meta-training.

glibc's ``malloc`` serves every block above its mmap threshold (dynamic, at most 32 MiB by default) with a
fresh ``mmap`` and returns it with ``munmap`` when freed, and trims the heap top above 128 KiB. A meta-step
allocates and frees the same large activation buffers (conv4 on 75 images: ~15 MB each) over and over, so
each one is mapped again and touched page by page: hundreds of thousands of minor page faults per iteration.
:func:`keep_freed_memory` sets ``M_MMAP_THRESHOLD = 32 MiB`` and ``M_TRIM_THRESHOLD = 4 GiB`` with ``mallopt``,
so freed buffers stay in the heap and are reused (the same effect as
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296``).

32 MiB is glibc's largest threshold, so blocks above it (W3's 300-image query activations: 60 MB) are still
mapped afresh. ``M_MMAP_MAX = 0`` would serve them from the heap too: it halved torch's batch-norm forward on
such a block (``benchmarks/kernels.py``) but made a W3 task only 2.5% (second order) to 11% (first order)
faster and raised its peak memory 11% (float32) to 20% (float64) (heap fragmentation; ``benchmarks/README.md``),
so it is left at glibc's default.

The cost: memory freed after a peak is kept by the process (reused by the next meta-step, not returned to
the system). It is process-wide; :class:`torchmaml.MetaLearner` calls it once, unless the environment sets
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
