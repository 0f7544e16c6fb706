"""``FewShotTasks``: the invariants of N-way K-shot tasks, determinism, and its configuration errors.

The synthetic images encode where they come from: pixel 0 is the class index and pixel 1 the example
index, so a drawn batch can be traced back to its source examples.
"""

from __future__ import annotations

import pytest
import torch

from torchmaml import TaskBatch
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.errors import ConfigError


def labelled_images(classes: int, examples: int) -> torch.Tensor:
    """``[classes, examples, 1, 2, 2]`` float images whose pixels are (class, example, 0, 0)."""
    images = torch.zeros(classes, examples, 1, 2, 2)
    images[:, :, 0, 0, 0] = torch.arange(classes, dtype=torch.float32).view(-1, 1)
    images[:, :, 0, 0, 1] = torch.arange(examples, dtype=torch.float32).view(1, -1)
    return images


def origin(x: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` (class, example) of images made by ``labelled_images``."""
    return x[..., 0, 0, :2].long()


def check_task_invariants(batch: TaskBatch, ways: int, shots: int, queries: int) -> None:
    for b in range(batch.num_tasks):
        support, query = origin(batch.support_x[b]), origin(batch.query_x[b])
        for label in range(ways):
            s_classes = support[batch.support_y[b] == label, 0]
            q_classes = query[batch.query_y[b] == label, 0]
            assert len(s_classes) == shots and len(q_classes) == queries
            assert len(set(s_classes.tolist()) | set(q_classes.tolist())) == 1  # one class per label
        label_classes = [support[batch.support_y[b] == label, 0][0].item() for label in range(ways)]
        assert len(set(label_classes)) == ways  # distinct classes within a task
        examples = [tuple(e) for e in torch.cat([support, query]).tolist()]
        assert len(set(examples)) == len(examples)  # support and query disjoint, no repeats


@pytest.mark.parametrize(("ways", "shots", "queries"), [(5, 1, 15), (20, 5, 5), (3, 2, 1)])
def test_tasks_have_the_n_way_k_shot_invariants(ways, shots, queries):
    tasks = FewShotTasks(labelled_images(30, 20), ways, shots, queries)
    batch = tasks.sample(8, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (8, ways * shots, 1, 2, 2) and batch.support_x.dtype == torch.float32
    assert batch.query_x.shape == (8, ways * queries, 1, 2, 2)
    assert batch.support_y.shape == (8, ways * shots) and batch.support_y.dtype == torch.long
    assert batch.query_y.shape == (8, ways * queries) and batch.query_y.dtype == torch.long
    assert torch.equal(batch.support_y[0], torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(batch.query_y[3], torch.arange(ways).repeat_interleave(queries))
    check_task_invariants(batch, ways, shots, queries)


def test_unequal_class_sizes_never_draw_past_a_class():
    sizes = [3, 7, 4, 12, 3]
    per_class = [labelled_images(len(sizes), max(sizes))[c, :n] for c, n in enumerate(sizes)]
    tasks = FewShotTasks(per_class, ways=4, shots=1, queries=2)
    batch = tasks.sample(200, torch.Generator().manual_seed(1))
    check_task_invariants(batch, 4, 1, 2)
    drawn = torch.cat([origin(batch.support_x), origin(batch.query_x)], dim=1).reshape(-1, 2)
    assert all(example < sizes[c] for c, example in drawn.tolist())
    assert {c for c, _ in drawn.tolist()} == set(range(len(sizes)))
    assert {e for c, e in drawn.tolist() if c == 3} == set(range(12))  # every example is reachable


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    tasks = FewShotTasks(labelled_images(30, 20), ways=5, shots=1, queries=5)
    first = tasks.sample(4, torch.Generator().manual_seed(7))
    again = tasks.sample(4, torch.Generator().manual_seed(7))
    other = tasks.sample(4, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first.tensors().values(), again.tensors().values(), strict=True))
    assert not torch.equal(first.support_x, other.support_x)


def test_labels_are_redrawn_per_task():
    """Over many tasks, a class takes every label, about equally often."""
    tasks = FewShotTasks(labelled_images(6, 4), ways=5, shots=1, queries=1)
    batch = tasks.sample(600, torch.Generator().manual_seed(2))
    classes = origin(batch.support_x)[..., 0]  # [B, ways]: the class that has label j in task b
    labels_of_class0 = (classes == 0).nonzero()[:, 1]
    counts = torch.bincount(labels_of_class0, minlength=5)
    assert (counts > 0.6 * counts.float().mean()).all(), counts


def test_uint8_images_are_scaled_to_unit_interval():
    images = torch.full((4, 3, 1, 2, 2), 255, dtype=torch.uint8)
    images[:, :, :, 0, 0] = 0
    batch = FewShotTasks(images, ways=2, shots=1, queries=2).sample(3, torch.Generator().manual_seed(0))
    assert batch.support_x.dtype == torch.float32
    assert batch.support_x.max() == 1.0 and batch.support_x.min() == 0.0


def test_sampling_does_not_modify_float_images():
    images = labelled_images(5, 4)
    before = images.clone()
    FewShotTasks(images, ways=3, shots=1, queries=2, dtype=torch.float32).sample(4, torch.Generator())
    assert torch.equal(images, before)


def test_too_many_ways_names_the_counts():
    with pytest.raises(ConfigError, match=r"ways=6 but the image set has only 5 classes"):
        FewShotTasks(labelled_images(5, 20), ways=6, shots=1, queries=1)


def test_too_few_examples_names_the_class_and_counts():
    per_class = [torch.zeros(n, 1, 2, 2) for n in (20, 4, 20)]
    with pytest.raises(ConfigError, match=r"1 \+ 15 = 16.*1 of 3 classes.*'kiwi' \(4\)"):
        FewShotTasks(per_class, ways=2, shots=1, queries=15, class_names=["apple", "kiwi", "pear"])
    with pytest.raises(ConfigError, match=r"5 \+ 16 = 21.*20 of 20 classes.*'0' \(20\).*and 15 more"):
        FewShotTasks(labelled_images(20, 20), ways=5, shots=5, queries=16)


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (labelled_images(5, 4), {"ways": 0}, "ways: must be an integer >= 1"),
        (labelled_images(5, 4), {"shots": 1.5}, "shots: must be an integer >= 1"),
        (torch.zeros(5, 4), {}, r"expected \[classes, examples, C, H, W\]"),
        ([], {}, "non-empty sequence"),
        ([torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 3, 3)], {}, "same example shape"),
        (labelled_images(5, 4), {"class_names": ["a"]}, "1 names for 5 classes"),
    ],
)
def test_malformed_arguments_are_config_errors(images, kwargs, message):
    arguments = {"ways": 2, "shots": 1, "queries": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        FewShotTasks(images, **arguments)
