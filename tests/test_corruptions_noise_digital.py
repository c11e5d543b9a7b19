"""Noise and digital corruptions: tables vs the generators, fidelity vs imagecorruptions,
severity ordering, and the exactness of the HSV / Pillow-BOX / JPEG building blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import corruptions as C
from corruptions.api import to_uint8
from corruptions.ops import IMPLEMENTATIONS
from corruptions.philox import Streams
from corruptions.ops.digital import (
    hsv_to_rgb,
    pil_box_resize,
    rgb_to_hsv,
    to_uint8_exact,
)

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
DETERMINISTIC = ("brightness", "contrast", "saturate", "pixelate", "jpeg_compression")

# Tables copied by hand from hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py and
# ImageNet-C/create_c/make_tinyimagenet_c.py (and make_imagenet_c.py for 'imagenet').
GENERATOR_TABLES = {
    "cifar": {
        "gaussian_noise": [0.04, 0.06, .08, .09, .10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [.01, .02, .03, .05, .07],
        "speckle_noise": [.06, .1, .12, .16, .2],
        "contrast": [.75, .5, .4, .3, 0.15],
        "brightness": [.05, .1, .15, .2, .3],
        "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
        "jpeg_compression": [80, 65, 58, 50, 40],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    },
    "tinyimagenet": {
        "gaussian_noise": [0.04, 0.08, .12, .15, .18],
        "shot_noise": [250, 100, 50, 30, 15],
        "impulse_noise": [.01, .02, .05, .08, .14],
        "speckle_noise": [.15, .2, 0.25, 0.3, 0.35],
        "contrast": [.4, .3, .2, .1, .05],
        "brightness": [.1, .2, .3, .4, .5],
        "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)],
        "jpeg_compression": [65, 58, 50, 40, 25],
        "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
    },
    "imagenet": {
        "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [.03, .06, .09, 0.17, 0.27],
        "speckle_noise": [.15, .2, 0.35, 0.45, 0.6],
        "contrast": [0.4, .3, .2, .1, .05],
        "brightness": [.1, .2, .3, .4, .5],
        "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
        "jpeg_compression": [25, 18, 15, 10, 7],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    },
}


def make_images(n: int, size: int) -> torch.Tensor:
    """Natural-ish uint8 images: gradients, a coloured disk, hard edges, a sinusoidal texture."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        grad = torch.stack([xx, yy * (0.5 + 0.1 * i), 1 - xx * yy])
        disk = (((xx - 0.3 - 0.1 * i) ** 2 + (yy - 0.6) ** 2) < 0.04).float()
        edges = ((xx * (4 + i)).floor() + (yy * 3).floor()) % 2
        phase = torch.rand(3, 1, 1, generator=g) * 6.28
        texture = 0.5 + 0.5 * torch.sin(xx * size / 2.5 + yy * size / 4 + phase)
        colour = torch.rand(3, 1, 1, generator=g)
        out.append((0.4 * grad + 0.2 * edges + 0.15 * texture + 0.25 * disk * colour).clamp(0, 1))
    return (torch.stack(out) * 255).round().to(torch.uint8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(255.0 ** 2 / mse)).mean().item()


@pytest.fixture(scope="module")
def x224() -> torch.Tensor:
    return make_images(2, 224)


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    return make_images(8, 32)


@pytest.mark.parametrize("profile", ["cifar", "tinyimagenet", "imagenet"])
def test_tables_equal_generators(profile: str) -> None:
    for name, table in GENERATOR_TABLES[profile].items():
        assert list(IMPLEMENTATIONS[name].params[profile]) == table, (profile, name)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_ops_match_imagecorruptions(x224: torch.Tensor, name: str) -> None:
    pytest.importorskip("imagecorruptions")
    for severity in C.SEVERITIES:
        mine = C.corrupt(x224, name, severity, profile="imagenet")
        ref = C.corrupt(x224, name, severity, profile="imagenet", backend="reference")
        mad = (mine.int() - ref.int()).abs().double().mean().item()
        assert mad <= 1.0, (name, severity, mad)  # <= 1/255 on the [0, 1] scale


