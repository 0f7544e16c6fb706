"""Issue 18 ("Reliability, round two"): a hostile or careless run folder, config or archive gets one line and
exit code 2, never a write outside the folder, a lost run or a traceback. One test (or more) per item; the
kill and signal cases run real processes (``test_reliability_signals.py``)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchmaml.checkpoint import CheckpointStore, load_checkpoint, save_checkpoint
from torchmaml.cli import main
from torchmaml.config import load_config, read_toml, to_toml
from torchmaml.data.download import UnsafeArchiveError
from torchmaml.data.images import DatasetError, decode_image, load_cache, save_cache
from torchmaml.data.omniglot import MAX_MEMBER_BYTES, _zip_entries
from torchmaml.run.files import UnsafePathError, write_atomic
from torchmaml.run.metrics_log import truncate_metrics

TINY = [
    "--config", "sinusoid-demo", "--set", "iterations=6", "--set", "pretrained_baseline=false",
    "--set", "checkpoint_every=2", "--set", "keep_checkpoints=2", "--set", "eval_tasks=4", "--set", "log_every=2",
    "--no-progress",
]  # fmt: skip
VICTIM_TEXT = "a file of someone else's\n"


def torchmaml(capsys, *args):
    """``torchmaml ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result, *phrases):
    code, _, err = result
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("torchmaml: warning")]
    assert len(lines) == 1 and lines[0].startswith("torchmaml: error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert main(["evaluate", str(run)]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy, symlinks=True)
    return copy


def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


# -- item 1: a run folder from someone else can never make torchmaml write outside it -----------------------


@pytest.mark.parametrize("name", [".lock", "learning_curve.png", "metrics-maml.jsonl", "config.toml"])
def test_a_symlink_in_a_run_folder_is_refused_and_its_target_untouched(capsys, run_copy, tmp_path, name):
    target = victim(tmp_path)
    (run_copy / name).unlink()
    (run_copy / name).symlink_to(target)
    result = torchmaml(capsys, "train", "--resume", run_copy, "--set", "iterations=8", "--no-progress")
    assert_one_line_error(result, str(run_copy / name))
    assert target.read_text() == VICTIM_TEXT and (run_copy / name).is_symlink()


def test_a_symlinked_checkpoints_folder_is_refused(capsys, run_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    result = torchmaml(capsys, "train", "--resume", run_copy, "--set", "iterations=8", "--no-progress")
    assert_one_line_error(result, "checkpoints is a symbolic link")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["adaptation.png", "evaluation.json"])
def test_evaluate_never_writes_through_a_symlink(capsys, run_copy, tmp_path, name):
    target = victim(tmp_path)
    (run_copy / name).unlink()
    (run_copy / name).symlink_to(target)
    assert_one_line_error(torchmaml(capsys, "evaluate", run_copy), f"{run_copy / name} is a symbolic link")
    assert target.read_text() == VICTIM_TEXT


def test_a_temporary_file_is_never_opened_through_a_planted_link(tmp_path, monkeypatch):
    """The temporary's name is random and it is created with O_EXCL | O_NOFOLLOW: a planted link fails it."""
    import secrets

    target = victim(tmp_path)
    monkeypatch.setattr(secrets, "token_hex", lambda _: "fixed")
    (tmp_path / ".out.csv.fixed.tmp").symlink_to(target)
    with pytest.raises(Exception, match="cannot write"):
        write_atomic(tmp_path / "out.csv", b"data")
    assert target.read_text() == VICTIM_TEXT


# -- item 2: adapt --out a device or FIFO -------------------------------------------------------------------


def test_out_a_fifo_is_refused_and_a_character_device_is_written_through(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePathError, match="is a FIFO, not a regular file"):
        write_atomic(fifo, b"file,predicted_class\n", devices=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    dev_null = Path("/dev/null")
    write_atomic(dev_null, b"file,predicted_class\n", devices=True)
    assert stat.S_ISCHR(os.lstat(dev_null).st_mode), "/dev/null must stay a character device"
    with pytest.raises(UnsafePathError, match="is a character device"):
        write_atomic(dev_null, b"x")  # inside a run folder devices are refused too


def test_adapt_out_writes_through_dev_null_and_refuses_a_fifo(tmp_path):
    from torchmaml.predict import Prediction, _write_csv

    rows = [Prediction("a.png", "class1", 0.9, None)]
    _write_csv(Path("/dev/null"), rows, devices=True)  # what adapt --out does
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    with pytest.raises(UnsafePathError, match="is a character device"):
        _write_csv(Path("/dev/null"), rows)  # RUN_DIR/predictions.csv: no devices in a run folder
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePathError, match="is a FIFO"):
        _write_csv(tmp_path / "fifo", rows, devices=True)


# -- item 3: training over an existing run ------------------------------------------------------------------


def test_train_into_an_existing_run_is_refused_and_the_run_is_untouched(capsys, run_copy):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    result = torchmaml(capsys, "train", *TINY, "--set", "seed=5", "--out", run_copy)
    assert_one_line_error(result, "holds a run already", "--resume", "--overwrite")
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_the_whole_run(capsys, tmp_path):
    run = tmp_path / "run"
    baseline = ["--set", "pretrained_baseline=true", "--set", "pretrained_iterations=2"]
    assert torchmaml(capsys, "train", *TINY, *baseline, "--out", run)[0] == 0
    assert (run / "checkpoint-pretrained.pt").exists()
    assert torchmaml(capsys, "train", *TINY, "--set", "seed=3", "--out", run, "--overwrite")[0] == 0
    assert not (run / "checkpoint-pretrained.pt").exists() and not (run / "metrics-pretrained.jsonl").exists()
    assert load_checkpoint(run / "checkpoint-maml.pt")["config"]["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "the replaced run was deleted completely"
    assert torchmaml(capsys, "evaluate", run)[0] == 0


def test_a_run_folder_that_is_a_link_the_user_made_is_fine(capsys, tmp_path):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "scratch", target_is_directory=True)
    assert torchmaml(capsys, "train", *TINY, "--set", "iterations=2", "--out", tmp_path / "run")[0] == 0
    assert (tmp_path / "scratch" / "checkpoint-maml.pt").is_file()


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert_one_line_error(torchmaml(capsys, "train", *TINY, "--out", mine, "--overwrite"), "neither empty nor a run")
    assert (mine / "thesis.tex").read_text() == "precious"


# -- item 4 (the torn-line half; SIGTERM is in test_reliability_signals.py) ---------------------------------


def test_metrics_truncation_drops_a_torn_last_line(tmp_path):
    log = tmp_path / "metrics-maml.jsonl"
    log.write_bytes(b'{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3}\n{"itera')
    truncate_metrics(log, 2)
    assert log.read_bytes() == b'{"iteration": 1}\n{"iteration": 2}\n'
    log.write_bytes(b'{"iteration": 1}\n{"iteration": 2, "loss":')
    truncate_metrics(log, 5)
    assert log.read_bytes() == b'{"iteration": 1}\n'


# -- item 6: adapt --steps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["-5", "100000000"])
def test_adapt_refuses_negative_and_absurd_steps(capsys, finished_run, steps):
    result = torchmaml(capsys, "adapt", finished_run, "--support", "s", "--query", "q", "--steps", steps)
    assert_one_line_error(result, "--steps: must be between 0 and 1000")


def test_adapt_steps_zero_means_no_step(monkeypatch, tmp_path):
    import torchmaml.predict as predict

    seen = []
    monkeypatch.setattr(predict, "load_learner", lambda *a: (_StopLearner(seen), None))
    monkeypatch.setattr(predict.RunDir, "load_config", lambda self: load_config("omniglot-5w1s"))
    with pytest.raises(_Stop):
        predict.adapt_and_predict(tmp_path, _images(tmp_path, 5), _images(tmp_path / "q", 1), steps=0)
    assert seen == [0]


class _Stop(Exception):
    pass


class _StopLearner:
    def __init__(self, seen):
        self.seen = seen

    def adapt(self, x, y, steps):
        self.seen.append(steps)
        raise _Stop


def _images(root, classes):
    for c in range(classes):
        (root / "support" / f"c{c}").mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 40 * c, np.uint8)).save(root / "support" / f"c{c}" / "0.png")
    return root / "support"


