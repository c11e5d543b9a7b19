"""The Python API: ``robustbench_bivol.evaluate`` in memory and on disk, user modules and torch
datasets, the README's example, and the CLI as a shell over the API."""
from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _support import make_checkpoint
from click.testing import CliRunner
from PIL import Image
from torch import nn

import corruptions
import robustbench_bivol
from robustbench_bivol.cli import main
from robustbench_bivol.data import BuiltinShapes, balanced_subset
from robustbench_bivol.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
LIMIT, CELLS = 20, (["gaussian_noise"], [1, 5])
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def toy(classes: int = 10) -> nn.Module:
    """A small module whose predictions vary from image to image."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, classes)).eval()


def recount(module: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: np.ndarray,
            mean: tuple, std: tuple) -> dict[tuple[str, int], np.ndarray]:
    """Per-image correctness per cell, corrupting and classifying without the toolkit's engine."""
    mean_, std_ = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    counts = {}
    for corruption, severity in [("clean", 0)] + [(c, s) for c in CELLS[0] for s in CELLS[1]]:
        x = images if corruption == "clean" else corruptions.corrupt(
            images, corruption, severity, seed=0, indices=indices.tolist())
        with torch.no_grad():
            counts[(corruption, severity)] = (module((x.float() / 255 - mean_) / std_).argmax(1) == labels).numpy()
    return counts


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet20.pt")


def test_module_in_memory_writes_nothing_and_recounts(tmp_path, monkeypatch, checkpoint):
    monkeypatch.chdir(tmp_path)
    mine = toy()
    results = robustbench_bivol.evaluate({"mine": mine, "resnet20": f"resnet20={checkpoint}"},
                                         corruptions=CELLS[0], severities=CELLS[1], limit=LIMIT, progress=False)
    assert list(tmp_path.iterdir()) == []  # out=None: nothing on disk
    assert results.run_dir is None and results.models == ["mine", "resnet20"]
    assert results.baseline == "resnet20"  # the static registered model, not the module
    data = BuiltinShapes("test", 32, seed=0)
    indices = balanced_subset(data.labels.numpy(), LIMIT)
    expected = recount(mine, data.images[indices], data.labels[indices], indices, IMAGENET_MEAN, IMAGENET_STD)
    for cell, correct in expected.items():
        assert 0 < correct.sum() < LIMIT  # right on some images, wrong on others: the comparison can fail
        np.testing.assert_array_equal(results.per_sample[("mine", *cell)], correct)
    cells = results.cells[results.cells["model"] == "mine"]
    assert {(r.corruption, r.severity): r.correct for r in cells.itertuples()} == {
        cell: int(correct.sum()) for cell, correct in expected.items()}
    noise = results.corruption_errors.loc["gaussian_noise", "mine"]
    assert noise == pytest.approx(100 * np.mean([1 - expected[("gaussian_noise", s)].mean() for s in CELLS[1]]))
    assert results.ce.loc[(results.ce.index[0][0], "mCE"), "resnet20"] == pytest.approx(100.0)
    assert list(results.study.index) == ["mine", "resnet20"]
    assert results.summary["baseline"] == "resnet20" and "mine" in str(results)

    written = results.write_reports(tmp_path / "reports")
    on_disk = pd.read_csv(written / "results.csv")
    pd.testing.assert_frame_equal(on_disk[["model", "corruption", "severity", "n", "correct"]],
                                  results.cells[["model", "corruption", "severity", "n", "correct"]])
    assert {"corruption_errors.md", "ce.csv", "study.md", "summary.json"} <= {p.name for p in written.iterdir()}


