"""Unit tests of the blur, weather and geometric torch corruptions and their shared kernels.

The kernels are checked against the SciPy / OpenCV / imagecorruptions primitives they replace;
the corruptions for the contract (shape, range, per-image determinism across batch sizes),
severity ordering on the small profiles, and their tables against the generators' numbers.
The modules are imported directly so these tests do not depend on the public API.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

cv2 = pytest.importorskip("cv2")
ic = pytest.importorskip("imagecorruptions.corruptions")

import corruptions.ops.blur as blur  # noqa: E402
import corruptions.ops.geometric  # noqa: E402,F401  (registers elastic_transform)
import corruptions.ops.weather as weather  # noqa: E402
from corruptions.ops import kernels as K  # noqa: E402
from corruptions.ops.base import IMPLEMENTATIONS  # noqa: E402
from corruptions.philox import Streams  # noqa: E402

MINE = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
        "snow", "frost", "fog", "spatter", "elastic_transform")
SIZES = {"cifar": 32, "tinyimagenet": 64}


def make_images(n: int, size: int) -> torch.Tensor:
    """Smooth colour gradients + hard-edged checks + a fine sinusoidal texture, in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size),
                            indexing="ij")
    out = []
    for i in range(n):
        grad = torch.stack([xx, yy, 1 - xx * yy])
        edges = ((xx * (4 + i)).floor() + (yy * 3).floor()) % 2
        phase = torch.rand(3, 1, 1, generator=g) * 6.28
        texture = 0.5 + 0.5 * torch.sin(xx * size / 2.5 + yy * size / 4 + phase)
        out.append((0.45 * grad + 0.25 * edges + 0.2 * texture).clamp(0, 1))
    return torch.stack(out)


def gens(n: int, base: int = 0) -> Streams:
    """The streams of images 0..n-1 under seed ``base``."""
    return Streams.for_images(base, range(n), "test", 1)


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).random((23, 29, 3))


# ---------------------------------------------------------------- kernels vs SciPy / OpenCV


@pytest.mark.parametrize("mode", K.BORDER_MODES)
@pytest.mark.parametrize("sigma", [0.4, 2.0, 40.0])  # 40: kernel far wider than the image
def test_gaussian_matches_scipy(rgb: np.ndarray, mode: str, sigma: float) -> None:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    for truncate in (4.0, 3.0):
        ref = ndi.gaussian_filter(rgb, (sigma, sigma, 0), mode=mode, truncate=truncate)
        np.testing.assert_allclose(hwc(K.gaussian_blur(x, sigma, mode, truncate)[0]), ref,
                                   atol=1e-12)


@pytest.mark.parametrize("mode", K.BORDER_MODES)
def test_gaussian_banded_blocks_match_scipy(mode: str) -> None:
    """Lines of 100 / 90 px take the blocked band product (blocks of 32 output lines)."""
    img = np.random.default_rng(3).random((100, 90, 3))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    assert K._band_blocks(torch.eye(100)) is not None
    for sigma in (0.7, 2.0):
        ref = ndi.gaussian_filter(img, (sigma, sigma, 0), mode=mode, truncate=4.0)
        np.testing.assert_allclose(hwc(K.gaussian_blur(x, sigma, mode)[0]), ref, atol=1e-12)


def test_gaussian_sigma_zero_is_identity(rgb: np.ndarray) -> None:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    assert torch.equal(K.gaussian_blur(x, 0), x)


@pytest.mark.parametrize("radius,alias", [(3, 0.1), (10, 0.5), (0.3, 0.4), (2.5, 0.01)])
def test_disk_and_filter2d_match_cv2(rgb: np.ndarray, radius: float, alias: float) -> None:
    ref_kernel = ic.disk(radius, alias)
    np.testing.assert_allclose(K.disk_kernel(radius, alias).numpy(), ref_kernel, atol=1e-7)
    ref = np.stack([cv2.filter2D(rgb[..., d], -1, ref_kernel) for d in range(3)], axis=2)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    shared = K.filter2d(x, K.disk_kernel(radius, alias))
    per_image = K.filter2d(x, K.disk_kernel(radius, alias)[None])  # FFT path
    np.testing.assert_allclose(hwc(shared[0]), ref, atol=1e-6)
    np.testing.assert_allclose(hwc(per_image[0]), ref, atol=1e-6)


