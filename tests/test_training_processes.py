"""Training as real processes: SIGKILL mid-epoch then resume, and data-parallel training under torchrun.

* Kill/resume: a run killed in the middle of an epoch and rerun with the same command ends with
  the weights of an uninterrupted run, bit for bit (one CPU process): the resumed epoch repeats
  its data order and augmentation draws, which depend only on (seed, epoch).
* torchrun: 2 gloo ranks on the CPU with the same global batch train what one process trains.
  Float32 sums in another order make any two trainings drift apart a little (one process on 2
  threads instead of 1 does too), so the check is a tolerance on the parameters' relative
  distance, ||theta_2 - theta_1|| / ||theta_1||, over 4 steps at lr 0.01. Measured on the 2-core
  machine: 6.8e-5 for 2 ranks, 7.0e-5 for one process on 2 threads, and 2.2e-3 when each rank
  normalised over its own half batch (plain BatchNorm): the tolerance 5e-4 separates them.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustbench_bivol.checkpoint import load_checkpoint
from robustbench_bivol.models import create_model

from _support import write_image_folder

TIMEOUT = 400
DDP_TOLERANCE = 5e-4


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _train(data: Path, out: Path, *options: str) -> list[str]:
    return ["-m", "robustbench_bivol", "train", "--model", "resnet20", "--dataset", str(data), "--device", "cpu",
            "--no-progress", "--out", str(out), *options]


def _run(cmd: list[str], threads: int = 1) -> None:
    proc = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]


def _epochs_done(out: Path) -> int:
    try:
        with open(out / "log.csv") as f:
            return len(list(csv.DictReader(f)))
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    write_image_folder(root / "train", 240)
    write_image_folder(root / "test", 20)
    return root


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_weights_bit_for_bit(data, tmp_path):
    options = ("--epochs", "3", "--batch-size", "4", "--lr", "0.02", "--warmup-epochs", "1")
    _run([sys.executable, *_train(data, tmp_path / "whole", *options)])
    seconds = float(list(csv.DictReader(open(tmp_path / "whole" / "log.csv")))[1]["seconds"])

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *_train(data, out, *options)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while _epochs_done(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(seconds / 3)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _epochs_done(out) == 1 and not (out / "final.pt").exists(), "the kill came after epoch 2 ended"

    _run([sys.executable, *_train(data, out, *options)])
    a, b = _weights(tmp_path / "whole" / "final.pt"), _weights(out / "final.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [row["train_loss"] for row in csv.DictReader(open(out / "log.csv"))] == \
        [row["train_loss"] for row in csv.DictReader(open(tmp_path / "whole" / "log.csv"))]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    va, vb = (torch.cat([w[k].flatten().double() for k in keys]) for w in (a, b))
    return float((va - vb).norm() / va.norm())


def test_two_gloo_ranks_train_what_one_process_trains(data, tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    options = ("--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--limit", "64")
    _run([sys.executable, *_train(data, tmp_path / "one", *options)])
    _run([*_torchrun(), "--standalone", "--nproc_per_node", "2", *_train(data, tmp_path / "two", *options)])
    one, two = _weights(tmp_path / "one" / "final.pt"), _weights(tmp_path / "two" / "final.pt")
    torch.manual_seed(0)  # train's initialisation for --seed 0
    start = create_model("resnet20").state_dict()
    assert _relative_distance(start, one) > 20 * DDP_TOLERANCE  # the trainings moved far beyond the tolerance
    distance = _relative_distance(one, two)
    assert distance < DDP_TOLERANCE, f"2 ranks vs 1 process: relative distance {distance:.2e}"
    log_one = list(csv.DictReader(open(tmp_path / "one" / "log.csv")))
    log_two = list(csv.DictReader(open(tmp_path / "two" / "log.csv")))
    assert [r["epoch"] for r in log_two] == ["1", "2"]
    assert float(log_two[0]["train_loss"]) == pytest.approx(float(log_one[0]["train_loss"]), rel=1e-4)