# -- item 7: checkpoints from elsewhere, corrupt, or not files at all ------------------------------------------


def test_a_corrupt_final_checkpoint_is_set_aside_and_the_phase_resumed(capsys, run_copy):
    final = run_copy / "checkpoint-maml.pt"
    final.write_bytes(final.read_bytes()[:-50])
    code, out, err = torchmaml(capsys, "train", "--resume", run_copy, "--no-progress")
    assert code == 0, err
    assert "checkpoint-maml.pt is corrupted or truncated" in err and "set it aside" in err
    assert "resumed maml at iteration 6 from" in out
    assert load_checkpoint(final)["iteration"] == 6 and (run_copy / "checkpoint-maml.pt.corrupt").exists()
    assert torchmaml(capsys, "evaluate", run_copy)[0] == 0


def test_a_checkpoint_of_another_config_is_refused(capsys, run_copy, tmp_path):
    other = tmp_path / "other"
    assert torchmaml(capsys, "train", *TINY, "--set", "outer_lr=0.002", "--out", other)[0] == 0
    shutil.copy(other / "checkpoints" / "maml-000000006.pt", run_copy / "checkpoints" / "maml-000000007.pt")
    (run_copy / "checkpoint-maml.pt").unlink()
    result = torchmaml(capsys, "train", "--resume", run_copy, "--no-progress")
    assert_one_line_error(result, "maml-000000007.pt was written by a run with another configuration")


