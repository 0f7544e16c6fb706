"""The supervised benchmarks: one class per task family, registered by name (``config.benchmark``).

A ``Benchmark`` answers everything that differs between task families, so the runtime, ``evaluate`` and
``adapt`` never branch on a benchmark's name:

- the training, validation and test task sources (``tasks``) and the held-out evaluation batches;
- the network (``model``), its loss and the metric adapted models are scored by;
- how a report describes the held-out tasks (``held_out``) and which figures it draws (``figures``);
- for classifiers, how a user's labelled and unlabelled examples are read (``support_examples``,
  ``query_examples``: images or texts).

``BENCHMARKS`` maps names to instances: ``sinusoid`` (regression, MSE), ``omniglot`` and ``folder`` (N-way
K-shot image classification with conv4, accuracy), ``languages`` and ``text_folder`` (N-way K-shot text
classification with a GRU or a Transformer encoder, accuracy). A new benchmark is one subclass, one line in
``BENCHMARKS``, and its tests.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.folder import IMAGE_SUFFIXES, load_image_folder, split_classes
from torchmaml.data.images import DatasetError, decode_image
from torchmaml.data.languages import load_languages
from torchmaml.data.omniglot import load_omniglot
from torchmaml.data.sinusoid import SinusoidTasks
from torchmaml.data.text import TEXT_SUFFIX, TextClasses, encode, load_text_folder, numbered_lines, read_texts
from torchmaml.errors import ConfigError, one_of
from torchmaml.models.conv4 import conv4
from torchmaml.models.mlp import mlp
from torchmaml.models.sequence import CharGRU, TextTransformer
from torchmaml.run import seeds
from torchmaml.run.seeds import evaluation_stream
from torchmaml.tasks import TaskBatch, TaskSource

if TYPE_CHECKING:
    from torchmaml.config import TrainConfig
    from torchmaml.learner import MetaLearner
    from torchmaml.rundir import RunDir

EVAL_CHUNK = 50  # tasks per evaluation batch: bounds the memory of 600 many-way tasks
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """How adapted models are scored: ``fn(prediction, target) -> scalar`` per task; ``scale`` and ``label``
    are how a results table shows it (accuracy in percent)."""

    name: str
    fn: LossFn
    higher_is_better: bool
    scale: float = 1.0
    label: str = ""


def accuracy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of examples whose arg-max logit is the target class."""
    return (prediction.argmax(-1) == target).to(prediction.dtype).mean()


def dtype_of(config: TrainConfig) -> torch.dtype:
    return getattr(torch, config.dtype)


class Benchmark:
    """A task family. Subclasses set the class attributes and implement ``tasks``, ``model`` and
    ``evaluation_batches``; the rest has defaults that fit most families."""

    name: ClassVar[str]
    metric: ClassVar[Metric]
    loss: ClassVar[LossFn]
    classification: ClassVar[bool] = False
    supports_pretrained_baseline: ClassVar[bool] = False  # the joint-training baseline (``pretrained_baseline``)

    def check(self, config: TrainConfig) -> None:
        """Refuse a configuration this family cannot run (a ``ValueError`` naming the key)."""
        if config.pretrained_baseline and not self.supports_pretrained_baseline:
            raise ValueError(
                "pretrained_baseline: the joint-training baseline is defined for "
                f"{one_of(_with('supports_pretrained_baseline'))} only; set pretrained_baseline = false"
            )

    def tasks(self, config: TrainConfig, part: str = "train") -> TaskSource:
        """The task source of a split part: ``train``, ``val`` or ``test``."""
        raise NotImplementedError

    def model(self, config: TrainConfig) -> nn.Module:
        """The family's network, freshly initialised from the global generator."""
        raise NotImplementedError

    def evaluation_batches(self, config: TrainConfig, split: str, tasks: int | None) -> dict[int, list[TaskBatch]]:
        """Held-out tasks by support size, in chunks of at most ``EVAL_CHUNK`` tasks."""
        raise NotImplementedError

    def query_size(self, config: TrainConfig) -> int:
        """Query examples per held-out task."""
        raise NotImplementedError

    def held_out(self, config: TrainConfig) -> dict:
        """What a report says about the held-out tasks beyond their number (classification: the split)."""
        return {}

    def figures(
        self, learners: dict[str, tuple[MetaLearner, float | None]], run: RunDir, config: TrainConfig
    ) -> list[Path]:
        """The figures ``evaluate`` draws into the run folder; the paths written."""
        return []


