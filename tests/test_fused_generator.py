"""The fused CPU kernel generator (SAKG depth-wise 3x3 + 1x1, ReLU + span 1x1) equals the torch modules."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_bivol.models import create_model, fused_generator, fused_involution
from robustbench_bivol.models.operators import Involution2d
from robustbench_bivol.models.profile import count_macs


@pytest.fixture(scope="module", autouse=True)
def _extension():
    if fused_involution.extension() is None:
        pytest.skip("the fused kernels cannot be built here")


@pytest.fixture(autouse=True)
def _fuse_every_shape(request, monkeypatch):
    """Small shapes keep the tests fast; by default they would go to oneDNN (see ``_pays``)."""
    if "keep_thresholds" not in request.keywords:
        monkeypatch.setattr(fused_generator, "MIN_PIXELS", 0)
        monkeypatch.setattr(fused_generator, "MAX_SEPARABLE_CHANNELS", 1 << 30)
        monkeypatch.setattr(fused_generator, "MAX_POINTWISE_MACS", 1 << 30)
        monkeypatch.setattr(fused_generator, "SMALL_SEPARABLE_CHANNELS", 1 << 30)
        monkeypatch.setattr(fused_generator, "SMALL_POINTWISE_MACS", 1 << 30)


def _separable_modules(c: int, r: int, depthwise: bool, dtype=torch.float64) -> tuple[nn.Module | None, nn.Conv2d]:
    dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False).to(dtype) if depthwise else None
    return dw, nn.Conv2d(c, r, 1, bias=False).to(dtype)


@pytest.mark.parametrize("depthwise", [True, False])
@pytest.mark.parametrize("c,r,h,w", [(16, 4, 11, 9), (8, 2, 5, 17), (3, 5, 1, 1), (32, 8, 8, 8)])
def test_separable_gradcheck(depthwise, c, r, h, w):
    dw, pw = _separable_modules(c, r, depthwise)
    x = torch.randn(2, c, h, w, dtype=torch.float64, requires_grad=True)
    wd = None if dw is None else dw.weight.detach().reshape(c, 9).requires_grad_()
    wp = pw.weight.detach().reshape(r, c).requires_grad_()
    inputs = (x, wd, wp)
    assert torch.autograd.gradcheck(lambda *a: fused_generator._Separable.apply(*a), inputs)


@pytest.mark.parametrize("c,o,h,w", [(4, 9, 11, 9), (16, 36, 3, 30), (1, 1, 1, 1), (8, 288, 4, 4)])
def test_relu_pointwise_gradcheck(c, o, h, w):
    n = torch.randn(2, c, h, w, dtype=torch.float64)
    n[n.abs() < 1e-3] = 0.5  # ReLU has no derivative at 0: keep finite differences away from it
    weight = torch.randn(o, c, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(o, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: fused_generator._ReluPointwise.apply(*a),
                                    (n.requires_grad_(), weight, bias))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("c,r,h,w", [(16, 4, 11, 9), (8, 2, 5, 17), (32, 8, 8, 8)])
def test_folded_batchnorm_options(dtype, c, r, h, w):
    """The passes' batch-norm options (fused_training.py folds the generator's BN with them): r's
    sums as stored; the ReLU + span pass on scale * r + shift, and the sums of grad n as stored
    and of grad n * r; the separable backward on a * grad + q * r + c. Against torch on the same
    stored values, computed in float64."""
    ext = fused_involution.extension()
    opmath = fused_generator.opmath_dtype(dtype)
    b, o = 3, 9
    x = torch.randn(b, c, h, w).to(dtype)
    wd, wr = torch.randn(c, 9, dtype=opmath), torch.randn(r, c, dtype=opmath)
    r_out, _, r_sums = ext.separable_forward(x, wd, wr, False, True)
    rd = r_out.double()
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(r_sums, torch.stack([rd.sum((2, 3)), (rd * rd).sum((2, 3))], -1), **tol)

    scale, shift = torch.randn(r, dtype=opmath), torch.randn(b, r, dtype=opmath)
    ws, bs = torch.randn(o, r, dtype=opmath), torch.randn(o, dtype=opmath)
    n = (scale.double()[:, None, None] * rd + shift.double()[:, :, None, None]).clamp_min(0)
    kernels = ext.relu_pointwise_forward(r_out, ws, bs, scale, shift)
    want = torch.einsum("oc,bchw->bohw", ws.double(), n) + bs.double()[:, None, None]
    torch.testing.assert_close(kernels.double(), want, **(tol if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)))

    gk = torch.randn(b, o, h, w).to(dtype)
    gn, _, _, gn_sums = ext.relu_pointwise_backward(gk, r_out, ws, True, scale, shift)
    gnd = gn.double()
    torch.testing.assert_close(gn_sums, torch.stack([gnd.sum((2, 3)), (gnd * rd).sum((2, 3))], -1), **tol)

    a, q, cc = torch.randn(r, dtype=opmath), torch.randn(r, dtype=opmath), torch.randn(b, r, dtype=opmath)
    g_r = (a.double()[:, None, None] * gnd + q.double()[:, None, None] * rd + cc.double()[:, :, None, None]).to(dtype)
    got = ext.separable_backward(gn, x, wd, wr, True, None, None, [r_out, a, q, cc])
    want = ext.separable_backward(g_r.contiguous(), x, wd, wr, True, None, None, None)
    for g, w_ in zip(got, want, strict=True):  # bf16: want's r gradient was rounded to bf16, got's is not
        if dtype == torch.float64:
            torch.testing.assert_close(g, w_, **tol)
        else:
            assert ((g.double() - w_.double()).norm() / w_.double().norm()).item() < 1e-2


def _generator_outputs_and_grads(module: Involution2d, x: torch.Tensor) -> list[torch.Tensor]:
    kernels = module.generate_kernels(x)
    grad = torch.randn(kernels.shape, generator=torch.Generator().manual_seed(3)).to(kernels.dtype)
    params = [p for p in module.parameters() if p.requires_grad]
    return [kernels, *torch.autograd.grad(kernels, [x, *params], grad)]


def _involution(c: int, stride: int, sakg: bool, group_channels: int = 4) -> Involution2d:
    module = Involution2d(c, c, stride, kernel_size=3, group_channels=group_channels,
                          spatial_context=sakg, channel_context=sakg)
    nn.init.normal_(module.span.weight, std=0.3)
    nn.init.normal_(module.bn.bias, std=0.5)  # ReLU cuts part of the map
    return module


@pytest.mark.parametrize("sakg", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_generator_equals_the_torch_modules(sakg, stride, train, channels_last, monkeypatch):
    """Kernels and every gradient (input, depth-wise, reduction, channel FC, BN, span) in float64."""
    module = _involution(16, stride, sakg).double().train(train)
    x = torch.randn(3, 16, 13, 11, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    fused = _generator_outputs_and_grads(module, x)
    monkeypatch.setenv("BIVOL_FUSED", "0")
    reference = _generator_outputs_and_grads(module, x)
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype,amp", [(torch.bfloat16, False), (torch.float32, True)])
def test_bf16_as_accurate_as_the_torch_modules(dtype, amp, monkeypatch):
    """bf16 (stored, or via CPU autocast): kernels and gradients are within 2x the torch modules'
    error of a float64 run on the same inputs (relative Frobenius error; the fused kernels keep
    the intermediate features in float32, where the modules round them to bf16, so elements near
    the ReLU's kink may take the other side: elementwise bounds would not hold for either path)."""
    module = _involution(32, 1, True, group_channels=16)
    if dtype == torch.bfloat16:
        module = module.bfloat16()
    x = torch.randn(4, 32, 16, 16).to(dtype).requires_grad_()
    reference_module = _involution(32, 1, True, group_channels=16).double()
    reference_module.load_state_dict(module.state_dict())
    reference = _generator_outputs_and_grads(reference_module, x.detach().double().requires_grad_())

    def errors() -> list[float]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = _generator_outputs_and_grads(module, x)
        assert out[0].dtype == torch.bfloat16
        return [((o.double() - r).norm() / r.norm()).item() for o, r in zip(out, reference, strict=True)]

    fused = errors()
    monkeypatch.setenv("BIVOL_FUSED", "0")
    modules = errors()
    for got, want in zip(fused, modules, strict=True):
        assert got <= max(2 * want, 1e-3), (fused, modules)


@pytest.mark.parametrize("stride,h,w", [(2, 32, 32), (2, 6, 20), (2, 7, 9), (3, 8, 5), (2, 1, 1)])
def test_avg_pool_equals_the_torch_pool(stride, h, w):
    """The strided generator's pool, forward and gradient, ceil mode (edge windows average what
    they cover), float64 and bf16 (rounded once: 2**-8 relative); 2 x 2 windows that tile the
    plane take a vector path (8 outputs a step: 32x32, and 6x20 with a tail of 2)."""
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    out, ref = fused_generator.avg_pool(x, pool), pool(x)
    assert type(out.grad_fn).__name__ == "_AvgPoolBackward"  # the C++ pass, not the module
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(lambda t: fused_generator.avg_pool(t, pool), (x,))
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])
    xb = x.detach().bfloat16().requires_grad_()
    out_b = fused_generator.avg_pool(xb, pool)
    assert out_b.dtype == torch.bfloat16
    torch.testing.assert_close(out_b.double(), pool(xb.double()), rtol=2 ** -8, atol=0)
    gx = torch.autograd.grad(out_b, xb, grad.bfloat16())[0]
    x64 = xb.detach().double().requires_grad_()
    torch.testing.assert_close(gx.double(), torch.autograd.grad(pool(x64), x64, grad.bfloat16().double())[0],
                               rtol=2 ** -8, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves pools in their input's dtype
        torch.testing.assert_close(fused_generator.avg_pool(x.float(), pool), pool(x.float()))
    identity = nn.Identity()
    assert fused_generator.avg_pool(x, identity) is x


def test_two_threads_give_the_same_kernels_and_gradients():
    """Weight gradients are summed per fixed chunk of work: equal on 1 and 2 threads up to float
    rounding, and deterministic on each."""
    module = _involution(16, 1, True).train()
    x = torch.randn(4, 16, 17, 9, requires_grad=True)
    one = _generator_outputs_and_grads(module, x)
    torch.set_num_threads(2)  # conftest's autouse fixture restores one thread
    two = _generator_outputs_and_grads(module, x)
    again = _generator_outputs_and_grads(module, x)
    for got, want in zip(two, one, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)  # sums split into chunks: float32 rounding
    for got, want in zip(again, two, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_relu_module_untouched_and_input_kept(monkeypatch):
    """The fused path neither calls the generator's ReLU (so an in-place ReLU cannot clobber the
    BN output autograd saved) nor changes its input."""
    module = _involution(8, 1, False).train()
    calls = []
    module.relu.register_forward_hook(lambda *args: calls.append(1))
    n = torch.randn(2, 2, 5, 5)
    before = n.clone()
    fused_generator.relu_pointwise(n, module.relu, module.span)
    assert not calls and torch.equal(n, before)
    monkeypatch.setenv("BIVOL_FUSED", "0")
    fused_generator.relu_pointwise(n.clone(), module.relu, module.span)
    assert calls


def test_flop_count_sees_the_generator_convs():
    """count_macs runs the torch modules, so the generator's convs are counted whatever BIVOL_FUSED says."""
    model = create_model("bivol_resnet20")
    with fused_involution.torch_path():
        assert fused_involution.mode() == "0"
    assert count_macs(model, 32) == count_macs(model, 32)  # deterministic
    spans = [m.span for m in model.modules() if isinstance(m, Involution2d)]
    assert spans
    seen = []
    handles = [s.register_forward_hook(lambda *args: seen.append(1)) for s in spans]
    try:
        count_macs(model, 32)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(spans)


@pytest.mark.keep_thresholds
def test_fuses_only_where_measured_to_pay():
    """Few channels take the fused passes at any map size (the ReLU module is not called), more
    channels only on large maps; many channels go to the torch modules."""
    relu_calls = []
    relu = nn.ReLU()
    relu.register_forward_hook(lambda *args: relu_calls.append(1))

    def fused(c_in: int, c_out: int, size: int) -> bool:
        relu_calls.clear()
        fused_generator.relu_pointwise(torch.randn(1, c_in, size, size), relu, nn.Conv2d(c_in, c_out, 1))
        return not relu_calls

    assert fused(4, 9, 32)  # CIFAR's first stage: 36 multiply-adds per pixel at 32x32
    assert fused(16, 36, 8)  # CIFAR's last stage: 576 at 8x8
    assert fused(16, 196, 32)  # RedNet-50's first stage: 3136 on a large map ...
    assert not fused(16, 196, 16)  # ... but not on a small one
    assert not fused(64, 784, 32)  # too many channels
    depthwise_calls = []

    def separable_fused(channels: int, size: int) -> bool:
        depthwise_calls.clear()
        dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        dw.register_forward_hook(lambda *args: depthwise_calls.append(1))
        fused_generator.separable(torch.randn(1, channels, size, size), dw, nn.Conv2d(channels, 4, 1, bias=False))
        return not depthwise_calls

    assert separable_fused(16, 32)
    assert separable_fused(32, 8)  # few channels: any map size
    assert separable_fused(64, 32)
    assert not separable_fused(64, 16)  # more channels: large maps only
    assert not separable_fused(128, 32)


def test_failed_build_falls_back_to_the_modules(monkeypatch):
    """No compiler: one warning, the torch modules' result; BIVOL_FUSED=1 raises instead."""
    def no_compiler():
        raise RuntimeError("no C++ compiler (c++) on PATH")

    module = _involution(16, 1, True).eval()
    x = torch.randn(2, 16, 9, 9)
    monkeypatch.setenv("BIVOL_FUSED", "0")
    expected = module.generate_kernels(x)
    monkeypatch.delenv("BIVOL_FUSED")
    monkeypatch.setattr(fused_involution, "_build", no_compiler)
    fused_involution.extension.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="unavailable") as caught:
            got = module.generate_kernels(x)
        assert len(caught) == 1
        torch.testing.assert_close(got, expected)
        monkeypatch.setenv("BIVOL_FUSED", "1")
        fused_involution.extension.cache_clear()
        with pytest.raises(RuntimeError, match="BIVOL_FUSED=1"):
            module.generate_kernels(x)
    finally:
        fused_involution.extension.cache_clear()
