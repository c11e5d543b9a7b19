"""The training-mode fused nodes (robustbench_bivol/models/fused_training.py) equal the separate
autograd nodes of the torch modules: outputs, every gradient and the BN running statistics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_bivol.models import fused_generator, fused_involution, fused_training
from robustbench_bivol.models.operators import Bivolution2d, Involution2d


@pytest.fixture(scope="module", autouse=True)
def _extension():
    if fused_involution.extension() is None:
        pytest.skip("the fused kernels cannot be built here")


def _involution(c: int, sakg: bool, stride: int = 1) -> Involution2d:
    module = Involution2d(c, c, stride, kernel_size=3, group_channels=4, spatial_context=sakg, channel_context=sakg)
    nn.init.normal_(module.span.weight, std=0.3)
    nn.init.normal_(module.bn.bias, std=0.5)  # ReLU cuts part of the map
    return module.train()


def _bivolution(c: int, sakg: bool, **options) -> Bivolution2d:
    module = Bivolution2d(c, **{"kernel_size": 3, "group_channels": 4, "sakg": sakg, **options})
    nn.init.normal_(module.dynamic.span.weight, std=0.3)
    nn.init.normal_(module.dynamic.bn.bias, std=0.5)
    nn.init.normal_(module.dynamic_bn.weight, std=1.0)  # the gate opened (it starts at zero)
    nn.init.normal_(module.dynamic_bn.bias, std=0.5)
    return module.train()


def _forward_and_grads(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = module(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.dtype)
    params = [p for p in module.parameters() if p.requires_grad]
    return [out, *torch.autograd.grad(out, [x, *params], grad), *(b.clone() for b in module.buffers())]


def _fused_and_reference(module: nn.Module, x: torch.Tensor, monkeypatch, applies) -> tuple[list, list]:
    """The fused node's results and the separate nodes' (BIVOL_FUSED=0), from the same state."""
    assert applies(module, x)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    fused = _forward_and_grads(module, x)
    module.load_state_dict(state)
    with monkeypatch.context() as patch:
        patch.setenv("BIVOL_FUSED", "0")
        assert not applies(module, x)
        reference = _forward_and_grads(module, x)
    return fused, reference


@pytest.mark.parametrize("sakg", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", ["involution", "bivolution", "bivolution_resnet50", "involution_strided",
                                  "bivolution_strided"])
def test_node_equals_the_torch_modules(kind, sakg, channels_last, monkeypatch):
    """float64, odd sizes (even where strided): output, the input's and every parameter's gradient,
    running statistics (bivolution_resnet50: bivol_resnet50's setting, K = 7 and a depth-wise static
    branch; strided: stride 2, and for Bi-volution a channel change, as a ResNet's first block of a stage)."""
    build, applies = {
        "involution": (_involution, fused_training.involution_applies),
        "bivolution": (_bivolution, fused_training.bivolution_applies),
        "bivolution_resnet50": (lambda c, sakg: _bivolution(c, sakg, kernel_size=7, static_groups="depthwise"),
                                fused_training.bivolution_applies),
        "involution_strided": (lambda c, sakg: _involution(c, sakg, stride=2), fused_training.involution_applies),
        "bivolution_strided": (lambda c, sakg: _bivolution(c, sakg, out_channels=2 * c, stride=2),
                               fused_training.bivolution_applies)}[kind]
    module = build(8, sakg).double()
    x = torch.randn(3, 8, 8 if "strided" in kind else 7, 10, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    fused, reference = _fused_and_reference(module, x.requires_grad_(), monkeypatch, applies)
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("option", ["cumulative_average", "no_running_statistics"])
def test_batch_norm_options(option, monkeypatch):
    """The BNs the nodes fold (the generator's, the dynamic branch's) as ``nn.BatchNorm2d`` with
    ``momentum=None`` (running statistics as a cumulative average, two steps) or
    ``track_running_stats=False`` (no running statistics)."""
    module = _bivolution(8, True).double()
    for bn in (module.dynamic.bn, module.dynamic_bn):
        if option == "cumulative_average":
            bn.momentum = None
        else:
            bn.track_running_stats = False
            bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    x = torch.randn(3, 8, 7, 10, dtype=torch.float64, requires_grad=True)
    for _ in range(2):
        fused, reference = _fused_and_reference(module, x, monkeypatch, fused_training.bivolution_applies)
        for got, want in zip(fused, reference, strict=True):
            torch.testing.assert_close(got, want)
        module(x)  # a step from the fused node's state: the second round sees num_batches_tracked = 2


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("sakg", [True, False])
def test_gradcheck(sakg, stride):
    involution = _involution(8, sakg, stride).double()
    x = torch.randn(2, 8, 5 * stride, 6, dtype=torch.float64, requires_grad=True)
    params = fused_training._generator_parameters(involution)
    assert torch.autograd.gradcheck(lambda x, *p: fused_training._Involution.apply(x, involution, *p), (x, *params))
    bivolution = _bivolution(8, sakg, stride=stride, out_channels=8 * stride).double()
    params = fused_training._bivolution_parameters(bivolution)
    assert torch.autograd.gradcheck(lambda x, *p: fused_training._Bivolution.apply(x, bivolution, *p), (x, *params))


def test_nodes_only_where_they_serve():
    """Eval mode, no grad, a strided module on a map its pool does not tile, frozen parameters and an
    autocast float32 input take the separate nodes."""
    module = _involution(8, True)
    x = torch.randn(2, 8, 6, 6)
    assert fused_training.involution_applies(module, x)
    with torch.no_grad():
        assert not fused_training.involution_applies(module, x)
    assert not fused_training.involution_applies(module.eval(), x)
    assert fused_training.involution_applies(_involution(8, True, stride=2), x)
    assert not fused_training.involution_applies(_involution(8, True, stride=2), x[..., :5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_training.involution_applies(module.train(), x)
        assert fused_training.involution_applies(module, x.bfloat16())
    bivolution = _bivolution(8, True)
    assert fused_training.bivolution_applies(bivolution, x)
    bivolution.dynamic_bn.eval()
    assert not fused_training.bivolution_applies(bivolution, x)
    bivolution.dynamic_bn.train()
    bivolution.static.weight.requires_grad_(False)
    assert not fused_training.bivolution_applies(bivolution, x)
    assert fused_training.bivolution_applies(Bivolution2d(8, 16, kernel_size=3, group_channels=4).train(), x)


def test_global_batchnorm_keeps_the_separate_nodes():
    """Data-parallel training swaps in GlobalBatchNorm2d (statistics over every rank): the nodes,
    which take this process's batch statistics, must not serve it."""
    from robustbench_bivol.sync_batchnorm import GlobalBatchNorm2d

    x = torch.randn(2, 8, 6, 6)
    bivolution = _bivolution(8, True)
    bivolution.dynamic_bn = GlobalBatchNorm2d(8)
    assert not fused_training.bivolution_applies(bivolution, x)
    assert fused_training.involution_applies(bivolution.dynamic, x)
    bivolution.dynamic.bn = GlobalBatchNorm2d(bivolution.dynamic.bn.num_features)
    assert not fused_training.involution_applies(bivolution.dynamic, x)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["involution", "bivolution", "bivolution_strided"])
@pytest.mark.parametrize("amp", [True, False])
def test_bf16_as_accurate_as_the_separate_nodes(amp, kind, seed, monkeypatch):
    """A bf16 training step (autocast, or a bf16 model): output and gradients within 2x the separate
    nodes' error against a float64 run (relative Frobenius error; the node computes the dynamic BN's
    statistics in float64 where the separate nodes round them to bf16 in a bf16 model, so single
    entries move either way at the 0.3% level). The passes' accuracy against the torch modules:
    tests/test_fused_generator.py."""
    build = {"involution": _involution, "bivolution": _bivolution,
             "bivolution_strided": lambda c, sakg: _bivolution(c, sakg, out_channels=2 * c, stride=2)}[kind]
    torch.manual_seed(seed)
    module = build(16, True)
    if not amp:
        module = module.bfloat16()
    x = torch.randn(4, 16, 16, 16).bfloat16().requires_grad_()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    reference_module = build(16, True).double()
    reference_module.load_state_dict(state)
    reference = _forward_and_grads(reference_module, x.detach().double().requires_grad_())
    buffers = len(list(module.buffers()))

    def errors() -> list[float]:
        module.load_state_dict(state)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = _forward_and_grads(module, x)
        return [((o.double() - r).norm() / r.norm()).item()
                for o, r in zip(out[:-buffers], reference[:-buffers], strict=True)
                if r.norm() > 1e-8]  # the channel term's bias: BN cancels it, its exact gradient is zero

    node = errors()
    monkeypatch.setattr(fused_training, "involution_applies", lambda *args: False)
    monkeypatch.setattr(fused_training, "bivolution_applies", lambda *args: False)
    separate = errors()
    for got, want in zip(node, separate, strict=True):
        assert got <= max(2 * want, 1e-3), (node, separate)


def test_bivolution_trains_the_same_with_both_paths(monkeypatch):
    """Three SGD steps of a Bi-volution layer with an open gate: the same parameters and running
    statistics through the fused node as through the separate nodes (float64)."""
    def train() -> list[torch.Tensor]:
        torch.manual_seed(0)
        layer = _bivolution(16, True).double()
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        x = torch.randn(4, 16, 9, 9, dtype=torch.float64)
        for _ in range(3):
            opt.zero_grad()
            layer(x).square().mean().backward()
            opt.step()
        return [t.detach().clone() for t in (*layer.parameters(), *layer.buffers())]

    fused = train()
    monkeypatch.setenv("BIVOL_FUSED", "0")
    for got, want in zip(fused, train(), strict=True):
        torch.testing.assert_close(got, want)


def test_backward_twice_with_retained_graph():
    module = _bivolution(8, True).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    out = module(x)
    first = torch.autograd.grad(out.sum(), x, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], first)


def test_generator_thresholds_decide_as_in_the_modules():
    """The involution node serves exactly where the fused generator passes would
    (fused_generator.pays); the Bi-volution node up to the larger thresholds at any map size."""
    x = torch.randn(2, 128, 8, 8)
    module = Involution2d(128, kernel_size=3, group_channels=16).train()
    assert not fused_generator.separable_pays(x)
    assert not fused_training.involution_applies(module, x)
    assert not fused_training.bivolution_applies(Bivolution2d(128, kernel_size=3, group_channels=16).train(), x)
    x = torch.randn(2, 64, 8, 8)  # bivol_resnet20's third stage
    assert not fused_generator.separable_pays(x)
    assert not fused_training.involution_applies(Involution2d(64, kernel_size=3, group_channels=16).train(), x)
    assert fused_training.bivolution_applies(Bivolution2d(64, kernel_size=3, group_channels=16).train(), x)