class Sinusoid(Benchmark):
    """Sinusoid regression (Finn et al. 2017): ``y = A sin(x - b)``, an MLP, the MSE."""

    name = "sinusoid"
    metric = Metric("mse", F.mse_loss, higher_is_better=False, label="MSE")
    loss = staticmethod(F.mse_loss)
    supports_pretrained_baseline = True

    def tasks(self, config: TrainConfig, part: str = "train") -> TaskSource:
        hessian = config.hessian_size if part == "train" else 0
        return sinusoid_tasks(config, config.support_size, config.query_size, hessian)

    def model(self, config: TrainConfig) -> nn.Module:
        return mlp(1, config.hidden, 1)

    def evaluation_batches(self, config: TrainConfig, split: str, tasks: int | None) -> dict[int, list[TaskBatch]]:
        """The same ``eval_tasks`` functions for every size in ``eval_support_sizes``; ``split =
        "validation"`` draws a different, equally sized set."""
        generator = seeds.generator(evaluation_stream(config.eval_seed, split))
        source = sinusoid_tasks(config)
        functions = source.sample_functions(tasks or config.eval_tasks, generator)
        return {
            k: list(_chunks(source.batch_for(functions, k, config.eval_query_size, generator), config))
            for k in config.eval_support_sizes
        }

    def query_size(self, config: TrainConfig) -> int:
        return config.eval_query_size

    def figures(
        self, learners: dict[str, tuple[MetaLearner, float | None]], run: RunDir, config: TrainConfig
    ) -> list[Path]:
        """The paper's Figure 2: fits before and after adaptation on two held-out functions; for a particle
        ensemble its posterior predictive on three."""
        from torchmaml.plots import plot_sinusoid_fits

        if config.particles:
            return _posterior_predictive_figure(learners["maml"][0], run, config)

        steps = tuple(sorted({min(config.eval_steps), max(config.eval_steps)} - {0}))  # the paper: 1 and 10
        figure = plot_sinusoid_fits(learners, run.fits, support_size=min(config.eval_support_sizes), steps=steps)
        return [figure] if figure is not None else []


class FewShotClassification(Benchmark):
    """N-way K-shot classification with the cross-entropy; accuracy in percent. Subclasses give the examples of
    each split part (``classes``), the network, and how a user's labelled and unlabelled examples are read
    (``support_examples``, ``query_examples``: ``torchmaml adapt``)."""

    metric = Metric("accuracy", accuracy, higher_is_better=True, scale=100.0, label="accuracy %")
    loss = staticmethod(F.cross_entropy)
    classification = True
    examples: ClassVar[str] = "examples"  # what an example is called in messages: images, texts

    def classes(self, config: TrainConfig, part: str) -> tuple[list[torch.Tensor], list[str]]:
        """The examples and class names of a split part."""
        raise NotImplementedError

    def tasks(self, config: TrainConfig, part: str = "train") -> TaskSource:
        examples, names = self.classes(config, part)
        hessian = config.hessian_size if part == "train" else 0  # per class, like shots and queries
        return FewShotTasks(
            examples, config.ways, config.shots, config.queries, names, dtype_of(config), hessian_shots=hessian
        )

    def evaluation_batches(self, config: TrainConfig, split: str, tasks: int | None) -> dict[int, list[TaskBatch]]:
        """``eval_tasks`` tasks of the part ``test`` (``"validation"``: part ``val``, ``val_tasks`` tasks) with
        the run's ways and shots."""
        generator = seeds.generator(evaluation_stream(config.eval_seed, split))
        count = tasks or (config.val_tasks if split == "validation" else config.eval_tasks)
        source = self.tasks(config, "val" if split == "validation" else "test")
        sizes = [min(EVAL_CHUNK, count - start) for start in range(0, count, EVAL_CHUNK)]
        return {config.shots: [source.sample(size, generator).to(device=config.device) for size in sizes]}

    def query_size(self, config: TrainConfig) -> int:
        return config.queries * config.ways

    def held_out(self, config: TrainConfig) -> dict:
        split = self.split_summary(config)
        counts = split["classes"]
        sentence = (
            f"{config.eval_tasks} tasks drawn from the {counts['test']} test classes of split {split['split']!r} "
            f"(train {counts['train']}, validation {counts['val']}, test {counts['test']} classes, disjoint)"
        )
        return {"ways": config.ways, "shots": config.shots, **split, "held_out": sentence}

    def split_summary(self, config: TrainConfig) -> dict:
        """The split's name and its class counts per part."""
        raise NotImplementedError

    def support_examples(self, folder: Path, config: TrainConfig) -> tuple[list[str], list[torch.Tensor]]:
        """A user's labelled examples, ``folder/<class>/...``: the class names and each class's network inputs."""
        raise NotImplementedError

    def query_examples(self, folder: Path, config: TrainConfig) -> tuple[list[str], torch.Tensor, list[str | None]]:
        """A user's examples to classify: their names, network inputs, and true classes where the folder
        gives them (``folder/<class>/...``)."""
        raise NotImplementedError


