"""A run killed with SIGKILL mid-way resumes to exactly the results of an uninterrupted run.

The store writes one file per (cell, shard) atomically (a '.<name>.<random>.tmp' file renamed
into place), so a kill leaves only complete piece files, plus at most one temporary file, which
the store must ignore when the run is resumed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _support import make_checkpoint, store_predictions

# 600 samples -> shards of 512 and 88; cells clean and gaussian_noise s1 -> four pieces, written in
# the order (shard 0: clean, noise), (shard 1: clean, noise). The kill comes after the first one.
LIMIT = 600
PIECE = re.compile(r"shard-\d{5}\.npz")
TIMEOUT = 400


def _command(checkpoint: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "robustbench_bivol", "evaluate", "--model", f"resnet20={checkpoint}",
            "--limit", str(LIMIT), "--corruptions", "gaussian_noise", "--severities", "1", "--device", "cpu",
            "--batch-size", "64", "--out", str(out), "--no-progress"]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()[-4000:]


def test_sigkill_then_rerun_gives_uninterrupted_results(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "resnet20.pt")
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    # the uninterrupted reference runs alongside (it also slows the victim down, widening the window)
    ref_proc = _start(_command(checkpoint, reference), tmp_path / "reference.log")
    proc = _start(_command(checkpoint, victim), tmp_path / "victim.log")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list((victim / "cells").glob("*/shard-*.npz")):
            assert proc.poll() is None, "the run ended before writing a piece:\n" + (tmp_path / "victim.log").read_text()
            assert time.monotonic() < deadline, "no piece written in time"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed; make the subset larger"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()

    # What the kill left: complete pieces and, at most, temporary files that do not look like results.
    pieces, temporary = [], []
    for path in (victim / "cells").rglob("*"):
        if path.is_dir():
            continue
        if PIECE.fullmatch(path.name):
            with np.load(path) as data:  # complete and readable
                assert {"indices", "labels", "pred::resnet20"} <= set(data.files)
                assert len(data["indices"]) == len(data["labels"]) == len(data["pred::resnet20"])
            pieces.append(path)
        else:
            assert path.name.startswith(".") and path.name.endswith(".tmp"), f"unexpected file {path}"
            temporary.append(path)
    assert 1 <= len(pieces) < 4, pieces
    assert not (victim / "results.csv").exists()
    assert not [p for p in victim.iterdir() if p.is_file() and p.name not in {"run.json"}
                and not (p.name.startswith(".") and p.name.endswith(".tmp"))]

    # A stray temporary file where a missing piece belongs (a kill during its write) must be ignored.
    stray = victim / "cells" / "gaussian_noise_s1" / ".shard-00001.npz.k1ll3d.tmp"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"PK\x03\x04 half a file")
    before = {p: p.stat().st_mtime_ns for p in pieces}

    resumed = _start(_command(checkpoint, victim), tmp_path / "resumed.log")
    _finish(resumed, tmp_path / "resumed.log")
    _finish(ref_proc, tmp_path / "reference.log")

    assert {p: p.stat().st_mtime_ns for p in pieces} == before  # finished pieces were not redone
    assert (victim / "results.csv").read_text() == (reference / "results.csv").read_text()
    got, want = store_predictions(victim), store_predictions(reference)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))
    assert len(got[("clean_s0", "indices")]) == LIMIT
    assert len(np.unique(got[("clean_s0", "pred::resnet20")])) > 1