@pytest.mark.parametrize("name", NOISE)
def test_noise_psnr_matches_imagecorruptions(x224: torch.Tensor, name: str) -> None:
    pytest.importorskip("imagecorruptions")
    for severity in C.SEVERITIES:
        mine = psnr(C.corrupt(x224, name, severity, profile="imagenet", seed=1), x224)
        ref = psnr(C.corrupt(x224, name, severity, profile="imagenet", seed=1,
                             backend="reference"), x224)
        assert abs(mine - ref) <= 0.5, (name, severity, mine, ref)


@pytest.mark.parametrize("name", NOISE + ("brightness", "contrast", "pixelate",
                                          "jpeg_compression"))
def test_severity_monotonic_cifar(x32: torch.Tensor, name: str) -> None:
    scores = [psnr(C.corrupt(x32, name, s, profile="cifar"), x32) for s in C.SEVERITIES]
    assert all(a > b for a, b in zip(scores, scores[1:])), (name, scores)


def test_saturate_direction_cifar(x32: torch.Tensor) -> None:
    """Severities 1-2 desaturate (0.3, 0.1), 3-5 saturate more and more."""
    def sat(img: torch.Tensor) -> float:
        return rgb_to_hsv(img.double() / 255)[:, 1].mean().item()
    s = [sat(C.corrupt(x32, "saturate", k, profile="cifar")) for k in C.SEVERITIES]
    clean = sat(x32)
    assert s[1] < s[0] < clean < s[2] < s[3] < s[4]


def test_hsv_matches_skimage() -> None:
    skcolor = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 40, 3)).astype(np.float64) / 255
    rgb[:5] = rgb[:5, :, :1]  # greys
    rgb[5:10, :, 1] = rgb[5:10, :, 0]  # red == green ties
    rgb[10:15, :, 2] = rgb[10:15, :, 1]  # green == blue ties
    rgb[15, 0] = 0
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    hsv = rgb_to_hsv(t)
    np.testing.assert_allclose(hsv.permute(1, 2, 0).numpy(), skcolor.rgb2hsv(rgb), atol=1e-12)
    hsv_np = skcolor.rgb2hsv(rgb)
    hsv_np[..., 1] = np.clip(hsv_np[..., 1] * 3, 0, 1)
    back = hsv_to_rgb(torch.from_numpy(hsv_np).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, skcolor.hsv2rgb(hsv_np), atol=1e-12)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_box_resize_is_pillow_exact(size: int) -> None:
    rng = np.random.default_rng(size)
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    t = torch.from_numpy(a).permute(2, 0, 1).double()
    factors = {c for table in GENERATOR_TABLES.values() for c in table["pixelate"]}
    for c in sorted(factors):
        small = int(size * c)
        ref_small = Image.fromarray(a).resize((small, small), Image.BOX)
        ref = np.asarray(ref_small.resize((size, size), Image.BOX))
        mine_small = pil_box_resize(t, small, small)
        assert np.array_equal(mine_small.permute(1, 2, 0).numpy(), np.asarray(ref_small)), c
        mine = pil_box_resize(mine_small, size, size)
        assert np.array_equal(mine.permute(1, 2, 0).numpy(), ref), c


