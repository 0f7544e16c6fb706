"""Few-shot text classification: tokenisation and padding, text folders, class-disjoint splits, and the sequence
models' meta-gradients against central finite differences of a hand-written MAML objective."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from torchmaml import MetaLearner, TaskBatch
from torchmaml.benchmark import BENCHMARKS
from torchmaml.config import TrainConfig, load_config, to_toml
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.images import DatasetError
from torchmaml.data.text import PAD, decode, encode, load_text_folder
from torchmaml.errors import ConfigError
from torchmaml.models.sequence import CharGRU, TextTransformer

# -- tokenisation and padding ------------------------------------------------------------------------------------


def test_encode_decode_round_trip_in_every_script():
    texts = ["hello", "año", "что", "東京", "a", "ελληνικά"]
    ids = encode(texts, length=16)
    assert ids.dtype == torch.int64 and ids.shape == (6, 16)
    assert decode(ids) == texts
    assert ids[0].tolist()[:6] == [ord(c) + 1 for c in "hello"] + [PAD]
    assert (ids[4, 1:] == PAD).all()


def test_truncation_never_splits_a_character():
    ids = encode(["añob", "東京"], length=2)  # ñ is 2 bytes, 東 3: neither fits whole after the first cut
    assert decode(ids) == ["a", ""]
    assert decode(encode(["añob"], length=3)) == ["añ"]


def test_bad_length_is_one_line():
    with pytest.raises(ConfigError, match="max_length"):
        encode(["x"], length=0)


@pytest.mark.parametrize(
    "model",
    [CharGRU(3, embedding=4, hidden=5), TextTransformer(3, embedding=4, hidden=5, heads=2, max_length=12)],
    ids=["gru", "transformer"],
)
def test_padding_never_changes_a_prediction(model):
    texts = ["ab", "hello", "añ"]
    short, long = encode(texts, length=6), encode(texts, length=12)
    torch.testing.assert_close(model(short), model(long))
    # and a batch of texts of different lengths predicts each text as it would alone
    alone = torch.cat([model(encode([t], length=6)) for t in texts])
    torch.testing.assert_close(model(short), alone)


def test_few_shot_tasks_keep_token_ids():
    ids = [torch.randint(1, 257, (6, 8)) for _ in range(4)]
    batch = FewShotTasks(ids, ways=3, shots=2, queries=1).sample(5, torch.Generator().manual_seed(0))
    assert batch.support_x.dtype == torch.int64 and batch.support_x.shape == (5, 6, 8)
    assert batch.to(dtype=torch.float64).query_x.dtype == torch.int64
    pool = {tuple(row) for t in ids for row in t.tolist()}
    assert {tuple(row) for row in batch.support_x.reshape(-1, 8).tolist()} <= pool


# -- a user's texts ----------------------------------------------------------------------------------------------


def write_texts(root, classes: dict[str, list[str]]) -> None:
    for name, lines in classes.items():
        (root / name).mkdir(parents=True)
        (root / name / "a.txt").write_text("\n".join(lines[::2]) + "\n\n")
        (root / name / "b.txt").write_text("\n".join(lines[1::2]))


def test_text_folder_reads_lines_and_caches(tmp_path):
    write_texts(tmp_path / "data", {"en": ["the", "cat", "sat"], "fr": ["le", "chat"]})
    data = load_text_folder(tmp_path / "data", length=8, cache_dir=tmp_path / "cache")
    assert data.class_names == ("en", "fr")
    assert [decode(ids) for ids in data.ids] == [["the", "sat", "cat"], ["le", "chat"]]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    (tmp_path / "data" / "fr" / "c.txt").write_text("oui\n")
    again = load_text_folder(tmp_path / "data", length=8, cache_dir=tmp_path / "cache")
    assert decode(again.ids[1]) == ["le", "chat", "oui"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # the stale cache is replaced


def test_text_csv(tmp_path):
    (tmp_path / "t.csv").write_text("class,text\nen,the cat\nfr,le chat\nen,a dog\n")
    data = load_text_folder(tmp_path / "t.csv", length=12, cache_dir=tmp_path / "cache")
    assert data.class_names == ("en", "fr") and decode(data.ids[0]) == ["the cat", "a dog"]


def test_folder_without_texts_is_one_line(tmp_path):
    (tmp_path / "empty" / "en").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no texts in") as error:
        load_text_folder(tmp_path / "empty", length=8)
    assert "\n" not in str(error.value)


def test_transformer_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="text_heads"):
        load_config("text-5w5s-transformer", ["text_heads=3"])


# -- the languages benchmark: class-disjoint splits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def language_cache(tmp_path_factory):
    pytest.importorskip("wordfreq")
    return str(tmp_path_factory.mktemp("languages"))


@pytest.mark.parametrize("group", ["all", "latin"])
def test_language_splits_are_class_disjoint(language_cache, group):
    from torchmaml.data.languages import LANGUAGE_GROUPS, LATIN

    config = load_config("text-5w5s-gru", [f"language_group={group}", f"cache_dir={language_cache}"])
    benchmark = BENCHMARKS["languages"]
    parts = {part: set(benchmark.classes(config, part)[1]) for part in ("train", "val", "test")}
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    assert set().union(*parts.values()) == set(LANGUAGE_GROUPS[group])
    assert all(len(names) >= config.ways for names in parts.values())
    if group == "latin":
        assert set().union(*parts.values()) <= set(LATIN)
    batch = benchmark.evaluation_batches(config, "test", 4)[config.shots][0]
    assert batch.support_x.shape == (4, config.ways * config.shots, config.max_length)
    words = {w for ids in benchmark.classes(config, "test")[0] for w in decode(ids)}
    assert set(decode(batch.query_x.reshape(-1, config.max_length))) <= words


def test_words_belong_to_one_language(language_cache):
    from torchmaml.data.languages import load_languages, word_lists

    lists = word_lists(300)
    assert sum(len(words) for words in lists.values()) == len(set().union(*lists.values()))
    data = load_languages("all", words=300, length=16, cache_dir=language_cache)
    assert len(data.class_names) == 42
    assert min(len(ids) for ids in data.ids) >= 35  # K + Q = 20 + 15 for every language
    encoded = [set(decode(ids)) for ids in data.ids]  # cut to 16 bytes, two long words coincide
    assert sum(len(words) for words in encoded) - len(set().union(*encoded)) == 1


# -- meta-gradients against central finite differences ------------------------------------------------------------


def naive_maml_objective(model, params: dict, batch: TaskBatch, lr: float, steps: int) -> torch.Tensor:
    """MAML's objective written by hand: per task, ``steps`` SGD steps on the support loss (keeping the graph),
    then the query loss; the mean over tasks."""
    losses = []
    for b in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (batch.support_x[b],)), batch.support_y[b])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {name: w - lr * g for (name, w), g in zip(fast.items(), grads, strict=True)}
        losses.append(F.cross_entropy(functional_call(model, fast, (batch.query_x[b],)), batch.query_y[b]))
    return torch.stack(losses).mean()


def tiny_batch(generator: torch.Generator) -> TaskBatch:
    """2 tasks, 3-way, 2 support and 1 query text per class, texts of 1 to 5 tokens (of 6) over 6 symbols."""

    def texts(n: int) -> torch.Tensor:
        ids = torch.randint(1, 7, (2, n, 6), generator=generator)
        lengths = torch.randint(1, 6, (2, n, 1), generator=generator)
        return ids.masked_fill(torch.arange(6) >= lengths, PAD)

    labels = torch.arange(3)
    return TaskBatch(texts(6), labels.repeat_interleave(2).repeat(2, 1), texts(3), labels.repeat(2, 1))


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_meta_gradient_matches_finite_differences(kind):
    torch.manual_seed(0)
    if kind == "gru":
        model = CharGRU(3, embedding=3, hidden=4, vocabulary=7)
    else:
        model = TextTransformer(3, embedding=4, hidden=5, heads=2, max_length=6, vocabulary=7)
    model = model.double()
    batch = tiny_batch(torch.Generator().manual_seed(1))
    lr, steps = 0.5, 2
    learner = MetaLearner(model, F.cross_entropy, inner_lr=lr, inner_steps=steps, estimator="unrolled")
    learner.backward(batch)
    grads = {name: p.grad for name, p in model.named_parameters()}

    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    reference = torch.autograd.grad(naive_maml_objective(model, params, batch, lr, steps), list(params.values()))
    for (name, g), r in zip(grads.items(), reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12, msg=name)

    generator = torch.Generator().manual_seed(2)
    eps = 1e-5
    for _ in range(3):  # central differences along random directions: (F(w + eps v) - F(w - eps v)) / 2 eps
        direction = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in params.items()}
        shifted = [
            {n: (p + sign * eps * direction[n]).detach().requires_grad_() for n, p in params.items()}
            for sign in (1, -1)
        ]
        plus, minus = (naive_maml_objective(model, s, batch, lr, steps).item() for s in shifted)
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float((grads[n] * direction[n]).sum()) for n in params)
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)


def test_languages_config_is_reported_in_sections():
    config = TrainConfig(benchmark="text_folder", data_dir="x", text_model="transformer")
    text = to_toml(config)
    assert "[model]\n" in text and 'text_model = "transformer"' in text and "max_length = 16" in text


def test_languages_without_wordfreq_is_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['wordfreq'] = None\n"
        "from torchmaml.cli import main\n"
        f"sys.exit(main(['train', '--config', 'text-5w5s-gru', '--set', 'cache_dir={tmp_path / 'cache'}', "
        f"'--set', 'iterations=1', '--out', '{tmp_path / 'run'}']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "torchmaml: error: The languages benchmark needs wordfreq (or use benchmark text_folder with your own "
        'texts): pip install "torchmaml[text]"'
    )
