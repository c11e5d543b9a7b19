"""Drop-in replacements for a 3x3 convolution, one per operator family.

Every class takes ``(in_channels, out_channels, stride)`` first, so a backbone's ``conv3x3``
factory can return any of them. Dynamic operators compute per-example or per-position kernels
without Python loops over examples: CondConv and DyConv fold the batch into the groups of one
grouped convolution; involution accumulates over the K*K kernel offsets (one fused pass, C++ on
the CPU and Triton on CUDA, :mod:`.fused_involution`; a fixed, small loop elsewhere) instead of
materialising the K*K-times larger unfolded input; its kernel generator runs as two fused C++
passes on the CPU where that was measured to beat oneDNN (:mod:`.fused_generator`); in eval mode
it also generates and aggregates its per-position kernels a few output rows at a time (see
:class:`Involution2d`). In training on the CPU, a stride-1 involution or Bi-volution runs as one
fused autograd node (:mod:`.fused_training`), which writes its input's gradient once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import fused_generator, fused_involution, fused_training


def _kaiming_experts(weight: torch.Tensor) -> None:
    """Kaiming-normal (fan_out, ReLU) init of each expert kernel, like the static convs."""
    for w in weight:
        nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")


def _batched_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: int, padding: int) -> torch.Tensor:
    """Convolve example b with its own kernel ``weight[b]`` in ONE grouped conv.

    ``weight``: (B, out, in, k, k); ``bias``: (B, out) or None. The batch becomes the groups:
    input (1, B*in, H, W), kernels (B*out, in, k, k), ``groups=B``.
    """
    b, c, h, w = x.shape
    out_channels = weight.shape[1]
    y = F.conv2d(x.reshape(1, b * c, h, w), weight.reshape(b * out_channels, *weight.shape[2:]),
                 None if bias is None else bias.reshape(-1), stride=stride, padding=padding, groups=b)
    return y.view(b, out_channels, y.shape[-2], y.shape[-1])


class CondConv2d(nn.Module):
    """CondConv (Yang et al., NeurIPS 2019): conditionally parameterised convolution.

    Why: a per-example kernel ``W(x) = sum_e r_e(x) W_e`` with routing
    ``r = sigmoid(FC(GAP(x)))`` adds capacity (E experts) at the cost of one conv per example.
    Experts are mixed independently (sigmoid, not softmax), as in the paper; no routing dropout.
    The E mixed kernels are applied in one grouped convolution with the batch folded into groups.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3,
                 num_experts: int = 4, bias: bool = False) -> None:
        super().__init__()
        self.stride, self.padding, self.num_experts = stride, (kernel_size - 1) // 2, num_experts
        self.weight = nn.Parameter(torch.empty(num_experts, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(num_experts, out_channels)) if bias else None
        self.route = nn.Linear(in_channels, num_experts)
        _kaiming_experts(self.weight.data)

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.route(x.mean((2, 3))))  # (B, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.routing(x)
        weight = (r @ self.weight.flatten(1)).view(x.shape[0], *self.weight.shape[1:])
        bias = None if self.bias is None else r @ self.bias
        return _batched_conv(x, weight, bias, self.stride, self.padding)