@pytest.mark.parametrize("kind", ["folder", "fifo", "dev-zero"])
def test_a_checkpoint_name_that_is_not_a_regular_file_is_skipped_without_hanging(capsys, run_copy, kind):
    newest = run_copy / "checkpoints" / "maml-000000009.pt"
    {"folder": newest.mkdir, "fifo": lambda: os.mkfifo(newest), "dev-zero": lambda: newest.symlink_to("/dev/zero")}[
        kind
    ]()
    (run_copy / "checkpoint-maml.pt").unlink()
    code, out, err = torchmaml(capsys, "train", "--resume", run_copy, "--no-progress")
    assert code == 0, err
    assert "maml-000000009.pt: it is" in err and "resumed maml at iteration 6" in out


def test_resume_removes_the_temporaries_of_killed_writes(capsys, run_copy):
    stale = [run_copy / "checkpoints" / ".maml-000000008.pt.0123abcd.tmp", run_copy / ".config.toml.99.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    code, out, _ = torchmaml(capsys, "train", "--resume", run_copy, "--no-progress")
    assert code == 0 and not any(path.exists() for path in stale)
    assert out.count("the temporary file of an interrupted write") == 2


def test_checkpoint_reads_are_bounded(tmp_path, monkeypatch):
    import torchmaml.checkpoint as checkpoint

    save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(1000)})
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 100)
    with pytest.raises(checkpoint.CheckpointError, match="more than the limit of 100 bytes"):
        load_checkpoint(tmp_path / "c.pt")


# -- item 8: config strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["data/omni\nglot", "tab\there", "bell\x07"])
def test_control_characters_in_config_strings_are_refused(capsys, tmp_path, value):
    result = torchmaml(capsys, "train", *TINY, "--set", f"data_dir={value}", "--out", tmp_path / "run")
    assert_one_line_error(result, "data_dir: control characters")
    assert not (tmp_path / "run").exists()


def test_config_toml_is_written_by_a_toml_writer_and_reads_back(tmp_path):
    config = load_config("sinusoid-demo", ['data_dir=C:\\data\\"quoted" é ∑', "estimator_options={}"])
    (tmp_path / "config.toml").write_text(to_toml(config))
    assert read_toml(tmp_path / "config.toml")["data"]["data_dir"] == 'C:\\data\\"quoted" é ∑'


# -- item 9: zip bombs ----------------------------------------------------------------------------------------


