"""Fused involution aggregation on CUDA: Triton kernels, forward and backward.

Why: the pure-torch aggregation (:func:`operators._aggregate_torch`) launches K*K memory-bound
``addcmul_`` passes over the output; here one kernel reads the K*K taps of a tile of output
positions for a block of a group's channels, accumulates in fp32 (fp64 for double) and writes
the output once. The backward mirrors the CPU kernel (``csrc/involution_cpu.cpp``): the input
gradient is a gather over input positions (each sums the taps whose output positions read it; no
atomics) and the kernel gradient a reduction over each group's channels.

``forward`` and ``backward`` have the C++ extension's signatures, so :mod:`.fused_involution`
(``BIVOL_FUSED``, the autograd Function) runs either; it imports this module at the first CUDA
call. With ``TRITON_INTERPRET=1`` set before this module is imported, the same kernels run on
CPU tensors in Triton's interpreter (``tests/test_triton_involution.py``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Tile elements per program: 8 accumulators a thread over the default 4 warps. Compiled for sm_90
#: the kernels take 40-128 registers and spill none; sizes are untuned (no GPU to time them on).
#: The tap loops stay rolled: unrolled (tl.static_range) K=7 spilled kilobytes a thread.
TILE = 1024


@triton.jit
def _channel_block(C, GC, CBLOCKS, TILES, BLOCK_C: tl.constexpr):
    """(tile, example b, example x group bg, the block's channel offsets c in the group, their
    channels ch, c < GC) of this program: (b, g, block of BLOCK_C channels) x TILES tiles."""
    pid = tl.program_id(0)
    tile, bgc = pid % TILES, pid // TILES
    bg, c = bgc // CBLOCKS, (bgc % CBLOCKS) * BLOCK_C + tl.arange(0, BLOCK_C)
    b, ch = bg // (C // GC), (bg % (C // GC)) * GC + c
    return tile, b, bg, ch, c < GC


@triton.jit
def _forward_kernel(x_ptr, k_ptr, out_ptr, sxb, sxc, sxh, C, H, W, GC, HO, WO, PT, PL, CBLOCKS, TILES,
                    K: tl.constexpr, S: tl.constexpr, D: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # Program: (example b, group g, block of BLOCK_C of its channels) x (BLOCK_P output positions).
    tile, b, bg, ch, c_ok = _channel_block(C, GC, CBLOCKS, TILES, BLOCK_C)
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < HO * WO
    i, j = p // WO, p % WO
    x_rows = x_ptr + b.to(tl.int64) * sxb + ch[:, None] * sxc
    k_taps = k_ptr + bg.to(tl.int64) * (K * K * HO * WO) + p
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for u in range(K):
        y = S * i + D * u - PT
        y_ok = p_ok & (y >= 0) & (y < H)
        for v in range(K):
            col = S * j + D * v - PL
            ok = y_ok & (col >= 0) & (col < W)
            kv = tl.load(k_taps + (u * K + v) * HO * WO, mask=p_ok, other=0).to(ACC)
            xv = tl.load(x_rows + (y * sxh + col)[None, :], mask=c_ok[:, None] & ok[None, :], other=0).to(ACC)
            acc += xv * kv[None, :]
    out = out_ptr + (b.to(tl.int64) * C + ch[:, None]) * (HO * WO) + p[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _grad_input_kernel(go_ptr, k_ptr, gx_ptr, C, H, W, GC, HO, WO, PT, PL, CBLOCKS, TILES,
                       K: tl.constexpr, S: tl.constexpr, D: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # grad_x[b, ch, y, x] = sum over taps (u, v) with s*i + d*u - pt = y, s*j + d*v - pl = x of
    # k[b, g, uv, i, j] * grad_out[b, ch, i, j]: a gather over BLOCK_P input positions, so no two
    # programs write the same element.
    tile, b, bg, ch, c_ok = _channel_block(C, GC, CBLOCKS, TILES, BLOCK_C)
    q = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    q_ok = q < H * W
    y, x = q // W, q % W
    go_planes = go_ptr + (b.to(tl.int64) * C + ch[:, None]) * (HO * WO)
    k_taps = k_ptr + bg.to(tl.int64) * (K * K * HO * WO)
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for u in range(K):
        si = y + PT - D * u  # = s * i
        i = si // S
        i_ok = q_ok & (si >= 0) & (si % S == 0) & (i < HO)
        for v in range(K):
            sj = x + PL - D * v
            j = sj // S
            ok = i_ok & (sj >= 0) & (sj % S == 0) & (j < WO)
            pos = i * WO + j
            kv = tl.load(k_taps + (u * K + v) * HO * WO + pos, mask=ok, other=0).to(ACC)
            gv = tl.load(go_planes + pos[None, :], mask=c_ok[:, None] & ok[None, :], other=0).to(ACC)
            acc += gv * kv[None, :]
    gx = gx_ptr + (b.to(tl.int64) * C + ch[:, None]) * (H * W) + q[None, :]
    tl.store(gx, acc.to(gx_ptr.dtype.element_ty), mask=c_ok[:, None] & q_ok[None, :])


@triton.jit
def _grad_kernels_kernel(go_ptr, x_ptr, gk_ptr, sxb, sxc, sxh, C, H, W, GC, HO, WO, PT, PL, TILES,
                         K: tl.constexpr, S: tl.constexpr, D: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    # grad_k[b, g, uv, i, j] = sum_c grad_out[b, g*gc + c, i, j] * x[b, g*gc + c, s*i + d*u - pt, s*j + d*v - pl]:
    # a program holds all K*K taps (padded to BLOCK_T) of BLOCK_P positions and loops over the group's channels.
    pid = tl.program_id(0)
    tile, bg = pid % TILES, pid // TILES
    b, c0 = bg // (C // GC), (bg % (C // GC)) * GC
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < HO * WO
    t = tl.arange(0, BLOCK_T)
    t_ok = t < K * K
    y = S * (p // WO)[None, :] + D * (t // K)[:, None] - PT
    col = S * (p % WO)[None, :] + D * (t % K)[:, None] - PL
    ok = t_ok[:, None] & p_ok[None, :] & (y >= 0) & (y < H) & (col >= 0) & (col < W)
    x_taps = x_ptr + b.to(tl.int64) * sxb + c0 * sxc + y * sxh + col
    go_row = go_ptr + (b.to(tl.int64) * C + c0) * (HO * WO) + p
    acc = tl.zeros((BLOCK_T, BLOCK_P), dtype=ACC)
    for c in range(GC):
        gv = tl.load(go_row + c * (HO * WO), mask=p_ok, other=0).to(ACC)
        xv = tl.load(x_taps + c * sxc, mask=ok, other=0).to(ACC)
        acc += xv * gv[None, :]
    gk = gk_ptr + bg.to(tl.int64) * (K * K * HO * WO) + t[:, None] * (HO * WO) + p[None, :]
    tl.store(gk, acc.to(gk_ptr.dtype.element_ty), mask=t_ok[:, None] & p_ok[None, :])


def _constants(dtype: torch.dtype, kernel_size: int, stride: int, dilation: int) -> dict[str, object]:
    """What every kernel is specialised on: the geometry and the accumulator dtype (fp64 for double, else fp32)."""
    return dict(K=kernel_size, S=stride, D=dilation, ACC=tl.float64 if dtype == torch.float64 else tl.float32)


def _channel_tiles(group_channels: int, positions: int) -> dict[str, int]:
    """Forward and input gradient: blocks of up to 16 of a group's channels (they share each tap's
    kernel load) by tiles of positions."""
    block_c = min(triton.next_power_of_2(group_channels), 16)
    block_p = min(256, TILE // block_c)
    return dict(CBLOCKS=triton.cdiv(group_channels, block_c), TILES=triton.cdiv(positions, block_p),
                BLOCK_C=block_c, BLOCK_P=block_p)


def _tap_tiles(taps: int, positions: int) -> dict[str, int]:
    """Kernel gradient: all taps (padded to a power of two) by tiles of positions."""
    block_t = triton.next_power_of_2(taps)
    block_p = max(16, TILE // block_t)
    return dict(TILES=triton.cdiv(positions, block_p), BLOCK_T=block_t, BLOCK_P=block_p)


def _check(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int) -> None:
    if x.dim() != 4 or kernels.dim() != 5 or kernels.shape[0] != x.shape[0] or x.shape[1] % kernels.shape[1] \
            or kernels.shape[2] != kernel_size ** 2:
        raise ValueError("triton involution: x (B, C, H, W) and kernels (B, G, K*K, Ho, Wo) do not match")
    if x.dtype != kernels.dtype or x.device != kernels.device:
        raise ValueError("triton involution: x and kernels differ in dtype or device")
    if x.stride(3) != 1 or not kernels.is_contiguous():
        raise ValueError("triton involution: x needs unit column stride, kernels must be contiguous")


def _device(x: torch.Tensor) -> torch.cuda.device:
    """Launch on x's GPU (-1: no device switch, for CPU tensors in the interpreter)."""
    return torch.cuda.device(x.device.index if x.is_cuda else -1)


