"""Models from the ecosystem, offline: ``timm:NAME=FILE``, ``torchvision:NAME[=ENUM|FILE]`` and
``package.module:factory``, each recounted without the toolkit's engine."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from _support import store_predictions, write_image_folder
from click.testing import CliRunner
from PIL import Image
from torchvision.transforms import functional as TF

import corruptions
import robustbench_bivol
from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.data import BuiltinShapes, balanced_subset
from robustbench_bivol.data.builtin import CLASSES
from robustbench_bivol.errors import CheckpointError
from robustbench_bivol.evaluation.loading import load_entry
from robustbench_bivol.evaluation.run import open_for_models

TINY = ["--corruptions", "gaussian_noise", "--severities", "1", "--no-progress"]


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _predict(model: torch.nn.Module, images: torch.Tensor, mean: tuple, std: tuple) -> np.ndarray:
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x).argmax(1).numpy()


def test_timm_state_dict_file_uses_pretrained_cfg(tmp_path):
    """A plain state_dict with a 10-class head: timm's cfg gives 160 px, crop 0.95 (resize 168) and
    mean = std = 0.5; the run's predictions match a direct forward on so-prepared images."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "test_resnet.pt")
    folder = write_image_folder(tmp_path / "data", 10)
    entry = load_entry(f"timm:test_resnet={tmp_path / 'test_resnet.pt'}", None, str(folder))
    assert (entry.meta.input_size, entry.meta.resize, entry.meta.mean, entry.meta.num_classes) == (160, 168, (0.5,) * 3, 10)
    opened = open_for_models(str(folder), [entry], split="test", seed=0)
    assert (opened.size, opened.resize) == (160, 168)  # the folder is read with timm's crop

    _invoke(["evaluate", "-m", f"timm:test_resnet={tmp_path / 'test_resnet.pt'}", "--dataset", str(folder), *TINY,
             "--out", str(tmp_path / "run")])
    stored = store_predictions(tmp_path / "run")
    paths = sorted(folder.rglob("*.png"), key=lambda p: (p.parent.name, p.name))
    clean = torch.stack([TF.center_crop(TF.pil_to_tensor(TF.resize(Image.open(p).convert("RGB"), 168, antialias=True)),
                                        [160, 160]) for p in paths])
    noisy = corruptions.corrupt(clean, "gaussian_noise", 1, seed=0, indices=list(range(10)))
    for cell, images in (("clean_s0", clean), ("gaussian_noise_s1", noisy)):
        expected = _predict(model, images, (0.5,) * 3, (0.5,) * 3)
        assert len(set(expected)) > 1  # varied predictions: the comparison can fail
        np.testing.assert_array_equal(stored[(cell, "pred::timm:test_resnet")], expected)


def test_timm_without_weights_downloads_pretrained(monkeypatch):
    """No file named: timm's own pretrained weights, fetched by timm (here the fetch fails offline)."""
    timm = pytest.importorskip("timm")
    calls = []

    def offline(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CheckpointError, match=r"^cannot fetch timm's pretrained weights for 'resnet18': We couldn't"):
        load_entry("timm:resnet18", None)
    assert calls == [("resnet18", True)]


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval(), tmp_path_factory.mktemp("tv")


def test_torchvision_checkpoint_file_in_the_api(resnet18):
    """A toolkit checkpoint for ``torchvision:resnet18`` carries its own preprocessing (32 px)."""
    model, folder = resnet18
    meta = CheckpointMeta(arch="torchvision:resnet18", num_classes=10, input_size=32, mean=(0.5,) * 3,
                          std=(0.25,) * 3, dataset="builtin", classes=list(CLASSES))
    save_checkpoint(folder / "resnet18.pt", model.state_dict(), meta)
    results = robustbench_bivol.evaluate([f"torchvision:resnet18={folder / 'resnet18.pt'}"], limit=20,
                                         corruptions=["gaussian_noise"], severities=[1], progress=False)
    data = BuiltinShapes("test", 32, seed=0)
    indices = balanced_subset(data.labels.numpy(), 20)
    images, labels = data.images[indices], data.labels[indices].numpy()
    for cell, x in ((("clean", 0), images),
                    (("gaussian_noise", 1), corruptions.corrupt(images, "gaussian_noise", 1, seed=0,
                                                                indices=indices.tolist()))):
        correct = _predict(model, x, (0.5,) * 3, (0.25,) * 3) == labels
        np.testing.assert_array_equal(results.per_sample[("torchvision:resnet18", *cell)], correct)
    assert results.baseline is None  # not a registered static model: no baseline is guessed


def test_torchvision_state_dict_and_enum_preprocessing(resnet18, monkeypatch):
    model, folder = resnet18
    torch.save(model.state_dict(), folder / "plain.pt")
    entry = load_entry(f"torchvision:resnet18={folder / 'plain.pt'}", None, "some/folder")
    assert (entry.meta.input_size, entry.meta.resize, entry.meta.num_classes) == (224, 256, 10)
    torch.testing.assert_close(entry.module.state_dict(), model.state_dict())

    # an enum (or DEFAULT) goes through torchvision's own download, here served from memory
    full = torchvision.models.resnet18().state_dict()
    fetched = []
    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict",
                        lambda self, *args, **kwargs: fetched.append(self.name) or full)
    for spec, enum in (("torchvision:resnet18=IMAGENET1K_V1", "IMAGENET1K_V1"), ("torchvision:resnet18", "IMAGENET1K_V1")):
        entry = load_entry(spec, None, "some/folder")
        assert fetched[-1] == enum
        assert (entry.meta.input_size, entry.meta.resize, entry.meta.num_classes) == (224, 256, 1000)
        assert entry.meta.mean == pytest.approx((0.485, 0.456, 0.406)) and entry.meta.classes[0] == "tench"


FACTORY = '''
import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))
'''


def test_factory_from_the_working_directory(tmp_path, monkeypatch):
    """``package.module:factory`` imports from the working directory, as a user's script would."""
    (tmp_path / "factory_models_for_test.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "factory_models_for_test", raising=False)
    _invoke(["evaluate", "-m", "factory_models_for_test:tiny", "--limit", "20", *TINY, "--out", "run"])
    import factory_models_for_test

    tidy = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(tidy["model"].unique()) == ["factory_models_for_test:tiny"] and (tidy["n"] == 20).all()
    data = BuiltinShapes("test", 32, seed=0)  # the built-in dataset's own 32 px, ImageNet mean and std
    indices = balanced_subset(data.labels.numpy(), 20)
    expected = _predict(factory_models_for_test.tiny(), data.images[indices], (0.485, 0.456, 0.406),
                        (0.229, 0.224, 0.225))
    stored = store_predictions(tmp_path / "run")
    np.testing.assert_array_equal(stored[("clean_s0", "pred::factory_models_for_test:tiny")], expected)
