"""Checkpoints: exact round trip, no pickle, tampered and future files refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from metaedge import checkpoint as ckpt
from metaedge.errors import CheckpointError

META = {
    "algorithm": {"name": "protonet", "config": {"metric": "cosine"}},
    "backbone": {"name": "conv4", "kwargs": {"in_channels": 1, "width": 8}},
    "preprocess": {"channels": 1, "size": 28, "invert": True, "mean": [0.0], "std": [1.0], "resample": "box"},
}


def test_round_trip_restores_every_weight_and_buffer(tmp_path):
    torch.manual_seed(0)
    method = ckpt.build_method(META)
    method.train()
    method.embed(torch.randn(8, 1, 28, 28))  # move the batch-norm running statistics off their defaults
    ckpt.save(tmp_path / "m.safetensors", method, META)
    loaded = ckpt.load(tmp_path / "m.safetensors")
    for (k, a), (k2, b) in zip(method.state_dict().items(), loaded.method.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.meta["schema_version"] == ckpt.SCHEMA_VERSION
    assert loaded.preprocess.size == 28
    assert not loaded.method.training  # ready for inference


def test_run_directory_resolves_to_best(tmp_path):
    ckpt.save(tmp_path / ckpt.BEST, ckpt.build_method(META), META)
    assert ckpt.load(tmp_path).path.name == ckpt.BEST
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.load(tmp_path / "missing")


def test_optimizer_state_round_trip(tmp_path):
    method = ckpt.build_method(META)
    opt = torch.optim.Adam(method.parameters(), lr=0.01)
    method.embed(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    ckpt.save(tmp_path / "last.safetensors", method, {**META, "episode": 1}, opt)
    opt2 = torch.optim.Adam(ckpt.build_method(META).parameters(), lr=0.5)
    ckpt.load_optimizer_state(tmp_path / "last.safetensors", opt2, ckpt.read_meta(tmp_path / "last.safetensors"))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 0.01
    for i in s1["state"]:
        for slot in s1["state"][i]:
            torch.testing.assert_close(torch.as_tensor(s1["state"][i][slot]), torch.as_tensor(s2["state"][i][slot]))


def test_tampered_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    ckpt.save(path, ckpt.build_method(META), META)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        ckpt.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ckpt.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a metaedge checkpoint"):
        ckpt.load(tmp_path / "plain.safetensors")
    wrong = {**META, "backbone": {"name": "conv4", "kwargs": {"in_channels": 1, "width": 16}}}
    tensors = {k: v.contiguous() for k, v in ckpt.build_method(META).state_dict().items()}
    meta = {**wrong, "format": ckpt.FORMAT, "schema_version": 1}
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata={"metaedge": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        ckpt.load(tmp_path / "mismatch.safetensors")


def test_newer_schema_asks_for_an_upgrade(tmp_path):
    tensors = {k: v.contiguous() for k, v in ckpt.build_method(META).state_dict().items()}
    meta = {**META, "format": ckpt.FORMAT, "schema_version": ckpt.SCHEMA_VERSION + 1}
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={"metaedge": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="upgrade metaedge"):
        ckpt.load(tmp_path / "future.safetensors")
