"""N-way K-shot classification tasks over any labelled image set (Vinyals et al. 2016; Finn et al. 2017).

A task picks ``ways`` distinct classes, gives them the labels ``0..ways-1`` in a random order (so a class
has no fixed label and the model must learn it from the support set), and draws for each class
``shots + queries (+ hessian_shots)`` distinct examples: the first ``shots`` form the support set, the next
``queries`` the query set, and the last ``hessian_shots`` (when not 0) the independent Hessian set ``D_h`` of
the estimators that take one: the same classes, disjoint from the other two. The whole batch is drawn with
a few vectorised calls (random keys and ``topk``), and the images are gathered by one indexing operation,
with no Python loop over tasks or examples.

    tasks = FewShotTasks(images, ways=5, shots=1, queries=15)   # images: [classes, examples, C, H, W]
    batch = tasks.sample(32, torch.Generator().manual_seed(0))  # support_x [32, 5, C, H, W], ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchmaml.errors import ConfigError
from torchmaml.tasks import TaskBatch


class FewShotTasks:
    """Draws N-way K-shot tasks from ``images``: one tensor or one tensor per class.

    Args:
        images: ``[classes, examples, C, H, W]`` (the same number of examples in every class) or a
            sequence of ``[examples_c, C, H, W]`` tensors, one per class. uint8 images are scaled to
            ``[0, 1]`` (divided by 255) as they are drawn; floating-point images are used as they are. int64
            examples (token ids ``[examples, L]``, ``torchmaml.data.text``) are drawn as they are.
        ways: classes per task ``N``.
        shots: support examples per class ``K``.
        queries: query examples per class ``Q``.
        class_names: names that error messages use for the classes (default: their indices).
        dtype: the floating-point dtype of the drawn images.
        hessian_shots: Hessian-set examples per class (``0``: no Hessian set).

    ``sample`` returns ``support_x [B, N*K, C, H, W]``, ``support_y [B, N*K]`` (int64), ``query_x
    [B, N*Q, C, H, W]`` and ``query_y [B, N*Q]``, grouped by label: ``support_y[b] = [0]*K + [1]*K + ...``.
    The images stay on their device; the random draws use the given CPU ``torch.Generator``, so a batch
    is a deterministic function of the generator's state.
    """

    def __init__(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        ways: int,
        shots: int,
        queries: int,
        class_names: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
        hessian_shots: int = 0,
    ) -> None:
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be an integer >= 1, got {value!r}")
        if isinstance(hessian_shots, bool) or not isinstance(hessian_shots, int) or hessian_shots < 0:
            raise ConfigError(f"hessian_size: must be an integer >= 0, got {hessian_shots!r}")
        self.ways, self.shots, self.queries, self.dtype = ways, shots, queries, dtype
        self.hessian_shots = hessian_shots
        self._flat, counts = _flatten(images)
        self.num_classes = len(counts)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ConfigError(f"class_names: got {len(class_names)} names for {self.num_classes} classes")
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        if ways > self.num_classes:
            raise ConfigError(f"ways={ways} but the image set has only {self.num_classes} classes")
        needed = shots + queries + hessian_shots
        short = [c for c, count in enumerate(counts) if count < needed]
        if short:
            listed = ", ".join(f"{names[c]!r} ({counts[c]})" for c in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            parts = {"shots": shots, "queries": queries, "hessian_size": hessian_shots}
            used = {name: count for name, count in parts.items() if count or name != "hessian_size"}
            raise ConfigError(
                f"{' + '.join(used)} = {' + '.join(map(str, used.values()))} = {needed} examples per class are "
                f"needed, but {len(short)} of {self.num_classes} classes have fewer: {listed}{more}"
            )
        self._counts = torch.tensor(counts)
        self._offsets = torch.cumsum(self._counts, 0) - self._counts
        self._equal = len(set(counts)) == 1

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """A batch of ``num_tasks`` tasks (see the class docstring for the shapes)."""
        ways, per_class = self.ways, self.shots + self.queries + self.hessian_shots
        # Label j of task b is the class with the j-th largest key: a uniformly random class order.
        classes = torch.rand(num_tasks, self.num_classes, generator=generator).topk(ways, dim=1).indices
        keys = torch.rand(num_tasks, ways, int(self._counts.max()), generator=generator)
        if not self._equal:  # rand is in [0, 1): slots past a class's last example are never picked
            keys.masked_fill_(torch.arange(keys.shape[-1]) >= self._counts[classes].unsqueeze(-1), -1.0)
        picks = keys.topk(per_class, dim=-1).indices  # [B, N, K+Q], distinct within each class
        index = (self._offsets[classes].unsqueeze(-1) + picks).to(self._flat.device)
        support_x = self._gather(index[:, :, : self.shots])
        query_x = self._gather(index[:, :, self.shots : self.shots + self.queries])
        labels = torch.arange(ways, device=self._flat.device)
        support_y = labels.repeat_interleave(self.shots).repeat(num_tasks, 1)
        query_y = labels.repeat_interleave(self.queries).repeat(num_tasks, 1)
        if not self.hessian_shots:
            return TaskBatch(support_x, support_y, query_x, query_y)
        hessian_x = self._gather(index[:, :, self.shots + self.queries :])
        hessian_y = labels.repeat_interleave(self.hessian_shots).repeat(num_tasks, 1)
        return TaskBatch(support_x, support_y, query_x, query_y, hessian_x, hessian_y)

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        """The examples at ``index [B, N, M]`` (flat positions) as ``[B, N*M, C, H, W]`` floats (token ids: int64),
        a new tensor."""
        flat_index = index.reshape(-1)  # index_select: faster than advanced indexing on uint8
        images = self._flat.index_select(0, flat_index).view(index.shape[0], -1, *self._flat.shape[1:])
        if self._flat.dtype == torch.int64:  # token ids are indices, never scaled or cast
            return images
        images = images.to(self.dtype)
        return images.div_(255) if self._flat.dtype == torch.uint8 else images


def _flatten(images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """All examples stacked on one axis, ``[total, C, H, W]``, and the number of examples of each class."""
    if isinstance(images, torch.Tensor):
        if images.dim() < 3:
            raise ConfigError(
                f"images: expected [classes, examples, C, H, W] (or one tensor per class), got shape "
                f"{tuple(images.shape)}"
            )
        classes, examples = images.shape[:2]
        return images.reshape(classes * examples, *images.shape[2:]), [examples] * classes
    per_class = list(images)
    if not per_class or not all(isinstance(t, torch.Tensor) for t in per_class):
        raise ConfigError("images: expected a tensor or a non-empty sequence of tensors, one per class")
    shapes = {tuple(t.shape[1:]) for t in per_class}
    dtypes = {t.dtype for t in per_class}
    if len(shapes) != 1 or len(dtypes) != 1 or min(t.dim() for t in per_class) < 2:
        raise ConfigError(
            "images: every class tensor must be [examples, C, H, W] with the same example shape and dtype; "
            f"got shapes {sorted(shapes)} and dtypes {sorted(map(str, dtypes))}"
        )
    return torch.cat(per_class), [t.shape[0] for t in per_class]
