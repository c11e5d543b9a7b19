"""The GPU input pipeline, checked on the CPU: channels-last inference predicts what the default
does, the decode-on-the-device path (run here with torchvision's CPU decoder) reads what Pillow
reads and reports bad files alike, the decode location is chosen as documented, and the pipeline
benchmark runs end to end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _support import store_predictions, write_image_folder
from PIL import Image

import robustbench_bivol
from robustbench_bivol.data import BuiltinShapes, ImageFolderDataset
from robustbench_bivol.data.builtin import CLASSES, render
from robustbench_bivol.data.folder import BadImageError, EncodedJpeg, decode_jpegs, encoded_jpeg, load_image
from robustbench_bivol.evaluation import engine
from robustbench_bivol.evaluation.engine import CorruptOnTheFly, decode_device

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ["resnet20", "bivol_resnet20", "condconv_resnet20", "dyconv_resnet20", "involution_resnet20"]
SIZE = 32


def test_channels_last_gives_the_same_predictions(tmp_path):
    """Every bundled operator (CondConv's 5-D expert kernels and the fused involution kernel
    included), on a folder run on the CPU in float32: channels-last changes the memory layout,
    not one prediction."""
    folder = write_image_folder(tmp_path / "images", 30)
    options = dict(corruptions=["gaussian_noise", "contrast"], severities=[3], device="cpu", progress=False)
    models = {name: f"{name}=builtin" for name in BUNDLED}
    robustbench_bivol.evaluate(models, folder, out=tmp_path / "default", **options)
    robustbench_bivol.evaluate(models, folder, out=tmp_path / "channels_last", channels_last=True, **options)
    default, channels_last = store_predictions(tmp_path / "default"), store_predictions(tmp_path / "channels_last")
    assert default.keys() == channels_last.keys() and len(default) == 3 * (2 + len(BUNDLED))
    for key, values in default.items():
        np.testing.assert_array_equal(channels_last[key], values, err_msg=str(key))
    assert len(set(default[("clean_s0", "pred::resnet20")])) > 1  # the models' predictions vary


def _jpeg_folder(root: Path) -> dict[str, Path]:
    """Built-in images as JPEGs: colour and greyscale at the evaluation size, one larger (resized),
    plus a PNG, a CMYK JPEG and a truncated JPEG (Pillow's cases)."""
    images, labels = render(np.arange(8))
    files = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        kind = ("colour", "grey", "large", "png", "cmyk", "truncated", "colour", "colour")[i]
        path = root / CLASSES[int(label)] / f"{i}-{kind}.{'png' if kind == 'png' else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        {"grey": pil.convert("L"), "large": pil.resize((48, 40)), "cmyk": pil.convert("CMYK")}.get(kind, pil).save(
            path, quality=90)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:300])
        files[f"{i}-{kind}"] = path
    return files


@pytest.fixture
def jpeg_folder(tmp_path):
    files = _jpeg_folder(tmp_path / "images")
    return ImageFolderDataset(tmp_path / "images", size=SIZE), files


def test_only_complete_colour_or_grey_jpegs_travel_encoded(jpeg_folder):
    """nvjpeg gets the files it decodes as Pillow does; Pillow keeps the rest, so a PNG or a CMYK
    JPEG is read as before and a truncated JPEG fails with the same message as on the CPU."""
    _, files = jpeg_folder
    routed = {name: encoded_jpeg(path) for name, path in files.items()}
    assert {name for name, item in routed.items() if item is not None} == {
        "0-colour", "1-grey", "2-large", "6-colour", "7-colour"}
    assert bytes(routed["0-colour"].data.numpy()) == files["0-colour"].read_bytes()
    assert encoded_jpeg(files["0-colour"].with_name("missing.jpg")) is None


def _forced_device_decode(monkeypatch):
    """Take the decode-on-the-device path on the CPU: torchvision decodes there as it would on a GPU."""
    monkeypatch.setattr(engine, "decode_device", lambda dataset, device: device)