def test_cli_is_a_shell_over_the_api(tmp_path, checkpoint):
    args = ["--limit", str(LIMIT), "--corruptions", ",".join(CELLS[0]), "--severities", "1,5", "--no-progress"]
    result = CliRunner().invoke(main, ["evaluate", "-m", f"resnet20={checkpoint}", *args, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    api = robustbench_bivol.evaluate([f"resnet20={checkpoint}"], corruptions=CELLS[0], severities="1,5",
                                     limit=LIMIT, out=tmp_path / "api", progress=False)
    assert api.run_dir == tmp_path / "api"
    for name in ("results.csv", "corruption_errors.csv", "ce.csv", "run.json"):
        assert (tmp_path / "cli" / name).read_text() == (tmp_path / "api" / name).read_text(), name
    # a folder made by the API resumes with the same module only: its weights are part of the configuration
    again = robustbench_bivol.evaluate([f"resnet20={checkpoint}"], corruptions=CELLS[0], severities=[1, 5],
                                       limit=LIMIT, out=tmp_path / "api", progress=False)
    pd.testing.assert_frame_equal(again.cells, api.cells)


def test_module_weights_identify_the_run(tmp_path):
    kwargs = dict(corruptions=CELLS[0], severities=[1], limit=LIMIT, out=tmp_path / "run", progress=False)
    robustbench_bivol.evaluate({"mine": toy()}, **kwargs)
    other = toy()
    with torch.no_grad():
        other[-1].bias.add_(1.0)
    with pytest.raises(UsageError, match=r"another configuration \(differs in: models\)"):
        robustbench_bivol.evaluate({"mine": other}, **kwargs)


def test_module_with_wrong_output_size_is_refused():
    with pytest.raises(UsageError, match=r"^the dataset has 10 classes but mine predicts 7; give models with a "
                                         r"10-class output$"):
        robustbench_bivol.evaluate({"mine": toy(classes=7)}, limit=LIMIT, corruptions=CELLS[0], progress=False)
    with pytest.raises(UsageError, match=r"model 'mine' fails on a 1x3x32x32 input .*give its input size"):
        robustbench_bivol.evaluate({"mine": nn.Linear(5, 10)}, limit=LIMIT, progress=False)
    with pytest.raises(UsageError, match=r"^the dataset has 10 classes but Sequential predicts 7"):  # one module
        robustbench_bivol.evaluate(toy(classes=7), limit=LIMIT, progress=False)
    with pytest.raises(UsageError, match=r"^unknown model 'resnet21'"):  # one spec, not a sequence of letters
        robustbench_bivol.evaluate("resnet21", progress=False)


class PilDataset(torch.utils.data.Dataset):
    """A user's dataset: PIL images of another size, integer labels, class names, no ``targets``."""

    classes = [f"c{i}" for i in range(4)]

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.items = [(Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), i % 4) for i in range(8)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def test_torch_dataset_is_resized_and_recounted():
    dataset, mine = PilDataset(), toy(classes=4)
    results = robustbench_bivol.evaluate({"mine": mine}, dataset, corruptions=CELLS[0], severities=CELLS[1],
                                         input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, progress=False)
    from torchvision.transforms import functional as TF

    # shorter side 40 -> 32 (antialiased bilinear on the tensor), then the central 32x32
    images = torch.stack([TF.center_crop(TF.resize(TF.pil_to_tensor(im), 32, antialias=True), [32, 32])
                          for im, _ in dataset.items])
    labels = torch.tensor([label for _, label in dataset.items])
    expected = recount(mine, images, labels, np.arange(8), (0.5,) * 3, (0.25,) * 3)
    for cell, correct in expected.items():
        np.testing.assert_array_equal(results.per_sample[("mine", *cell)], correct)
    assert (results.cells["n"] == 8).all() and 0 < results.cells["correct"].sum() < 8 * 3


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python API block, verbatim."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"^## Python API\n.*?```python\n(.*?)```", readme, re.S | re.M).group(1)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    assert re.search(r"^mine\s+\d", printed, re.M) and re.search(r"^resnet20\s+\d", printed, re.M), printed
    assert (tmp_path / "runs" / "api-example" / "study.md").is_file()


def test_engine_never_imports_its_shell():
    """No module but the CLI's own entry point imports ``robustbench_bivol.cli`` (the engine once
    reached into the CLI for its severity parser)."""
    offenders = []
    for path in (ROOT / "robustbench_bivol").rglob("*.py"):
        if path.name == "__main__.py" or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "cli":
                offenders.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.Import) and any(a.name.endswith(".cli") for a in node.names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