def test_pixelate_and_jpeg_equal_cifar_generator(x32: torch.Tensor) -> None:
    """make_cifar_c.py: PIL BOX down/up and PIL JPEG at the table's quality, bit for bit."""
    from io import BytesIO
    for severity in C.SEVERITIES:
        c = GENERATOR_TABLES["cifar"]["pixelate"][severity - 1]
        q = GENERATOR_TABLES["cifar"]["jpeg_compression"][severity - 1]
        pix = C.corrupt(x32, "pixelate", severity, profile="cifar")
        jpg = C.corrupt(x32, "jpeg_compression", severity, profile="cifar")
        for i in range(len(x32)):
            img = Image.fromarray(x32[i].permute(1, 2, 0).numpy())
            ref = img.resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX)
            assert np.array_equal(pix[i].permute(1, 2, 0).numpy(), np.asarray(ref))
            buf = BytesIO()
            img.save(buf, "JPEG", quality=q)
            ref = np.asarray(Image.open(BytesIO(buf.getvalue())))
            assert np.array_equal(jpg[i].permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize("name", NOISE)
def test_noise_statistics(name: str) -> None:
    """Noise of the right size on a mid-grey image (no clipping at 0.5 for small c)."""
    x = torch.full((1, 3, 64, 64), 0.5)
    impl = IMPLEMENTATIONS[name]
    c = impl.param("cifar", 3)
    y = impl.fn(x, c, Streams.for_images(0, [0], name, 3))
    d = (y - x).flatten()
    if name == "gaussian_noise":
        assert abs(d.std().item() - c) < 0.1 * c
    elif name == "speckle_noise":
        assert abs(d.std().item() - 0.5 * c) < 0.1 * 0.5 * c
    elif name == "shot_noise":
        assert abs(d.var().item() - 0.5 / c) < 0.15 * 0.5 / c
    else:
        flipped = (d != 0).float().mean().item()
        assert abs(flipped - c) < 0.5 * c + 0.005


@pytest.mark.parametrize("c", [3, 60, 500])
def test_shot_noise_level_tables_are_poisson(c: int) -> None:
    """The inverse-CDF tables (8-bit inputs) sample ``to_uint8(Poisson(k / 255 * c) / c)``:
    per level, mean and variance match the exact distribution (scipy) and the general
    inverse-CDF path (an input just off the 8-bit grid)."""
    stats = pytest.importorskip("scipy.stats")
    levels = torch.tensor([0, 1, 37, 128, 254, 255], dtype=torch.uint8)
    n = 20000
    u = levels.repeat(n).view(1, 1, n, -1)
    impl = IMPLEMENTATIONS["shot_noise"]
    table = impl.fn_uint8(u, c, Streams.for_images(0, [0], "shot_noise", 1)).double().view(n, -1)
    general = to_uint8(impl.fn(u.float() / 255 + 2e-4 / 255, c, Streams.for_images(1, [0], "shot_noise", 1)))
    general = general.double().view(n, -1)
    k = torch.arange(int(c + 20 * c ** 0.5 + 30))
    out = to_uint8(k.float() / c).double()
    for j, level in enumerate(levels.tolist()):
        pmf = torch.from_numpy(stats.poisson.pmf(k.numpy(), level / 255 * c))
        mean, var = (pmf * out).sum().item(), (pmf * out ** 2).sum().item() - (pmf * out).sum().item() ** 2
        se = (var / n) ** 0.5 + 1e-9
        assert abs(table[:, j].mean().item() - mean) < 5 * se, (c, level)
        if level:  # the off-grid input of level 0 has a tiny positive rate
            assert abs(general[:, j].mean().item() - table[:, j].mean().item()) < 7 * se, (c, level)
        if var > 0:
            assert abs(table[:, j].var().item() / var - 1) < 0.1, (c, level)
        else:
            assert table[:, j].var().item() == 0, (c, level)


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_uint8_path_equals_float64_path(name: str) -> None:
    """The table-driven uint8 HSV round trip is bit-exact to the float64 one for every
    parameter of every profile, ties between channels and greys included."""
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 256, (4, 3, 48, 48), generator=g, dtype=torch.uint8)
    u[0, 1] = u[0, 0]  # red == green
    u[1, 2] = u[1, 1]  # green == blue
    u[2, :] = u[2, :1]  # greys
    u[3, 0] = u[3, 2]  # red == blue
    u[3, :, :8] = torch.randint(0, 4, (3, 8, 48), generator=g, dtype=torch.uint8) * 85
    impl = IMPLEMENTATIONS[name]
    for table in impl.params.values():
        for c in table:
            expected = to_uint8_exact(impl.fn(u.float() / 255, c, []))
            assert torch.equal(impl.fn_uint8(u, c, []), expected), c
