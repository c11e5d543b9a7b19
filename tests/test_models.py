"""Registered models: they run, keep their published sizes, and load foreign weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from robustbench_bivol.models import (UnknownModelError, create_model, list_models, load_state_dict_strict,
                                      model_spec, set_temperature)
from robustbench_bivol.models.convert import convert_rednet_checkpoint, convert_rednet_key
from robustbench_bivol.models.operators import Bivolution2d, DynamicConv2d, Involution2d
from robustbench_bivol.models.profile import count_gflops, count_macs, count_params, models_table

CIFAR = ["resnet20", "condconv_resnet20", "dyconv_resnet20", "involution_resnet20", "bivol_resnet20"]




def test_every_operator_family_is_registered():
    assert {model_spec(n).operator for n in list_models()} == {"static", "condconv", "dyconv", "involution",
                                                               "bivolution"}
    for name in ("rednet26", "rednet38", "rednet50", "rednet101", "bivol_resnet50", "resnet18", "resnet50",
                 "resnet101", "condconv_resnet50", "dyconv_resnet50", *CIFAR):
        assert name in list_models()
    with pytest.raises(UnknownModelError, match="rednet50"):
        create_model("rednet5O")


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward(name):
    model = create_model(name, num_classes=7)
    size = 32  # ImageNet models too (layer4 is 1x1; batch 2 keeps training-mode BN defined)
    x = torch.randn(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, 7)
    y.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)


def test_resnet20_structure_unchanged():
    keys = list(create_model("resnet20").state_dict())
    assert len(keys) == 128 and keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.downsample.0.weight" in keys and keys[-2:] == ["fc.weight", "fc.bias"]
    assert count_params(create_model("resnet20")) == 272474


def test_cifar_variants_only_swap_the_block_convs():
    static = set(create_model("resnet20").state_dict())
    for name in CIFAR[1:]:
        keys = set(create_model(name).state_dict())
        assert {k for k in static if ".conv1.weight" not in k and ".conv2.weight" not in k
                or k == "conv1.weight"} <= keys, name


def test_set_temperature_on_dyconv_resnet50():
    model = create_model("dyconv_resnet50")
    assert set_temperature(model, 30.0) == 16
    assert sum(isinstance(m, DynamicConv2d) for m in model.modules()) == 16


def test_resnet50_equals_torchvision():
    reference = torchvision.models.resnet50(weights=None).eval()
    ours = create_model("resnet50").eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    load_state_dict_strict(ours, reference.state_dict(), source="torchvision")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


@pytest.mark.parametrize("name,params_m", [("rednet26", 9.23), ("rednet38", 12.39), ("rednet50", 15.54),
                                           ("rednet101", 25.65), ("resnet50", 25.56)])
def test_published_parameter_counts(name, params_m):
    assert count_params(create_model(name)) / 1e6 == pytest.approx(params_m, rel=0.02)


def test_rednet50_gflops_near_published():
    model = create_model("rednet50")
    # published 2.71 G uses mmcv's counter (element-wise ops included); pure multiply-adds are 2.65
    assert count_gflops(model, 224, convention="mmcv") == pytest.approx(2.71, rel=0.02)
    assert count_gflops(model, 224) == pytest.approx(2.71, rel=0.03)


def test_torchvision_resnet_gflops_conventions():
    model = create_model("resnet18")
    assert count_gflops(model, 224) == pytest.approx(1.81, rel=0.01)  # torchvision's figure
    assert count_gflops(model, 224, convention="mmcv") == pytest.approx(1.82, rel=0.01)  # mmcls's figure


def test_involution_aggregation_is_counted():
    inv = Involution2d(32, kernel_size=7)
    generator = 32 * 8 + 8 * 98  # 1x1 reduce (32->8) + 1x1 span (8 -> 7*7*2) per pixel
    assert count_macs(nn.Sequential(nn.Conv2d(3, 32, 1, bias=False), inv), 8) == \
        (3 * 32 + generator + 32 * 49) * 64


def test_bivol_resnet50_adds_sakg_and_depthwise_static():
    red, bi = create_model("rednet50"), create_model("bivol_resnet50")
    channels = [m.channels for m in red.modules() if isinstance(m, Involution2d)]
    extra = sum(9 * c + 9 * c + c * (c // 4) + c // 4 + 2 * c for c in channels)  # + the gate BN
    assert count_params(bi) - count_params(red) == extra
    assert sum(isinstance(m, Bivolution2d) for m in bi.modules()) == len(channels) == 17


#: The CIFAR-10 study's models: every one within 15% of resnet20's multiply-adds.
STUDY = ["condconv_resnet20", "dyconv_resnet20", "involution_wide_resnet20", "bivol_resnet20",
         "bivol_nosakg_resnet20", "bivol_nostatic_wide_resnet20"]


@pytest.mark.parametrize("name", STUDY)
def test_study_models_are_capacity_matched_to_resnet20(name):
    macs = count_gflops(create_model(name), 32) / count_gflops(create_model("resnet20"), 32)
    assert 0.85 <= macs <= 1.15, f"{name}: {macs:.3f}x resnet20's multiply-adds"


def test_bivolution_ablations_differ_from_their_pair_only_by_the_ablated_part():
    wide, sakg = create_model("involution_wide_resnet20"), create_model("bivol_nostatic_wide_resnet20")
    involutions = [m for m in wide.modules() if isinstance(m, Involution2d)]
    assert {m.channels // m.groups for m in involutions} == {4}
    assert [m.channels for m in involutions] == [m.channels for m in sakg.modules() if isinstance(m, Involution2d)]
    extra = sum(9 * m.channels + m.channels * (m.channels // 4) + m.channels // 4 for m in involutions)
    assert count_params(sakg) - count_params(wide) == extra  # SAKG: depth-wise 3x3 + FC(GAP), nothing else
    full, nosakg = create_model("bivol_resnet20"), create_model("bivol_nosakg_resnet20")
    blocks = [m for m in nosakg.modules() if isinstance(m, Bivolution2d)]
    assert len(blocks) == 18 and all(b.static is not None and b.dynamic.spatial is None
                                     and b.dynamic.channel is None for b in blocks)
    assert set(full.state_dict()) - set(nosakg.state_dict()) == {
        k for k in full.state_dict() if ".dynamic.spatial." in k or ".dynamic.channel." in k}


def test_models_table_rows():
    rows = models_table(["resnet20", "bivol_resnet20"])
    assert [r["name"] for r in rows] == ["resnet20", "bivol_resnet20"]
    assert set(rows[0]) == {"name", "operator", "input_size", "params_m", "gflops", "gflops_mmcv", "bundled_weights"}
    assert rows[0]["params_m"] == pytest.approx(0.27, abs=0.01)
    assert rows[0]["gflops"] == pytest.approx(0.041, abs=0.002)
    assert rows[1]["gflops"] > rows[0]["gflops"]
    model = create_model("resnet20")  # mmcv's convention also counts BN, ReLU and pooling
    assert count_gflops(model, 32, convention="mmcv") > count_gflops(model, 32)


def test_models_command_lists_models():
    from click.testing import CliRunner

    from robustbench_bivol.cli import main

    result = CliRunner().invoke(main, ["models", "--no-flops", "--operator", "bivolution"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("| name | operator | input_size | params_m | bundled_weights |")
    assert {line.split("|")[1].strip() for line in lines[2:]} == {"bivol_resnet20", "bivol_resnet56", "bivol_resnet50",
                                                                  "bivol_nosakg_resnet20", "bivol_nostatic_wide_resnet20"}


# --- a stand-in for the official mmcls RedNet, with its module names, to test the converter ------
class _OfficialConvModule(nn.Module):
    def __init__(self, cin, cout, k, stride=1, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else None
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        x = x if self.bn is None else self.bn(x)
        return F.relu(x) if self.act else x


class _OfficialInvolution(nn.Module):
    def __init__(self, channels, k, stride):
        super().__init__()
        self.k, self.stride, self.groups = k, stride, channels // 16
        self.conv1 = _OfficialConvModule(channels, channels // 4, 1)
        self.conv2 = _OfficialConvModule(channels // 4, k * k * self.groups, 1, norm=False, act=False)

    def forward(self, x):
        w = self.conv2(self.conv1(x if self.stride == 1 else F.avg_pool2d(x, self.stride)))
        b, c = x.shape[:2]
        h, wd = w.shape[-2:]
        cols = F.unfold(x, self.k, 1, (self.k - 1) // 2, self.stride).view(b, self.groups, -1, self.k ** 2, h, wd)
        return (w.view(b, self.groups, 1, self.k ** 2, h, wd) * cols).sum(3).view(b, c, h, wd)


class _OfficialBottleneck(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = cout // 4
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = _OfficialInvolution(mid, 7, stride), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _OfficialBackbone(nn.Module):
    def __init__(self, blocks=(1, 2, 4, 1)):
        super().__init__()
        self.stem = nn.Sequential(_OfficialConvModule(3, 32, 3, 2), _OfficialInvolution(32, 3, 1),
                                  nn.BatchNorm2d(32), nn.ReLU(), _OfficialConvModule(32, 64, 3))
        cin, cout = 64, 256
        for i, n in enumerate(blocks):
            layer = [_OfficialBottleneck(cin if j == 0 else cout, cout, 2 if i and j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            cin, cout = cout, cout * 2

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _OfficialClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _OfficialBackbone()
        self.head = nn.Module()
        self.head.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        return self.head.fc(self.backbone(x).mean((2, 3)))


def test_convert_key_examples():
    assert convert_rednet_key("backbone.stem.1.conv1.conv.weight") == "stem.1.reduce.weight"
    assert convert_rednet_key("backbone.layer3.2.conv2.conv2.conv.bias") == "layer3.2.conv2.span.bias"
    assert convert_rednet_key("backbone.layer3.2.conv2.conv1.bn.running_var") == "layer3.2.conv2.bn.running_var"
    assert convert_rednet_key("backbone.layer1.0.conv1.weight") == "layer1.0.conv1.weight"
    assert convert_rednet_key("backbone.stem.4.conv.weight") == "stem.4.conv.weight"
    assert convert_rednet_key("head.fc.bias") == "fc.bias"


def test_convert_official_rednet26_checkpoint():
    official = _OfficialClassifier().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in official.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    state = {k: v for k, v in official.state_dict().items() if not k.endswith("num_batches_tracked")}
    converted = convert_rednet_checkpoint({"meta": {}, "state_dict": state})
    ours = create_model("rednet26").eval()
    load_state_dict_strict(ours, converted, source="official")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-5)