def forward(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int, dilation: int,
            pad_top: int, pad_left: int) -> torch.Tensor:
    """The aggregation (see :func:`.fused_involution.aggregate`): (B, C, Ho, Wo), contiguous."""
    _check(x, kernels, kernel_size)
    b, c, h, w = x.shape
    groups, _, ho, wo = kernels.shape[1:]
    out = x.new_empty(b, c, ho, wo)
    tiling = _channel_tiles(c // groups, ho * wo)
    if out.numel():
        with _device(x):
            _forward_kernel[(b * groups * tiling["CBLOCKS"] * tiling["TILES"],)](
                x, kernels, out, *x.stride()[:3], c, h, w, c // groups, ho, wo, pad_top, pad_left,
                **_constants(x.dtype, kernel_size, stride, dilation), **tiling)
    return out


def backward(grad_out: torch.Tensor, x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int,
             dilation: int, pad_top: int, pad_left: int, need_input: bool,
             need_kernels: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_x, grad_kernels) for a contiguous ``grad_out``; None where not needed."""
    _check(x, kernels, kernel_size)
    if not grad_out.is_contiguous() or grad_out.dtype != x.dtype:
        raise ValueError("triton involution: grad_out must be contiguous, same dtype")
    b, c, h, w = x.shape
    groups, kk, ho, wo = kernels.shape[1:]
    constants = _constants(x.dtype, kernel_size, stride, dilation)
    grad_x = grad_k = None
    with _device(x):
        if need_input:
            grad_x = torch.empty(b, c, h, w, dtype=x.dtype, device=x.device)
            tiling = _channel_tiles(c // groups, h * w)
            if grad_x.numel():
                _grad_input_kernel[(b * groups * tiling["CBLOCKS"] * tiling["TILES"],)](
                    grad_out, kernels, grad_x, c, h, w, c // groups, ho, wo, pad_top, pad_left, **constants, **tiling)
        if need_kernels:
            grad_k = torch.empty_like(kernels)
            tiling = _tap_tiles(kk, ho * wo)
            if grad_k.numel():
                _grad_kernels_kernel[(b * groups * tiling["TILES"],)](
                    grad_out, x, grad_k, *x.stride()[:3], c, h, w, c // groups, ho, wo, pad_top, pad_left,
                    **constants, **tiling)
    return grad_x, grad_k