@pytest.mark.parametrize("radius,sigma,angle", [(10, 3, -40.0), (6, 1.5, 12.5), (20, 15, 44.0)])
def test_motion_kernel_matches_reference_shift_and_add(rgb: np.ndarray, radius: int,
                                                       sigma: float, angle: float) -> None:
    # (20, 15) on a 23 x 29 image also exercises the reference's early stop at the border
    ref = ic._motion_blur(rgb, radius=radius, sigma=sigma, angle=angle)
    kernel = K.motion_kernel(radius, sigma, [angle], *rgb.shape[:2])
    out = K.filter2d(torch.from_numpy(rgb).permute(2, 0, 1)[None], kernel, mode="nearest")
    np.testing.assert_allclose(hwc(out[0]), ref, atol=1e-7)


@pytest.mark.parametrize("zoom", [1.0, 1.03, 1.3, 2.25, 4.5])
def test_clipped_zoom_matches_scipy_zoom(zoom: float) -> None:
    img = np.random.default_rng(1).random((40, 40, 3)).astype(np.float32)
    ch = int(np.ceil(40 / zoom))
    top = (40 - ch) // 2
    ref = ndi.zoom(img[top:top + ch, top:top + ch], (zoom, zoom, 1), order=1)
    trim = (ref.shape[0] - 40) // 2
    ref = ref[trim:trim + 40, trim:trim + 40]
    out = K.clipped_zoom(torch.from_numpy(img).permute(2, 0, 1), zoom)
    np.testing.assert_allclose(hwc(out), ref, atol=1e-5)


@pytest.mark.parametrize("mode", K.BORDER_MODES)
def test_sample_bilinear_matches_map_coordinates(rgb: np.ndarray, mode: str) -> None:
    rng = np.random.default_rng(2)
    rows = rng.uniform(-30, 50, (1, 23, 29))
    cols = rng.uniform(-30, 60, (1, 23, 29))
    ref = np.stack([ndi.map_coordinates(rgb[..., d], [rows[0], cols[0]], order=1, mode=mode)
                    for d in range(3)])
    out = K.sample_bilinear(torch.from_numpy(rgb).permute(2, 0, 1)[None],
                            torch.from_numpy(rows), torch.from_numpy(cols), mode)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-10)


