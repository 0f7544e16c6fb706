"""The theory lab on the command line, run from the repository root (``torchmaml`` on the path)::

    python -m experiments.theory_lab constants   --family linear|sinusoid [--out DIR] [--quick]
    python -m experiments.theory_lab bias        --family linear|sinusoid [--out DIR] [--quick]
    python -m experiments.theory_lab complexity  --family linear|sinusoid [--out DIR] [--quick]
    python -m experiments.theory_lab report      [--out DOCS] [--quick]     # all: DOCS/theory.md, DOCS/theory/*

Each experiment writes ``<experiment>-<family>.json`` and ``.png`` into ``DIR`` (default ``runs/theory``).
Every user error (an unknown family, a missing matplotlib) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from torchmaml.errors import ConfigError, TorchMAMLError

PROG = "python -m experiments.theory_lab"
EXIT_USAGE = 2
EXPERIMENTS = {
    "constants": "estimate L, rho, sigma^2, sigmã^2, sigma_H^2, Delta (closed-form check, or along a run)",
    "bias": "bias and moments of the meta-gradient estimators vs D_in, D_o, D_h, B, next to the bounds",
    "complexity": "iterations to epsilon for MAML, FO-MAML, HF-MAML with the theory step size, next to T(epsilon)",
    "report": "run every experiment on both families and write DOCS/theory.md with its figures",
}
REPORT_COMMAND = f"OMP_NUM_THREADS=1 {PROG} report --out docs"


def build_parser() -> argparse.ArgumentParser:
    """The lab's parser: one subcommand per experiment, and ``report``."""
    from experiments.theory_lab.setups import FAMILIES

    parser = argparse.ArgumentParser(
        prog=PROG, description="Measure the constants and claims of MAML's convergence theory."
    )
    experiments = parser.add_subparsers(dest="experiment", required=True)
    for name, text in EXPERIMENTS.items():
        sub = experiments.add_parser(name, help=text, description=text)
        if name == "report":
            sub.add_argument("--out", type=Path, default=Path("docs"), help="docs folder (default: docs)")
        else:
            sub.add_argument("--family", default="linear", help=f"task family: {', '.join(FAMILIES)}")
            sub.add_argument("--out", type=Path, default=Path("runs/theory"), help="output folder")
        sub.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of a few seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the experiment; a user error is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        from torchmaml.extras import require

        require("matplotlib", "plots")  # the lab writes figures
        return run_theory(args)
    except TorchMAMLError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def run_theory(args: argparse.Namespace) -> int:
    """Run the chosen experiment; print what was written."""
    from experiments.theory_lab.run import run_bias, run_complexity, run_constants, single_thread, starting_constants
    from experiments.theory_lab.setups import lab_setup

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out: {args.out} exists and is not a folder")
    single_thread()
    started = time.perf_counter()
    if args.experiment == "report":
        return _report(args.out, args.quick, started)
    setup = lab_setup(args.family, args.quick)
    if args.experiment == "constants":
        run_constants(setup, args.out)
    else:
        constants = starting_constants(setup)
        (run_bias if args.experiment == "bias" else run_complexity)(setup, constants, args.out)
    name = f"{args.experiment}-{setup.name}"
    print(
        f"wrote {args.out / (name + '.json')} and {args.out / (name + '.png')} ({time.perf_counter() - started:.0f} s)"
    )
    return 0


def _report(out: Path, quick: bool, started: float) -> int:
    from experiments.theory_lab.docs import write_docs
    from experiments.theory_lab.run import run_bias, run_complexity, run_constants, starting_constants
    from experiments.theory_lab.setups import FAMILIES, lab_setup

    figures = out / "theory"
    results = {}
    for family in FAMILIES:
        setup = lab_setup(family, quick)
        constants = starting_constants(setup)
        results[family] = {
            "constants": run_constants(setup, figures),
            "bias": run_bias(setup, constants, figures),
            "complexity": run_complexity(setup, constants, figures),
        }
        print(f"{family}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    command = REPORT_COMMAND + (" --quick" if quick else "")
    page = write_docs(out / "theory.md", results, command, time.perf_counter() - started)
    print(f"wrote {page} and {len(list(figures.glob('*')))} files in {figures}")
    return 0
