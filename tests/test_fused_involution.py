"""The fused CPU involution aggregation equals the pure-torch path and the unfold reference."""
from __future__ import annotations

import pytest
import torch
from _naive import unfold_aggregate

from corruptions import native
from robustbench_bivol.data import BuiltinShapes
from robustbench_bivol.models import create_model, fused_involution
from robustbench_bivol.models.operators import Bivolution2d, Involution2d, _aggregate_torch, involution_aggregate
from robustbench_bivol.weights import manifest


@pytest.fixture(scope="module", autouse=True)
def _extension():
    if fused_involution.extension() is None:
        pytest.skip("the fused involution kernel cannot be built here")


def _inputs(b: int, c: int, h: int, w: int, gc: int, k: int, stride: int, dtype=torch.float64,
            channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(b, c, h, w, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    kernels = torch.randn(b, c // gc, k * k, ho, wo, dtype=dtype)
    return x.requires_grad_(), kernels.requires_grad_()


def _grads(out: torch.Tensor, x: torch.Tensor, kernels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients for one fixed grad_output, rounded to bf16 so that every dtype sees the same values."""
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.autograd.grad(out, (x, kernels), grad_out.bfloat16().to(out.dtype))


@pytest.mark.parametrize("k", [3, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("gc,c", [(4, 16), (16, 32), (8, 8), (1, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_and_gradients_equal_the_reference(k, stride, gc, c, channels_last):
    x, kernels = _inputs(2, c, 11, 9, gc, k, stride, channels_last=channels_last)  # odd, non-square
    out = involution_aggregate(x, kernels, k, stride)
    ref = unfold_aggregate(x, kernels, k, stride)
    torch.testing.assert_close(out, ref)
    for got, want in zip(_grads(out, x, kernels), _grads(ref, x, kernels), strict=True):
        torch.testing.assert_close(got, want)


def test_two_threads_split_the_work_without_changing_results():
    """Tasks over (example, group, row block) share no output element: the same result on 2 threads."""
    x, kernels = _inputs(3, 32, 13, 11, 4, 3, 1)
    one = involution_aggregate(x, kernels, 3)
    grads_one = _grads(one, x, kernels)
    torch.set_num_threads(2)  # the autouse fixture restores one thread
    two = involution_aggregate(x, kernels, 3)
    torch.testing.assert_close(two, one, rtol=0, atol=0)
    for got, want in zip(_grads(two, x, kernels), grads_one, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("k,stride,size", [(3, 1, 5), (3, 2, 6), (7, 1, 4), (7, 2, 5)])
def test_gradcheck_float64(k, stride, size):
    x, kernels = _inputs(1, 4, size, size + 1, 2, k, stride)
    assert torch.autograd.gradcheck(lambda a, b: involution_aggregate(a, b, k, stride), (x, kernels))


def test_dilation_and_asymmetric_padding_equal_the_torch_path():
    """The row-band calls of Involution2d's chunks: padding only where the band meets the border."""
    x, kernels = _inputs(2, 8, 7, 10, 4, 3, 1)
    kernels = kernels.detach()[..., :5, :].requires_grad_()  # 5 output rows starting at input row -2
    for dilation, pad_top, pad_left in [(1, 0, 1), (2, 2, 2), (1, 1, 0)]:
        out = fused_involution.aggregate(x, kernels, 3, 1, dilation, pad_top, pad_left)
        ref = _aggregate_torch(x, kernels, 3, 1, dilation, pad_top, pad_left)
        torch.testing.assert_close(out, ref)
        for got, want in zip(_grads(out, x, kernels), _grads(ref, x, kernels), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("stride,dilation,pad_top,pad_left", [(2, 2, 2, 2), (3, 1, 1, 0), (3, 2, 0, 3)])
def test_strides_above_two_and_dilated_strides_equal_the_torch_path(stride, dilation, pad_top, pad_left):
    """The strided input gradient (one gather row per residue of the stride) beyond stride 2 and
    with dilation, where no model of ours goes."""
    x, _ = _inputs(2, 8, 11, 13, 4, 3, 1)
    ho, wo = (11 + 2 * pad_top - dilation * 2 - 1) // stride + 1, (13 + 2 * pad_left - dilation * 2 - 1) // stride + 1
    kernels = torch.randn(2, 2, 9, ho, wo, dtype=torch.float64, requires_grad=True)
    out = fused_involution.aggregate(x, kernels, 3, stride, dilation, pad_top, pad_left)
    ref = _aggregate_torch(x, kernels, 3, stride, dilation, pad_top, pad_left)
    torch.testing.assert_close(out, ref)
    for got, want in zip(_grads(out, x, kernels), _grads(ref, x, kernels), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("k,stride,gc", [(3, 1, 4), (3, 2, 16), (7, 1, 16)])
def test_bfloat16_within_tolerance(k, stride, gc):
    """bf16 in, fp32 accumulation, bf16 out: within bf16 rounding of the float64 result (relative
    2**-8 per element, checked as atol = rtol = 2e-2 against outputs and gradients of order 1-10)."""
    x, kernels = _inputs(2, 32, 13, 13, gc, k, stride, dtype=torch.bfloat16)
    out = involution_aggregate(x, kernels, k, stride)
    assert out.dtype == torch.bfloat16
    x64, k64 = (t.detach().double().requires_grad_() for t in (x, kernels))
    ref = unfold_aggregate(x64, k64, k, stride)
    scale = ref.abs().max()
    torch.testing.assert_close(out.double() / scale, ref / scale, atol=2e-2, rtol=2e-2)
    for got, want in zip(_grads(out, x, kernels), _grads(ref, x64, k64), strict=True):
        s = want.abs().max()
        torch.testing.assert_close(got.double() / s, want / s, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("c,g,h,w,k,pad_top,pad_left,ho,wo", [
    (16, 1, 32, 32, 3, 1, 1, 32, 32),  # bivol_resnet20's first stage (AVX512-BF16: 16-lane vectors)
    (32, 2, 16, 16, 3, 1, 1, 16, 16),  # its second (two rows packed in a vector)
    (64, 4, 8, 8, 3, 1, 1, 8, 8),      # its third (four rows packed in a vector)
    (16, 2, 4, 4, 7, 3, 3, 4, 4),      # four rows packed (8-lane vectors), taps past both ends of a row
    (16, 2, 8, 8, 3, 1, 2, 8, 8),      # packed rows, asymmetric padding
    (8, 1, 72, 8, 5, 2, 2, 72, 8),     # packed rows in two row blocks (64 + 8)
    (8, 2, 7, 9, 3, 1, 1, 7, 9),       # partial vectors
    (12, 3, 5, 17, 7, 3, 3, 5, 17),    # K = 7
    (6, 3, 10, 33, 5, 2, 2, 10, 33),   # odd channels per group (grad_kernels pairs channels)
    (4, 1, 8, 8, 2, 0, 0, 7, 7),       # even K
    (3, 3, 9, 9, 3, 1, 1, 9, 9),       # one channel per group
    (10, 2, 12, 40, 3, 0, 1, 10, 40),  # a row band of a larger input: asymmetric padding
])
def test_bfloat16_rounds_the_float64_result_of_the_same_values(c, g, h, w, k, pad_top, pad_left, ho, wo):
    """Stride 1, bf16: the float64 result of the same bf16 values, rounded once (2**-8 relative),
    for outputs, both gradients and gradients added to a prior one: the AVX512-BF16 kernels where
    the CPU has them, the float path elsewhere."""
    ext = fused_involution.extension()
    gen = torch.Generator().manual_seed(0)
    x, kernels = torch.randn(2, c, h, w, generator=gen), torch.randn(2, g, k * k, ho, wo, generator=gen)
    grad_out, prior = torch.randn(2, c, ho, wo, generator=gen), torch.randn(2, c, h, w, generator=gen)
    x, kernels, grad_out, prior = (t.bfloat16() for t in (x, kernels, grad_out, prior))
    geometry = (k, 1, 1, pad_top, pad_left)
    out, stats = ext.forward_stats(x, kernels, *geometry, True)
    gx, gk = ext.backward(grad_out, x, kernels, *geometry, True, True)
    gx_prior, _ = ext.backward_prior(grad_out, x, kernels, *geometry, True, False, prior.clone())
    ref = ext.forward(x.double(), kernels.double(), *geometry)
    rx, rk = ext.backward(grad_out.double(), x.double(), kernels.double(), *geometry, True, True)

    def close(got: torch.Tensor, want: torch.Tensor) -> None:
        torch.testing.assert_close(got.double(), want, rtol=2 ** -8, atol=1e-5 * want.abs().max().item())

    for got, want in [(out, ref), (gx, rx), (gk, rk), (gx_prior, rx + prior.double())]:
        close(got, want)
    stored = out.double()
    close(stats, torch.stack([stored.sum((0, 2, 3)), (stored * stored).sum((0, 2, 3))], 1))


def test_autocast_mix_of_float32_and_bfloat16_promotes_like_the_torch_path():
    x, kernels = _inputs(2, 16, 8, 8, 4, 3, 1, dtype=torch.float32)
    kb = kernels.detach().bfloat16()
    out = involution_aggregate(x.detach(), kb, 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _aggregate_torch(x.detach(), kb, 3, 1, 1, 1, 1))


@pytest.mark.parametrize("module", [Involution2d(32, stride=2, kernel_size=7),
                                    Bivolution2d(32, kernel_size=3, group_channels=4)])
def test_chunked_eval_forward_and_backward_equal_the_torch_path(module, monkeypatch):
    for m in module.modules():
        if isinstance(m, Involution2d):
            torch.nn.init.normal_(m.span.weight, std=0.1)
            m.chunk_min_bytes = 0  # row chunks even at this size
            m.chunk_budget = 0.1
    module.eval()
    x = torch.randn(2, 32, 15, 15, requires_grad=True)
    fused = module(x)
    (grad_fused,) = torch.autograd.grad(fused.square().sum(), x)
    monkeypatch.setenv("BIVOL_FUSED", "0")
    torch_path = module(x)
    (grad_torch,) = torch.autograd.grad(torch_path.square().sum(), x)
    torch.testing.assert_close(fused, torch_path)
    torch.testing.assert_close(grad_fused, grad_torch)


def test_override_off_uses_the_torch_path(monkeypatch):
    monkeypatch.setenv("BIVOL_FUSED", "0")
    monkeypatch.setattr(fused_involution, "aggregate", None)  # calling it would fail
    x, kernels = _inputs(1, 4, 5, 5, 4, 3, 1)
    torch.testing.assert_close(involution_aggregate(x, kernels, 3), unfold_aggregate(x, kernels, 3, 1))


def test_override_on_refuses_what_it_cannot_fuse(monkeypatch):
    monkeypatch.setenv("BIVOL_FUSED", "1")
    x, kernels = _inputs(1, 4, 5, 5, 4, 3, 1, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="no fused involution kernel"):
        involution_aggregate(x, kernels, 3)
    monkeypatch.setenv("BIVOL_FUSED", "sometimes")
    with pytest.raises(ValueError, match="BIVOL_FUSED"):
        involution_aggregate(x, kernels, 3)


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    def no_compiler():
        raise RuntimeError("no C++ compiler (c++) on PATH\nmore detail")

    monkeypatch.setattr(fused_involution, "_build", no_compiler)
    fused_involution.extension.cache_clear()
    try:
        x, kernels = _inputs(1, 4, 5, 5, 4, 3, 1)
        with pytest.warns(RuntimeWarning, match=r"unavailable \(no C\+\+ compiler \(c\+\+\) on PATH\)") as caught:
            out = involution_aggregate(x, kernels, 3)
            involution_aggregate(x, kernels, 3)
        assert len(caught) == 1
        torch.testing.assert_close(out, unfold_aggregate(x, kernels, 3, 1))
        monkeypatch.setenv("BIVOL_FUSED", "1")
        fused_involution.extension.cache_clear()
        with pytest.raises(RuntimeError, match="BIVOL_FUSED=1"):
            involution_aggregate(x, kernels, 3)
    finally:
        fused_involution.extension.cache_clear()


def test_build_name_hashes_source_flags_and_cpu(monkeypatch):
    name = fused_involution.build_name()
    monkeypatch.setattr(native, "cpu_signature", lambda: "another CPU")
    assert fused_involution.build_name() != name
    monkeypatch.setattr(fused_involution, "CFLAGS", ["-O2"])
    assert fused_involution.build_name() != name


def _bundled_dynamic_models() -> list[tuple[str, str]]:
    return [(arch, tag) for arch, tags in manifest().items() if arch.startswith(("involution", "bivol"))
            for tag in tags]


@pytest.mark.slow
@pytest.mark.parametrize("arch,tag", _bundled_dynamic_models())
def test_bundled_model_predictions_unchanged(arch, tag, monkeypatch):
    """Every bundled involution / Bi-volution model predicts the same classes on the built-in
    test split (1 000 images) with the fused kernel as with the torch path."""
    from robustbench_bivol.weights import load_weights

    _, meta = load_weights(tag, arch)
    model = create_model(arch, weights=tag).eval()
    images = torch.stack([img for img, _ in BuiltinShapes("test", size=meta.input_size)]).float() / 255
    x = (images - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        fused = model(x).argmax(1)
        monkeypatch.setenv("BIVOL_FUSED", "0")
        reference = model(x).argmax(1)
    changed = int((fused != reference).sum())
    assert changed == 0, f"{changed} of {len(x)} predictions changed"
