"""``torchrun --nproc_per_node 2 -m robustbench_bivol evaluate`` (CPU, gloo) gives exactly the
results of a single process: the same results.csv and the same per-sample predictions.

The engine gives shard ``k`` to rank ``k % world``. With the default shard size (512) a tiny
subset is one shard and rank 1 idles, which must still work; ``--shard-size 16`` gives both ranks
real work.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _support import make_checkpoint, store_predictions

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available in this torch build",
                allow_module_level=True)

LIMIT = 40
SMALL_SHARD = 16  # 40 samples -> shards of 16, 16, 8: rank 0 gets shards 0 and 2, rank 1 gets shard 1
OPTIONS = ["--limit", str(LIMIT), "--corruptions", "gaussian_noise,glass_blur", "--severities", "2",
           "--device", "cpu", "--batch-size", "16", "--no-progress"]
TIMEOUT = 400

def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    if exe.exists():
        return [str(exe)]
    if shutil.which("torchrun"):
        return ["torchrun"]
    return [sys.executable, "-m", "torch.distributed.run"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def _assert_same_run(got: Path, want: Path) -> None:
    assert (got / "results.csv").read_text() == (want / "results.csv").read_text()
    a, b = store_predictions(got), store_predictions(want)
    assert a.keys() == b.keys()
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    assert len(a[("clean_s0", "indices")]) == LIMIT


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet20.pt")


@pytest.fixture(scope="module")
def single(checkpoint, tmp_path_factory) -> Path:
    """The reference: one plain process, default shard size."""
    out = tmp_path_factory.mktemp("single") / "run"
    _run([sys.executable, "-m", "robustbench_bivol", "evaluate", "--model", f"resnet20={checkpoint}", *OPTIONS,
          "--out", str(out)], cwd=out.parent)
    preds = store_predictions(out)
    assert len(np.unique(preds[("clean_s0", "pred::resnet20")])) > 1  # the comparison is not vacuous
    return out


def test_torchrun_cli_one_shard_idle_rank_matches_single_process(checkpoint, single, tmp_path):
    """The plain CLI under torchrun: 40 images are one 512-sample shard, rank 1 has nothing to do
    but must still take part in the collectives and exit cleanly."""
    out = tmp_path / "run"
    proc = _run([*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "robustbench_bivol", "evaluate",
                 "--model", f"resnet20={checkpoint}", *OPTIONS, "--out", str(out)], cwd=tmp_path)
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports
    _assert_same_run(out, single)


def test_two_ranks_with_real_work_match_single_process(checkpoint, single, tmp_path):
    """Small shards give both ranks work; rank 0 gathers and writes every shard."""
    out = tmp_path / "run"
    _run([*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "robustbench_bivol", "evaluate",
          "--model", f"resnet20={checkpoint}", *OPTIONS, "--shard-size", str(SMALL_SHARD), "--out", str(out)],
         cwd=tmp_path)
    for cell in ("clean_s0", "gaussian_noise_s2", "glass_blur_s2"):
        assert sorted(p.name for p in (out / "cells" / cell).iterdir()) == [f"shard-0000{k}.npz" for k in range(3)]
    _assert_same_run(out, single)