def test_plasma_fractal_matches_reference_given_same_uniforms(monkeypatch) -> None:
    streams = gens(1, 3)
    ours = K.plasma_fractal(32, 1.7, streams)[0].numpy()
    stream = streams.uniform((32 * 32,), 0)[0].double().numpy()
    used = [0]

    def uniform(low: float, high: float, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        u = stream[used[0]:used[0] + n].reshape(shape)
        used[0] += n
        return low + (high - low) * u

    monkeypatch.setattr(ic.np.random, "uniform", uniform)
    np.testing.assert_allclose(ours, ic.plasma_fractal(32, 1.7), atol=1e-5)


@pytest.mark.parametrize("h,w,delta", [(13, 11, 2), (9, 9, 1), (4, 4, 2)])
def test_glass_scramble_equals_sequential_loop(h: int, w: int, delta: int) -> None:
    """The vectorised scramble reproduces the reference loop exactly, copy semantics included."""
    g = torch.Generator().manual_seed(h * w)
    shifts = torch.randint(-delta, delta, (3, max(h - 2 * delta, 0), max(w - 2 * delta, 0), 2),
                           generator=g)
    got = blur._scramble_map(shifts, h, w, delta)
    for b in range(3):
        x = np.arange(h * w).reshape(h, w, 1).repeat(3, axis=2)
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                dx, dy = shifts[b, h - delta - hh, w - delta - ww].tolist()
                # the reference's tuple "swap" of NumPy views, verbatim in behaviour
                x[hh, ww], x[hh + dy, ww + dx] = x[hh + dy, ww + dx], x[hh, ww]
        assert np.array_equal(x[..., 0].ravel(), got[b].numpy())


# ---------------------------------------------------------------- the corruptions


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("profile", sorted(SIZES))
def test_contract_and_batch_independence(name: str, profile: str) -> None:
    impl = IMPLEMENTATIONS[name]
    x = make_images(3, SIZES[profile])
    for severity in (1, 5):
        c = impl.param(profile, severity)
        batch = impl.fn(x, c, gens(3, 10 * severity))
        assert batch.shape == x.shape and batch.dtype == torch.float32
        assert batch.min() >= 0 and batch.max() <= 1
        again = impl.fn(x, c, gens(3, 10 * severity))
        assert torch.equal(batch, again)
        # image 1 alone, with its own stream, equals its row in the batch
        alone = impl.fn(x[1:2], c, gens(3, 10 * severity)[1:2])
        torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("profile", sorted(SIZES))
def test_severity_increases_distance_from_clean(profile: str) -> None:
    """Mean |corrupted - clean| grows with severity where the generator's tables imply it.

    Not asserted, as the generators themselves are not monotone in this metric: frost (its image
    weight falls while the frost weight rises, so the two partly cancel), glass_blur (e.g. CIFAR
    severity 5 blurs the scrambled pixels more than severity 4), spatter (severities 1-3 are
    water, 4-5 mud, different effects) and elastic_transform (the small-image tables shrink the
    affine jitter as severity rises). For those, every severity must still change the image.
    """
    x = make_images(6, SIZES[profile])
    for name in MINE:
        impl = IMPLEMENTATIONS[name]
        dist = [float((impl.fn(x, impl.param(profile, s), gens(6, 100 * s)) - x).abs().mean())
                for s in range(1, 6)]
        if name in ("frost", "glass_blur", "spatter", "elastic_transform"):
            assert min(dist) > 0.2 / 255, (name, dist)
        else:
            # CIFAR motion severities 3 and 4 differ only in taps of negligible weight
            assert all(b > a - 0.5 / 255 for a, b in zip(dist, dist[1:])), (name, dist)
            assert dist[-1] > dist[0] + 2 / 255, (name, dist)


def test_deterministic_ops_match_imagecorruptions() -> None:
    """defocus, zoom and Gaussian blur equal the reference at 64 px with the ImageNet tables."""
    img = np.uint8(np.round(hwc(make_images(1, 64)[0]).astype(np.float64) * 255))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    for name in ("defocus_blur", "zoom_blur", "gaussian_blur"):
        impl = IMPLEMENTATIONS[name]
        for severity in (1, 3, 5):
            ref = getattr(ic, name)(img, severity) / 255
            mine = impl.fn(x, impl.param("imagenet", severity), gens(1))[0]
            assert np.abs(hwc(mine) - ref).max() < 1e-5, (name, severity)


def test_frost_textures_come_from_installed_package() -> None:
    import imagecorruptions

    assert weather._frost_dir().parent.samefile(imagecorruptions.__path__[0])
    cifar = weather.frost_textures(32, 32)
    assert len(cifar) == 5 and cifar[1].shape == (3, 63, 112)  # 315 x 560 shrunk by 0.2
    big = weather.frost_textures(224, 224)
    # 600 x 900 scaled by 1.1: ceil(900 * 1.1) is 991 in floating point, as in the reference
    assert len(big) == 6 and big[0].shape == (3, 660, 991)


def test_tables_are_the_generators() -> None:
    p = {name: IMPLEMENTATIONS[name].params for name in MINE}
    assert p["defocus_blur"]["cifar"][3] == (1, 0.2)
    assert p["defocus_blur"]["tinyimagenet"][3] == (2.5, 0.01)
    assert p["glass_blur"]["imagenet"][4] == (1.5, 4, 2)
    assert p["glass_blur"]["cifar"][0] == (0.05, 1, 1)
    assert p["motion_blur"]["tinyimagenet"][4] == (12, 3)
    assert p["motion_blur"]["cifar"][2] == (6, 2)
    assert p["zoom_blur"]["imagenet"][4] == tuple(np.arange(1, 1.31, 0.03))
    # np.arange(1, 1.11, 0.01) has 12 entries in floating point; the generators use it as is
    assert len(p["zoom_blur"]["cifar"][4]) == 26 and len(p["zoom_blur"]["imagenet"][0]) == 12
    assert p["gaussian_blur"]["tinyimagenet"] == (.5, .75, 1, 1.25, 1.5)
    assert p["gaussian_blur"]["cifar"] == (.4, .6, .7, .8, 1)
    assert p["snow"]["imagenet"][3] == (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65)
    assert p["snow"]["cifar"][4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)
    assert p["snow"]["tinyimagenet"][0][-1] == 0.8
    assert p["frost"]["cifar"] == ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
    assert p["frost"]["tinyimagenet"][4] == (0.7, 0.55)
    assert p["fog"]["imagenet"][2] == (2.5, 1.7)
    assert p["fog"]["cifar"][4] == (1.5, 1.75)
    assert p["spatter"]["imagenet"][4] == (0.67, 0.4, 1, 0.65, 1.5, 1)
    assert p["spatter"]["cifar"][3] == (0.65, 0.1, 0.7, 0.69, 0.6, 1)
    assert p["spatter"]["tinyimagenet"][4] == (0.65, 0.1, 0.5, 0.67, 0.6, 1)
    assert p["elastic_transform"]["imagenet"][0] == (488, 244 * 0.7, 244 * 0.1)
    assert p["elastic_transform"]["tinyimagenet"][1] == (3.2, 64 * 0.3, 64 * 0.06)
    assert p["elastic_transform"]["cifar"][4] == (3.2, 32 * 0.03, 32 * 0.03)


def _feed_reference(monkeypatch, size: int, seed: int) -> None:
    """Make imagecorruptions draw exactly the numbers our op draws from ``seed``."""
    streams = gens(1, seed)
    normal = streams.normal((size, size), 0)[0].double().numpy()
    angle = streams.uniform((), 1).item()
    monkeypatch.setattr(ic.np.random, "normal", lambda size, loc, scale: loc + scale * normal)
    monkeypatch.setattr(ic.np.random, "uniform", lambda low, high: low + (high - low) * angle)


@pytest.mark.parametrize("name,severities", [("snow", (1, 2)), ("spatter", (1, 2, 3, 4, 5))])
def test_random_ops_equal_reference_given_same_draws(monkeypatch, name: str,
                                                     severities: tuple[int, ...]) -> None:
    """With identical random numbers, snow and spatter reproduce imagecorruptions.

    48 px, where the zoomed snow layer needs no trimming.
    """
    from PIL import Image

    img = np.uint8(np.round(hwc(make_images(1, 48)[0]).astype(np.float64) * 255))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    impl = IMPLEMENTATIONS[name]
    for severity in severities:
        _feed_reference(monkeypatch, 48, severity)
        ref = np.asarray(getattr(ic, name)(Image.fromarray(img), severity)) / 255
        ours = impl.fn(x, impl.param("imagenet", severity), gens(1, severity))[0]
        assert np.abs(hwc(ours) - ref).mean() < 0.5 / 255, (name, severity)
        assert np.abs(hwc(ours) - ref).max() < 0.05, (name, severity)


def test_frost_equals_reference_given_same_draws(monkeypatch) -> None:
    """Above 64 px frost follows imagecorruptions: same texture, scaling and crop."""
    from PIL import Image

    img = np.uint8(np.round(hwc(make_images(1, 96)[0]).astype(np.float64) * 255))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    impl = IMPLEMENTATIONS["frost"]
    for severity in (1, 4):
        streams = gens(1, severity)
        idx = streams.integers(6, 0).item()
        tex = weather.frost_textures(96, 96)[idx]
        draws = iter([idx, (streams.words(1, 1).item() * (tex.shape[1] - 96)) >> 32,
                      (streams.words(1, 2).item() * (tex.shape[2] - 96)) >> 32])
        monkeypatch.setattr(ic.np.random, "randint", lambda *args: next(draws))
        ref = np.asarray(ic.frost(Image.fromarray(img), severity)) / 255
        ours = impl.fn(x, impl.param("imagenet", severity), gens(1, severity))[0]
        assert np.abs(hwc(ours) - ref).max() < 1e-5, severity


@pytest.mark.parametrize("severity", [2, 4])
def test_elastic_equals_generator_pipeline_given_same_draws(severity: int) -> None:
    """Hendrycks' elastic transform rebuilt from OpenCV/SciPy calls with our random numbers."""
    from skimage.filters import gaussian

    size = 64
    img = hwc(make_images(1, size)[0]).astype(np.float32)
    alpha, sigma, jitter = IMPLEMENTATIONS["elastic_transform"].param("tinyimagenet", severity)
    streams = gens(1, severity)
    ours = IMPLEMENTATIONS["elastic_transform"].fn(
        torch.from_numpy(img).permute(2, 0, 1)[None], (alpha, sigma, jitter), streams)[0]
    points = (streams.uniform((3, 2), 0)[0].double() * 2 - 1).numpy() * jitter
    fields = (streams.uniform((2, size, size), 1)[0] * 2 - 1).double().numpy()
    centre, side = np.float32((size, size)) // 2, size // 3
    src = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    warp = cv2.getAffineTransform(src, src + points.astype(np.float32))
    warped = cv2.warpAffine(img, warp, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    dx, dy = (gaussian(f, sigma, mode="reflect", truncate=3) * alpha for f in fields)
    yy, xx = np.mgrid[:size, :size]
    ref = np.stack([ndi.map_coordinates(warped[..., d], [yy + dy, xx + dx], order=1,
                                        mode="reflect") for d in range(3)], axis=2)
    # OpenCV's warpAffine interpolates at 1/32-pixel resolution; we interpolate exactly
    assert np.abs(hwc(ours) - ref).max() < 1e-3
