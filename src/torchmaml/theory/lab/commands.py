"""``torchmaml theory constants|bias|complexity|report``: the theory lab on the command line.

    torchmaml theory constants   --family linear|sinusoid [--out DIR] [--quick]
    torchmaml theory bias        --family linear|sinusoid [--out DIR] [--quick]
    torchmaml theory complexity  --family linear|sinusoid [--out DIR] [--quick]
    torchmaml theory report      [--out DOCS] [--quick]     # everything, DOCS/theory.md and DOCS/theory/*

Each experiment writes ``<experiment>-<family>.json`` and ``.png`` into ``DIR`` (default ``runs/theory``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torchmaml.errors import ConfigError
from torchmaml.theory.lab.setups import FAMILIES, lab_setup

EXPERIMENTS = {
    "constants": "estimate L, rho, sigma^2, sigmã^2, sigma_H^2, Delta (closed-form check, or along a run)",
    "bias": "bias and moments of the meta-gradient estimators vs D_in, D_o, D_h, B, next to the bounds",
    "complexity": "iterations to epsilon for MAML, FO-MAML, HF-MAML with the theory step size, next to T(epsilon)",
    "report": "run every experiment on both families and write DOCS/theory.md with its figures",
}
REPORT_COMMAND = "OMP_NUM_THREADS=1 torchmaml theory report --out docs"


def add_theory_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``theory`` and its four experiments to the ``torchmaml`` parser."""
    theory = commands.add_parser("theory", help="measure the constants and claims of MAML's convergence theory")
    experiments = theory.add_subparsers(dest="experiment", required=True)
    for name, text in EXPERIMENTS.items():
        parser = experiments.add_parser(name, help=text, description=text)
        if name == "report":
            parser.add_argument("--out", type=Path, default=Path("docs"), help="docs folder (default: docs)")
        else:
            parser.add_argument("--family", default="linear", help=f"task family: {', '.join(FAMILIES)}")
            parser.add_argument("--out", type=Path, default=Path("runs/theory"), help="output folder")
        parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of a few seconds")


def run_theory(args: argparse.Namespace) -> int:
    """Run the chosen experiment; print what was written."""
    from torchmaml.theory.lab.run import run_bias, run_complexity, run_constants, single_thread, starting_constants

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
    from torchmaml.theory.lab.docs import write_docs
    from torchmaml.theory.lab.run import run_bias, run_complexity, run_constants, starting_constants

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