def _omniglot_zip(path, size, declared=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images_background/Latin/character01/0001_01.png", b"\0" * size)
    if declared is not None:  # a lying entry: the central directory and local header declare `declared` bytes
        data = bytearray(path.read_bytes())
        local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
        data[local + 22 : local + 26] = declared.to_bytes(4, "little")
        data[central + 24 : central + 28] = declared.to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return path


def test_a_zip_entry_declaring_more_than_the_cap_is_refused_before_inflating(tmp_path):
    path = _omniglot_zip(tmp_path / "images_background.zip", 64 << 20)  # 64 MiB of zeros, 64 KB compressed
    with zipfile.ZipFile(path) as archive, pytest.raises(UnsafeArchiveError, match="more than the 1048576 allowed"):
        _zip_entries(archive, "images_background", path)


def test_a_zip_entry_lying_about_its_size_inflates_no_further_than_the_cap(tmp_path):
    import tracemalloc

    path = _omniglot_zip(tmp_path / "images_background.zip", 64 << 20, declared=1000)
    with zipfile.ZipFile(path) as archive:
        (_, read), *_ = _zip_entries(archive, "images_background", path).values()
        tracemalloc.start()
        with pytest.raises(DatasetError, match="the zip is corrupt"):  # the CRC of 1000 of 64 Mi zeros is wrong
            read()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * MAX_MEMBER_BYTES, f"peak {peak} bytes"


def test_a_corrupt_deflate_stream_is_one_line(tmp_path):
    path = _omniglot_zip(tmp_path / "images_background.zip", 5000)
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x03\x04") + 30 + len("images_background/Latin/character01/0001_01.png")
    data[start : start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        (_, read), *_ = _zip_entries(archive, "images_background", path).values()
        with pytest.raises(DatasetError, match="the zip is corrupt"):
            read()


# -- item 11: user errors are one line ------------------------------------------------------------------------


def _random_bytes(tmp_path):
    path = tmp_path / "random.toml"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)))
    return path


@pytest.mark.parametrize(
    ("arguments", "phrase"),
    [
        (lambda t: ["--config", t], "it is a folder; torchmaml reads regular files only"),
        (lambda t: ["--config", _fifo(t / "fifo.toml")], "it is a FIFO"),  # no hang
        (lambda t: ["--config", _link(t / "zero.toml", "/dev/zero")], "it is a character device"),
        (lambda t: ["--config", _random_bytes(t)], "is not valid TOML"),
        (lambda t: ["--config", _write(t / "latin1.toml", b"data_dir = '\xe9'\n")], "is not valid TOML"),
        (lambda t: [*TINY, "--set", "device=cuda"], "device: 'cuda' is not available on this machine"),
        (lambda t: [*TINY, "--set", "device=cuda:abc"], "device: must be 'cpu', 'cuda' or 'cuda:N'"),
        (lambda t: [*TINY, "--set", f"seed={2**70}"], "seed: must be below 2**63"),
        (lambda t: [*TINY, "--set", "outer_lr=inf"], "outer_lr: must be a finite number"),
        (lambda t: [*TINY, "--set", "threads=100000"], "threads: this machine has"),
        (lambda t: [*TINY, "--set", "hidden=[4000000000000]"], "needs more memory than there is"),
        (lambda t: [*TINY, "--out", _write(t / "a-file", b"x")], "is a regular file; give a new or empty folder"),
        (lambda t: [*TINY, "--out", "/dev/null"], "is a character device; give a new or empty folder"),
        (lambda t: [*TINY, "--out", "/proc/torchmaml-run"], "cannot create the folder /proc/torchmaml-run"),
    ],
)
def test_a_user_error_in_train_is_one_line(capsys, tmp_path, arguments, phrase):
    args = arguments(tmp_path)
    if "--out" not in args:
        args = [*args, "--no-progress", "--out", tmp_path / "run"]
    assert_one_line_error(torchmaml(capsys, "train", *args), phrase)


def _fifo(path):
    os.mkfifo(path)
    return path


