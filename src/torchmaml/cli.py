"""The ``torchmaml`` command line: ``train``, ``evaluate``, ``adapt``, ``export`` and ``presets``.

``train`` and ``evaluate`` dispatch to the species of the config or run folder (``torchmaml.species``: the
registry knows which module implements each). Every user error (bad config, missing run folder, corrupt
checkpoint) is one line on stderr and exit code 2.

``train`` launched by ``torchrun`` (``torchrun --nproc-per-node 2 -m torchmaml train ... --out RUN``) trains
one run with every process (``torchmaml.run.team``); a group that torchrun restarts (``--max-restarts``)
continues the run from its newest checkpoint. A rank that dies ends the others with one line (exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from torchmaml import __version__, species
from torchmaml.errors import TorchMAMLError
from torchmaml.presets import all_names
from torchmaml.run.signals import Interrupted
from torchmaml.run.team import Team, launched_by_torchrun

EXIT_USAGE = 2
EXIT_LOST_RANK = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchmaml", description="Gradient-based meta-learning in PyTorch.")
    parser.add_argument("--version", action="version", version=f"torchmaml {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="meta-train from a preset or TOML config")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help=f"a preset ({all_names()}; `torchmaml presets` describes them) or a TOML path")
    source.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set iterations=1000",
    )
    train.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<preset>-<time>)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--overwrite", action="store_true", help="delete the run already in --out and train anew")

    evaluate = commands.add_parser("evaluate", help="meta-test a trained run; writes RUN_DIR/evaluation.json")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--tasks", type=int, default=None, help="number of held-out tasks (default: config)")
    adapt = commands.add_parser("adapt", help="adapt a classifier run to labelled images, predict new ones (CSV)")
    adapt.add_argument("run_dir", type=Path)
    adapt.add_argument("--support", type=Path, required=True, help="folder of <class>/<image> labelled images")
    adapt.add_argument("--query", type=Path, required=True, help="folder of images to classify")
    adapt.add_argument("--steps", type=int, default=None, help="inner steps (default: the largest eval step)")
    adapt.add_argument("--out", type=Path, default=None, help="CSV path (default: RUN_DIR/predictions.csv)")
    adapt.add_argument(
        "--transductive",
        action="store_true",
        help="classify the query images as one batch with its batch-norm statistics (default: each on its own)",
    )
    commands.add_parser("presets", help="list the presets (--config NAME) with a one-line description each")
    export = commands.add_parser("export", help="write a run's trained weights as a plain state_dict")
    export.add_argument("run_dir", type=Path)
    export.add_argument(
        "--out", type=Path, required=True, help="model.safetensors (needs safetensors) or model.pt (torch.load)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "adapt":
            return _adapt(args)
        if args.command == "presets":
            from torchmaml.presets import listing

            print(listing())
            return 0
        if args.command == "export":
            from torchmaml.load import export_run

            print(f"wrote {export_run(args.run_dir, args.out)}")
            return 0
        return _evaluate(args)
    except TorchMAMLError as error:
        print(f"torchmaml: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _interrupted(stop: Interrupted, out: Path) -> int:
    """One line for a run stopped by a signal; the exit code a signal gives (128 + its number)."""
    wrote = f"wrote {stop.checkpoint}" if stop.checkpoint else "stopped at once by a second signal"
    print(
        f"torchmaml: stopped by signal {stop.signal_number}; {wrote}. Continue with: torchmaml train --resume {out}",
        file=sys.stderr,
    )
    return 128 + stop.signal_number


def _train(args: argparse.Namespace) -> int:
    from torchmaml.run.team import join

    team = join()  # SOLO unless launched by torchrun
    if not team.distributed:
        return _train_as(args, team)
    return _leave_after(lambda: _train_as(args, team), team)


def _leave_after(command: Callable[[], int], team: Team) -> NoReturn:
    """Run ``command`` as one rank of ``team``: errors are one line (from rank 0 when every rank has it),
    then the process group is destroyed and the process exits at once (see below)."""
    from torchmaml.run.team import LostRank, ReportedByWriter, leave

    try:
        code = command()
    except ReportedByWriter:
        code = EXIT_USAGE
    except LostRank as error:
        print(f"torchmaml: error (rank {team.rank}): {error}", file=sys.stderr)
        code = EXIT_LOST_RANK
    except TorchMAMLError as error:
        where = "" if team.writer else f" (rank {team.rank})"
        print(f"torchmaml: error{where}: {error}", file=sys.stderr)
        code = EXIT_USAGE
    if code != EXIT_LOST_RANK:
        leave(team)
    # With torch 2.13, a process that ran torch.func transforms over a gloo process group can abort in the
    # interpreter's teardown after all work is done ("terminate called without an active exception").
    # Everything is written, flushed and closed by now: leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train_as(args: argparse.Namespace, team: Team) -> int:
    from torchmaml.allocator import keep_freed_memory
    from torchmaml.rundir import RunDir

    def settings() -> tuple[str, Any, Path, bool]:
        """The species, config, run folder and whether to resume (rank 0 reads the files)."""
        if args.resume is not None:
            if args.out or args.overwrite:
                raise TorchMAMLError("--resume continues a run in its own folder: drop --out and --overwrite")
            name = species.of_run(args.resume)
            return name, species.module(name).resume_config(args.resume, args.overrides), args.resume, True
        if launched_by_torchrun() and args.out is None:
            raise TorchMAMLError("under torchrun, give the run folder with --out (a restarted group must find it)")
        name = species.of_config(args.config)
        config = species.module(name).load_config(args.config, args.overrides)
        out = args.out or Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        restarted = team.restart > 0 and (out / "config.toml").exists()  # torchrun restarted the group
        return name, config, out, restarted

    name, config, out, resume = team.broadcast(team.agree(settings if team.writer else lambda: None))
    kind = species.module(name)
    keep_freed_memory()  # the command owns its process: glibc keeps activation buffers (torchmaml.allocator)
    try:
        root = kind.train(
            config, out, progress=not args.no_progress, resume=resume, overwrite=args.overwrite, team=team
        )
    except Interrupted as stop:
        return _interrupted(stop, out) if team.writer else 128 + stop.signal_number
    if not team.writer:
        return 0
    run = RunDir(Path(root))
    print(f"run folder: {run.root}")
    print(f"  checkpoints: {', '.join(str(p.name) for p in sorted(run.root.glob('checkpoint-*.pt')))}")
    if run.learning_curve.exists():
        print(f"  learning curve: {run.learning_curve}")
    if any((run.root / "tensorboard").rglob("events.out.tfevents.*")):  # none without the extra
        print(f"  TensorBoard: tensorboard --logdir {run.root / 'tensorboard'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.tasks is not None and args.tasks < 2:
        raise TorchMAMLError(f"--tasks: needs at least 2 tasks for a confidence interval, got {args.tasks}")
    evaluation = species.module(species.of_run(args.run_dir)).evaluate(args.run_dir, tasks=args.tasks)
    print("\n".join(evaluation.lines))
    if evaluation.not_written is not None:
        raise TorchMAMLError(f"{evaluation.not_written}; the results above were not saved")
    print(f"wrote {' and '.join(evaluation.written)}")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from torchmaml.predict import adapt_and_predict, check_steps

    if args.steps is not None:
        check_steps(args.steps)
    rows, out = adapt_and_predict(args.run_dir, args.support, args.query, args.steps, args.out, args.transductive)
    labelled = [r for r in rows if r.true_class is not None]
    if labelled:
        correct = sum(r.predicted == r.true_class for r in labelled)
        print(
            f"accuracy on the labelled query examples: {correct}/{len(labelled)} = {100 * correct / len(labelled):.1f}%"
        )
    print(f"wrote {len(rows)} predictions to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
