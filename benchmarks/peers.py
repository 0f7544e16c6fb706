"""torchmaml against other MAML implementations, side by side: ms per meta-iteration and peak memory (issue 8).

Implementations (``--implementations``, default all), each given the same ``nn.Module`` (built under the same
seed), the same fixed task batch and ``Adam(lr=1e-3)`` as the outer optimiser:

- ``learn2learn`` 0.2.0: ``MAML(model, lr, first_order=...)``, then per task ``clone()``, ``adapt(support
  loss)`` and ``backward()`` of the query loss. Only ``learn2learn.algorithms.maml`` is loaded (pure Python,
  it needs only torch): ``import learn2learn`` also imports torchvision, gym, scipy and requests, which MAML
  does not use (torchvision would need a torch of its own).
- ``higher`` 0.2.1: ``innerloop_ctx(model, SGD(lr), copy_initial_weights=False,
  track_higher_grads=not first_order)`` per task. First order: the query-loss gradient with respect to the
  (detached) fast weights is added to the model's ``.grad``.
- ``torchopt`` 0.7.3: second order, ``MetaSGD(model, lr)`` per task with ``extract_state_dict`` /
  ``recover_state_dict`` (TorchOpt's MAML example); first order, its functional API (``torchopt.sgd`` and
  ``apply_updates`` on an inner gradient taken without a graph), because ``MetaSGD.step`` always builds the
  second-order graph.
- ``loop``: a plain per-task loop, ``torch.autograd.grad(create_graph=True)`` (``False`` for first order)
  and ``torch.func.functional_call``.
- ``vmap``: naive ``torch.func.vmap`` over the tasks of a ``torch.func.grad``-based MAML (first order:
  the inner gradient is detached).
- ``torchmaml``: ``MetaLearner(model, loss, inner_lr, steps, estimator="unrolled"/"first_order")`` with its
  defaults (``strategy="auto"``, ``compile="auto"``) and its ``meta_step``. Where the default compiles (W1:
  ``vmap``, after 30 s of eager meta-gradients), the child's warm-up runs until it has, so the cell is the
  default's steady state in a long training.
- ``torchmaml-best``: the fastest measured of a few ``MetaLearner`` settings, each timed like an
  implementation of its own: W1 ``vmap`` with ``compile=True``; W2 ``--w2-candidates``, by default ``loop``,
  ``chunked`` (4 tasks per vectorised call) and ``loop+compile`` (``compile=True``). The cell names the
  winner; a note under the table lists every candidate's median.
- ``torchmaml-accelerated`` (W2u only): ``MetaLearner(accelerate(model), ...)`` with the defaults of
  ``torchmaml`` (``torchmaml.models.accelerate``: the user's layers on conv4's fast path). On W2u the
  ``torchmaml`` row is the user's model as it is, ``MetaLearner(model, ...)``.
- ``torchmaml-conv4`` (W2u only): ``MetaLearner(conv4(ways=5), ...)`` with the user model's weights copied in:
  the same function written with torchmaml's own layers.

Workloads: those of ``benchmarks/speed.py`` (its ``build_workload``: the same seeds, weights and data).
W1: sinusoid MLP 1-40-40-1 (ReLU), MSE, 25 tasks of 10 support + 10 query points, 1 inner step, inner lr
0.01. W2: ``conv4(ways=5)`` (64 filters, transductive batch norm, so every implementation uses training-mode
batch statistics), 5-way 1-shot with 15 queries per class on random images, 32 tasks (``--w2-tasks``),
1 inner step, inner lr 0.4, cross entropy. W3: ``conv4(ways=20)``, 20-way 1-shot with 15 queries per class,
16 tasks, 5 inner steps, inner lr 0.1 (MAML's 20-way Omniglot protocol). W2u: W2 with a user's plain
``nn.Sequential`` of ``nn.Conv2d``, ``nn.BatchNorm2d`` (training mode), ``nn.ReLU``, ``nn.MaxPool2d`` (x 4) and
``nn.Linear`` in place of conv4 (``speed.user_conv4``; the same initial weights). Orders: ``second`` (exact MAML),
``first`` (FO-MAML; every inner gradient taken without a graph).

Protocol, per (workload, order):

1. A child process computes the reference meta-gradient: the ``loop`` implementation in float64.
2. Every implementation runs in child processes of its own (``OMP_NUM_THREADS`` from ``--threads``, a list:
   each thread count is a row of its own, its children interleaved with the others'), in
   ``--rounds`` round-robin rounds (the order rotated every round) that share the timed iterations
   (W1 ``--w1-iterations``, default 50; W2 ``--w2-iterations``, default 10; W3 ``--w3-iterations``, default
   4), because this machine's speed drifts. Each child first computes its meta-gradient at the initial
   weights and compares it with the reference (relative error ``||g - g_ref|| / ||g_ref||`` over all
   parameters); past the tolerance (W1 1e-6, W2 1e-4, W2u 3e-4: every implementation's float32 meta-gradient
   there, peers included, is 0.7-1.6e-4 from the reference) it refuses to time and the cell says so. W3's
   float32 meta-gradient is ill-conditioned (five inner steps on random images: every implementation is 7e-2
   from the float64 reference), so each W3 child checks a float64 copy of its implementation (tolerance 1e-8)
   and times the float32 one (its peak RSS then includes the float64 copy's). Then untimed warm-up
   meta-iterations (W1 10, W2, W2u and W3 1; compilation happens there) and the timed ones: one
   meta-iteration is the meta-gradient over the batch plus the Adam step.
3. A cell is the median ms per meta-iteration over all timed iterations of all rounds, their min-max
   spread, and the largest peak RSS of the implementation's children (``ru_maxrss`` from ``os.wait4``,
   which includes the interpreter and torch, about 300 MB). A peer that cannot be imported is "not
   installed"; a child that crashes or runs past ``--timeout`` seconds is "failed".
4. With ``--flops``, each child of the first round also counts the floating-point operations of one more
   meta-iteration (``torch.utils.flop_counter.FlopCounterMode``: matrix products and convolutions, forward,
   backward and double backward) and measures the attainable rate of this machine's kernels on its thread
   count (best of 5: a 1024^3 ``torch.mm``, and W2's first- and second-block forward convolutions,
   channels-last, on 75 images); that child's peak RSS is taken before the counted meta-iteration. A third
   table gives each row's achieved rate, its FLOPs over its median time, and that rate as a fraction of the
   best attainable one measured at the same thread count.

Run from the repository root, after ``bash benchmarks/install_peers.sh`` (the full table takes in the order of
an hour on one thread, and W2's naive vmap needs several GB of RAM)::

    .venv/bin/python benchmarks/peers.py --json runs/peers/results.json
    .venv/bin/python benchmarks/peers.py --workloads W1 --orders second --implementations loop,torchmaml
    .venv/bin/python benchmarks/peers.py --workloads W2u --implementations \\
        learn2learn,higher,torchopt,torchmaml,torchmaml-accelerated,torchmaml-conv4 --threads 1,2 --flops
    .venv/bin/python benchmarks/peers.py --w1-iterations 3 --w2-iterations 1 --w2-tasks 2 --rounds 1 \\
        --out runs/peers/smoke                                  # a smoke test of everything (minutes)

The markdown tables go to stdout (the timings; the ``torchmaml (best)`` candidates and any warnings of the
children; the agreement check), progress to stderr, child logs and the reference gradients to ``--out``
(default ``runs/peers``); ``--json`` saves every child's raw times.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import signal
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from _harness import last_error_line, max_rss_mb, names, read_json_line, run_child
from speed import DESCRIPTIONS, INNER_STEPS, ORDERS, WORKLOADS, build_workload

IMPLEMENTATIONS = {
    "learn2learn": "learn2learn",
    "higher": "higher",
    "torchopt": "TorchOpt",
    "loop": "per-task loop",
    "vmap": "naive vmap over tasks",
    "torchmaml": "torchmaml (auto)",
    "torchmaml-best": "torchmaml (best)",
    "torchmaml-accelerated": "torchmaml (accelerate)",
    "torchmaml-conv4": "torchmaml (conv4, same weights)",
}
USER_MODEL_ONLY = ("torchmaml-accelerated", "torchmaml-conv4")  # rows of W2u alone
PEER_DISTRIBUTIONS = {"learn2learn": "learn2learn", "higher": "higher", "torchopt": "torchopt"}
W1_BEST = "vmap+compile"
W2_CANDIDATES = ("loop", "chunked", "vmap", "loop+compile", "chunked+compile", "vmap+compile")
CHUNK_SIZE = 4
# W2u's float32 meta-gradients are all 0.7-1.6e-4 from the float64 reference, peers included (its exactness in
# float64 is tests/test_accelerate.py's, to 1e-10)
TOLERANCE = {"W1": 1e-6, "W2": 1e-4, "W2u": 3e-4, "W3": 1e-8}
# W3's float32 meta-gradient is ill-conditioned (five steps on random images: every implementation, peers
# included, is 7e-2 from the float64 reference), so W3 checks a float64 copy of each implementation instead
CHECK_IN_FLOAT64 = {"W1": False, "W2": False, "W2u": False, "W3": True}
WARMUP = {"W1": 10, "W2": 1, "W2u": 1, "W3": 1}
OUTER_LR = 1e-3
MAX_WARMUP = 100_000  # warm-up iterations at most while waiting for torchmaml's default to compile


@dataclass(frozen=True)
class Job:
    """One child process: an implementation (or ``"reference"``) on one workload and order."""

    workload: str
    order: str
    implementation: str
    variant: str  # the MetaLearner setting of the torchmaml rows ("auto", "vmap+compile", ...), else ""
    tasks: int | None  # the first ``tasks`` tasks of the workload's batch; ``None``: all
    warmup: int
    iterations: int
    threads: int
    flops: bool  # count the FLOPs of one more meta-iteration and measure the attainable rates
    reference: str  # the file of the float64 reference meta-gradient
    tolerance: float
    timeout: float


@dataclass
class Implementation:
    """What the child times: ``gradient()`` is the meta-gradient at the current weights (by parameter name),
    ``step()`` one meta-iteration (meta-gradient and Adam step); ``label`` describes the setting used;
    ``settled()`` says whether warm-up may end (torchmaml's default compiles after some eager time)."""

    gradient: Callable[[], dict[str, Any]]
    step: Callable[[], None]
    label: str = ""
    settled: Callable[[], bool] = lambda: True


# -- child: the implementations ----------------------------------------------------------------------------


def task(batch: Any, index: int) -> tuple[Any, Any, Any, Any]:
    """``(support_x, support_y, query_x, query_y)`` of task ``index``."""
    return batch.support_x[index], batch.support_y[index], batch.query_x[index], batch.query_y[index]


def add_grads(params: list[Any], grads: tuple[Any, ...]) -> None:
    """Accumulate ``grads`` into the ``.grad`` of ``params``."""
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad if param.grad is None else param.grad + grad


def from_accumulate(model: Any, accumulate: Callable[[], None]) -> Implementation:
    """An implementation whose ``accumulate()`` adds the batch's mean meta-gradient into the model's ``.grad``."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=OUTER_LR)

    def gradient() -> dict[str, Any]:
        model.zero_grad(set_to_none=True)
        accumulate()
        return {name: param.grad.detach().clone() for name, param in model.named_parameters()}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        accumulate()
        optimizer.step()

    return Implementation(gradient, step)


def loop_accumulate(
    model: Any, loss: Callable, inner_lr: float, batch: Any, first_order: bool, steps: int
) -> Callable[[], None]:
    """The plain per-task loop: ``torch.autograd.grad`` through ``functional_call``."""
    import torch
    from torch.func import functional_call

    def accumulate() -> None:
        params = dict(model.named_parameters())
        for i in range(batch.num_tasks):
            sx, sy, qx, qy = task(batch, i)
            adapted = params
            for _ in range(steps):
                support = loss(functional_call(model, adapted, (sx,)), sy)
                grads = torch.autograd.grad(support, list(adapted.values()), create_graph=not first_order)
                adapted = {name: p - inner_lr * g for (name, p), g in zip(adapted.items(), grads, strict=True)}
            (loss(functional_call(model, adapted, (qx,)), qy) / batch.num_tasks).backward()

    return accumulate


def vmap_implementation(
    model: Any, loss: Callable, inner_lr: float, batch: Any, first_order: bool, steps: int
) -> Implementation:
    """Naive ``vmap`` over tasks of a ``torch.func.grad`` MAML."""
    from torch.func import functional_call, grad, vmap

    def query_loss(params: dict[str, Any], sx: Any, sy: Any, qx: Any, qy: Any) -> Any:
        adapted = params
        for _ in range(steps):
            inner = grad(lambda p: loss(functional_call(model, p, (sx,)), sy))(adapted)
            if first_order:
                inner = {name: g.detach() for name, g in inner.items()}
            adapted = {name: p - inner_lr * inner[name] for name, p in adapted.items()}
        return loss(functional_call(model, adapted, (qx,)), qy)

    meta_gradient = vmap(grad(query_loss), in_dims=(None, 0, 0, 0, 0))

    def accumulate() -> None:
        params = {name: p.detach() for name, p in model.named_parameters()}
        grads = meta_gradient(params, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        for name, param in model.named_parameters():
            param.grad = grads[name].mean(0)

    return from_accumulate(model, accumulate)


def learn2learn_maml() -> type:
    """learn2learn's ``MAML`` class, from ``learn2learn.algorithms.maml`` alone: the parent packages are
    stand-ins, so that their ``__init__`` (torchvision, gym, scipy, requests) is not run."""
    loaded = sys.modules.get("learn2learn.algorithms.maml")
    if loaded is not None:  # a second build in the same process (W3's float64 check)
        return loaded.MAML
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'learn2learn'")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, folder in (("learn2learn", root), ("learn2learn.algorithms", root / "algorithms")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules.setdefault(name, package)
    return importlib.import_module("learn2learn.algorithms.maml").MAML


def learn2learn_accumulate(
    model: Any, loss: Callable, inner_lr: float, batch: Any, first_order: bool, steps: int
) -> Callable[[], None]:
    """learn2learn: ``MAML(model, lr, first_order)``, ``clone()`` and ``adapt()`` per task."""
    maml = learn2learn_maml()(model, lr=inner_lr, first_order=first_order)

    def accumulate() -> None:
        for i in range(batch.num_tasks):
            sx, sy, qx, qy = task(batch, i)
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(loss(learner(sx), sy))
            (loss(learner(qx), qy) / batch.num_tasks).backward()

    return accumulate


def higher_accumulate(
    model: Any, loss: Callable, inner_lr: float, batch: Any, first_order: bool, steps: int
) -> Callable[[], None]:
    """higher: ``innerloop_ctx(model, SGD(lr), copy_initial_weights=False, track_higher_grads=not first_order)``."""
    import higher
    import torch

    inner_optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
    params = list(model.parameters())

    def accumulate() -> None:
        for i in range(batch.num_tasks):
            sx, sy, qx, qy = task(batch, i)
            with higher.innerloop_ctx(
                model, inner_optimizer, copy_initial_weights=False, track_higher_grads=not first_order
            ) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(loss(fmodel(sx), sy))
                query = loss(fmodel(qx), qy) / batch.num_tasks
                if first_order:  # the fast weights are detached leaves: their gradient is FO-MAML's
                    add_grads(params, torch.autograd.grad(query, list(fmodel.parameters())))
                else:
                    query.backward()

    return accumulate


def torchopt_accumulate(
    model: Any, loss: Callable, inner_lr: float, batch: Any, first_order: bool, steps: int
) -> Callable[[], None]:
    """TorchOpt: ``MetaSGD`` with ``extract_state_dict``/``recover_state_dict``; first order, its functional API."""
    import torchopt

    if first_order:
        return torchopt_functional_first_order(model, loss, inner_lr, batch, steps)
    inner_optimizer = torchopt.MetaSGD(model, lr=inner_lr)

    def accumulate() -> None:
        model_state = torchopt.extract_state_dict(model)
        optimizer_state = torchopt.extract_state_dict(inner_optimizer)
        for i in range(batch.num_tasks):
            sx, sy, qx, qy = task(batch, i)
            for _ in range(steps):
                inner_optimizer.step(loss(model(sx), sy))
            (loss(model(qx), qy) / batch.num_tasks).backward()
            torchopt.recover_state_dict(model, model_state)
            torchopt.recover_state_dict(inner_optimizer, optimizer_state)

    return accumulate


def torchopt_functional_first_order(
    model: Any, loss: Callable, inner_lr: float, batch: Any, steps: int
) -> Callable[[], None]:
    """TorchOpt's functional API with an inner gradient taken without a graph (FO-MAML)."""
    import torch
    import torchopt
    from torch.func import functional_call

    inner = torchopt.sgd(lr=inner_lr)
    parameter_names = [name for name, _ in model.named_parameters()]

    def accumulate() -> None:
        params = tuple(model.parameters())
        for i in range(batch.num_tasks):
            sx, sy, qx, qy = task(batch, i)
            adapted = params
            for _ in range(steps):
                support = loss(functional_call(model, dict(zip(parameter_names, adapted, strict=True)), (sx,)), sy)
                grads = torch.autograd.grad(support, adapted)
                updates, _ = inner.update(grads, inner.init(adapted), inplace=False)
                adapted = torchopt.apply_updates(adapted, updates, inplace=False)
            query = loss(functional_call(model, dict(zip(parameter_names, adapted, strict=True)), (qx,)), qy)
            (query / batch.num_tasks).backward()

    return accumulate


def as_conv4(model: Any, ways: int) -> tuple[Any, dict[str, str]]:
    """``conv4(ways)`` with ``model``'s parameters copied in (the same shapes in the same order), and the map
    from conv4's parameter names to ``model``'s."""
    import torch

    from torchmaml.models import conv4

    twin = conv4(ways=ways).to(next(model.parameters()).dtype)
    names = {}
    with torch.no_grad():
        for (name, target), (source_name, source) in zip(
            twin.named_parameters(), model.named_parameters(), strict=True
        ):
            target.copy_(source)
            names[name] = source_name
    return twin, names


def torchmaml_implementation(model: Any, loss: Callable, inner_lr: float, batch: Any, job: Job) -> Implementation:
    """``MetaLearner`` with the job's strategy (``+compile`` adds ``compile=True``) and its ``meta_step``; the
    model accelerated (``torchmaml-accelerated``) or replaced by its conv4 twin (``torchmaml-conv4``)."""
    import torch

    from torchmaml import MetaLearner
    from torchmaml.allocator import keep_freed_memory
    from torchmaml.compilation import COMPILE_AFTER_CALLS
    from torchmaml.models.accelerate import accelerate

    keep_freed_memory()  # opt-in glibc tuning, as the torchmaml command line does (torchmaml.allocator)

    strategy = job.variant.removesuffix("+compile")
    compiled = job.variant.endswith("+compile")
    names: dict[str, str] = {}  # the meta-gradient's names as the reference's
    if job.implementation == "torchmaml-accelerated":
        model = accelerate(model)
    elif job.implementation == "torchmaml-conv4":
        model, names = as_conv4(model, ways=int(batch.support_y.max()) + 1)
    learner = MetaLearner(
        model,
        loss=loss,
        inner_lr=inner_lr,
        inner_steps=INNER_STEPS[job.workload],
        estimator=ORDERS[job.order],
        strategy=strategy,
        chunk_size=CHUNK_SIZE if strategy == "chunked" else None,
        compile=True if compiled else ("auto" if strategy == "auto" else False),
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=OUTER_LR)
    resolved = f"chunked ({CHUNK_SIZE})" if learner.strategy == "chunked" else learner.strategy
    label = ("auto → " if strategy == "auto" else "") + resolved + (" + compile" if compiled else "")
    if strategy == "auto" and resolved in COMPILE_AFTER_CALLS:
        label += f", compiled from call {COMPILE_AFTER_CALLS[resolved]} (the default)"
    settles = strategy != "auto" or resolved not in COMPILE_AFTER_CALLS
    return Implementation(
        gradient=lambda: {names.get(k, k): g for k, g in learner.meta_gradient(batch)[0]["params"].items()},
        step=lambda: learner.meta_step(batch, optimizer),
        label=label,
        settled=lambda: settles or learner.compiled,
    )


ACCUMULATORS = {
    "learn2learn": learn2learn_accumulate,
    "higher": higher_accumulate,
    "torchopt": torchopt_accumulate,
    "loop": loop_accumulate,
}


def build_implementation(job: Job, model: Any, loss: Callable, inner_lr: float, batch: Any) -> Implementation:
    """The job's implementation on this model and batch (``ImportError`` when a peer is missing)."""
    first_order, steps = job.order == "first", INNER_STEPS[job.workload]
    if job.implementation.startswith("torchmaml"):
        return torchmaml_implementation(model, loss, inner_lr, batch, job)
    if job.implementation == "vmap":
        return vmap_implementation(model, loss, inner_lr, batch, first_order, steps)
    accumulate = ACCUMULATORS[job.implementation](model, loss, inner_lr, batch, first_order, steps)
    return from_accumulate(model, accumulate)


# -- child: reference, agreement check, timing -------------------------------------------------------------


def workload(job: Job) -> tuple[Any, Callable, float, Any]:
    """``(model, loss, inner_lr, batch)`` of ``speed.build_workload``, the batch cut to ``job.tasks`` tasks."""
    model, loss, inner_lr, batch = build_workload(job.workload)
    return model, loss, inner_lr, batch if job.tasks is None else batch.slice(0, job.tasks)


def relative_error(grads: dict[str, Any], reference: dict[str, Any]) -> float:
    """``||g - g_ref|| / ||g_ref||`` over all parameters together, in float64."""
    difference = sum(float((grads[name].double() - ref).square().sum()) for name, ref in reference.items())
    norm = sum(float(ref.square().sum()) for ref in reference.values())
    return math.sqrt(difference / norm)


def write_reference(job: Job) -> dict[str, Any]:
    """Save the float64 per-task-loop meta-gradient at the initial weights to ``job.reference``."""
    import torch

    model, loss, inner_lr, batch = workload(job)
    model.double()
    batch = batch.to(dtype=torch.float64)
    accumulate = loop_accumulate(model, loss, inner_lr, batch, job.order == "first", INNER_STEPS[job.workload])
    torch.save(from_accumulate(model, accumulate).gradient(), job.reference)
    return {"status": "ok"}


def time_implementation(job: Job) -> dict[str, Any]:
    """Check the implementation's meta-gradient against the reference; if it agrees, time it."""
    import torch

    model, loss, inner_lr, batch = workload(job)
    try:
        implementation = build_implementation(job, model, loss, inner_lr, batch)
    except ImportError as error:
        return {"status": "not installed", "error": str(error)}
    checked = implementation
    if CHECK_IN_FLOAT64[job.workload]:
        model64, _, _, batch64 = workload(job)
        checked = build_implementation(job, model64.double(), loss, inner_lr, batch64.to(dtype=torch.float64))
    error = relative_error(checked.gradient(), torch.load(job.reference, weights_only=True))
    result: dict[str, Any] = {"relative_error": error, "label": implementation.label}
    if not error <= job.tolerance:  # also refuses a NaN
        return {**result, "status": "disagrees"}
    for _ in range(job.warmup):
        implementation.step()
    warmup = job.warmup
    while not implementation.settled() and warmup < MAX_WARMUP:
        implementation.step()
        warmup += 1
    if warmup > job.warmup:  # settled during the warm-up: its first call in the new state compiles, untimed
        implementation.step()
        warmup += 1
    result["warmup_iterations"] = warmup
    times_ms = []
    for _ in range(job.iterations):
        start = time.perf_counter()
        implementation.step()
        times_ms.append((time.perf_counter() - start) * 1000)
    if job.flops:  # the peak RSS of the timed iterations is the child's before the counted one
        result["timed_peak_rss_mb"] = max_rss_mb()
        result.update(flops=count_flops(implementation.step), attainable_gflops=attainable_rates())
    return {**result, "status": "ok", "times_ms": times_ms}


def count_flops(step: Callable[[], object]) -> int:
    """The matrix-product and convolution FLOPs of one call of ``step`` (torch's ``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def attainable_rates(repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of this machine's kernels on this process's threads, best of ``repeats``: a 1024^3 ``torch.mm``
    and the forward convolutions of W2's first and second blocks (channels-last, 75 images: a query set)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    def conv(channels: int, size: int) -> Callable[[], Any]:
        x = tensor(75, channels, size, size).contiguous(memory_format=torch.channels_last)
        weight = tensor(64, channels, 3, 3).contiguous(memory_format=torch.channels_last)
        return lambda: F.conv2d(x, weight, None, 1, 1)

    a, b = tensor(1024, 1024), tensor(1024, 1024)
    kernels = {"mm 1024^3": lambda: torch.mm(a, b), "conv block 1": conv(1, 28), "conv block 2": conv(64, 14)}
    rates = {}
    for name, kernel in kernels.items():
        flops = count_flops(kernel)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            kernel()
            best = min(best, time.perf_counter() - start)
        rates[name] = flops / best / 1e9
    return rates


def child_main(job_json: str) -> None:
    """Entry point of a child process: run one job and print its result (and any warnings) as one JSON line."""
    import torch

    job = Job(**json.loads(job_json))
    signal.alarm(math.ceil(job.timeout))  # SIGALRM's default action ends the process: the parent reports it
    torch.set_num_threads(job.threads)
    with warnings.catch_warnings(record=True) as caught:  # e.g. MetaLearner's "torch.compile failed"
        try:
            result = write_reference(job) if job.implementation == "reference" else time_implementation(job)
        except Exception as error:
            result = {"status": "failed", "error": first_line(f"{type(error).__name__}: {error}")}
    result["warnings"] = sorted({first_line(str(warning.message)) for warning in caught})
    print(json.dumps(result), flush=True)


def first_line(text: str) -> str:
    """The first line of a message."""
    return text.strip().splitlines()[0] if text.strip() else ""


# -- parent: run the jobs, round-robin ---------------------------------------------------------------------


def run_job(job: Job, out: Path, name: str) -> dict[str, Any]:
    """Run ``job`` in a child process of its own; its result with the child's wall time and peak RSS (MB)."""
    log = out / f"{name}.log"
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(asdict(job))]
    code, wall, rss = run_child(command, log, job.threads)
    result = read_json_line(log)
    if result is None:
        reason = f"timed out after {job.timeout:g} s" if code == -signal.SIGALRM else last_error_line(log)
        result = {"status": "failed", "error": f"exit code {code}: {reason}"}
    return {**result, "wall_s": wall, "peak_rss_mb": result.get("timed_peak_rss_mb", rss)}