class FewShotImages(FewShotClassification):
    """N-way K-shot image classification with conv4."""

    examples = "images"

    def image_mode(self, config: TrainConfig) -> str:
        """``L`` (grayscale) or ``RGB``: how images are decoded."""
        return config.color

    def image_tensor(self, images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
        """Decoded ``uint8`` images as the network's input: ``[0, 1]`` floats of the run's dtype and device."""
        return (images.to(dtype_of(config)) / 255).to(config.device)

    def model(self, config: TrainConfig) -> nn.Module:
        channels = 1 if self.image_mode(config) == "L" else 3
        bn_steps = config.inner_steps if config.batch_norm == "per_step" else None
        return conv4(config.ways, channels, config.filters, config.image_size, config.strided, bn_steps)

    def support_examples(self, folder: Path, config: TrainConfig) -> tuple[list[str], list[torch.Tensor]]:
        """The images of ``folder/<class>/<image>``, converted and resized as in training."""
        with tempfile.TemporaryDirectory() as cache:  # a user's folders are read, never written to
            labelled = load_image_folder(
                folder, mode=self.image_mode(config), image_size=config.image_size, cache_dir=cache
            )
        return list(labelled.class_names), [self.image_tensor(images, config) for images in labelled.images]

    def query_examples(self, folder: Path, config: TrainConfig) -> tuple[list[str], torch.Tensor, list[str | None]]:
        """The images of ``folder`` (flat, or in class sub-folders whose names are the true classes)."""
        files, truths = _query_files(folder, IMAGE_SUFFIXES, "images")
        mode = self.image_mode(config)
        images = torch.stack([_read_image(path, mode, config.image_size) for path in files])
        return [str(path) for path in files], self.image_tensor(images, config), truths


class Omniglot(FewShotImages):
    """Omniglot (Lake et al.): 1,623 handwritten characters, the MAML or Vinyals class split; inputs are
    inverted (strokes bright on dark) as in the MAML code."""

    name = "omniglot"

    def image_mode(self, config: TrainConfig) -> str:
        return "L"

    def image_tensor(self, images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
        return super().image_tensor(255 - images, config)

    def classes(self, config: TrainConfig, part: str) -> tuple[list[torch.Tensor], list[str]]:
        data = _omniglot(config.data_dir, config.download, config.image_size, config.cache_dir)
        return data.split_images(config.split, part), data.split_classes(config.split, part)

    def split_summary(self, config: TrainConfig) -> dict:
        data = _omniglot(config.data_dir, config.download, config.image_size, config.cache_dir)
        counts = {part: len(data.split_classes(config.split, part)) for part in ("train", "val", "test")}
        return {"split": config.split, "classes": counts}


class SplitByClassFractions:
    """A classification benchmark over one set of labelled classes (a user's folder, a package's word lists),
    shuffled with ``split_seed`` and split into disjoint train / validation / test parts by ``class_fractions``.
    A subclass gives every class's examples (``labelled``)."""

    def labelled(self, config: TrainConfig) -> tuple[Sequence[torch.Tensor], Sequence[str]]:
        """Every class's examples and the class names."""
        raise NotImplementedError

    def classes(self, config: TrainConfig, part: str) -> tuple[list[torch.Tensor], list[str]]:
        examples, names = self.labelled(config)
        # the whole set is checked first (ways, examples per class), then split by class
        FewShotTasks(list(examples), config.ways, config.shots, config.queries, class_names=names)
        chosen = self.split(config, list(names))[part]
        return [examples[c] for c in chosen], [names[c] for c in chosen]

    def split(self, config: TrainConfig, class_names: list[str]) -> dict[str, list[int]]:
        """The disjoint train/val/test classes (``class_fractions``, ``split_seed``)."""
        return split_classes(
            class_names, config.class_fractions, config.split_seed, config.ways, validate=config.validate_every > 0
        )

    def split_summary(self, config: TrainConfig) -> dict:
        names = list(self.labelled(config)[1])
        parts = self.split(config, names)
        return {
            "split": "classes",
            "class_fractions": config.class_fractions,
            "split_seed": config.split_seed,
            "classes": {part: len(indices) for part, indices in parts.items()},
            "test_classes": [names[c] for c in parts["test"]],
        }


class Folder(SplitByClassFractions, FewShotImages):
    """A user's images, ``data_dir/<class>/<image>``, split by class (``SplitByClassFractions``)."""

    name = "folder"

    def labelled(self, config: TrainConfig) -> tuple[Sequence[torch.Tensor], Sequence[str]]:
        data = _folder(config.data_dir, config.color, config.image_size, config.cache_dir)
        return data.images, data.class_names


class FewShotText(SplitByClassFractions, FewShotClassification):
    """N-way K-shot classification of short texts, byte tokens padded to ``max_length``
    (``torchmaml.data.text``), with a GRU or a Transformer encoder (``text_model``); split by class
    (``SplitByClassFractions``)."""

    examples = "texts"

    def texts(self, config: TrainConfig) -> TextClasses:
        """Every class's encoded texts."""
        raise NotImplementedError

    def labelled(self, config: TrainConfig) -> tuple[Sequence[torch.Tensor], Sequence[str]]:
        data = self.texts(config)
        return data.ids, data.class_names

    def model(self, config: TrainConfig) -> nn.Module:
        return text_model(config, config.ways)

    def support_examples(self, folder: Path, config: TrainConfig) -> tuple[list[str], list[torch.Tensor]]:
        """The lines of ``folder/<class>/<file>.txt`` (or of a ``class,text`` CSV file), tokenised as in training."""
        texts = read_texts(Path(folder).expanduser())
        names = sorted(texts)
        return names, [encode(texts[name], config.max_length).to(config.device) for name in names]

    def query_examples(self, folder: Path, config: TrainConfig) -> tuple[list[str], torch.Tensor, list[str | None]]:
        """Every line of the ``.txt`` files of ``folder`` (flat, or in class sub-folders whose names are the true
        classes), named ``file:line``."""
        files, classes = _query_files(folder, frozenset({TEXT_SUFFIX}), "texts")
        names, texts, truths = [], [], []
        for file, truth in zip(files, classes, strict=True):
            for number, line in numbered_lines(file):
                names.append(f"{file}:{number}")
                texts.append(line)
                truths.append(truth)
        if not texts:
            raise DatasetError(f"the .txt files of {folder} hold no texts (one text a line)")
        return names, encode(texts, config.max_length).to(config.device), truths


class Languages(FewShotText):
    """Which language is a word? 42 languages (``language_group = "all"``) or the 27 in the Latin alphabet
    (``"latin"``), ``words_per_class`` words each, from the ``wordfreq`` package (``torchmaml.data.languages``)."""

    name = "languages"

    def texts(self, config: TrainConfig) -> TextClasses:
        return _languages(config.language_group, config.words_per_class, config.max_length, config.cache_dir)


class TextFolder(FewShotText):
    """A user's texts, ``data_dir/<class>/<file>.txt`` (one text a line) or a ``class,text`` CSV file."""

    name = "text_folder"

    def texts(self, config: TrainConfig) -> TextClasses:
        return _text_folder(config.data_dir, config.max_length, config.cache_dir)


def text_model(config: TrainConfig, classes: int) -> nn.Module:
    """The ``text_model`` network with ``classes`` outputs."""
    if config.text_model == "gru":
        return CharGRU(classes, config.text_embedding, config.text_hidden)
    return TextTransformer(
        classes, config.text_embedding, config.text_hidden, config.text_heads, config.text_layers, config.max_length
    )


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (Sinusoid(), Omniglot(), Folder(), Languages(), TextFolder())}


def _posterior_predictive_figure(learner: MetaLearner, run: RunDir, config: TrainConfig) -> list[Path]:
    """The adapted ensemble's mean and 90% band against the truth on three held-out functions (fixed seed 3)."""
    from torchmaml.bayesian.evaluation import posterior_predictive_panels
    from torchmaml.bayesian.figures import plot_posterior_predictive

    source = sinusoid_tasks(config)
    functions = source.sample_functions(3, torch.Generator().manual_seed(3))
    batch = source.batch_for(functions, min(config.eval_support_sizes), 1, torch.Generator().manual_seed(4))
    low, high = source.x_range
    grid = torch.linspace(low, high, 200, dtype=dtype_of(config)).view(-1, 1)
    truth = source.target(grid.view(1, -1, 1), *functions[:2], functions.frequency).squeeze(-1)
    device = config.device
    panels = posterior_predictive_panels(
        learner, batch.to(device=device), grid.to(device), truth, steps=max(config.eval_steps)
    )
    path = plot_posterior_predictive(panels, run.posterior_predictive)
    return [path] if path is not None else []


def sinusoid_tasks(config: TrainConfig, support_size: int = 10, query_size: int = 10, hessian_size: int = 0):
    """The configuration's sinusoid family (phase, frequency and noise) with the given set sizes."""
    return SinusoidTasks(
        support_size,
        query_size,
        hessian_size,
        phase=tuple(config.phase_range),
        frequency=tuple(config.frequency_range),
        noise=config.noise_fraction,
        dtype=dtype_of(config),
    )


def benchmark_named(name: str) -> Benchmark:
    """The benchmark registered as ``name``; a one-line ``ConfigError`` otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ConfigError(f"benchmark: unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}") from None


def benchmark_of(config: TrainConfig) -> Benchmark:
    """The benchmark of a configuration."""
    return benchmark_named(config.benchmark)


def _with(capability: str) -> list[str]:
    return [name for name, benchmark in BENCHMARKS.items() if getattr(benchmark, capability)]


@functools.lru_cache(maxsize=2)
def _omniglot(data_dir: str, download: bool, image_size: int, cache_dir: str | None):
    """The decoded Omniglot images (kept: every split part and the evaluation read them)."""
    return load_omniglot(data_dir, download=download, image_size=image_size, cache_dir=cache_dir)


@functools.lru_cache(maxsize=2)
def _languages(group: str, words: int, length: int, cache_dir: str | None) -> TextClasses:
    """The encoded words of the languages benchmark."""
    return load_languages(group, words=words, length=length, cache_dir=cache_dir)


@functools.lru_cache(maxsize=2)
def _text_folder(data_dir: str, length: int, cache_dir: str | None) -> TextClasses:
    """The encoded texts of a text-folder benchmark."""
    return load_text_folder(data_dir, length=length, cache_dir=cache_dir)


@functools.lru_cache(maxsize=2)
def _folder(data_dir: str, color: str, image_size: int, cache_dir: str | None):
    """The decoded images of a folder benchmark."""
    return load_image_folder(data_dir, mode=color, image_size=image_size, cache_dir=cache_dir)


def _query_files(folder: Path, suffixes: frozenset[str], what: str) -> tuple[list[Path], list[str | None]]:
    """Files of ``folder`` with one of ``suffixes`` (flat, or in class sub-folders whose names are the true
    classes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"query folder {folder} does not exist or is not a folder")
    files, truths = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for file in sorted(entry.iterdir()):
                if file.suffix.lower() in suffixes and not file.name.startswith("."):
                    files.append(file)
                    truths.append(entry.name)
        elif entry.suffix.lower() in suffixes:
            files.append(entry)
            truths.append(None)
    if not files:
        raise DatasetError(f"query folder {folder} holds no {what} ({', '.join(sorted(suffixes))})")
    return files, truths


def _read_image(path: Path, mode: str, size: int) -> torch.Tensor:
    pixels = torch.from_numpy(decode_image(path, str(path), mode, size).copy())
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _chunks(batch: TaskBatch, config: TrainConfig) -> Iterator[TaskBatch]:
    for chunk in batch.chunks(EVAL_CHUNK):
        yield chunk.to(device=config.device)


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "FewShotClassification",
    "FewShotImages",
    "FewShotText",
    "Folder",
    "Languages",
    "Metric",
    "Omniglot",
    "Sinusoid",
    "SplitByClassFractions",
    "TextFolder",
    "benchmark_named",
    "text_model",
]