class DynamicConv2d(nn.Module):
    """Dynamic convolution (Chen et al., CVPR 2020): attention over K convolution kernels.

    Why: ``W(x) = sum_k pi_k(x) W_k`` with ``pi = softmax(FC(ReLU(FC(GAP(x)))) / tau)`` gives
    input-dependent kernels whose attention sums to one. The paper anneals ``tau`` from 30 to 1
    over the first 10 epochs: a trainer calls :meth:`set_temperature` (or
    ``registry.set_temperature(model, tau)``); the default 1.0 is the value for evaluation.
    The hidden width is ``max(in_channels // reduction, 4)`` (reduction 4); biases, when used,
    are aggregated with the same attention. One grouped conv, batch folded into groups.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3,
                 num_kernels: int = 4, reduction: int = 4, temperature: float = 1.0,
                 bias: bool = False) -> None:
        super().__init__()
        self.stride, self.padding, self.num_kernels = stride, (kernel_size - 1) // 2, num_kernels
        self.temperature = float(temperature)
        hidden = max(in_channels // reduction, 4)
        self.attention = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, num_kernels))
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_channels)) if bias else None
        _kaiming_experts(self.weight.data)

    def set_temperature(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.attention(x.mean((2, 3))) / self.temperature, dim=1)  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pi = self.attention_weights(x)
        weight = (pi @ self.weight.flatten(1)).view(x.shape[0], *self.weight.shape[1:])
        bias = None if self.bias is None else pi @ self.bias
        return _batched_conv(x, weight, bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"num_kernels={self.num_kernels}, temperature={self.temperature}"


def involution_aggregate(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int = 1,
                         dilation: int = 1) -> torch.Tensor:
    """``out[b, g*gc + c, i, j] = sum_{u,v} kernels[b, g, u*K+v, i, j] * xpad[b, g*gc + c, s*i + d*u, s*j + d*v]``.

    ``x``: (B, C, H, W); ``kernels``: (B, G, K*K, Ho, Wo), shared by the C/G channels of a group.
    Memory-lean: loops over the K*K offsets of a padded input (views, no copies) and accumulates
    in place, instead of unfolding x into a (B, C, K*K, Ho, Wo) tensor. Output size follows
    ``nn.Unfold(K, dilation, padding=d*(K-1)//2, stride)``.
    """
    b, c, h, w = x.shape
    groups, kk, ho, wo = kernels.shape[1:]
    if kk != kernel_size * kernel_size:
        raise ValueError(f"kernels have {kk} taps, expected {kernel_size}**2")
    pad = dilation * (kernel_size - 1) // 2
    if ho != (h + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1 or \
            wo != (w + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1:
        raise ValueError(f"kernel map {ho}x{wo} does not fit input {h}x{w} at stride {stride}")
    return _aggregate(x, kernels, kernel_size, stride, dilation, pad, pad)


def _aggregate(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int, dilation: int,
               pad_top: int, pad_left: int) -> torch.Tensor:
    """:func:`involution_aggregate` (no size checks) reading input row ``s*i + d*u - pad_top``
    (columns likewise, zeros outside x): the one dispatch of both call sites. The fused kernel of
    x's device (:mod:`.fused_involution`, ``BIVOL_FUSED``: C++ on the CPU, Triton on CUDA) where
    it applies, else the torch loop."""
    if fused_involution.applies(x, kernels):
        return fused_involution.aggregate(x, kernels, kernel_size, stride, dilation, pad_top, pad_left)
    return _aggregate_torch(x, kernels, kernel_size, stride, dilation, pad_top, pad_left)


def _aggregate_torch(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int, dilation: int,
                     pad_top: int, pad_left: int) -> torch.Tensor:
    """Pure-torch aggregation (the fallback, and any device): K*K in-place multiply-adds of
    strided views of the zero-padded input."""
    b, c, h, w = x.shape
    groups, kk, ho, wo = kernels.shape[1:]
    span = dilation * (kernel_size - 1) + 1
    bottom = max(stride * (ho - 1) + span - pad_top - h, 0)
    right = max(stride * (wo - 1) + span - pad_left - w, 0)
    xp = F.pad(x, (pad_left, right, pad_top, bottom))
    xp = xp.view(b, groups, c // groups, *xp.shape[-2:])
    out = xp.new_zeros(b, groups, c // groups, ho, wo, dtype=torch.result_type(xp, kernels))  # AMP-safe
    for idx in range(kk):
        u, v = divmod(idx, kernel_size)
        patch = xp[:, :, :, u * dilation: u * dilation + stride * (ho - 1) + 1: stride,
                   v * dilation: v * dilation + stride * (wo - 1) + 1: stride]
        out = out.addcmul_(patch, kernels[:, :, idx].unsqueeze(2))
    return out.view(b, c, ho, wo)


class Involution2d(nn.Module):
    """Involution (Li et al., CVPR 2021) as in RedNet, optionally with SAKG kernel generation.

    Why: the kernel is generated per position from the input and shared by the ``group_channels``
    channels of each of ``G = C / group_channels`` groups (channel-invariant, spatial-specific),
    the inverse of convolution's design; a large K (7 in RedNet) is affordable.

    Kernel generator (RedNet): ``1x1 conv (C -> C/r) -> BN -> ReLU -> 1x1 conv (C/r -> K*K*G, bias)``
    applied to ``AvgPool(stride)(x)`` when strided, as the official code. The pool uses
    ``ceil_mode=True`` so odd sizes match the unfold grid (identical to the official floor mode
    for the even sizes RedNet meets).

    Options used by :class:`Bivolution2d` (both False = plain involution):

    * ``spatial_context``: depth-wise 3x3 conv before the first 1x1 conv (together a depth-wise
      separable conv), so each position's kernel sees its 3x3 neighbourhood.
    * ``channel_context``: ``FC(GAP(x))`` (C -> C/r, with bias) added, broadcast over space, to
      the reduced features before BN/ReLU: global channel statistics modulate every kernel.

    Channel change: involution keeps the channel count. With ``out_channels != in_channels`` a
    1x1 conv (``proj``) maps the involution output to ``out_channels`` *after* aggregation (at
    the output resolution, the cheaper side); RedNet never needs it inside its bottlenecks.

    Memory: the generated kernel map (B, G, K*K, Ho, Wo) is K*K/group_channels output activations
    (~3 for K=7, G=C/16). When the generator's BN is in eval mode (``module.eval()``: running
    statistics, so every position's kernel depends only on its own neighbourhood), the forward
    works on chunks of output rows: it generates one chunk's kernels (the depth-wise 3x3 of SAKG
    reads a 1-row halo; the GAP channel term is computed once over the whole input), aggregates
    them over a zero-padded band of the input rows they read ((K-1)/2-row halo) and copies the
    chunk into the output, so at most ``chunk_budget`` (0.5) output activations of kernels are
    alive at a time (measured CPU peak ~2 activations, output included, at 64@56x56, K=7).
    Results equal the unchunked forward up to float rounding. Under grad (eval mode, e.g. adversarial attacks) each chunk is wrapped in
    activation checkpointing: the forward keeps no kernels for backward, and backward
    regenerates each chunk's kernels (extra compute of about one generator + aggregation pass).
    In training mode (BN on batch statistics over the whole map) the forward is unchunked.
    Set ``chunk_budget = None`` on an instance to always run unchunked. Kernel maps smaller than
    ``chunk_min_bytes`` (8 MiB) are generated whole: below that the memory saved is small in
    absolute terms and the per-chunk overhead dominates (bivol_resnet50 on one 224 px image on
    the CPU: 182 ms chunked, 111 ms whole, where resnet50 takes 80 ms); a 224 px batch of 32 is
    chunked at every stage (its smallest map, 512 channels at 7x7, holds 9.8 MB of kernels).
    On a GPU without grad (inference) the threshold is ``chunk_min_bytes_gpu`` (256 MiB): there
    each chunk costs ~60 kernel launches whatever its size. On an H200 at ResNet-50 stage shapes,
    batch 32, whole maps took 1.1-2.2 ms against 7-13 ms chunked, at 0.91-1.81x the static conv's
    peak memory (chunked: 0.45-0.72x), and bivol_resnet50 took 25.6 ms instead of 158 ms
    (resnet50: 5.3 ms). Under grad, where the autograd graph would keep the whole map (2.25x
    for Bi-volution), chunks stay.
    """

    #: Eval-mode chunks hold at most this many output activations (B, C, Ho, Wo) of kernels; None: no chunks.
    chunk_budget: float | None = 0.5
    #: Chunk only kernel maps (B, G, K*K, Ho, Wo) of at least this many bytes (CPU) ...
    chunk_min_bytes: int = 8 << 20
    #: ... and on a GPU without grad.
    chunk_min_bytes_gpu: int = 256 << 20

    def __init__(self, in_channels: int, out_channels: int | None = None, stride: int = 1,
                 kernel_size: int = 7, group_channels: int = 16, reduction: int = 4,
                 spatial_context: bool = False, channel_context: bool = False) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        group_channels = min(group_channels, in_channels)
        if in_channels % group_channels:
            raise ValueError(f"{in_channels} channels do not split into groups of {group_channels}")
        self.channels, self.kernel_size, self.stride = in_channels, kernel_size, stride
        self.groups = in_channels // group_channels
        reduced = max(in_channels // reduction, 1)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.spatial = (nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
                        if spatial_context else None)
        self.reduce = nn.Conv2d(in_channels, reduced, 1, bias=False)
        self.channel = nn.Linear(in_channels, reduced) if channel_context else None
        self.bn = nn.BatchNorm2d(reduced)
        self.relu = nn.ReLU(inplace=True)
        self.span = nn.Conv2d(reduced, kernel_size * kernel_size * self.groups, 1)
        self.reset_generator()
        self.proj = nn.Conv2d(in_channels, out_channels, 1, bias=False) if out_channels != in_channels else None

    def reset_generator(self) -> None:
        """Start as a static filter (the span bias), the same at every position.

        Kernels multiply the input, so a random generator makes the gradients of a deep stack
        explode: bivol_resnet20 and involution_resnet20 stayed at chance for 3 epochs at lr 0.1
        with a Kaiming-initialised span; with it zeroed they train like static ResNets and the
        generator learns to vary kernels by position. Backbones that re-initialise every conv
        call this afterwards (RedNet keeps the official Kaiming init).
        """
        nn.init.zeros_(self.span.weight)

    def kernel_variation_parameters(self) -> list[nn.Parameter]:
        """The generator's parameters that make kernels vary with the input: everything but the
        span bias (the position-independent part, a plain static filter). A trainer may give them
        a smaller learning rate (``train --generator-lr-scale``)."""
        return [p for name, p in self.named_parameters()
                if name != "span.bias" and not name.startswith("proj.")]

    def generate_kernels(self, x: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Per-position kernels, (B, G, K*K, Ho, Wo); with ``rows=(r0, r1)`` only output rows r0..r1-1."""
        return self._kernels(x, self._channel_term(x), rows)

    def _channel_term(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.channel is None else self.channel(x.mean((2, 3)))

    def _kernels(self, x: torch.Tensor, channel_term: torch.Tensor | None,
                 rows: tuple[int, int] | None) -> torch.Tensor:
        if rows is None:
            r = fused_generator.separable(fused_generator.avg_pool(x, self.pool), self.spatial, self.reduce)
        else:
            r0, r1 = rows
            halo = 0 if self.spatial is None else 1  # the depth-wise 3x3 reads one row each side
            lo = max(r0 - halo, 0)
            band = x[:, :, self.stride * lo: self.stride * (r1 + halo)]  # pool windows start at s*row
            z = fused_generator.avg_pool(band, self.pool)
            r = fused_generator.separable(z, self.spatial, self.reduce)[:, :, r0 - lo: r1 - lo]
        if channel_term is not None:
            r = r + channel_term[:, :, None, None]
        k = fused_generator.relu_pointwise(self.bn(r), self.relu, self.span)
        return k.view(k.shape[0], self.groups, self.kernel_size ** 2, k.shape[-2], k.shape[-1])

    def chunk_rows(self, ho: int) -> int:
        """Output rows per chunk: G*K*K*rows kernel rows <= ``chunk_budget`` * C*Ho activation rows."""
        if not self.chunk_budget:
            return ho
        return max(1, int(self.chunk_budget * self.channels * ho / (self.groups * self.kernel_size ** 2)))

    def _chunk(self, x: torch.Tensor, channel_term: torch.Tensor | None, r0: int, r1: int) -> torch.Tensor:
        """Output rows r0..r1-1, (B, C, r1 - r0, Wo): their kernels, aggregated over the band of x rows they read."""
        kernels = self._kernels(x, channel_term, (r0, r1))
        pad, s = (self.kernel_size - 1) // 2, self.stride
        lo = s * r0 - pad  # first input row read; rows outside [0, H) read as zeros
        band = x[:, :, max(lo, 0): s * (r1 - 1) + pad + 1]
        return _aggregate(band, kernels, self.kernel_size, s, 1, max(-lo, 0), pad)

    def _forward_chunked(self, x: torch.Tensor, step: int, ho: int) -> torch.Tensor:
        channel_term = self._channel_term(x)
        grad = torch.is_grad_enabled()
        out = None
        for r0 in range(0, ho, step):
            r1 = min(r0 + step, ho)
            if grad:  # keep no kernels for backward: backward recomputes the chunk
                piece = checkpoint(self._chunk, x, channel_term, r0, r1, use_reentrant=False)
            else:
                piece = self._chunk(x, channel_term, r0, r1)
            if out is None:
                out = piece.new_empty(x.shape[0], self.channels, ho, piece.shape[-1])
            out[:, :, r0:r1] = piece  # a contiguous piece aggregates faster than a row slice of out
            del piece
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ho = (x.shape[-2] - 1) // self.stride + 1  # odd K, padding (K-1)/2
        wo = (x.shape[-1] - 1) // self.stride + 1
        kernel_bytes = x.shape[0] * self.groups * self.kernel_size ** 2 * ho * wo * x.element_size()
        launch_bound = x.device.type != "cpu" and not torch.is_grad_enabled()
        threshold = self.chunk_min_bytes_gpu if launch_bound else self.chunk_min_bytes
        step = self.chunk_rows(ho) if kernel_bytes >= threshold else ho
        if fused_training.involution_applies(self, x):  # training on the CPU: one fused autograd node
            out = fused_training.involution(self, x)
        elif self.bn.training or step >= ho or self.kernel_size % 2 == 0:  # BN batch stats need the whole map
            out = involution_aggregate(x, self.generate_kernels(x), self.kernel_size, self.stride)
        else:
            out = self._forward_chunked(x, step, ho)
        return out if self.proj is None else self.proj(out)

    def aggregation_macs(self, x: torch.Tensor) -> int:
        """Multiply-adds of the aggregation (invisible to FlopCounterMode): C*K*K per output pixel."""
        h, w = x.shape[-2:]
        pad = (self.kernel_size - 1) // 2
        ho = (h + 2 * pad - self.kernel_size) // self.stride + 1
        wo = (w + 2 * pad - self.kernel_size) // self.stride + 1
        return x.shape[0] * self.channels * self.kernel_size ** 2 * ho * wo

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}"