def job_name(job: Job) -> str:
    """A file-name stem for the job's log."""
    variant = job.variant.replace("+", "-")
    parts = (job.workload, job.order, job.implementation, variant, f"{job.threads}t")
    return "-".join(part for part in parts if part)


def implementation_jobs(args: argparse.Namespace, base: Job) -> list[Job]:
    """One job per implementation and thread count, and one per candidate setting of ``torchmaml-best``."""
    jobs = []
    for implementation in args.implementations:
        if implementation in USER_MODEL_ONLY and base.workload != "W2u":
            continue
        if implementation == "torchmaml-best":
            variants: list[str] = [W1_BEST] if base.workload == "W1" else args.w2_candidates
        else:
            variants = ["auto"] if implementation.startswith("torchmaml") else [""]
        jobs += [
            replace(base, implementation=implementation, variant=variant, threads=threads)
            for threads in args.threads
            for variant in variants
        ]
    return jobs


def split(total: int, parts: int) -> list[int]:
    """``total`` timed iterations shared as evenly as possible by ``parts`` rounds."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def run_rounds(jobs: list[Job], rounds: int, out: Path) -> list[dict[str, Any]]:
    """Run every job once per round, the order rotated each round; a job that fails, disagrees or is not
    installed is not run again. One result per job, with its rounds' results."""
    records: list[dict[str, Any]] = [{"job": job, "rounds": []} for job in jobs]
    shares = split(jobs[0].iterations, rounds)
    for number, share in enumerate(shares):
        for record in records[number % len(records) :] + records[: number % len(records)]:
            if any(r["status"] != "ok" for r in record["rounds"]):
                continue
            job = replace(record["job"], iterations=share, flops=record["job"].flops and number == 0)
            name = f"{job_name(job)}-round{number + 1}"
            print(f"  round {number + 1}/{rounds}: {job_name(job)} ...", file=sys.stderr, flush=True)
            result = run_job(job, out, name)
            record["rounds"].append(result)
            print(f"    {progress(result)}", file=sys.stderr, flush=True)
    return [summarize(record["job"], record["rounds"]) for record in records]


