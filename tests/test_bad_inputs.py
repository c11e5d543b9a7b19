"""A catalogue of bad inputs driven through the CLI.

Each case asserts the exit code (2 for usage errors, 1 for other user errors, 0 where an odd input
must be converted rather than refused), a one-line ``error: ...`` message that says what to do, and
that no exception escaped (CliRunner turns an escaped exception into ``result.exception``; the
subprocess test checks the real stderr for tracebacks).
"""
from __future__ import annotations

import importlib.util
import json
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.data.builtin import CLASSES, render
from robustbench_bivol.models import create_model

TINY = ["--corruptions", "gaussian_noise", "--severities", "1", "--no-progress"]


@dataclass
class Ctx:
    root: Path  # module-wide fixtures (checkpoints)
    tmp: Path  # this case's own folder
    ckpt: Path

    def evaluate(self, *extra: str, model: str | None = None) -> list[str]:
        """A tiny evaluate of the shared 10-image folder (rendering the 1000-image built-in split
        costs seconds per case); a later --dataset in ``extra`` wins."""
        return ["evaluate", "-m", model or f"resnet20={self.ckpt}", "--dataset", str(self.root / "data10"), *TINY,
                "--out", str(self.tmp / "run"), *extra]

    def folder(self, extra: dict[str, Callable[[Path], None]] | None = None, classes: list[str] = CLASSES) -> Path:
        """An ImageFolder with one clean 32-px PNG per class, plus ``extra`` files (class/name -> writer)."""
        root = self.tmp / "data"
        images, _ = render(np.arange(len(classes)))
        for name, image in zip(classes, images):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / name / "clean.png")
        for relative, write in (extra or {}).items():
            write(root / relative)
        return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    meta = CheckpointMeta(arch="resnet20", num_classes=10, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                          dataset="builtin", classes=list(CLASSES))
    save_checkpoint(root / "resnet20.pt", create_model("resnet20").state_dict(), meta)
    Ctx(root=root, tmp=root / "data10-tmp", ckpt=root / "resnet20.pt").folder().rename(root / "data10")
    return root


@pytest.fixture()
def ctx(root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # URL weights land here
    return Ctx(root=root, tmp=tmp_path, ckpt=root / "resnet20.pt")


# ----------------------------------------------------------------------------- file writers

_RNG = np.random.default_rng(0)
_RGB = _RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)


def _save(image: Image.Image, **kwargs: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)
    return write


