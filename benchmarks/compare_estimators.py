"""Every meta-gradient estimator on sinusoid regression for the same training time (or the same number of
meta-iterations), plus the theory-guided outer step size (Fallah, Mokhtari, Ozdaglar 2019), its L and rho
estimated once or re-estimated along the run, against the tuned Adam of the paper.

Each row is one ``torchmaml train --config sinusoid --set estimator=NAME --set pretrained_baseline=false --set
compile=true [--set iterations=N | --set iterations=10000000 --set time_limit_minutes=M] --out OUT/ROW
--no-progress`` in a subprocess of its own, then ``torchmaml evaluate OUT/ROW``. From the run folder it collects:

* the 5- and 10-shot meta-test MSE after 1, 5 and 10 steps at ``inner_lr`` 0.01 (600 held-out tasks,
  mean ± 95% CI, ``evaluation.json``), and for ``implicit`` also after 1, 5 and 10 steps of its own
  adaptation, the proximal solve (the ``maml (proximal)`` rows of ``torchmaml evaluate``);
* the iterations trained and the median seconds per meta-iteration over the second half of the run
  (differences of the cumulative ``seconds`` field of ``metrics-maml.jsonl``; the first half, with the one-off
  compilation, is left out);
* the peak resident set size of the training process (``ru_maxrss`` of the ``os.wait4`` rusage of that
  one child, which includes the children it waited for, e.g. compile workers);
* whether ``torch.compile`` worked: the number of dynamo graph breaks (the training child runs with
  ``TORCH_LOGS=graph_breaks``; a graph break runs the code around it eagerly), or the learner's fallback to
  eager after a failed compilation (its warning in the log);
* for the theory rows, the step size ``beta_k`` it used (``outer_lr``) and the ``L``, ``rho`` it estimated;
* with ``--plot PATH``, every row's training query loss against its training seconds, in one figure.

Rows (all with the preset's alpha = 0.01, 10-shot training, meta-batch 25; one inner step unless stated;
``--set KEY=VALUE`` changes a setting for every row, e.g. ``--set inner_lr=0.002``):

* ``unrolled``: exact MAML with Adam 1e-3, the paper's tuned protocol; also the "tuned Adam" reference of
  the theory rows.
* ``first_order`` (FO-MAML), ``hessian_free`` (HF-MAML, default ``delta``): Adam 1e-3.
* ``implicit`` (iMAML): its defaults (``lam`` 1, the backtracking proximal solver, Gauss-Newton CG). Adam 1e-3.
* ``three_batch``: the Hessian on an independent set of ``hessian_size = 10`` more points per task. Adam 1e-3.
* ``reptile``: 5 inner SGD steps at alpha on support and query together (``use_query``, the paper trains
  on all of a task's data); outer plain SGD with the paper's ``epsilon = 1`` annealed to 0 (the paper
  anneals linearly; the closest schedule here is ``outer_lr_schedule = "cosine"``). Meta-tested like
  every row (alpha 0.01, 1/5/10 steps on the support set).
* ``unrolled-theory``, ``first_order-theory``: ``outer_optimizer = "theory"``, SGD with ``beta_k = c / (4L
  + 2 rho alpha E||grad f_j(w_k)||)`` (c = 1/12, 1/18), ``L`` and ``rho`` re-estimated every ``theory_every``
  (100) iterations; ``...-theory-once``: estimated at the start only (``theory_every = 0``).

Under ``--minutes`` every row trains for the same wall-clock time (``time_limit_minutes``, compilation
included). ``--parallel 2`` runs two rows at a time (one core each, with ``OMP_NUM_THREADS=1``); rows that
share the machine share it equally only on a machine with no other load. Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_estimators.py --minutes 10 --parallel 2 \
        --json runs/compare/results.json --plot runs/compare/loss.png > runs/compare/table.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_estimators.py --iterations 200   # a smoke test

The markdown goes to stdout, progress to stderr; each row's training and evaluation output is kept in
``OUT/ROW.log``. A row that fails is reported as such and the others still run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import run_child

ESTIMATORS = ("unrolled", "first_order", "hessian_free", "implicit", "reptile", "three_batch")
THEORY = ("unrolled", "first_order")
SUPPORT_SIZES, STEPS = (5, 10), (1, 5, 10)
COMPILE_FALLBACK = "torch.compile failed"
GRAPH_BREAK = re.compile(r"\[__graph_breaks\] Graph break")

# Options per estimator (see the module docstring for why).
ESTIMATOR_SETTINGS: dict[str, tuple[str, ...]] = {
    "three_batch": ("hessian_size=10",),
    "reptile": (
        "estimator_options={use_query=true}",
        "inner_steps=5",
        "outer_optimizer=sgd",
        "outer_lr=1.0",
        "outer_lr_schedule=cosine",
    ),
}


@dataclass(frozen=True)
class Budget:
    """Each row's training budget: ``iterations`` meta-iterations, or ``minutes`` of training time."""

    iterations: int | None = None
    minutes: float | None = None

    def settings(self) -> list[str]:
        if self.minutes is not None:
            return ["iterations=10000000", f"time_limit_minutes={self.minutes:g}"]
        return [f"iterations={self.iterations}"]

    def __str__(self) -> str:
        if self.minutes is not None:
            return f"{self.minutes:g} minutes of training"
        return f"{self.iterations} meta-iterations"


