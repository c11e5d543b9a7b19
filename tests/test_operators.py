"""The dynamic operators against slow, obviously-correct references."""
from __future__ import annotations

import pytest
import torch
from _naive import naive_forward, per_example_conv, unfold_aggregate

from robustbench_bivol.models.operators import (
    Bivolution2d,
    CondConv2d,
    DynamicConv2d,
    Involution2d,
    involution_aggregate,
)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_condconv_equals_per_example_loop(stride, bias):
    m = CondConv2d(6, 10, stride, bias=bias)
    if bias:
        torch.nn.init.normal_(m.bias)
    x = torch.randn(3, 6, 9, 9)
    ref = per_example_conv(x, m.routing(x), m.weight, m.bias, stride)
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_dyconv_equals_per_example_loop_and_temperature(stride):
    m = DynamicConv2d(6, 10, stride, bias=True)
    torch.nn.init.normal_(m.bias)
    x = torch.randn(3, 6, 8, 8)
    for tau in (30.0, 1.0):
        m.set_temperature(tau)
        pi = m.attention_weights(x)
        torch.testing.assert_close(pi.sum(1), torch.ones(3))
        ref = per_example_conv(x, pi, m.weight, m.bias, stride)
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)
    m.set_temperature(1e4)  # high temperature -> uniform attention
    torch.testing.assert_close(m.attention_weights(x), torch.full((3, 4), 0.25), atol=1e-3, rtol=0)
    with pytest.raises(ValueError):
        m.set_temperature(0)


def test_set_temperature_reaches_dyconv_modules():
    from robustbench_bivol.models import create_model, set_temperature
    model = create_model("dyconv_resnet20")
    assert set_temperature(model, 10.0) == 18
    assert all(m.temperature == 10.0 for m in model.modules() if isinstance(m, DynamicConv2d))


