"""Counter-based random streams: Philox4x32-10 against the published answers, the C kernel against
the torch ops (same words; float transforms within float32 rounding), batch independence, the
transforms' distributions, the build's fallbacks and cache."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import corruptions as C
from corruptions import philox
from corruptions.philox import Streams

#: Known-answer vectors of Philox4x32-10 from Random123 (kat_vectors): counter, key -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.fixture
def c_kernel():
    if philox.kernel() is None:
        pytest.skip("no C compiler here: the torch ops are the only backend")
    return philox.kernel()


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_torch_philox_matches_random123(counter, key, expected):
    out = philox.philox4x32([torch.tensor([c]) for c in counter], [torch.tensor([k]) for k in key])
    assert [int(w) for w in out] == list(expected)


def test_c_kernel_matches_random123(c_kernel):
    # counter (0, 0, stream 0, 0) with key (k0, k1): the first KAT; the C kernel fixes c3 = 0
    keys, out = torch.zeros(1, 2, dtype=torch.int64), torch.empty(1, 4, dtype=torch.int64)
    c_kernel.philox4x32(keys.data_ptr(), 1, 4, 0, 0, out.data_ptr(), 1)
    assert out[0].tolist() == list(KAT[0][2])


def _both(monkeypatch, draw):
    monkeypatch.setenv("CORRUPTIONS_NATIVE", "auto")
    native = draw()
    monkeypatch.setenv("CORRUPTIONS_NATIVE", "0")
    return native, draw()


@pytest.mark.parametrize("n", [1, 3, 4, 7, 1023, 1024, 1029, 4099])
@pytest.mark.parametrize("stream", [0, 5])
def test_c_kernel_equals_torch_ops(monkeypatch, c_kernel, n, stream):
    streams = Streams.for_images(7, [0, 3, 10**9], "gaussian_noise", 2)
    words = _both(monkeypatch, lambda: streams.words(n, stream))
    assert torch.equal(*words) and words[0].min() >= 0 and words[0].max() < 2 ** 32
    uniform = _both(monkeypatch, lambda: streams.uniform((n,), stream))
    assert torch.equal(*uniform)
    normal = _both(monkeypatch, lambda: streams.normal((n,), stream))
    torch.testing.assert_close(normal[0], normal[1], atol=2e-6, rtol=2e-6)  # libm vs torch's sin/cos/log


def test_threads_do_not_change_the_words(c_kernel):
    streams = Streams.for_images(0, range(5), "snow", 3)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = streams.normal((3, 17, 19), 2)
        torch.set_num_threads(2)
        assert torch.equal(streams.normal((3, 17, 19), 2), one)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("backend", ["auto", "0"])
def test_an_image_draws_the_same_alone_as_in_any_batch(monkeypatch, backend):
    monkeypatch.setenv("CORRUPTIONS_NATIVE", backend)
    batch = Streams.for_images(1, [4, 9, 2], "fog", 5)
    alone = Streams.for_images(1, [9], "fog", 5)
    assert torch.equal(batch.words(50, 1)[1:2], alone.words(50, 1))
    assert torch.equal(batch[1:2].uniform((5, 10), 0), alone.uniform((5, 10), 0))
    # a longer draw starts with the shorter one; other streams and keys differ
    assert torch.equal(alone.words(120, 1)[:, :50], alone.words(50, 1))
    assert not torch.equal(alone.words(50, 2), alone.words(50, 1))
    assert not torch.equal(Streams.for_images(2, [9], "fog", 5).words(50, 1), alone.words(50, 1))


@pytest.mark.parametrize("backend", ["auto", "0"])
def test_transforms_have_their_distributions(monkeypatch, backend):
    monkeypatch.setenv("CORRUPTIONS_NATIVE", backend)
    streams = Streams.for_images(0, range(4), "test", 1)
    n = 4 * 50_000
    u = streams.uniform((50_000,), 0).double().flatten()
    assert u.min() >= 0 and u.max() < 1 and torch.equal(u * 2 ** 24, torch.floor(u * 2 ** 24))  # 24 bits
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n) and abs(u.var() - 1 / 12) < 0.01 / 12
    z = streams.normal((50_000,), 1).double().flatten()
    assert abs(z.mean()) < 4 / math.sqrt(n) and abs(z.var() - 1) < 0.02
    assert abs((z.abs() < 1).double().mean() - 0.682689) < 0.005 and z.abs().max() <= 5.8
    k = Streams.for_images(0, range(20_000), "test", 1).integers(6, 0)
    counts = torch.bincount(k, minlength=6).double()
    assert k.min() >= 0 and k.max() < 6 and ((counts - 20_000 / 6) ** 2 / (20_000 / 6)).sum() < 25  # chi2(5)


RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur",
          "snow", "frost", "fog", "spatter", "elastic_transform"]


@pytest.mark.parametrize("name", RANDOM)
def test_corruptions_agree_across_backends_within_one_grey_level(monkeypatch, c_kernel, name):
    """What a GPU run sees: the same integers, float transforms rounded differently."""
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    native, ops = _both(monkeypatch, lambda: C.corrupt(images, name, 3, seed=1, indices=[5, 6, 7]))
    assert (native.int() - ops.int()).abs().max() <= 1


def test_missing_compiler_falls_back_with_one_warning_or_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("BIVOL_EXT_DIR", str(tmp_path))
    philox.kernel.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            words = Streams.for_images(0, [1], "test", 1).words(8, 0)
            Streams.for_images(0, [1], "test", 1).words(8, 0)
        assert len(caught) == 1 and "Philox C kernel unavailable" in str(caught[0].message)
        monkeypatch.setenv("CORRUPTIONS_NATIVE", "0")
        assert torch.equal(words, Streams.for_images(0, [1], "test", 1).words(8, 0))
        monkeypatch.setenv("CORRUPTIONS_NATIVE", "1")
        philox.kernel.cache_clear()
        with pytest.raises(RuntimeError, match="CORRUPTIONS_NATIVE=1"):
            Streams.for_images(0, [1], "test", 1).words(8, 0)
    finally:
        philox.kernel.cache_clear()


def test_build_is_cached_and_reused(monkeypatch, tmp_path, c_kernel):
    monkeypatch.setenv("BIVOL_EXT_DIR", str(tmp_path))
    philox.kernel.cache_clear()
    try:
        assert philox.kernel() is not None
        (library,) = tmp_path.glob("corruptions_philox_*.so")
        built = library.stat().st_mtime_ns
        philox.kernel.cache_clear()
        assert philox.kernel() is not None and library.stat().st_mtime_ns == built
        assert list(tmp_path.glob("*.tmp")) == []
    finally:
        philox.kernel.cache_clear()
