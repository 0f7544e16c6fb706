"""The kernel-level changes behind conv4's second-order speed, each timed against torch's own way in one process.

Rows (float32, one thread unless ``--threads``; the median of ``--repeats`` timed calls after warm-up ones):

- batch-norm double backward on a W3 support activation ``[20, 64, 28, 28]`` channels-last: the
  Hessian-vector product through ``F.batch_norm`` (torch's double backward) against
  ``torchmaml.models.batch_norm.batch_norm`` (its closed form, ~9 passes);
- convolution double backward on conv4's second block for 20 images (``[20, 64, 14, 14]``, 64 -> 64, 3x3):
  the Hessian-vector product through ``F.conv2d`` against ``torchmaml.models.convolution.conv2d``;
- torch's batch-norm backward kernel on ``[20, 64, 28, 28]`` channels-last with an NCHW output gradient
  (what autograd handed it on conv4's support pass) against a channels-last one (``models.layout``);
- torch's batch-norm forward and backward on a W3 query activation ``[300, 64, 28, 28]`` (60 MB), with glibc
  mapping every block above 32 MiB afresh (``M_MMAP_MAX`` at its default, as ``torchmaml.allocator`` leaves
  it) against ``M_MMAP_MAX = 0`` (switched in the same process with ``mallopt``): the option considered and
  not taken (its cost in peak memory: ``torchmaml.allocator``).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from torchmaml.allocator import M_MMAP_THRESHOLD, MMAP_THRESHOLD
from torchmaml.models.batch_norm import batch_norm
from torchmaml.models.convolution import conv2d

M_MMAP_MAX = -4  # mallopt's parameter number, from glibc's <malloc.h>
GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX
CHANNELS_LAST = torch.channels_last


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def hessian_vector_product(layer: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], object]:
    """A closure timing only the double backward: ``d <grad_inputs, v> / d inputs`` of ``sum(tanh(layer))``."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    first = torch.autograd.grad(torch.tanh(layer(*leaves)).sum(), leaves, create_graph=True)
    cotangents = [torch.randn_like(t) for t in first]
    return lambda: torch.autograd.grad(first, leaves, cotangents, retain_graph=True)


def batch_norm_backward(x: torch.Tensor, grad: torch.Tensor, gamma: torch.Tensor) -> Callable[[], object]:
    """A closure calling torch's training-mode batch-norm backward kernel on ``x`` for the output gradient
    ``grad`` (statistics from one forward call)."""
    _, mean, invstd = torch.native_batch_norm(x, gamma, None, None, None, True, 0.0, 1e-5)
    return lambda: torch.ops.aten.native_batch_norm_backward(
        grad, x, gamma, None, None, mean, invstd, True, 1e-5, [True, True, True]
    )


def rows(repeats: int) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    support = torch.randn(20, 64, 28, 28).contiguous(memory_format=CHANNELS_LAST)
    gamma, beta = torch.rand(64) + 0.5, torch.randn(64)
    results = [
        (
            "batch-norm double backward, [20, 64, 28, 28]: torch's vs models.batch_norm",
            median_ms(
                hessian_vector_product(lambda x, w, b: F.batch_norm(x, None, None, w, b, True), support, gamma, beta),
                repeats,
            ),
            median_ms(hessian_vector_product(lambda x, w, b: batch_norm(x, w, b, 1e-5), support, gamma, beta), repeats),
        )
    ]
    block = torch.randn(20, 64, 14, 14).contiguous(memory_format=CHANNELS_LAST)
    weight, bias = torch.randn(64, 64, 3, 3) * 0.05, torch.randn(64)
    results.append(
        (
            "convolution double backward, [20, 64, 14, 14], 64 -> 64: torch's vs models.convolution",
            median_ms(
                hessian_vector_product(lambda x, w, b: F.conv2d(x, w, b, padding=1), block, weight, bias), repeats
            ),
            median_ms(
                hessian_vector_product(lambda x, w, b: conv2d(x, w, b, (1, 1), (1, 1), (1, 1), 1), block, weight, bias),
                repeats,
            ),
        )
    )
    grad = torch.randn(support.shape)
    results.append(
        (
            "batch-norm backward, [20, 64, 28, 28] channels-last: NCHW vs channels-last gradient",
            median_ms(batch_norm_backward(support, grad, gamma), repeats),
            median_ms(batch_norm_backward(support, grad.contiguous(memory_format=CHANNELS_LAST), gamma), repeats),
        )
    )
    results += allocator_rows(repeats)
    return results


def allocator_rows(repeats: int) -> list[tuple[str, float, float]]:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    query = torch.randn(300, 64, 28, 28).contiguous(memory_format=CHANNELS_LAST)
    gamma, beta = torch.rand(64) + 0.5, torch.randn(64)
    operations = {
        "forward": lambda: torch.native_batch_norm(query, gamma, beta, None, None, True, 0.0, 1e-5),
        "backward": batch_norm_backward(query, torch.randn_like(query), gamma),
    }
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    results = []
    for name, operation in operations.items():
        times = []
        for mmap_max in (GLIBC_MMAP_MAX, 0):
            libc.mallopt(M_MMAP_MAX, mmap_max)
            times.append(median_ms(operation, repeats))
        results.append((f"batch-norm {name}, [300, 64, 28, 28]: M_MMAP_MAX default (used) vs 0 (not used)", *times))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.repeats} calls\n")
    print("| operation: A vs B | A (ms) | B (ms) | A / B |\n|---|---:|---:|---:|")
    for name, before, after in rows(args.repeats):
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.1f}x |")


if __name__ == "__main__":
    main()