@dataclass(frozen=True)
class Row:
    """One training run: its folder name under the output root, its estimator and its extra ``--set``s."""

    name: str
    estimator: str
    settings: tuple[str, ...] = ()

    @property
    def optimizer(self) -> str:
        values = dict(setting.split("=", 1) for setting in self.settings)
        kind = values.get("outer_optimizer", "adam")
        if kind == "theory":
            once = values.get("theory_every") == "0"
            return f"theory β_k (SGD), L and ρ {'estimated once' if once else 'tracked'}"
        rate = values.get("outer_lr", "0.001")
        schedule = values.get("outer_lr_schedule", "constant")
        text = f"{'Adam' if kind == 'adam' else kind.upper()} {float(rate):g}"
        return text + (f", {schedule} to 0" if schedule != "constant" else "")

    @property
    def options(self) -> str:
        shown = [s for s in self.settings if not s.startswith(("outer_optimizer", "outer_lr", "theory_every"))]
        return ", ".join(shown) if shown else "defaults"


@dataclass
class Result:
    """What one row measured; ``error`` is set when training or evaluation failed."""

    row: Row
    error: str | None = None
    mse: dict[str, list[float]] = field(default_factory=dict)  # "K/steps" -> [mean, ci95]
    own_mse: dict[str, list[float]] = field(default_factory=dict)  # the same after the estimator's own adaptation
    curve: list[tuple[float, float]] = field(default_factory=list)  # (training seconds, query loss) per iteration
    seconds_per_iteration: float | None = None
    train_seconds: float | None = None
    first_iteration_seconds: float | None = None
    wall_seconds: float | None = None
    peak_rss_mb: float | None = None
    compiled: bool | None = None
    graph_breaks: int | None = None
    iterations_logged: int = 0
    skipped: int = 0
    final_loss_after: float | None = None
    outer_lr: dict[str, float] = field(default_factory=dict)
    theory: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.row.name,
            "estimator": self.row.estimator,
            "settings": list(self.row.settings),
            "error": self.error,
            "mse": self.mse,
            "own_mse": self.own_mse,
            "seconds_per_iteration": self.seconds_per_iteration,
            "train_seconds": self.train_seconds,
            "first_iteration_seconds": self.first_iteration_seconds,
            "wall_seconds": self.wall_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "compiled": self.compiled,
            "graph_breaks": self.graph_breaks,
            "iterations_logged": self.iterations_logged,
            "skipped": self.skipped,
            "final_loss_after": self.final_loss_after,
            "outer_lr": self.outer_lr,
            "theory": self.theory,
        }


def build_rows(estimators: list[str], theory: list[str]) -> list[Row]:
    rows = [Row(name, name, ESTIMATOR_SETTINGS.get(name, ())) for name in estimators]
    for name in theory:
        rows.append(Row(f"{name}-theory", name, ("outer_optimizer=theory",)))
        rows.append(Row(f"{name}-theory-once", name, ("outer_optimizer=theory", "theory_every=0")))
    return rows


def cli_command() -> list[str]:
    """``torchmaml`` beside this interpreter (the venv's), else on the PATH."""
    beside = Path(sys.executable).parent / "torchmaml"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("torchmaml")
    if found is None:
        sys.exit("compare_estimators: cannot find the torchmaml command; install the package (pip install -e .)")
    return [found]