@pytest.mark.parametrize("workers", [0, 1])
def test_device_decode_path_reads_what_pillow_reads(jpeg_folder, monkeypatch, workers):
    data, files = jpeg_folder
    indices = np.arange(len(data))
    cpu = CorruptOnTheFly(data, on_bad_image="skip").load(indices)
    _forced_device_decode(monkeypatch)
    device = CorruptOnTheFly(data, on_bad_image="skip", workers=workers).load(indices)
    np.testing.assert_array_equal(device.indices, cpu.indices)
    assert device.skipped == cpu.skipped and len(cpu.skipped) == 1  # the truncated JPEG, same message
    torch.testing.assert_close(device.labels, cpu.labels)
    large = [i for i, index in enumerate(cpu.indices) if "large" in data.samples[index][0]]
    same = [i for i in range(len(cpu.indices)) if i not in large]
    # torchvision's CPU decoder is libjpeg-turbo, as Pillow's: bit-identical where no resize runs;
    # the tensor resize rounds differently from Pillow's by at most one grey level
    assert torch.equal(device.images[same], cpu.images[same])
    assert (device.images[large].int() - cpu.images[large].int()).abs().max() <= 1


def test_device_decode_path_fails_with_the_cpu_message(jpeg_folder, monkeypatch):
    data, _ = jpeg_folder
    with pytest.raises(BadImageError) as on_cpu:
        CorruptOnTheFly(data).load(np.arange(len(data)))
    _forced_device_decode(monkeypatch)
    with pytest.raises(BadImageError) as on_device:
        CorruptOnTheFly(data).load(np.arange(len(data)))
    assert str(on_device.value) == str(on_cpu.value) and "truncated" in str(on_cpu.value)


def test_refused_batches_are_retried_image_by_image(jpeg_folder, monkeypatch, tmp_path):
    """torchvision refuses a whole batch for one image: the batch is retried image by image, an image
    nvjpeg refuses alone goes through Pillow, and one Pillow cannot read either is returned as its
    error, not raised."""
    from robustbench_bivol.data import folder

    data, files = jpeg_folder
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"not a jpeg")
    items = [encoded_jpeg(files["0-colour"]), encoded_jpeg(files["6-colour"]),
             EncodedJpeg(torch.frombuffer(bytearray(fake.read_bytes()), dtype=torch.uint8), str(fake))]
    real = folder._decode_jpegs

    def nvjpeg(batch, device):  # refuses batches, and the second image even alone
        if len(batch) > 1 or batch[0] is items[1].data:
            raise RuntimeError("nvjpeg refused")
        return real(batch, device)

    monkeypatch.setattr(folder, "_decode_jpegs", nvjpeg)
    first, second, third = decode_jpegs(items, SIZE, SIZE, torch.device("cpu"))
    assert torch.equal(first, load_image(files["0-colour"], SIZE, SIZE))
    assert torch.equal(second, load_image(files["6-colour"], SIZE, SIZE))  # by Pillow
    assert isinstance(third, BadImageError) and "fake.jpg" in str(third)


def test_decode_location(jpeg_folder, monkeypatch):
    """JPEGs are decoded on a CUDA device when torchvision can decode there and the dataset hands
    over encoded files; elsewhere by the loader on the CPU."""
    data, _ = jpeg_folder
    cuda, cpu = torch.device("cuda", 1), torch.device("cpu")
    monkeypatch.setattr(engine, "can_decode_jpeg_on", lambda device: True)
    assert decode_device(data, cuda) == cuda
    assert decode_device(data, cpu) is None
    assert decode_device(BuiltinShapes("test", SIZE, length=4), cuda) is None  # rendered, not files
    monkeypatch.setattr(engine, "can_decode_jpeg_on", lambda device: False)  # torchvision without nvjpeg
    assert decode_device(data, cuda) is None


def test_gpu_decode_off_never_decodes_on_the_device(jpeg_folder, monkeypatch):
    data, _ = jpeg_folder
    asked = []
    monkeypatch.setattr(engine, "decode_device", lambda dataset, device: asked.append(device))
    CorruptOnTheFly(data, on_bad_image="skip", gpu_decode=False).load(np.arange(len(data)))
    assert not asked
    CorruptOnTheFly(data, on_bad_image="skip").load(np.arange(len(data)))
    assert asked == [torch.device("cpu")]


@pytest.mark.benchmark
def test_pipeline_benchmark_runs_end_to_end(tmp_path):
    """Its one command works, at tiny sizes (seconds); the figures themselves are not checked."""
    out = tmp_path / "pipeline.md"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--images", "8",
                             "--batch-size", "4", "--repeats", "1", "--channels-last", "--out", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| (a) pipeline" in result.stdout and "(a)/(b)" in result.stdout
    assert out.read_text().strip() in result.stdout
