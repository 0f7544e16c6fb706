"""``torchmaml adapt``: adapt a meta-trained classifier to a user's few labelled images, predict new ones.

    torchmaml adapt RUN_DIR --support SUPPORT_DIR --query QUERY_DIR [--steps N] [--out predictions.csv]

``SUPPORT_DIR/<class>/<image>`` holds a few labelled images per class (as many classes as the run's
``ways``). ``QUERY_DIR`` holds the images to classify, either directly or in ``<class>`` sub-folders (then
the true class is written beside the prediction and the accuracy is printed). Images are converted and
resized as in training (a run meta-trained on Omniglot also inverts them: strokes bright on dark).

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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from torchmaml.benchmark import FewShotImages, benchmark_of
from torchmaml.checkpoint import atomic_write_bytes
from torchmaml.data.folder import IMAGE_SUFFIXES, load_image_folder
from torchmaml.data.images import DatasetError, decode_image
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
    if not isinstance(benchmark, FewShotImages):
        raise ConfigError(f"{root} is a {config.benchmark} run; `torchmaml adapt` needs a classification run")
    learner, _ = load_learner(run, config, MAML)
    mode = benchmark.image_mode(config)
    with tempfile.TemporaryDirectory() as cache:  # a user's folders are read, never written to
        labelled = load_image_folder(support, mode=mode, image_size=config.image_size, cache_dir=cache)
    if len(labelled.class_names) != config.ways:
        raise ConfigError(
            f"the model was meta-trained for {config.ways}-way tasks but {support} has "
            f"{len(labelled.class_names)} classes ({', '.join(labelled.class_names)}); give it {config.ways}"
        )
    empty = [name for name, images in zip(labelled.class_names, labelled.images, strict=True) if len(images) == 0]
    if empty:
        raise DatasetError(f"support class folders without images: {', '.join(empty)}")

    def convert(images: torch.Tensor) -> torch.Tensor:
        return benchmark.image_tensor(images, config)

    support_x = torch.cat([convert(images) for images in labelled.images])
    support_y = torch.cat([torch.full((len(images),), c) for c, images in enumerate(labelled.images)])
    files, truths = _query_files(Path(query))
    query_x = convert(torch.stack([_read(path, mode, config.image_size) for path in files]))
    steps = max(config.eval_steps) if steps is None else check_steps(steps)
    fast = learner.adapt(support_x, support_y.to(config.device), steps=steps)
    with torch.no_grad():
        fast.train(transductive)
        logits = fast(query_x)
        probabilities = torch.softmax(logits, dim=-1).cpu()
    confidence, predicted = probabilities.max(dim=-1)
    rows = [
        Prediction(str(path), labelled.class_names[int(p)], float(c), truth)
        for path, p, c, truth in zip(files, predicted, confidence, truths, strict=True)
    ]
    path = Path(out) if out is not None else run.root / "predictions.csv"
    _write_csv(path, rows, devices=out is not None)  # a user's --out may be /dev/null; the run folder may not
    return rows, path


def check_steps(steps: int) -> int:
    """``steps`` if it is between 0 (no step: the meta-learned weights as they are) and ``MAX_STEPS``."""
    if not 0 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps: must be between 0 and {MAX_STEPS} inner steps, got {steps}")
    return steps


def _query_files(query: Path) -> tuple[list[Path], list[str | None]]:
    """Image files of ``query`` (flat, or in class sub-folders whose names are the true classes)."""
    if not query.is_dir():
        raise DatasetError(f"query folder {query} does not exist or is not a folder")
    files, truths = [], []
    for entry in sorted(query.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for image in sorted(entry.iterdir()):
                if image.suffix.lower() in IMAGE_SUFFIXES and not image.name.startswith("."):
                    files.append(image)
                    truths.append(entry.name)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            files.append(entry)
            truths.append(None)
    if not files:
        raise DatasetError(f"query folder {query} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, truths


def _read(path: Path, mode: str, size: int) -> torch.Tensor:
    pixels = torch.from_numpy(decode_image(path, str(path), mode, size).copy())
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _write_csv(path: Path, rows: list[Prediction], devices: bool = False) -> None:
    """The predictions as CSV at ``path``; ``devices``: a user's ``--out`` may be a character device."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "predicted_class", "probability", "true_class"])
    for row in rows:
        writer.writerow([row.file, row.predicted, f"{row.probability:.6f}", row.true_class or ""])
    atomic_write_bytes(path, text.getvalue().encode(), devices=devices)
