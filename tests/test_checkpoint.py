"""Atomic, checksummed checkpoints that refuse anything but plain data."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from torchmaml.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    payload = {"weights": {"w": torch.randn(3, 2)}, "iteration": 7, "config": {"inner_lr": 0.1}}
    save_checkpoint(tmp_path / "c.pt", payload)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["weights"]["w"], payload["weights"]["w"]) and loaded["iteration"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary file left behind"


def test_truncated_and_corrupted_files_are_detected(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pt is corrupted or truncated"):
        load_checkpoint(path)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a torchmaml checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    import hashlib

    buffer = io.BytesIO()
    torch.save({"payload": RunsCode()}, buffer, pickle_module=pickle)
    body = buffer.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    with pytest.raises(CheckpointError, match="not plain data"):
        load_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_a_key_added_since_digests_were_recorded_changes_the_digest_only_away_from_its_default():
    from torchmaml.checkpoint import DIGEST_ADDED_KEYS, config_digest
    from torchmaml.rl.config import load_config as load_rl_config

    values = load_rl_config("navigation2d", []).model_dump()
    before_the_key = {key: value for key, value in values.items() if key not in DIGEST_ADDED_KEYS}
    assert config_digest(values) == config_digest(before_the_key)  # a run of an earlier release still resumes
    assert config_digest({**values, "policy_dtype": "float64"}) != config_digest(values)