def train_arguments(row: Row, budget: Budget, out: Path, common: tuple[str, ...] = ()) -> list[str]:
    settings = [
        f"estimator={row.estimator}",
        *budget.settings(),
        "pretrained_baseline=false",
        "compile=true",
        *common,
        *row.settings,
    ]
    sets = [part for setting in settings for part in ("--set", setting)]
    return ["train", "--config", "sinusoid", *sets, "--out", str(out), "--no-progress"]


def last_lines(path: Path, count: int = 3) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def read_metrics(result: Result, path: Path) -> None:
    """Time per iteration, outer rates and theory constants from ``metrics-maml.jsonl``."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return
    result.iterations_logged = len(records)
    result.train_seconds = records[-1]["seconds"]
    result.first_iteration_seconds = records[0]["seconds"]
    result.skipped = int(sum(r.get("skipped", 0.0) for r in records))
    result.final_loss_after = statistics.fmean(r["loss_after"] for r in records[-100:])
    result.curve = [(r["seconds"], r["loss_after"]) for r in records]
    half = records[len(records) // 2 - 1 :] if len(records) > 1 else records
    steps = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(half)]
    if steps:
        result.seconds_per_iteration = statistics.median(steps)
    rates = [r["outer_lr"] for r in records if "outer_lr" in r]
    if rates:
        result.outer_lr = {
            "first": rates[0],
            "median": statistics.median(rates),
            "last": rates[-1],
            "min": min(rates),
            "max": max(rates),
        }
    if "theory_L" in records[-1]:
        norms = [r["mean_grad_norm"] for r in records]
        result.theory = {
            "L": records[-1]["theory_L"],
            "rho": records[-1]["theory_rho"],
            "mean_grad_norm_first": norms[0],
            "mean_grad_norm_last": norms[-1],
        }


def read_evaluation(result: Result, path: Path) -> None:
    """The MAML rows of ``evaluation.json``; a diverged row (``mean`` null) is left out of the table."""
    report = json.loads(path.read_text())
    for entry in report["results"]:
        if entry["mean"] is None:
            continue
        cells = {"maml": result.mse, "maml (proximal)": result.own_mse}.get(entry["model"])
        if cells is not None:
            cells[f"{entry['support_size']}/{entry['steps']}"] = [entry["mean"], entry["ci95"]]


def measure(row: Row, budget: Budget, root: Path, torchmaml: list[str], common: tuple[str, ...] = ()) -> Result:
    """Train and evaluate one row in fresh subprocesses; collect its numbers."""
    result = Result(row)
    out = root / row.name
    log_path = root / f"{row.name}.log"
    if out.exists():
        shutil.rmtree(out)
    log_path.unlink(missing_ok=True)
    command = [*torchmaml, *train_arguments(row, budget, out, common)]
    code, wall, rss = run_child(command, log_path, None, append=True, extra_env={"TORCH_LOGS": "graph_breaks"})
    result.wall_seconds, result.peak_rss_mb = wall, rss
    text = log_path.read_text(errors="replace")
    compiles = [setting for setting in ("compile=true", *common, *row.settings) if setting.startswith("compile=")]
    result.compiled = COMPILE_FALLBACK not in text if compiles[-1] != "compile=false" else None  # None: eager
    result.graph_breaks = len(GRAPH_BREAK.findall(text))
    if (out / "metrics-maml.jsonl").exists():
        read_metrics(result, out / "metrics-maml.jsonl")
    if code != 0:
        result.error = f"train exit code {code}: {last_lines(log_path)}"
        return result
    code, _, _ = run_child([*torchmaml, "evaluate", str(out)], log_path, None, append=True)
    if code != 0:
        result.error = f"evaluate exit code {code}: {last_lines(log_path)}"
        return result
    read_evaluation(result, out / "evaluation.json")
    return result


# -- the report ------------------------------------------------------------------------------------------


def mse_cell(result: Result, support: int, steps: int, own: bool = False) -> str:
    value = (result.own_mse if own else result.mse).get(f"{support}/{steps}")
    if not value:
        return "—"
    fmt = ".3f" if abs(value[0]) < 1e4 else ".3g"  # diverged adaptations: keep the cell readable
    return f"{value[0]:{fmt}} ± {value[1]:{fmt}}"


def number(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else "—"


def compile_cell(result: Result) -> str:
    if result.compiled is None:
        return "—"
    if not result.compiled:
        return "no (eager fallback)"
    return f"yes, {result.graph_breaks} graph breaks" if result.graph_breaks else "yes"


def table(results: list[Result]) -> str:
    mse_headers = [f"K={k}, {s} step{'s' if s > 1 else ''}" for k in SUPPORT_SIZES for s in STEPS]
    headers = [
        "run",
        "estimator",
        "outer optimiser",
        "options",
        *mse_headers,
        "iterations",
        "ms/it (median, 2nd half)",
        "train s",
        "peak RSS MB",
        "compiled",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * 4 + "---:|" * (len(headers) - 5) + "---|"]
    for result in results:
        row = result.row
        per_it = result.seconds_per_iteration * 1000 if result.seconds_per_iteration is not None else None
        cells = [
            row.name,
            row.estimator,
            row.optimizer,
            row.options.replace("|", "\\|"),
            *(mse_cell(result, k, s) for k in SUPPORT_SIZES for s in STEPS),
            str(result.iterations_logged),
            number(per_it, ".2f"),
            number(result.train_seconds, ".0f"),
            number(result.peak_rss_mb, ".0f"),
            compile_cell(result),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if result.own_mse:  # the same run scored after its own adaptation
            own = [f"{row.name}, own adaptation", row.estimator, "", "(proximal solve: solver steps)"]
            own += [mse_cell(result, k, s, own=True) for k in SUPPORT_SIZES for s in STEPS] + [""] * 5
            lines.append("| " + " | ".join(own) + " |")
    return "\n".join(lines)


def plot_curves(results: list[Result], path: Path) -> None:
    """Every row's training query loss (a running mean over 2% of its iterations) against training seconds."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for result in results:
        if not result.curve:
            continue
        seconds, losses = zip(*result.curve, strict=True)
        window = max(1, len(losses) // 50)
        cumulative = list(itertools.accumulate(losses, initial=0.0))
        smooth = [
            (cumulative[i + 1] - cumulative[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(losses))
        ]
        axes.plot(seconds, smooth, label=result.row.name)
    axes.set(xlabel="training seconds", ylabel="query loss after adaptation (training tasks)", yscale="log")
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def theory_notes(results: list[Result]) -> list[str]:
    """β_k used by each theory row, and its MSE relative to the Adam row of the same estimator."""
    by_name = {r.row.name: r for r in results}
    notes = []
    for result in results:
        if not result.theory:
            continue
        t, rates = result.theory, result.outer_lr
        notes.append(
            f"- {result.row.name}: L = {t['L']:.4g}, rho = {t['rho']:.4g} (the last estimate); "
            f"E||grad f_j|| {t['mean_grad_norm_first']:.3g} → {t['mean_grad_norm_last']:.3g}; "
            f"β_k first {rates['first']:.3g}, median {rates['median']:.3g}, last {rates['last']:.3g} "
            f"(range {rates['min']:.3g}-{rates['max']:.3g})"
        )
        adam = by_name.get(result.row.estimator)
        if adam is None or not adam.mse or not result.mse:
            continue
        ratios = [
            f"K={k}/{s}: {result.mse[f'{k}/{s}'][0] / adam.mse[f'{k}/{s}'][0]:.2f}"
            for k in SUPPORT_SIZES
            for s in STEPS
            if f"{k}/{s}" in result.mse and f"{k}/{s}" in adam.mse
        ]
        notes.append(f"  - MSE ratio to the Adam row `{adam.row.name}` (1.10 = 10% worse): " + ", ".join(ratios))
    return notes


def report(results: list[Result], header: dict[str, Any], budget: Budget) -> str:
    lines = [
        f"# Meta-gradient estimators on sinusoid regression, {budget} each"
        + "".join(f", `{setting}`" for setting in header["common"]),
        "",
        f"command: `{header['command']}`",
        "",
        f"torch {header['torch']}, Python {header['python']}, {header['machine']}, {header['cpus']} CPUs, "
        f"OMP_NUM_THREADS={header['omp_num_threads']}, torch threads {header['torch_threads']}; "
        f"load average {header['load_start']} at the start, {header['load_end']} at the end; "
        f"total {header['total_seconds']:.0f} s",
        "",
        "Sinusoid preset (MLP 1-40-40-1, alpha 0.01, 10-shot training, meta-batch 25, seed 0),"
        " `pretrained_baseline=false`, `compile=true`; one inner step unless the options say otherwise."
        " Meta-test: 600 held-out tasks, 100"
        " query points, fine-tuning at the run's alpha; MSE mean ± 95% CI. ms/it: median difference of the"
        " cumulative `seconds` of `metrics-maml.jsonl` over the second half of the run (the theory rows"
        " include the per-iteration E||grad f_j|| estimate). Peak RSS: `ru_maxrss` of the training process"
        " (`os.wait4`). train s: cumulative training time, including the one-off compilation. compiled: whether"
        " the run kept torch.compile (no fallback to eager) and how many dynamo graph breaks it logged (code"
        " around a break runs eagerly).",
        "",
        table(results),
    ]
    notes = theory_notes(results)
    if notes:
        lines += ["", "Theory-guided step size:", "", *notes]
    failures = [r for r in results if r.error]
    if failures:
        lines += ["", "Failures:", "", *(f"- {r.row.name}: {r.error}" for r in failures)]
    return "\n".join(lines) + "\n"


def names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and meta-test every estimator on sinusoid for the same iterations; print a markdown table."
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, default=None, help="meta-iterations per run (default 20000)")
    budget.add_argument("--minutes", type=float, default=None, help="training minutes per run instead")
    parser.add_argument("--parallel", type=int, default=1, help="rows trained at a time (default 1)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every row (repeatable)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="also draw every row's training loss to this PNG")
    parser.add_argument(
        "--estimators", type=names, default=list(ESTIMATORS), help=f"comma-separated (default {','.join(ESTIMATORS)})"
    )
    parser.add_argument(
        "--theory",
        type=names,
        default=list(THEORY),
        help=f"estimators to also run with outer_optimizer=theory (default {','.join(THEORY)}; '' for none)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="run folders (default runs/compare)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement to this JSON file")
    args = parser.parse_args(argv)
    if args.minutes is None and args.iterations is None:
        args.iterations = 20_000
    if args.iterations is not None and args.iterations < 2:
        parser.error("--iterations: needs at least 2 (the time per iteration is a difference)")
    if args.minutes is not None and not args.minutes > 0:
        parser.error("--minutes: needs a positive number")
    if args.parallel < 1:
        parser.error("--parallel: needs at least 1")
    unknown = sorted(set(args.estimators + args.theory) - set(ESTIMATORS))
    if unknown:
        parser.error(f"unknown estimators {', '.join(unknown)}; choose from {', '.join(ESTIMATORS)}")
    return args


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    started = time.perf_counter()
    header = {
        "command": shlex.join(
            [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] * ("OMP_NUM_THREADS" in os.environ)
            + [os.path.relpath(sys.executable), *sys.argv]
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "torch_threads": torch.get_num_threads(),
        "load_start": load_average(),
        "common": args.set,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    torchmaml = cli_command()
    rows = build_rows(args.estimators, args.theory)
    budget = Budget(args.iterations, args.minutes)

    def run_row(index: int, row: Row) -> Result:
        print(f"[{index}/{len(rows)}] {row.name}: training ({budget})", file=sys.stderr, flush=True)
        result = measure(row, budget, args.out, torchmaml, tuple(args.set))
        status = result.error or (
            f"done in {result.wall_seconds:.0f} s, {number(result.seconds_per_iteration, '.4f')} s/it, "
            f"5-shot 10-step MSE {mse_cell(result, 5, 10)}"
        )
        print(f"[{index}/{len(rows)}] {row.name}: {status}", file=sys.stderr, flush=True)
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:  # each row is a child process
        results = list(pool.map(run_row, range(1, len(rows) + 1), rows))
    header["load_end"] = load_average()
    header["total_seconds"] = time.perf_counter() - started
    print(report(results, header, budget), end="")
    if args.plot is not None:
        plot_curves(results, args.plot)
    if args.json is not None:
        rows_measured = [r.to_dict() for r in results]
        payload = {"iterations": args.iterations, "minutes": args.minutes, **header, "rows": rows_measured}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