def _link(path, target):
    path.symlink_to(target)
    return path


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [
        ({"learner": {}}, "does not fit this run's model"),
        ({"iteration": 1}, "does not fit this run's model"),
        ("other size", "does not fit this run's model (Error(s) in loading state_dict"),
    ],
)
def test_evaluate_a_checkpoint_that_does_not_fit_is_one_line(capsys, run_copy, payload, phrase):
    if payload == "other size":
        from torchmaml.experiment import build_learner

        payload = {"learner": build_learner(load_config("sinusoid-demo", ["hidden=[5]"])).state_dict()}
    save_checkpoint(run_copy / "checkpoint-maml.pt", payload)
    assert_one_line_error(torchmaml(capsys, "evaluate", run_copy), phrase)


def test_evaluate_with_a_broken_config_toml_is_one_line(capsys, run_copy):
    (run_copy / "config.toml").write_bytes(b"\xff\xfe\x00garbage")
    assert_one_line_error(torchmaml(capsys, "evaluate", run_copy), "is not valid TOML")


def test_evaluate_on_a_read_only_run_folder_prints_the_table_then_one_line(capsys, run_copy, monkeypatch):
    import torchmaml.report as report
    from torchmaml.run.files import WriteError

    def read_only(path, data, devices=False):
        raise WriteError(f"cannot write {path}: Read-only file system; it was left as it was")

    monkeypatch.setattr(report, "atomic_write_bytes", read_only)
    code, out, err = torchmaml(capsys, "evaluate", run_copy)
    assert "after 10 steps" in out or "MSE" in out, out
    assert_one_line_error((code, out, err), "Read-only file system", "the results above were not saved")


def test_a_symlink_loop_in_an_image_folder_is_one_line(tmp_path):
    from torchmaml.data.folder import load_image_folder

    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "x.png").symlink_to("y.png")
    (tmp_path / "images" / "a" / "y.png").symlink_to("x.png")
    with pytest.raises(DatasetError, match="Too many levels of symbolic links"):
        load_image_folder(tmp_path / "images", mode="L", image_size=8, cache_dir=tmp_path / "cache")


def test_an_omniglot_cache_missing_arrays_is_rebuilt_not_a_crash(tmp_path):
    meta = {"dataset": "omniglot"}
    save_cache(tmp_path / "c.npz", {"images": np.zeros((2, 2), np.uint8)}, meta)
    assert load_cache(tmp_path / "c.npz", meta, required=("images", "characters")) is None
    assert load_cache(tmp_path / "c.npz", meta, required=("images",)) is not None


# -- item 10: the divergence guard looks at the weights --------------------------------------------------------


def test_a_step_that_destroys_the_weights_is_caught_and_never_called_good(capsys, tmp_path):
    run = tmp_path / "run"
    code, _, err = torchmaml(
        capsys, "train", *TINY, "--set", "outer_optimizer=sgd", "--set", "outer_lr=1e38",
        "--set", "checkpoint_every=1", "--set", "max_consecutive_skips=3", "--out", run,
    )  # fmt: skip
    assert_one_line_error((code, "", err), "maml diverged", "last good checkpoint: none yet")
    for path in (run / "checkpoints").glob("maml-*.pt"):  # what is on disk is there, but was not called good
        assert not all(bool(v.abs().max() < 1e30) for v in load_checkpoint(path)["learner"].values())


# -- item 12 and the papercuts of issue 17 ----------------------------------------------------------------


def test_sixteen_bit_grayscale_is_scaled_not_saturated():
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 32768], [65535, 257]], dtype=np.uint16)).save(buffer, format="PNG")
    pixels = decode_image(buffer.getvalue(), "gray16.png", "L", None)
    assert pixels.tolist() == [[0, 128], [255, 1]]
    assert decode_image(buffer.getvalue(), "gray16.png", "RGB", None)[0, 1].tolist() == [128, 128, 128]


