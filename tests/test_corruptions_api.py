"""Public API of ``corruptions``: determinism, dtypes/shapes, validation, profiles, JPEG, backends."""
from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

import corruptions as C


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth gradients + hard edges + noise texture, uint8 (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        grad = torch.stack([xx, yy, 1 - xx * yy])
        edges = ((xx * (3 + i)).floor() + (yy * 2).floor()) % 2
        tex = torch.rand(3, size, size, generator=g)
        out.append((0.5 * grad + 0.3 * edges + 0.2 * tex).clamp(0, 1))
    return (torch.stack(out) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def batch32() -> torch.Tensor:
    return images(4, 32)


def test_all_19_are_implemented() -> None:
    assert len(C.ALL) == 19
    assert set(C.IMPLEMENTATIONS) == set(C.ALL)


@pytest.mark.parametrize("name", C.ALL)
def test_batch_equals_single_images(batch32: torch.Tensor, name: str) -> None:
    indices = [10, 3, 7, 0]
    whole = C.corrupt(batch32, name, 3, seed=5, indices=indices)
    assert whole.dtype == torch.uint8 and whole.shape == batch32.shape
    alone = torch.stack([C.corrupt(batch32[i], name, 3, seed=5, indices=[indices[i]])
                         for i in range(len(indices))])
    assert torch.equal(whole, alone)
    # a different batch composition / order must not change any image either
    order = [2, 0]
    part = C.corrupt(batch32[order], name, 3, seed=5, indices=[indices[i] for i in order])
    assert torch.equal(part, whole[order])


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "snow"])
def test_seed_and_index_change_random_corruptions(batch32: torch.Tensor, name: str) -> None:
    a = C.corrupt(batch32, name, 3, seed=0)
    assert torch.equal(a, C.corrupt(batch32, name, 3, seed=0))
    assert not torch.equal(a, C.corrupt(batch32, name, 3, seed=1))
    assert not torch.equal(a, C.corrupt(batch32, name, 3, seed=0, indices=[4, 5, 6, 7]))


def test_single_image_shape_and_dtype(batch32: torch.Tensor) -> None:
    out = C.corrupt(batch32[0], "contrast", 2)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert out.device == batch32.device


def test_validation_errors(batch32: torch.Tensor) -> None:
    with pytest.raises(C.UnknownCorruptionError, match="gaussian_noise"):
        C.corrupt(batch32, "gausian_noise", 1)
    for bad in (0, 6):
        with pytest.raises(C.UnknownCorruptionError):
            C.corrupt(batch32, "contrast", bad)
    with pytest.raises(C.UnknownCorruptionError, match="cifar"):
        C.corrupt(batch32, "contrast", 1, profile="imagenet-c")
    with pytest.raises(C.UnknownCorruptionError):
        C.corrupt(batch32, "contrast", 1, backend="numpy")
    with pytest.raises(TypeError):
        C.corrupt(batch32.float() / 255, "contrast", 1)
    with pytest.raises(ValueError):
        C.corrupt(batch32[:, :2], "contrast", 1)
    with pytest.raises(ValueError):
        C.corrupt(batch32, "contrast", 1, indices=[0, 1])


def test_reference_backend_rejects_small_profiles(batch32: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="only the imagenet profile"):
        C.corrupt(batch32, "contrast", 1, backend="reference")  # 32 px -> cifar profile
    with pytest.raises(ValueError, match="use backend='torch'"):
        C.corrupt(images(1, 224), "contrast", 1, profile="tinyimagenet", backend="reference")


def test_reference_backend_is_seeded_per_image() -> None:
    pytest.importorskip("imagecorruptions")
    x = images(2, 224)
    for name in ("gaussian_noise", "impulse_noise"):
        a = C.corrupt(x, name, 2, seed=3, backend="reference")
        assert a.dtype == torch.uint8 and a.shape == x.shape
        assert torch.equal(a, C.corrupt(x, name, 2, seed=3, backend="reference"))
        assert torch.equal(a[1], C.corrupt(x[1:], name, 2, seed=3, indices=[1],
                                           backend="reference")[0])


