"""Weights resolution: local files, URLs with hash check, bundled tags, and their failures."""
from __future__ import annotations

import hashlib
import pickle

import pytest
import torch

from robustbench_bivol import weights
from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.errors import CheckpointError, UsageError
from robustbench_bivol.models import create_model
from robustbench_bivol.weights import load_weights


def _meta(arch: str = "resnet20") -> CheckpointMeta:
    return CheckpointMeta(arch=arch, num_classes=10, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                          dataset="test")


@pytest.fixture
def checkpoint(tmp_path):
    model = create_model("resnet20")
    path = tmp_path / "r20.pt"
    save_checkpoint(path, model.state_dict(), _meta())
    return path, model


def test_local_file_round_trip(checkpoint):
    path, model = checkpoint
    loaded = create_model("resnet20", weights=str(path))
    x = torch.randn(2, 3, 32, 32)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_checkpoint_of_another_architecture_is_refused(checkpoint):
    path, _ = checkpoint
    with pytest.raises(CheckpointError, match="are for resnet20, not resnet56"):
        create_model("resnet56", weights=str(path))


def test_mismatched_keys_are_named(tmp_path):
    state = create_model("resnet20").state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    path = tmp_path / "bad.pt"
    save_checkpoint(path, state, _meta())
    with pytest.raises(CheckpointError, match=r"missing 1: fc.bias; unexpected 1: extra.weight"):
        create_model("resnet20", weights=str(path))


def test_url_download_checks_sha256(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    state, meta = load_weights(f"{path.as_uri()}#sha256={digest}", "resnet20")
    assert meta.arch == "resnet20" and "fc.weight" in state
    cached = tmp_path / "hub" / "checkpoints" / path.name
    cached.unlink()
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_weights(f"{path.as_uri()}#sha256={'0' * 64}", "resnet20")
    assert not cached.exists()
    with pytest.raises(UsageError, match="sha256"):
        load_weights(path.as_uri(), "resnet20")


class _Payload:
    """Unpickling this would create a file: proof that a checkpoint executed code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_payload_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Payload(str(marker)), "meta": {}}, handle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_weights(str(path), "resnet20")
    assert not marker.exists()


def test_unknown_source_lists_bundled():
    with pytest.raises(UsageError, match="neither a file nor bundled weights of resnet56"):
        load_weights("nonsense", "resnet56")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights("missing/file.pt", "resnet20")


@pytest.mark.parametrize("arch,tag", [(arch, tag) for arch, tags in weights.manifest().items() for tag in tags])
def test_every_bundled_checkpoint_verifies_and_loads(arch, tag):
    """Shipped weights: hash and size as recorded, strict load into their architecture, provenance
    naming the command that made them, and the recorded accuracy well above chance (10%)."""
    entry = weights.manifest()[arch][tag]
    path = weights.PRETRAINED_DIR / entry["file"]
    assert path.stat().st_size == entry["bytes"] and weights.sha256_of(path) == entry["sha256"]
    state, meta = load_weights(tag, arch)
    create_model(arch, num_classes=meta.num_classes).load_state_dict(state)
    assert meta.provenance["command"].startswith(f"bivol-robust train --model {arch} ")
    assert entry["test_accuracy"] == meta.provenance["test_accuracy"] > 0.2