def progress(result: dict[str, Any]) -> str:
    """One line about a finished child for stderr."""
    text = f"{result['status']} ({result['wall_s']:.1f} s, {result['peak_rss_mb']:.0f} MB"
    if "relative_error" in result:
        text += f", relative error {result['relative_error']:.1e}"
    if result["status"] == "ok" and result.get("times_ms"):
        text += f", median {statistics.median(result['times_ms']):.1f} ms"
    return text + (f"): {result['error']}" if "error" in result else ")")


def summarize(job: Job, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The job, its rounds, and the statistics over all their timed iterations."""
    first = next((r for r in rounds if r["status"] != "ok"), rounds[0])
    row: dict[str, Any] = {**asdict(job), "rounds": rounds, "status": first["status"]}
    row.update({key: first[key] for key in ("error", "relative_error", "label", "flops") if key in first})
    rates = [r["attainable_gflops"] for r in rounds if "attainable_gflops" in r]
    if rates:
        row["attainable_gflops"] = {name: max(rate[name] for rate in rates) for name in rates[0]}
    row["warnings"] = sorted({warning for r in rounds for warning in r.get("warnings", [])})
    times = [t for r in rounds for t in r.get("times_ms", [])]
    if row["status"] == "ok" and times:
        median = statistics.median(times)
        row.update(median_ms=median, min_ms=min(times), max_ms=max(times), timed_iterations=len(times))
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    return row


def timed_iterations(args: argparse.Namespace, workload_name: str) -> int:
    """The timed iterations of a workload, all rounds together."""
    iterations = {"W1": args.w1_iterations, "W2": args.w2_iterations, "W3": args.w3_iterations}
    return iterations["W2" if workload_name == "W2u" else workload_name]


def measure(args: argparse.Namespace, workload_name: str, order: str) -> list[dict[str, Any]]:
    """The reference, then every implementation's rows for one workload and order."""
    tasks = args.w2_tasks if workload_name in ("W2", "W2u") else None
    iterations = timed_iterations(args, workload_name)
    base = Job(
        workload=workload_name,
        order=order,
        implementation="reference",
        variant="",
        tasks=tasks,
        warmup=WARMUP[workload_name],
        iterations=iterations,
        threads=args.threads[0],
        flops=args.flops,
        reference=str((args.out / f"reference-{workload_name}-{order}.pt").resolve()),
        tolerance=TOLERANCE[workload_name],
        timeout=args.timeout,
    )
    print(f"{workload_name} {order}: float64 reference ...", file=sys.stderr, flush=True)
    reference = run_job(base, args.out, job_name(base))
    if reference["status"] != "ok":
        raise SystemExit(f"{workload_name} {order}: the reference failed: {reference.get('error')}")
    return run_rounds(implementation_jobs(args, base), min(args.rounds, iterations), args.out)


# -- parent: the tables --------------------------------------------------------------------------------------


def milliseconds(value: float) -> str:
    """``1.53``, ``25.8``, ``10,341``."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def cell(row: dict[str, Any] | None) -> str:
    """A table cell: median ms (min-max), peak RSS, or why there is no timing."""
    if row is None:
        return "not run"
    if row["status"] == "not installed":
        return "not installed"
    if row["status"] == "disagrees":
        return f"not timed: meta-gradient disagrees (relative error {row['relative_error']:.1e})"
    if "median_ms" not in row:
        return "failed: " + row.get("error", "no timed iterations").replace("|", "/")
    text = (
        f"{milliseconds(row['median_ms'])} ms ({milliseconds(row['min_ms'])}-{milliseconds(row['max_ms'])}), "
        f"{row['peak_rss_mb']:,.0f} MB"
    )
    return text + (f" ({row['label']})" if row["implementation"].startswith("torchmaml") else "")


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest timed ``torchmaml-best`` candidate, else the first candidate (to show why it failed)."""
    candidates = [row for row in rows if row["implementation"] == "torchmaml-best"]
    timed = [row for row in candidates if "median_ms" in row]
    return min(timed, key=lambda row: row["median_ms"]) if timed else next(iter(candidates), None)


def peer_version(implementation: str) -> str | None:
    """The installed version of a peer library; ``None`` for the others and for a peer not installed."""
    try:
        return importlib.metadata.version(PEER_DISTRIBUTIONS[implementation])
    except (KeyError, importlib.metadata.PackageNotFoundError):
        return None


def column_title(implementation: str) -> str:
    """The column header, with the installed version of a peer."""
    version = peer_version(implementation)
    return IMPLEMENTATIONS[implementation] + (f" {version}" if version else "")


def settings(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Every (workload, order, threads) of the run: one line of each table."""
    return [(w, order, threads) for w in args.workloads for order in args.orders for threads in args.threads]


def rows_of(rows: list[dict[str, Any]], setting: tuple[str, str, int]) -> list[dict[str, Any]]:
    """The rows of one (workload, order, threads)."""
    return [row for row in rows if (row["workload"], row["order"], row["threads"]) == setting]


def timing_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """Median ms per meta-iteration (min-max) and peak RSS: one row per workload, order and thread count."""
    header = "| workload | order | threads | " + " | ".join(column_title(i) for i in args.implementations) + " |"
    lines = [header, "|---|---|---:|" + "---:|" * len(args.implementations)]
    for setting in settings(args):
        here = rows_of(rows, setting)
        cells = []
        for implementation in args.implementations:
            if implementation == "torchmaml-best":
                cells.append(cell(best_row(here)))
            else:
                cells.append(cell(next((row for row in here if row["implementation"] == implementation), None)))
        lines.append("| {} | {} | {} | ".format(*setting) + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """Each timed torchmaml row against the fastest timed peer of its line: speed-up and peak-RSS ratio."""
    lines = [
        "| workload | order | threads | fastest peer | torchmaml row | speed-up | peak RSS / peer's |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for setting in settings(args):
        here = [row for row in rows_of(rows, setting) if "median_ms" in row]
        peers = [row for row in here if row["implementation"] in PEER_DISTRIBUTIONS]
        if not peers:
            continue
        peer = min(peers, key=lambda row: row["median_ms"])
        for row in here:
            if row["implementation"].startswith("torchmaml"):
                speed_up, memory = peer["median_ms"] / row["median_ms"], row["peak_rss_mb"] / peer["peak_rss_mb"]
                lines.append(
                    "| {} | {} | {} | ".format(*setting)
                    + f"{row_name(peer)} | {row_name(row)} | {speed_up:.2f}x | {memory:.2f} |"
                )
    return "\n".join(lines)


def flop_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """Each row's FLOPs per meta-iteration, its achieved rate, and the fraction of the best attainable rate
    measured at its thread count (the kernels' rates in the last column)."""
    lines = [
        "| workload | order | threads | implementation | GFLOP per meta-iteration | achieved GFLOP/s | of attainable |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for setting in settings(args):
        here = [row for row in rows_of(rows, setting) if "median_ms" in row and "flops" in row]
        attainable = best_attainable(rows, setting[2])
        if not here or attainable is None:
            continue
        for row in here:
            achieved = row["flops"] / row["median_ms"] / 1e6
            lines.append(
                "| {} | {} | {} | ".format(*setting)
                + f"{row_name(row)} | {row['flops'] / 1e9:.1f} | {achieved:.1f} | {achieved / attainable:.0%} |"
            )
    return "\n".join(lines)


def kernel_rates(rows: list[dict[str, Any]], threads: int) -> dict[str, float]:
    """Each kernel's best rate (GFLOP/s) over the children that ran on ``threads`` threads."""
    measured = [row["attainable_gflops"] for row in rows if row["threads"] == threads and "attainable_gflops" in row]
    return {name: max(rates[name] for rates in measured) for name in measured[0]} if measured else {}


def best_attainable(rows: list[dict[str, Any]], threads: int) -> float | None:
    """The best rate of any kernel on ``threads`` threads, ``None`` if none was measured."""
    return max(kernel_rates(rows, threads).values(), default=None)


def attainable_lines(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    """The best rate of each kernel over the children of each thread count."""
    lines = []
    for threads in args.threads:
        if rates := kernel_rates(rows, threads):
            text = ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items())
            lines.append(f"- attainable GFLOP/s on {threads} thread(s), best over the children: {text}")
    return lines


def row_name(row: dict[str, Any]) -> str:
    """The implementation's column title, with the MetaLearner setting of a torchmaml row."""
    setting = row.get("label") or row["variant"]
    return IMPLEMENTATIONS[row["implementation"]] + (f" [{setting}]" if setting else "")


def agreement_table(rows: list[dict[str, Any]]) -> str:
    """The relative error of every row's meta-gradient against the float64 reference."""
    lines = [
        "| workload | order | threads | implementation | relative error | tolerance | verdict |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        name = row_name(row)
        if "relative_error" in row:
            verdict = "agrees" if row["relative_error"] <= row["tolerance"] else "DISAGREES (not timed)"
            error = f"{row['relative_error']:.1e}"
        else:
            verdict, error = row["status"], ""
        lines.append(
            f"| {row['workload']} | {row['order']} | {row['threads']} | {name} | {error} | {row['tolerance']:.0e} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """Every ``torchmaml (best)`` candidate's median per workload and order, then the children's warnings."""
    lines = []
    for key in dict.fromkeys((row["workload"], row["order"], row["threads"]) for row in rows):
        candidates = [row for row in rows_of(rows, key) if row["implementation"] == "torchmaml-best"]
        if candidates:
            parts = [f"{row.get('label', row['variant'])}: {cell_time(row)}" for row in candidates]
            lines.append(f"- torchmaml (best) candidates, {key[0]} {key[1]} {key[2]} thread(s): " + "; ".join(parts))
    for row in rows:
        for warning in row["warnings"]:
            lines.append(f"- warning, {row['workload']} {row['order']} {row_name(row)}: {warning}")
    return lines


def cell_time(row: dict[str, Any]) -> str:
    """A candidate's median in ms, or its status."""
    return f"{milliseconds(row['median_ms'])} ms" if "median_ms" in row else row["status"]


def header_lines(args: argparse.Namespace, torch_version: str, load_average: tuple[float, ...]) -> list[str]:
    """How the table was made: command, versions, threads, load, protocol."""
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    lines = [
        f"command: `{command}`",
        f"torch {torch_version}, Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={','.join(map(str, args.threads))}, load average before the run {load_average[0]:.2f}",
        "",
    ]
    for name in args.workloads:
        description = DESCRIPTIONS[name].replace("32 tasks", f"{args.w2_tasks} tasks")
        lines.append(
            f"- {name}: {description}; {timed_iterations(args, name)} timed iterations, {WARMUP[name]} warm-up "
            f"per child; meta-gradient tolerance {TOLERANCE[name]:.0e}"
        )
    lines += [
        f"- one meta-iteration = meta-gradient over the batch + Adam({OUTER_LR:g}) step; cell = median ms "
        "(min-max) over the timed iterations of all rounds, peak RSS of the implementation's child processes",
        f"- every implementation in child processes of its own, {args.rounds} round-robin round(s); meta-gradients "
        "checked against a float64 per-task loop first (last table); TorchOpt first order uses its functional "
        "API (MetaSGD always builds the second-order graph); learn2learn is its algorithms.maml module alone",
        "",
    ]
    return lines


# -- parent: command line -----------------------------------------------------------------------------------


def choice_list(choices: dict[str, Any] | tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names from ``choices``, in the order given."""

    def parse(text: str) -> list[str]:
        chosen = names(text)
        unknown = [name for name in chosen if name not in choices]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return chosen

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="torchmaml against learn2learn, higher, TorchOpt and baselines.")
    lists = {"--workloads": WORKLOADS, "--orders": tuple(ORDERS), "--implementations": tuple(IMPLEMENTATIONS)}
    for flag, choices in lists.items():
        parser.add_argument(flag, type=choice_list(choices), default=list(choices), help=",".join(choices))
    parser.add_argument(
        "--threads",
        type=lambda text: [int(n) for n in names(text)],
        default=[1],
        help="OMP_NUM_THREADS of the children, a comma-separated list, each a row of its own (default 1)",
    )
    parser.add_argument("--flops", action="store_true", help="count FLOPs and measure the attainable rates")
    parser.add_argument("--w1-iterations", type=int, default=50, help="W1 timed iterations (default 50)")
    parser.add_argument("--w2-iterations", type=int, default=10, help="W2 timed iterations (default 10)")
    parser.add_argument("--w3-iterations", type=int, default=4, help="W3 timed iterations (default 4)")
    parser.add_argument("--w2-tasks", type=int, default=32, help="W2 tasks per meta-batch (default 32)")
    parser.add_argument(
        "--w2-candidates",
        type=choice_list(W2_CANDIDATES),
        default="loop,chunked,loop+compile",
        help=f"MetaLearner settings of 'torchmaml (best)', W2 and W3 ({','.join(W2_CANDIDATES)}; default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds sharing the iterations (default 2)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child process (default 3600)")
    parser.add_argument("--out", type=Path, default=Path("runs/peers"), help="logs and reference gradients")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.threads or min(args.threads) < 1:
        parser.error("--threads must be a list of numbers >= 1")
    for name in ("w1_iterations", "w2_iterations", "w3_iterations", "w2_tasks", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.w2_tasks > 32:
        parser.error("--w2-tasks must be <= 32 (the W2 batch of benchmarks/speed.py)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return
    import torch

    load_average = os.getloadavg()  # other work on the machine skews the timings
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [row for w in args.workloads for order in args.orders for row in measure(args, w, order)]
    note_lines = notes(rows)
    lines = header_lines(args, torch.__version__, load_average)
    lines += [timing_table(args, rows), "", ratio_table(args, rows), ""]
    if args.flops:
        lines += [flop_table(args, rows), "", *attainable_lines(args, rows), ""]
    lines += [*note_lines, *([""] if note_lines else []), agreement_table(rows)]
    print("\n".join(lines))
    if args.json:
        meta = {"torch": torch.__version__, "threads": args.threads, "load_average": load_average}
        meta["command"] = [sys.executable, *sys.argv]
        meta["versions"] = {key: peer_version(key) for key in PEER_DISTRIBUTIONS}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
        print(f"results saved to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
