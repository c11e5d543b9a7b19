"""A run stopped half-way resumes: same results as an uninterrupted run, finished pieces not redone."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from _support import write_image_folder
from click.testing import CliRunner

import corruptions
from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.data.builtin import CLASSES
from robustbench_bivol.evaluation.store import RunStore
from robustbench_bivol.models import create_model

N = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An ImageFolder of 20 built-in images and a random resnet20 checkpoint."""
    root = tmp_path_factory.mktemp("resume")
    write_image_folder(root / "data", N)
    torch.manual_seed(0)
    meta = CheckpointMeta(arch="resnet20", num_classes=10, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                          dataset="builtin", classes=list(CLASSES))
    save_checkpoint(root / "r20.pt", create_model("resnet20").state_dict(), meta)
    return root


def _args(root, out):
    return ["evaluate", "-m", f"resnet20={root / 'r20.pt'}", "--dataset", str(root / "data"),
            "--corruptions", "gaussian_noise,contrast", "--severities", "1,4", "--out", str(out), "--no-progress"]


def _count_corrupt(monkeypatch):
    calls = []
    real = corruptions.corrupt

    def counting(images, name, severity, **kwargs):
        calls.append((name, severity))
        return real(images, name, severity, **kwargs)

    monkeypatch.setattr(corruptions, "corrupt", counting)
    return calls


def test_interrupted_run_resumes_without_recomputing(setup, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert CliRunner().invoke(main, _args(setup, full)).exit_code == 0
    expected = pd.read_csv(full / "results.csv")
    assert len(expected) == 5

    # Stop after two finished pieces (clean + one corrupted cell), as Ctrl-C would.
    real_write, written = RunStore.write, []

    def write_then_stop(self, cell, shard, result):
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write(self, cell, shard, result)
        written.append(cell)

    monkeypatch.setattr(RunStore, "write", write_then_stop)
    out = tmp_path / "stopped"
    stopped = CliRunner().invoke(main, _args(setup, out))
    assert stopped.exit_code == 130 and "rerun the same command to resume" in stopped.output
    assert not (out / "results.csv").exists()
    monkeypatch.setattr(RunStore, "write", real_write)

    calls = _count_corrupt(monkeypatch)
    resumed = CliRunner().invoke(main, _args(setup, out))
    assert resumed.exit_code == 0, resumed.output
    assert written[1] not in calls and len(calls) == 3  # three corrupted cells left, one batch each
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), expected)

    # Deleting a finished piece recomputes that piece alone.
    (out / "cells" / "contrast_s4" / "shard-00000.npz").unlink()
    calls.clear()
    assert CliRunner().invoke(main, _args(setup, out)).exit_code == 0
    assert calls == [("contrast", 4)]
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), expected)

    # A finished run does nothing more.
    calls.clear()
    assert CliRunner().invoke(main, _args(setup, out)).exit_code == 0
    assert calls == []


def test_a_run_drawn_from_other_random_streams_is_not_resumed(setup, tmp_path):
    """Cells corrupted with the random numbers of before the Philox streams (their run.json has
    no ``random_streams``) must not mix with new ones: the rerun is refused and says why."""
    out = tmp_path / "old"
    assert CliRunner().invoke(main, _args(setup, out)).exit_code == 0
    config = json.loads((out / "run.json").read_text())
    assert config.pop("random_streams") == "philox4x32-10"
    (out / "run.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, _args(setup, out))
    assert result.exit_code == 2 and "differs in: random_streams" in result.output