def _bytes(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return write


def _truncated_jpeg(path: Path) -> None:
    _save(Image.fromarray(_RGB), quality=90)(path)
    path.write_bytes(path.read_bytes()[:300])


ODD_IMAGES = {
    "grayscale": _save(Image.fromarray(_RGB[..., 0])),
    "rgba": _save(Image.fromarray(np.dstack([_RGB, _RGB[..., :1]]))),
    "cmyk": _save(Image.fromarray(_RGB).convert("CMYK")),
    "16-bit": _save(Image.fromarray(_RGB[..., 0].astype(np.uint16) * 257)),
    "smaller-than-crop": _save(Image.fromarray(_RGB[:7, :11])),
}
ODD_SUFFIX = {"cmyk": "jpg"}


# ----------------------------------------------------------------------------- setups needing more than args

def _evil_checkpoint(c: Ctx) -> list[str]:
    class Payload:  # unpickling it would create the marker file
        def __reduce__(self):
            return (open, (str(c.tmp / "pwned"), "w"))

    with open(c.tmp / "evil.pt", "wb") as handle:
        pickle.dump({"state_dict": Payload(), "meta": {}}, handle, protocol=2)  # torch.save's protocol
    return c.evaluate(model=f"resnet20={c.tmp / 'evil.pt'}")


def _no_marker(c: Ctx, result: Any) -> None:
    marker = c.tmp / "pwned"
    assert not marker.exists(), "the pickle payload was executed"
    with open(c.tmp / "evil.pt", "rb") as handle:  # the payload is live: plain unpickling runs it
        pickle.load(handle)
    assert marker.exists()


def _unwritable(c: Ctx) -> list[str]:
    (c.tmp / "afile").write_text("a regular file: nothing can be created under it, not even by root\n")
    return [*c.evaluate(), "--out", str(c.tmp / "afile" / "run")]


def _other_configuration(c: Ctx) -> list[str]:
    first = CliRunner().invoke(main, c.evaluate())
    assert first.exit_code == 0, first.output
    return c.evaluate("--jpeg")


def _incomplete_baseline(c: Ctx) -> list[str]:
    """An interrupted baseline run (its contrast cell never finished) asked to normalise a complete run."""
    for name in ("base", "full"):
        result = CliRunner().invoke(main, c.evaluate("--corruptions", "gaussian_noise,contrast",
                                                     "--out", str(c.tmp / name)))
        assert result.exit_code == 0, result.output
    for piece in (c.tmp / "base" / "cells" / "contrast_s1").iterdir():
        piece.unlink()
    return ["compare", str(c.tmp / "base"), str(c.tmp / "full"), "--baseline", "resnet20@base",
            "--out", str(c.tmp / "cmp")]


def _counted(n: int, skipped: int = 0) -> Callable[[Ctx, Any], None]:
    def check(c: Ctx, result: Any) -> None:
        tidy = pd.read_csv(c.tmp / "run" / "results.csv")
        assert (tidy["n"] == n).all(), tidy
        summary = json.loads((c.tmp / "run" / "summary.json").read_text())
        assert summary["skipped images"] == skipped
    return check


def _wrong_hash(c: Ctx) -> list[str]:
    return c.evaluate(model=f"resnet20={c.ckpt.as_uri()}#sha256={'0' * 64}")


def _no_cached_file(c: Ctx, result: Any) -> None:
    assert not (c.tmp / "hub" / "checkpoints" / c.ckpt.name).exists(), "a file failing its hash was kept"


# ----------------------------------------------------------------------------- the catalogue

@dataclass
class Case:
    id: str
    what: str  # the input, in words (for the catalogue table)
    args: Callable[[Ctx], list[str]]
    code: int
    message: str  # regex searched in the output
    check: Callable[[Ctx, Any], None] | None = None


CASES = [
    Case("unknown-model", "`-m resnet21`", lambda c: c.evaluate(model="resnet21"),
         2, r"^error: unknown model 'resnet21'\. Did you mean 'resnet20'\?"),
    Case("unknown-corruption", "`--corruptions gausian_noise`",
         lambda c: c.evaluate("--corruptions", "gausian_noise"),
         2, r"^error: unknown corruption 'gausian_noise'\. Did you mean 'gaussian_noise'\?"),
    Case("severity-0", "`--severities 0`", lambda c: c.evaluate("--severities", "0"),
         2, r"^error: --severities: severity must be one of 1\.\.5, got 0"),
    Case("severity-6", "`--severities 6`", lambda c: c.evaluate("--severities", "6"),
         2, r"^error: --severities: severity must be one of 1\.\.5, got 6"),
    Case("severity-not-a-number", "`--severities high`", lambda c: c.evaluate("--severities", "high"),
         2, r"^error: --severities: 'high' is not a number; give comma-separated integers 1\.\.5"),
    Case("missing-dataset", "`--dataset /no/such/dir`", lambda c: c.evaluate("--dataset", str(c.tmp / "nope")),
         1, r"^error: dataset not found: .*nope.*give 'builtin', cifar10:ROOT or an existing folder"),
    Case("empty-dataset", "`--dataset EMPTY_DIR`",
         lambda c: (c.tmp / "empty").mkdir() or c.evaluate("--dataset", str(c.tmp / "empty")),
         1, r"^error: no images found under .*empty"),
    Case("non-image-files", "class folders holding only `.txt` files",
         lambda c: c.evaluate("--dataset", str(_only_txt(c))),
         1, r"^error: no images found under .*Supported extensions"),
    Case("non-image-with-image-name", "a text file named `fake.jpg` (default `--on-bad-image fail`)",
         lambda c: c.evaluate("--dataset", str(c.folder({f"{CLASSES[0]}/fake.jpg": _bytes(b"not a jpeg\n")}))),
         1, r"^error: cannot read image .*fake\.jpg.*use --on-bad-image skip"),
    Case("truncated-jpeg-fail", "a truncated JPEG, `--on-bad-image fail`",
         lambda c: c.evaluate("--dataset", str(c.folder({f"{CLASSES[1]}/broken.jpg": _truncated_jpeg})),
                              "--on-bad-image", "fail"),
         1, r"^error: cannot read image .*broken\.jpg.*use --on-bad-image skip"),
    Case("truncated-jpeg-skip", "a truncated JPEG, `--on-bad-image skip`",
         lambda c: c.evaluate("--dataset", str(c.folder({f"{CLASSES[1]}/broken.jpg": _truncated_jpeg})),
                              "--on-bad-image", "skip"),
         0, r"skipped 1 unreadable image\(s\) in every cell and model, e\.g\. .*broken\.jpg", _counted(10, 1)),
    Case("bad-image-policy-value", "`--on-bad-image ignore`", lambda c: c.evaluate("--on-bad-image", "ignore"),
         2, r"^error: Invalid value for '--on-bad-image': 'ignore' is not one of 'fail', 'skip'\. "
            r"\(see '.* evaluate --help'\)"),
    Case("missing-required-option", "`corrupt` without `--out`", lambda c: ["corrupt"],
         2, r"^error: Missing option '--out'\. \(see '.* corrupt --help'\)"),
    Case("unknown-command", "`evalute`", lambda c: ["evalute"],
         2, r"^error: No such command 'evalute'\. Did you mean 'evaluate'\?|^error: No such command 'evalute'"),
    *[Case(f"{kind}-image", f"a {kind} image in the folder (converted, not refused)",
           (lambda kind: lambda c: c.evaluate(
               "--dataset", str(c.folder({f"{CLASSES[2]}/odd.{ODD_SUFFIX.get(kind, 'png')}": ODD_IMAGES[kind]})),
               ))(kind),
           0, r"wrote .*run", _counted(11)) for kind in ODD_IMAGES],
    Case("other-architecture", "`-m resnet56=<resnet20 checkpoint>`",
         lambda c: c.evaluate(model=f"resnet56={c.ckpt}"),
         1, r"^error: weights '.*resnet20\.pt' are for resnet20, not resnet56\."),
    Case("pickle-payload", "a checkpoint whose unpickling would create a file", _evil_checkpoint,
         1, r"^error: cannot load checkpoint .*evil\.pt safely \(weights_only=True\): Unsupported global: "
            r"GLOBAL io\.open was not an allowed global by default; only tensors and plain values are accepted",
         _no_marker),
    Case("garbage-checkpoint", "`-m resnet20=garbage.pt` (random bytes)",
         lambda c: _bytes(b"\x00garbage" * 10)(c.tmp / "garbage.pt") or c.evaluate(model=f"resnet20={c.tmp / 'garbage.pt'}"),
         1, r"^error: cannot load checkpoint .*garbage\.pt safely \(weights_only=True\): .*only tensors and plain "
            r"values are accepted \(corrupt file"),
    Case("missing-weights-file", "`-m resnet20=missing.pt`", lambda c: c.evaluate(model="resnet20=missing.pt"),
         1, r"^error: weights file not found: missing\.pt"),
    Case("model-without-weights", "`-m resnet20` on a folder (bundled weights are for the built-in set only)",
         lambda c: c.evaluate(model="resnet20"),
         2, r"^error: model resnet20 needs weights: use --model resnet20=WEIGHTS or --weights"),
    Case("url-wrong-hash", "`-m resnet20=file:///...#sha256=000...`", _wrong_hash,
         1, r"^error: file://.*resnet20\.pt: sha256 mismatch \(expected 0000000000000000\.\.\., got [0-9a-f]{16}\.\.\.\); "
            r"the file was deleted\.", _no_cached_file),
    Case("url-without-hash", "`-m resnet20=file:///...` (no hash)",
         lambda c: c.evaluate(model=f"resnet20={c.ckpt.as_uri()}"),
         2, r"^error: file://.*give the expected hash as '#sha256=<hex>'"),
    Case("unwritable-out", "`--out <regular file>/run`", _unwritable,
         1, r"^error: cannot write to output folder .*afile/run: "),
    Case("incomplete-mce", "`compare` with `--baseline` whose run lacks a cell of another model",
         _incomplete_baseline,
         1, r"^error: mCE \(normalised by resnet20@base, %\) \(baseline cells\) for model 'resnet20@full' is "
            r"missing 1 \(corruption, severity\) cell\(s\): contrast s1; finish the baseline's run on those cells "
            r"\(rerun its evaluate command\) or choose another --baseline"),
    Case("baseline-not-in-run", "`--baseline resnet56` with only resnet20 evaluated",
         lambda c: c.evaluate("--baseline", "resnet56"),
         2, r"^error: --baseline resnet56 is not among the evaluated models \(resnet20\)"),
    Case("limit-too-large", "`--limit 50` on a 10-image folder", lambda c: c.evaluate("--limit", "50"),
         2, r"^error: --limit 50 is larger than the dataset \(10 images\); give at most 10"),
    Case("limit-zero", "`--limit 0`", lambda c: c.evaluate("--limit", "0"),
         2, r"^error: --limit must be positive, got 0"),
    Case("unknown-split", "`--split validation` on the built-in dataset",
         lambda c: c.evaluate("--dataset", "builtin", "--split", "validation"),
         2, r"^error: unknown split 'validation' \(choose from train, test\)"),
    Case("batch-size-zero", "`--batch-size 0`", lambda c: c.evaluate("--batch-size", "0"),
         2, r"^error: --batch-size and --shard-size must be >= 1"),
    pytest.param(Case("no-cuda", "`--device cuda` without a GPU", lambda c: c.evaluate("--device", "cuda"),
                      2, r"^error: --device cuda: CUDA is not available on this machine \(use --device cpu\)"),
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
                 id="no-cuda"),
    Case("wrong-class-count", "a folder with 3 classes for a 10-class model",
         lambda c: c.evaluate("--dataset", str(c.folder(classes=["x", "y", "z"]))),
         2, r"^error: the dataset has 3 classes but resnet20 predicts 10; give models with a 3-class output"),
    Case("module-output-size", "`-m torchvision.models:resnet18` (a factory's 1000-class model) on a 10-class folder",
         lambda c: c.evaluate(model="torchvision.models:resnet18"),
         2, r"^error: the dataset has 10 classes but torchvision\.models:resnet18 predicts 1000; give models with a "
            r"10-class output"),
    pytest.param(Case("timm-unknown-name", "`-m timm:resnt18`", lambda c: c.evaluate(model="timm:resnt18"),
                      2, r"^error: timm has no model 'resnt18'\. Did you mean 'resnet18', .*`timm\.list_models\(\)` "
                         r"lists them all\."),
                 marks=pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed"),
                 id="timm-unknown-name"),
    Case("factory-import-fails", "`-m nosuchpkg.models:build` (a factory whose module cannot be imported)",
         lambda c: c.evaluate(model="nosuchpkg.models:build"),
         2, r"^error: model 'nosuchpkg\.models:build': cannot import nosuchpkg\.models: ModuleNotFoundError: "
            r"No module named 'nosuchpkg'"),
    Case("conflict-weights-twice", "`-m resnet20=A --weights B` (both name the weights)",
         lambda c: c.evaluate("--weights", str(c.ckpt)),
         2, r"^error: --weights .* is unused: every --model names its own weights"),
    Case("conflict-same-model", "`-m resnet20=A -m resnet20=A`",
         lambda c: c.evaluate("-m", f"resnet20={c.ckpt}"),
         2, r"^error: the same model is given twice: resnet20, resnet20"),
    Case("conflict-clean-dataset", "`--clean-dataset builtin` with a dataset that is not pre-rendered",
         lambda c: c.evaluate("--clean-dataset", "builtin"),
         2, r"^error: --clean-dataset applies to pre-rendered datasets"),
    Case("conflict-cifar-c-severity", "`corrupt --layout cifar-c --severities 1`",
         lambda c: ["corrupt", "--dataset", str(c.root / "data10"), "--size", "32", "--layout", "cifar-c",
                    "--severities", "1", "--corruptions", "gaussian_noise", "--out", str(c.tmp / "rendered"),
                    "--no-progress"],
         2, r"^error: the cifar-c layout stacks all five severities; drop --severities"),
    Case("other-configuration", "`--out` holding a run made without `--jpeg`, rerun with `--jpeg`",
         _other_configuration,
         2, r"^error: .*run holds a run with another configuration \(differs in: jpeg_quality\); rerun with the same "
            r"options to resume, or choose another --out folder\."),
    Case("compare-one-run", "`compare RUN` (a single run)",
         lambda c: (c.tmp / "r").mkdir() or ["compare", str(c.tmp / "r")],
         2, r"^error: compare needs at least two run folders"),
    Case("compare-not-a-run", "`compare A B` where A is an empty folder",
         lambda c: (c.tmp / "a").mkdir() or (c.tmp / "b").mkdir() or ["compare", str(c.tmp / "a"), str(c.tmp / "b")],
         2, r"^error: .*a is not a run folder \(no run\.json \+ cells/ nor results\.csv\)"),
    Case("show-missing-image", "`show missing.png`", lambda c: ["show", str(c.tmp / "missing.png")],
         2, r"^error: image not found: .*missing\.png"),
]


def _only_txt(c: Ctx) -> Path:
    for name in CLASSES:
        _bytes(b"not an image\n")(c.tmp / "data" / name / "notes.txt")
    return c.tmp / "data"


def _id(case: Any) -> str:
    return case.id


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bad_input(case: Case, ctx: Ctx) -> None:
    args = case.args(ctx)
    result = CliRunner().invoke(main, args)
    output = result.output
    # nothing escaped the CLI: an unhandled exception would show up here instead of a SystemExit
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.id}: {type(result.exception).__name__}: {result.exception}\n{output}")
    assert "Traceback" not in output
    assert result.exit_code == case.code, f"{case.id}: exit {result.exit_code}\n{output}"
    assert re.search(case.message, output.strip(), flags=re.MULTILINE), f"{case.id}: {output!r}"
    if case.code != 0:
        lines = output.strip().splitlines()
        assert len(lines) == 1, f"{case.id}: not one line:\n{output}"
        assert lines[0].startswith("error: ") or lines[0].startswith("Error: "), lines
    if case.check is not None:
        case.check(ctx, result)


def test_real_stderr_has_no_traceback(ctx):
    """Outside CliRunner (which records warnings and exceptions itself): the real process prints one
    line on stderr, nothing on stdout, no warning and no traceback."""
    for case_args, code in ((_evil_checkpoint(ctx), 1), (ctx.evaluate("--on-bad-image", "ignore"), 2)):
        done = subprocess.run([sys.executable, "-m", "robustbench_bivol", *case_args], capture_output=True,
                              text=True, cwd=ctx.tmp, timeout=120)
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr and "Warning" not in done.stderr and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert not (ctx.tmp / "pwned").exists()