@pytest.mark.parametrize("k,stride,size", [(7, 1, 8), (3, 1, 5), (7, 2, 8), (3, 2, 9)])
def test_involution_equals_unfold_reference(k, stride, size):
    m = Involution2d(32, stride=stride, kernel_size=k)
    torch.nn.init.normal_(m.span.weight)  # position-dependent kernels (the init makes them constant)
    x = torch.randn(2, 32, size, size, requires_grad=True)
    kernels = m.generate_kernels(x)
    assert kernels.shape[:3] == (2, 2, k * k)  # G = 32 / 16
    out = m(x)
    ref = unfold_aggregate(x, kernels, k, stride)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g1 = torch.autograd.grad(out.sum(), x)[0]
    g2 = torch.autograd.grad(unfold_aggregate(x, m.generate_kernels(x), k, stride).sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_involution_aggregate_rejects_mismatched_kernels():
    with pytest.raises(ValueError):
        involution_aggregate(torch.randn(1, 16, 8, 8), torch.randn(1, 1, 9, 5, 5), 3)


def test_involution_channel_change_uses_projection():
    m = Involution2d(16, 32, stride=2, kernel_size=3)
    assert m.proj is not None
    assert m(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_bivolution_without_static_and_sakg_is_involution():
    inv = Involution2d(32, stride=2, kernel_size=7).eval()
    bi = Bivolution2d(32, stride=2, kernel_size=7, static_branch=False, sakg=False).eval()
    torch.nn.init.normal_(inv.span.weight)
    bi.dynamic.load_state_dict(inv.state_dict())  # same keys: bi.dynamic IS an involution
    assert set(bi.state_dict()) == {f"dynamic.{k}" for k in inv.state_dict()}
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(bi(x), inv(x))


def test_bivolution_is_static_plus_gated_dynamic():
    bi = Bivolution2d(16, 32, stride=2, kernel_size=3).eval()
    torch.nn.init.normal_(bi.dynamic.span.weight)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(bi(x), bi.static(x))  # the gate starts closed: static conv alone
    torch.nn.init.uniform_(bi.dynamic_bn.weight, 0.5, 1.5)
    torch.nn.init.normal_(bi.dynamic_bn.running_mean)
    expected = bi.static(x) + bi.dynamic_bn(bi.dynamic(x))
    assert not torch.allclose(expected, bi.static(x))
    torch.testing.assert_close(bi(x), expected)
    torch.testing.assert_close(bi(x), naive_forward(bi, x), rtol=1e-4, atol=1e-5)  # the benchmark's reference
    assert bi(x).shape == (2, 32, 4, 4)


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_bivolution_ablation_parameter_counts():
    c, k = 64, 7
    full = _params(Bivolution2d(c, kernel_size=k))
    no_static = _params(Bivolution2d(c, kernel_size=k, static_branch=False))
    no_sakg = _params(Bivolution2d(c, kernel_size=k, sakg=False))
    plain = _params(Bivolution2d(c, kernel_size=k, static_branch=False, sakg=False))
    static = c * c * 9 + 2 * c  # the static conv and the dynamic branch's gate (BN scale, shift)
    sakg = c * 9 + (c * (c // 4) + c // 4)  # depth-wise 3x3 + channel FC (weight, bias)
    assert full - no_static == static
    assert full - no_sakg == sakg
    assert plain == _params(Involution2d(c, kernel_size=k))
    dw = _params(Bivolution2d(c, kernel_size=k, static_groups="depthwise"))
    assert dw - no_static == c * 9 + 2 * c


def test_operators_backward_and_shapes():
    x = torch.randn(2, 16, 8, 8)
    for op in (CondConv2d(16, 32, 2), DynamicConv2d(16, 32, 2), Involution2d(16, 32, 2, kernel_size=3),
               Bivolution2d(16, 32, 2, kernel_size=3)):
        y = op(x)
        assert y.shape == (2, 32, 4, 4)
        y.square().mean().backward()
        assert all(p.grad is not None for p in op.parameters()), type(op).__name__


def _randomise_generator(m):
    """Position-dependent kernels and non-trivial BN running statistics."""
    torch.nn.init.normal_(m.span.weight)
    m.bn.running_mean.normal_()
    m.bn.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("sakg", [False, True])
@pytest.mark.parametrize("k,stride,size", [(7, 1, 16), (3, 1, 13), (7, 2, 17), (3, 2, 16)])
def test_involution_chunked_forward_equals_unchunked(k, stride, size, sakg):
    bi = Bivolution2d(32, stride=stride, kernel_size=k, sakg=sakg).eval()  # sakg=False: plain involution
    m = bi.dynamic
    _randomise_generator(m)
    m.chunk_min_bytes = 0  # these maps are far below the default size threshold
    ho = (size - 1) // stride + 1
    assert m.chunk_rows(ho) < ho  # the default budget chunks these shapes
    x = torch.randn(2, 32, size, size, requires_grad=True)
    outs, grads = {}, {}
    for budget in (None, Involution2d.chunk_budget, 0.05):  # unchunked, default chunks, 1-row chunks
        m.chunk_budget = budget
        with torch.no_grad():
            outs[budget, "no_grad"] = bi(x)
        y = bi(x)  # eval mode with grad: checkpointed chunks
        outs[budget, "grad"] = y.detach()
        grads[budget] = torch.autograd.grad(y.square().sum(), [x, *m.parameters()])
    assert m.chunk_rows(ho) == 1
    ref = outs[None, "no_grad"]
    for key, out in outs.items():
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=str(key))
    for budget, g in grads.items():
        for a, b in zip(g, grads[None], strict=True):
            # sums of many large terms (random span weights): tolerance relative to the gradient's scale
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item(), msg=str(budget))


def test_involution_chunks_only_large_kernel_maps(monkeypatch):
    m = Involution2d(32, kernel_size=7).eval()
    calls = []
    original = Involution2d._forward_chunked
    monkeypatch.setattr(Involution2d, "_forward_chunked", lambda self, *a: calls.append(a) or original(self, *a))
    x = torch.randn(1, 32, 16, 16)  # kernel map: 2 groups x 49 taps x 16 x 16 x 4 bytes = 100 KB
    with torch.no_grad():
        m(x)
        assert not calls
        m.chunk_min_bytes = 2 * 49 * 16 * 16 * 4  # exactly this map's size: chunked
        m(x)
    assert len(calls) == 1


def test_involution_off_the_cpu_keeps_whole_kernel_maps_only_without_grad(monkeypatch):
    """On a GPU chunks are launch-bound (H200: 7-13 ms vs 1.1-2.2 ms whole), so inference keeps
    maps under ``chunk_min_bytes_gpu`` whole; under grad, and on the CPU, they are chunked. The
    meta device stands in for a GPU: any device but the CPU follows the GPU rule."""
    calls = []
    original = Involution2d._forward_chunked
    monkeypatch.setattr(Involution2d, "_forward_chunked", lambda self, *a: calls.append(a) or original(self, *a))
    shape = (32, 64, 56, 56)  # kernel map: 32 x 4 groups x 49 taps x 56 x 56 x 4 bytes = 79 MB
    for device, grad, chunked in (("meta", False, False), ("meta", True, True), ("cpu", False, True)):
        m = Involution2d(64, kernel_size=7).eval().to(device)
        calls.clear()
        x = torch.zeros(shape, device=device) if device == "meta" else torch.zeros(1, 64, 56, 56)
        if device == "cpu":
            m.chunk_min_bytes = 0  # a small CPU input, chunked like the large one would be
        with torch.set_grad_enabled(grad):
            assert m(x.requires_grad_(grad)).shape == x.shape
        assert bool(calls) == chunked, (device, grad)


def test_involution_training_mode_is_unchunked():
    m = Involution2d(32, kernel_size=7)
    _randomise_generator(m)
    x = torch.randn(2, 32, 16, 16)
    ref = unfold_aggregate(x, m.generate_kernels(x), 7, 1)
    m.bn.reset_running_stats()
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)  # whole-map batch statistics
    assert m.bn.num_batches_tracked == 1