def test_a_finished_run_can_be_extended(capsys, run_copy, tmp_path):
    code, out, err = torchmaml(capsys, "train", "--resume", run_copy, "--set", "iterations=10", "--no-progress")
    assert code == 0, err
    assert "resumed maml at iteration 6 from" in out
    straight = tmp_path / "straight"
    assert torchmaml(capsys, "train", *TINY, "--set", "iterations=10", "--out", straight)[0] == 0
    extended, reference = (load_checkpoint(r / "checkpoint-maml.pt") for r in (run_copy, straight))
    assert extended["iteration"] == 10 and read_toml(run_copy / "config.toml")["outer"]["iterations"] == 10
    for name, value in reference["learner"].items():
        assert torch.equal(extended["learner"][name], value), name
    lines = (run_copy / "metrics-maml.jsonl").read_text().splitlines()
    assert [int(line.split(",")[0].split(":")[1]) for line in lines] == list(range(1, 11))
    assert_one_line_error(
        torchmaml(capsys, "train", "--resume", run_copy, "--set", "outer_lr=0.5"), "can raise iterations"
    )


def test_nothing_is_written_before_validation_passes(capsys, tmp_path):
    run = tmp_path / "run"
    result = torchmaml(
        capsys, "train", *TINY, "--set", "benchmark=omniglot", "--set", f"data_dir={tmp_path / 'none'}", "--out", run
    )
    assert_one_line_error(result, "Omniglot is not in")
    assert not run.exists()


def test_the_checkpoint_records_the_compile_call_count_and_config_digest(finished_run):
    payload = load_checkpoint(finished_run / "checkpoint-maml.pt")
    assert payload["compile_calls"] == 6 and len(payload["config_digest"]) == 64
    store = CheckpointStore(finished_run / "checkpoints", "maml", 2)
    assert [load_checkpoint(p)["compile_calls"] for p in store.paths()] == [4, 6]


def test_a_finished_rl_run_can_be_extended_and_other_keys_are_refused(capsys, tmp_path):
    from torchmaml.rl.train import extended_config

    run = tmp_path / "run"
    rl_tiny = ["iterations=2", "meta_batch_size=2", "trajectories=2", "horizon=10", "hidden=[8]"]
    rl_tiny.append("pretrained_iterations=0")
    tiny = [x for item in rl_tiny for x in ("--set", item)]
    assert torchmaml(capsys, "train", "--config", "navigation2d", *tiny, "--no-progress", "--out", run)[0] == 0
    code, out, err = torchmaml(capsys, "train", "--resume", run, "--set", "iterations=3", "--no-progress")
    assert code == 0, err
    assert "resumed maml at iteration 2 from" in out and load_checkpoint(run / "checkpoint-maml.pt")["iteration"] == 3
    assert extended_config(run, []).iterations == 3
    assert_one_line_error(torchmaml(capsys, "train", "--resume", run, "--set", "inner_lr=0.5"), "can raise iterations")


def test_rl_evaluate_on_a_read_only_run_folder_prints_the_table_then_one_line(capsys, tmp_path, monkeypatch):
    import importlib

    from torchmaml.run.files import WriteError

    rl_evaluate = importlib.import_module("torchmaml.rl.evaluate")  # the package exports a function of that name
    run = tmp_path / "run"
    rl_tiny = ["iterations=1", "meta_batch_size=2", "trajectories=2", "horizon=10", "hidden=[8]", "eval_tasks=2"]
    rl_tiny.append("pretrained_iterations=0")
    tiny = [x for item in rl_tiny for x in ("--set", item)]
    assert torchmaml(capsys, "train", "--config", "navigation2d", *tiny, "--no-progress", "--out", run)[0] == 0

    def read_only(path, data, devices=False):
        raise WriteError(f"cannot write {path}: Read-only file system; it was left as it was")

    monkeypatch.setattr(rl_evaluate, "atomic_write_bytes", read_only)
    code, out, err = torchmaml(capsys, "evaluate", run)
    assert "steps" in out, out
    assert_one_line_error((code, out, err), "Read-only file system", "the results above were not saved")


def test_an_rl_run_that_fails_validation_writes_nothing(tmp_path):
    from torch import nn

    from torchmaml.errors import ModelError
    from torchmaml.rl import load_config as rl_config
    from torchmaml.rl import train as rl_train

    with pytest.raises(ModelError, match="mean, log_std"):
        rl_train(rl_config("navigation2d", ["iterations=1"]), tmp_path / "run", progress=False, policy=nn.Linear(2, 2))
    assert not (tmp_path / "run").exists()