class Bivolution2d(nn.Module):
    """Bi-volution (Hu et al., AAAI 2022): static convolution + involution-style dynamic branch, summed.

    Why: the static branch (content-independent) carries local, low-frequency features and keeps
    the operator stable under noise; the dynamic branch (per-position kernels from SAKG) adds
    content-adaptive, longer-range features. No code was released; the paper leaves these choices
    open and we chose:

    1. Fusion: ``static(x) + BN(dynamic(x))``; the dynamic branch's BN has its scale initialised
       to zero, so training starts from the static conv and the dynamic branch is gated in as it
       learns (ungated, its input-multiplying kernels outgrew and drowned the static branch, see
       :meth:`reset_generator`). The block's BN follows the sum. Without the static branch there
       is no gate (the ablation is exactly involution).
    2. Static branch: a ``static_kernel_size`` (3) conv, stride as the block, no bias. Its
       ``static_groups``: 1 (ordinary full conv, the CIFAR drop-in) or ``"depthwise"``. In the
       RedNet-50 skeleton (bivol_resnet50) it is depth-wise 3x3: a full 3x3 would add 11.3M
       params and ~1.2 GMACs, against the paper's 2.7 GFLOPs budget for Bi-volution ResNet-50.
    3. Dynamic branch: an :class:`Involution2d` (same K, G = C/16, reduction 4, stride by
       average pooling of the generator's input, as RedNet).
    4. SAKG spatial context extractor: depth-wise 3x3 conv followed by the generator's 1x1
       reducing conv (= a depth-wise separable conv), no BN/ReLU between them.
    5. SAKG channel information aggregation: ``FC(GAP(x))`` (C -> C/r, bias), added to the
       reduced features before BN/ReLU (so it modulates every position's kernel non-linearly),
       rather than added to the final kernels.
    6. GAP for the channel branch is over the unpooled input (stride does not change it).
    7. ``in_channels != out_channels``: the static branch maps channels directly; the dynamic
       branch aggregates at ``in_channels`` and a 1x1 conv maps to ``out_channels`` afterwards.

    Ablation switches: ``static_branch=False`` (dynamic only), ``sakg=False`` (involution's 1x1
    generator). Both False is exactly an :class:`Involution2d` (``self.dynamic``).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, stride: int = 1,
                 kernel_size: int = 7, group_channels: int = 16, reduction: int = 4,
                 static_branch: bool = True, sakg: bool = True, static_kernel_size: int = 3,
                 static_groups: int | str = 1) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.static: nn.Module | None = None
        if static_branch:
            groups = in_channels if static_groups == "depthwise" else int(static_groups)
            if static_groups == "depthwise" and in_channels != out_channels:
                raise ValueError("a depth-wise static branch needs in_channels == out_channels")
            self.static = nn.Conv2d(in_channels, out_channels, static_kernel_size, stride=stride,
                                    padding=(static_kernel_size - 1) // 2, groups=groups, bias=False)
            nn.init.kaiming_normal_(self.static.weight, mode="fan_out", nonlinearity="relu")
        self.dynamic = Involution2d(in_channels, out_channels, stride, kernel_size, group_channels, reduction,
                                    spatial_context=sakg, channel_context=sakg)
        self.dynamic_bn = nn.BatchNorm2d(out_channels) if static_branch else None
        self.reset_generator()

    def reset_generator(self) -> None:
        """Start as the static branch alone: the dynamic branch's BN scale (the gate) at zero.

        The generated kernels multiply the input, so an ungated dynamic branch grows faster than
        the static one and drowns it: in short runs on the built-in shapes ungated bivol_resnet20
        stayed at chance while resnet20 reached 81-95%; gated, it reached 95%. Call after any BN re-init.
        """
        if self.dynamic_bn is not None:
            nn.init.zeros_(self.dynamic_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_training.bivolution_applies(self, x):  # training on the CPU: one fused autograd node
            return fused_training.bivolution(self, x)
        out = self.dynamic(x)
        if self.static is None:
            return out
        out = self.dynamic_bn(out)  # under no_grad the involution output is freed before the static branch runs
        static = self.static(x)
        if torch.result_type(static, out) == static.dtype:
            return static.add_(out)  # in place: no third activation-sized tensor
        return static + out


__all__ = ["CondConv2d", "DynamicConv2d", "Involution2d", "Bivolution2d", "involution_aggregate"]