def test_profile_for_size() -> None:
    assert C.profile_for_size(32, 32) == "cifar"
    assert C.profile_for_size(28, 28) == "cifar"
    assert C.profile_for_size(45, 200) == "cifar"  # shorter side decides
    assert C.profile_for_size(46, 46) == "tinyimagenet"
    assert C.profile_for_size(64, 64) == "tinyimagenet"
    assert C.profile_for_size(96, 96) == "tinyimagenet"
    assert C.profile_for_size(119, 119) == "tinyimagenet"
    assert C.profile_for_size(120, 120) == "imagenet"
    assert C.profile_for_size(224, 224) == "imagenet"
    assert C.profile_for_size(512, 384) == "imagenet"


def test_resolve_profile() -> None:
    assert C.resolve_profile(None, (3, 32, 32)) == "cifar"
    assert C.resolve_profile(None, 224) == "imagenet"
    assert C.resolve_profile("tinyimagenet", (32, 32)) == "tinyimagenet"
    with pytest.raises(C.UnknownCorruptionError, match="tinyimagenet"):
        C.resolve_profile("tiny", (32, 32))


def test_profile_changes_parameters(batch32: torch.Tensor) -> None:
    cifar = C.corrupt(batch32, "contrast", 1)
    assert torch.equal(cifar, C.corrupt(batch32, "contrast", 1, profile="cifar"))
    assert not torch.equal(cifar, C.corrupt(batch32, "contrast", 1, profile="imagenet"))


def test_jpeg_round_trip_matches_pillow_release_step() -> None:
    x = images(2, 64)
    out = C.jpeg_round_trip(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(2):
        buf = BytesIO()
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=85, optimize=True)
        ref = np.asarray(Image.open(BytesIO(buf.getvalue())).convert("RGB"))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), ref)
    assert torch.equal(C.jpeg_round_trip(x[0], 85), out[0])
    with pytest.raises(TypeError):
        C.jpeg_round_trip(x.float())


@pytest.mark.parametrize("size", [32, 224])
def test_jpeg_codec_equals_pillow_at_every_quality(size: int) -> None:
    """The OpenCV round trip against Pillow's (the generators' codec) at the qualities of all
    severities of all profiles and at 85: the fidelity contract is a mean absolute difference of
    at most 1/255; these builds agree bit for bit, so a tenth of a level already fails."""
    from corruptions.ops import IMPLEMENTATIONS

    x = images(2, size)
    qualities = {q for table in IMPLEMENTATIONS["jpeg_compression"].params.values() for q in table}
    for quality in sorted(qualities | {85}):
        out = C.jpeg_round_trip(x, quality)
        for i in range(len(x)):
            buf = BytesIO()
            Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
            ref = torch.from_numpy(np.array(Image.open(BytesIO(buf.getvalue())).convert("RGB")))
            mad = (out[i].permute(1, 2, 0).int() - ref.int()).abs().double().mean().item()
            assert mad <= 0.1, (quality, i, mad)


def test_corrupt_with_jpeg_quality(batch32: torch.Tensor) -> None:
    plain = C.corrupt(batch32, "gaussian_noise", 1)
    assert torch.equal(C.corrupt(batch32, "gaussian_noise", 1, jpeg_quality=85),
                       C.jpeg_round_trip(plain, 85))


def test_uint8_conversion_truncates_like_numpy() -> None:
    from corruptions.api import to_uint8
    vals = np.array([0.0, 0.5, 100.7 / 255, 1.0, 1.2, -0.3])
    expect = np.uint8(np.clip(vals, 0, 1) * 255)
    assert np.array_equal(to_uint8(torch.from_numpy(vals)).numpy(), expect)
    levels = torch.arange(256, dtype=torch.float32) / 255  # exact levels survive float32
    assert torch.equal(to_uint8(levels), torch.arange(256).to(torch.uint8))


def test_package_import_is_light() -> None:
    code = ("import sys, corruptions; "
            "assert 'corruptions.ops' not in sys.modules and 'cv2' not in sys.modules; "
            "corruptions.corrupt; assert 'corruptions.api' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
