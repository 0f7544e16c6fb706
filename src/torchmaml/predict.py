"""``torchmaml adapt``: adapt a meta-trained classifier to a user's few labelled examples, predict new ones.

    torchmaml adapt RUN_DIR --support SUPPORT_DIR --query QUERY_DIR [--steps N] [--out predictions.csv]

``SUPPORT_DIR/<class>/<image>`` holds a few labelled images per class (as many classes as the run's
``ways``). ``QUERY_DIR`` holds the images to classify, either directly or in ``<class>`` sub-folders (then
the true class is written beside the prediction and the accuracy is printed). Images are converted and
resized as in training (a run meta-trained on Omniglot also inverts them: strokes bright on dark). A text run
(``languages``, ``text_folder``) reads ``SUPPORT_DIR/<class>/<file>.txt`` (or a ``class,text`` CSV file) and the
``.txt`` files of ``QUERY_DIR``, one text a line, tokenised as in training; each query line is named
``file:line`` in the predictions.

Each query image's prediction depends only on that image and the support set, never on which other images
are in the query folder: the adapted model runs in ``eval()`` mode, where its batch norms normalise with the
support set's statistics (``MetaLearner.adapt``), so no statistics are mixed across query images.
``--transductive`` instead classifies all query images as one batch in ``train()`` mode, normalising with the
batch's statistics as MAML does in training and meta-testing: the predictions then depend on the whole query
set.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from torchmaml.benchmark import FewShotClassification, benchmark_of
from torchmaml.checkpoint import atomic_write_bytes
from torchmaml.data.images import DatasetError
from torchmaml.errors import ConfigError
from torchmaml.experiment import MAML
from torchmaml.report import load_learner
from torchmaml.rundir import RunDir

MAX_STEPS = 1000  # as for eval_steps: more inner steps than any run is evaluated with


@dataclass(frozen=True)
class Prediction:
    file: str
    predicted: str
    probability: float
    true_class: str | None


def adapt_and_predict(
    root: Path,
    support: Path,
    query: Path,
    steps: int | None = None,
    out: Path | None = None,
    transductive: bool = False,
) -> tuple[list[Prediction], Path]:
    """Adapt the run's model on ``support``, classify ``query``, write the CSV; return the rows and its path.

    By default each query image is classified on its own (``fast.eval()``: the support set's statistics);
    ``transductive=True`` classifies the query set as one batch with its batch statistics (``fast.train()``).
    """
    run = RunDir(Path(root))
    config = run.config_for_this_machine()
    benchmark = benchmark_of(config)
    if not isinstance(benchmark, FewShotClassification):
        raise ConfigError(f"{root} is a {config.benchmark} run; `torchmaml adapt` needs a classification run")
    learner, _ = load_learner(run, config, MAML)
    class_names, examples = benchmark.support_examples(Path(support), config)
    if len(class_names) != config.ways:
        raise ConfigError(
            f"the model was meta-trained for {config.ways}-way tasks but {support} has "
            f"{len(class_names)} classes ({', '.join(class_names)}); give it {config.ways}"
        )
    empty = [name for name, inputs in zip(class_names, examples, strict=True) if len(inputs) == 0]
    if empty:
        raise DatasetError(f"support class folders without {benchmark.examples}: {', '.join(empty)}")
    support_x = torch.cat(examples)
    support_y = torch.cat([torch.full((len(inputs),), c) for c, inputs in enumerate(examples)])
    files, query_x, truths = benchmark.query_examples(Path(query), config)
    steps = max(config.eval_steps) if steps is None else check_steps(steps)
    fast = learner.adapt(support_x, support_y.to(config.device), steps=steps)
    with torch.no_grad():
        fast.train(transductive)
        logits = fast(query_x)
        probabilities = torch.softmax(logits, dim=-1).cpu()
    confidence, predicted = probabilities.max(dim=-1)
    rows = [
        Prediction(name, class_names[int(p)], float(c), truth)
        for name, p, c, truth in zip(files, predicted, confidence, truths, strict=True)
    ]
    path = Path(out) if out is not None else run.root / "predictions.csv"
    _write_csv(path, rows, devices=out is not None)  # a user's --out may be /dev/null; the run folder may not
    return rows, path


def check_steps(steps: int) -> int:
    """``steps`` if it is between 0 (no step: the meta-learned weights as they are) and ``MAX_STEPS``."""
    if not 0 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps: must be between 0 and {MAX_STEPS} inner steps, got {steps}")
    return steps


def _write_csv(path: Path, rows: list[Prediction], devices: bool = False) -> None:
    """The predictions as CSV at ``path``; ``devices``: a user's ``--out`` may be a character device."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "predicted_class", "probability", "true_class"])
    for row in rows:
        writer.writerow([row.file, row.predicted, f"{row.probability:.6f}", row.true_class or ""])
    atomic_write_bytes(path, text.getvalue().encode(), devices=devices)
