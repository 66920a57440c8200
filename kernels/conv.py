"""NHWC implicit-GEMM convolution with fused epilogues.

The GEMM view: rows are output pixels ``M = B * OH * OW``, columns are output channels
``N``, and the reduction runs over ``K = KH * KW * C`` (filter taps x input channels). The
input is never unfolded: each K-tile is one filter tap ``(r, s)`` and a block of channels,
loaded straight from the NHWC input with the padding handled by the load mask. Small
``C`` (the stem's 3 channels) is padded up to the dot's minimum K by the same mask.

Geometry that is known when a plan is made is a constexpr: kernel size, stride, padding,
whether C fills whole K-tiles (no channel mask), and whether the conv is a 1x1 stride-1
GEMM over evenly strided pixels (then A is a plain [M, C] matrix and, with aligned C, the
main loop has no mask at all). Rows past M and columns past N are clamped to the last valid
one rather than masked, so VALID convs load without masks too.

Weights: float ones HWIO (N contiguous), INT8 ones K contiguous (:func:`pack_weight`), the
B operand layout INT8 tensor-core MMA takes from shared memory without a transpose.

Split-K: for small M the reduction is split over grid axis 1; each split stores its partial
sums (int32 or fp32) and :func:`_splitk_reduce_kernel` adds them in split order and runs the
epilogue, so results do not depend on timing and INT8 stays exact.

Epilogue, in this order, each part chosen by a constexpr (or by a pointer's dtype):
  1. INT8 only: ``acc(int32) -> fp32 * scale[n]`` with ``scale = x_scale * w_scale[n]``
  2. ``+ bias[n]`` (folded BatchNorm, or the conv's own bias)
  3. ``+ residual`` (the block's shortcut; an INT8 shortcut is dequantised with
     ``res_scale``); the residual scale of Inception-ResNet is folded into the weights
     and the bias beforehand (:func:`fold_scale`)
  4. ReLU
  5. store, for each destination: float, or INT8 requantised as ONNX ``QuantizeLinear``
     does it (``saturate(round_half_even(v / y_scale))``, zero point 0), by a multiply and
     one exact correction instead of a division (:func:`_requantize`)

Destinations: the output columns may be split over up to three tensors (horizontal fusion
of the 1x1 heads that read the same input). Each destination is any NHWC view with channel
stride 1, typically a channel slice ``buf[..., off:off + n]`` of a concat buffer, so a
branch writes its part of the concat in place.

Precisions: fp16/bf16 inputs with fp32 accumulation; fp32 with IEEE dot products
(no TF32), for parity tests; int8 x int8 with int32 accumulation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import (ALL_DTYPES, bound_launch, check_dtype, check_input, check_nhwc, check_vector,
                      clamp_pow2, config_kwargs, overlaps)
from . import tuning as _tuning
from .env import interpreting
from .launches import MAX_DESTINATIONS


# --------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------

@triton.jit
def _requantize(v, y_scale, y_inv, EXACT_FMA: tl.constexpr):
    """ONNX QuantizeLinear, ``saturate(round_half_even(v / y_scale))``, bit-exact but without
    a per-element IEEE division.

    ``y_inv`` is the correctly rounded ``1 / y_scale`` (from the host). ``q = v * y_inv`` is
    within an ulp of the quotient; one correction with the exact residual ``v - q * y_scale``
    gives the correctly rounded quotient (Markstein's theorem), which is what the division
    returns. The residual is exact from a fused multiply-add on a GPU; the interpreter has
    none (its fma rounds twice), so there it is formed exactly from a split product.
    """
    q = v * y_inv
    if EXACT_FMA:
        e = tl.fma(-q, y_scale, v)
    else:
        e = _exact_residual(v, q, y_scale)
    q = q + e * y_inv
    q = tl.minimum(tl.maximum(q, -128.0), 127.0)
    return (q + 12582912.0) - 12582912.0          # 1.5 * 2**23: fp32 rounds half to even


@triton.jit
def _exact_residual(v, q, s):
    """``v - q * s`` exactly, without an fma: Veltkamp splits of ``q`` and ``s`` give the
    product as ``p + err`` (Dekker), and ``v - p`` is exact since ``p`` is within a factor
    two of ``v``."""
    cq = q * 4097.0
    qh = cq - (cq - q)
    ql = q - qh
    cs = s * 4097.0
    sh = cs - (cs - s)
    sl = s - sh
    p = q * s
    err = ((qh * sh - p) + qh * sl + ql * sh) + ql * sl
    return (v - p) - err


@triton.jit
def _store_slice(y_ptr, v, nb, oh, ow, m_ok, cols, lo, hi,
                 syn, syh, syw, y_scale, y_inv, EXACT_FMA: tl.constexpr):
    """Store the tile columns ``lo <= col < hi`` of ``v`` into ``y`` at channel ``col - lo``.

    The conversion is done per destination on purpose: converting once and storing three
    times keeps the converted tile live across the stores and spills the 3-way INT8 case.
    """
    ok = m_ok[:, None] & (cols >= lo)[None, :] & (cols < hi)[None, :]
    row = nb.to(tl.int64) * syn + oh * syh + ow * syw
    ptrs = y_ptr + row[:, None] + (cols - lo)[None, :]
    if y_ptr.dtype.element_ty == tl.int8:
        tl.store(ptrs, _requantize(v, y_scale, y_inv, EXACT_FMA).to(tl.int8), mask=ok)
    else:
        tl.store(ptrs, v.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _epilogue(acc, rm, rn, M, bias_ptr, scale_ptr, res_ptr, y0_ptr, y1_ptr, y2_ptr,
              OH, OW, N_TOTAL, N0, N01,
              srn, srh, srw, sy0n, sy0h, sy0w, sy1n, sy1h, sy1w, sy2n, sy2h, sy2w,
              res_scale, y_scale, y_inv,
              IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr,
              NUM_DEST: tl.constexpr, EXACT_FMA: tl.constexpr):
    """Dequantise, bias, shortcut, ReLU, store to each destination (fp32 math)."""
    m_ok = rm < M
    n_ok = rn < N_TOTAL
    ow = rm % OW
    t = rm // OW
    oh = t % OH
    nb = t // OH
    v = acc.to(tl.float32)
    if IS_INT8:
        sc = tl.load(scale_ptr + rn, mask=n_ok, other=0.0)
        v = v * sc[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0)
        v = v + bias[None, :]
    if HAS_RES:
        rrow = nb.to(tl.int64) * srn + oh * srh + ow * srw
        res = tl.load(res_ptr + rrow[:, None] + rn[None, :],
                      mask=m_ok[:, None] & n_ok[None, :], other=0).to(tl.float32)
        if res_ptr.dtype.element_ty == tl.int8:
            res = res * res_scale
        v = v + res
    if RELU:
        v = tl.maximum(v, 0.0)
    if NUM_DEST == 1:
        _store_slice(y0_ptr, v, nb, oh, ow, m_ok, rn, 0, N_TOTAL, sy0n, sy0h, sy0w, y_scale, y_inv, EXACT_FMA)
    else:
        _store_slice(y0_ptr, v, nb, oh, ow, m_ok, rn, 0, N0, sy0n, sy0h, sy0w, y_scale, y_inv, EXACT_FMA)
        _store_slice(y1_ptr, v, nb, oh, ow, m_ok, rn, N0, N01, sy1n, sy1h, sy1w, y_scale, y_inv, EXACT_FMA)
        if NUM_DEST == 3:
            _store_slice(y2_ptr, v, nb, oh, ow, m_ok, rn, N01, N_TOTAL, sy2n, sy2h, sy2w, y_scale, y_inv,
                         EXACT_FMA)


@triton.jit
def _tile_ids(M, N_TOTAL, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M row-tiles share each column-tile sweep (L2 reuse of weights)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N_TOTAL, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % group) % group_rows, (pid % group) // group_rows


@triton.jit
def _mma(a, b, acc, IS_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``acc + a @ b``. The accumulator's dtype is named (int32 for int8): Triton 3.6 does
    not take it from ``acc`` and would refuse an int32 accumulator."""
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IS_FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc, out_dtype=acc.dtype)


@triton.jit
def _conv_kernel(
    # pointers
    x_ptr,                    # input, NHWC view (channel stride 1)
    w_ptr,                    # weights [KH*KW*C, N_TOTAL] (HWIO) or, W_KMAJOR, [N_TOTAL, KH, KW, C_pad]
    bias_ptr,                 # [N_TOTAL] fp32 (used if HAS_BIAS)
    scale_ptr,                # [N_TOTAL] fp32 dequant scale x_scale * w_scale[n] (INT8 input)
    res_ptr,                  # shortcut, NHWC view shaped like destination 0 (used if HAS_RES)
    y0_ptr, y1_ptr, y2_ptr,   # destinations: columns [0, N0), [N0, N01), [N01, N_TOTAL)
    part_ptr,                 # SPLIT_K > 1: partial sums [SPLIT_K, M, N_TOTAL] (int32 or fp32)
    # sizes
    BATCH, H, W, C,           # input
    OH, OW, N_TOTAL,          # output pixels and total output channels
    N0, N01,                  # column boundaries between destinations
    # strides, in elements (channel stride is 1 everywhere)
    sxn, sxh, sxw,
    swn, swt,                 # W_KMAJOR: weight row (output channel) and tap strides
    srn, srh, srw,
    sy0n, sy0h, sy0w,
    sy1n, sy1h, sy1w,
    sy2n, sy2h, sy2w,
    # quantisation scalars (fp32)
    res_scale,                # INT8 shortcut -> float
    y_scale, y_inv,           # float -> INT8 destinations: the scale and its rounded reciprocal
    # constexprs: geometry, known when the plan is made, so masks and divisions fold away
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    EVEN_C: tl.constexpr,     # C % BLOCK_K == 0: no channel mask
    GEMM: tl.constexpr,       # 1x1 stride 1 pad 0 over evenly strided pixels: a plain [M, C] GEMM
    W_KMAJOR: tl.constexpr,   # weight rows are output channels, K contiguous (the INT8 layout)
    W_ZERO_TAIL: tl.constexpr,  # W_KMAJOR, C ragged: each tap's channels are zero-padded to a
    #                             whole number of K-tiles, so the weight load needs no mask
    SPLIT_K: tl.constexpr,    # programs along the reduction (grid axis 1)
    # constexprs: epilogue
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr,
    NUM_DEST: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter only: its dot mishandles bf16, so widen to fp32
    EXACT_FMA: tl.constexpr,   # the hardware fma is exact (False under the interpreter)
    # constexprs: tile
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    M = BATCH * OH * OW
    pid_m, pid_n = _tile_ids(M, N_TOTAL, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)        # output pixel index
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)        # output channel index
    rk = tl.arange(0, BLOCK_K)
    # Rows past M and columns past N read the last valid row and column instead of being
    # masked: the loads need no bounds mask, and the store drops what they compute.
    # An N-contiguous weight keeps a column mask instead: a clamped column index is not
    # contiguous, and the tile would no longer be copied asynchronously.
    rm_c = tl.minimum(rm, M - 1)
    if W_KMAJOR:
        rn_c = tl.minimum(rn, N_TOTAL - 1)
        w_tile = w_ptr + rn_c.to(tl.int64)[None, :] * swn + rk[:, None]     # [BLOCK_K, BLOCK_N]
        n_ok = tl.full((BLOCK_N,), 1, tl.int1)
    else:
        w_tile = w_ptr + rk.to(tl.int64)[:, None] * N_TOTAL + rn[None, :]
        n_ok = rn < N_TOTAL

    IS_INT8: tl.constexpr = x_ptr.dtype.element_ty == tl.int8
    IS_FP32: tl.constexpr = x_ptr.dtype.element_ty == tl.float32
    if IS_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    c_blocks = tl.cdiv(C, BLOCK_K)
    steps = KH * KW * c_blocks
    per_split = tl.cdiv(steps, SPLIT_K)
    k_lo = tl.program_id(1) * per_split
    k_hi = tl.minimum(steps, k_lo + per_split)
    if GEMM:
        # NHWC 1x1 stride 1: pixel m sits at m * sxw (the launcher checked the strides), so
        # A is a plain [M, C] matrix and each step moves both pointers by BLOCK_K.
        a_ptrs = x_ptr + rm_c.to(tl.int64)[:, None] * sxw + (k_lo * BLOCK_K + rk)[None, :]
        if W_KMAJOR:
            b_ptrs = w_tile + k_lo * BLOCK_K
        else:
            b_ptrs = w_tile + (k_lo * BLOCK_K).to(tl.int64) * N_TOTAL
        for kt in range(k_lo, k_hi):
            if EVEN_C:
                a = tl.load(a_ptrs)
                if W_KMAJOR:
                    b = tl.load(b_ptrs)
                else:
                    b = tl.load(b_ptrs, mask=n_ok[None, :], other=0)
            else:
                k_ok = rk < C - kt * BLOCK_K
                a = tl.load(a_ptrs, mask=k_ok[None, :], other=0)
                if W_ZERO_TAIL:
                    b = tl.load(b_ptrs)
                else:
                    b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0)
            acc = _mma(a, b, acc, IS_FP32, UPCAST_DOT)
            a_ptrs += BLOCK_K
            if W_KMAJOR:
                b_ptrs += BLOCK_K
            else:
                b_ptrs += BLOCK_K * N_TOTAL
    else:
        ow = rm_c % OW
        t = rm_c // OW
        oh = t % OH
        nb = t // OH
        ih0 = oh * STRIDE_H - PAD_H
        iw0 = ow * STRIDE_W - PAD_W
        a_rows = x_ptr + nb.to(tl.int64) * sxn + ih0 * sxh + iw0 * sxw   # [BLOCK_M] tap (0, 0)
        # The reduction walks (tap, channel block); the position is carried from step to step
        # instead of divided out of the step index.
        tap = k_lo // c_blocks
        c0 = (k_lo - tap * c_blocks) * BLOCK_K
        for kt in range(k_lo, k_hi):
            r = tap // KW                                  # KW is a constexpr: no division
            s = tap - r * KW
            a_ptrs = a_rows[:, None] + (r * sxh + s * sxw + c0) + rk[None, :]
            ok = tl.full((BLOCK_M,), 1, tl.int1)
            if PAD_H > 0:                                  # VALID rows never leave the image
                ih = ih0 + r
                ok = ok & (ih >= 0) & (ih < H)
            if PAD_W > 0:
                iw = iw0 + s
                ok = ok & (iw >= 0) & (iw < W)
            if W_KMAJOR:
                b_ptrs = w_tile + (tap * swt + c0)
            else:
                b_ptrs = w_tile + (tap * C + c0).to(tl.int64) * N_TOTAL
            if EVEN_C:
                if W_KMAJOR:
                    b = tl.load(b_ptrs)
                else:
                    b = tl.load(b_ptrs, mask=n_ok[None, :], other=0)
                if PAD_H + PAD_W > 0:
                    a = tl.load(a_ptrs, mask=ok[:, None], other=0)
                else:
                    a = tl.load(a_ptrs)
            else:
                k_ok = rk < C - c0
                a = tl.load(a_ptrs, mask=ok[:, None] & k_ok[None, :], other=0)
                if W_ZERO_TAIL:
                    b = tl.load(b_ptrs)
                else:
                    b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0)
            acc = _mma(a, b, acc, IS_FP32, UPCAST_DOT)
            c0 += BLOCK_K
            wrap = c0 >= C
            tap = tl.where(wrap, tap + 1, tap)
            c0 = tl.where(wrap, 0, c0)

    if SPLIT_K == 1:
        _epilogue(acc, rm, rn, M, bias_ptr, scale_ptr, res_ptr, y0_ptr, y1_ptr, y2_ptr,
                  OH, OW, N_TOTAL, N0, N01, srn, srh, srw, sy0n, sy0h, sy0w, sy1n, sy1h, sy1w,
                  sy2n, sy2h, sy2w, res_scale, y_scale, y_inv,
                  IS_INT8, HAS_BIAS, RELU, HAS_RES, NUM_DEST, EXACT_FMA)
    else:
        part = part_ptr + (tl.program_id(1) * M + rm).to(tl.int64)[:, None] * N_TOTAL + rn[None, :]
        tl.store(part, acc, mask=(rm < M)[:, None] & (rn < N_TOTAL)[None, :])


@triton.jit
def _splitk_reduce_kernel(
    part_ptr,                 # [SPLIT_K, M, N_TOTAL] partial sums of _conv_kernel
    bias_ptr, scale_ptr, res_ptr, y0_ptr, y1_ptr, y2_ptr,
    M, OH, OW, N_TOTAL, N0, N01,
    srn, srh, srw, sy0n, sy0h, sy0w, sy1n, sy1h, sy1w, sy2n, sy2h, sy2w,
    res_scale, y_scale, y_inv,
    SPLIT_K: tl.constexpr, IS_INT8: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr, NUM_DEST: tl.constexpr,
    EXACT_FMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Sum the split-K partials in split order (deterministic; exact for int32) and run the
    conv's epilogue on the sum."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (rm < M)[:, None] & (rn < N_TOTAL)[None, :]
    ptrs = part_ptr + rm.to(tl.int64)[:, None] * N_TOTAL + rn[None, :]
    acc = tl.load(ptrs, mask=ok, other=0)
    for k in tl.static_range(1, SPLIT_K):
        acc += tl.load(ptrs + k * M * N_TOTAL, mask=ok, other=0)
    _epilogue(acc, rm, rn, M, bias_ptr, scale_ptr, res_ptr, y0_ptr, y1_ptr, y2_ptr,
              OH, OW, N_TOTAL, N0, N01, srn, srh, srw, sy0n, sy0h, sy0w, sy1n, sy1h, sy1w,
              sy2n, sy2h, sy2w, res_scale, y_scale, y_inv,
              IS_INT8, HAS_BIAS, RELU, HAS_RES, NUM_DEST, EXACT_FMA)


REDUCE_META = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4}

# The jitted kernels of this file under the names the AOT specs use (kernels.aot.specs):
# each kernel file lists its own, so the compile tool needs none of their private names.
JIT_KERNELS = {"conv": _conv_kernel, "splitk_reduce": _splitk_reduce_kernel}


# --------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------

def interpreter_config(m: int, n: int, c: int) -> dict:
    """The one tile used under the interpreter, for an ``m x n`` output over ``c`` input
    channels: as large as the problem allows (up to 256x128x128), since the interpreter's
    cost is per program and per loop step, not per element."""
    return {"BLOCK_M": clamp_pow2(m, 16, 256), "BLOCK_N": clamp_pow2(n, 16, 128),
            "BLOCK_K": clamp_pow2(c, 16, 128), "GROUP_M": 8, "SPLIT_K": 1, "num_warps": 4, "num_stages": 1}


def _device_arch(device: torch.device) -> Tuple[int, int]:
    """(compute capability as 80/90/..., SM count) of a CUDA device."""
    props = torch.cuda.get_device_properties(device)
    return props.major * 10 + props.minor, props.multi_processor_count


def chosen_config(geo: "_Geometry", dtype: torch.dtype, device=None, arch: Optional[int] = None,
                  sms: Optional[int] = None) -> _tuning.Choice:
    """The tile and split-K a GPU launch of ``geo`` uses: the shipped table through the wave
    model (:func:`kernels.tuning.choose`), or the autotune cache when ``KERNELS_AUTOTUNE=1``.
    ``arch``/``sms`` default to the device's."""
    if arch is None or sms is None:
        dev_arch, dev_sms = _device_arch(device)
        arch, sms = arch or dev_arch, sms or dev_sms
    m = geo.b * geo.oh * geo.ow
    if _tuning.autotune_requested() and device is not None:
        return _autotuned(geo, dtype, device, arch, sms)
    return _tuning.choose(m, geo.n, geo.c, geo.kh, geo.kw, geo.stride[0], dtype, arch, sms)


def describe_choice(m: int, n: int, c: int, kh: int, kw: int, stride: int, dtype: torch.dtype,
                    arch: int = 90, sms: int = _tuning.DEFAULT_SMS) -> str:
    """One line for a plan listing: the tile, split-K and wave efficiency the table gives."""
    return _tuning.choose(m, n, c, kh, kw, stride, dtype, arch, sms).describe()


def _autotuned(geo, dtype, device, arch, sms) -> _tuning.Choice:
    """Time each table candidate on this layer's shape (random data) and cache the winner."""
    import triton.testing

    m = geo.b * geo.oh * geo.ow
    options = _tuning.options_for(m, geo.n, geo.c, geo.kh, geo.kw, geo.stride[0], dtype, arch, sms)
    key = _tuning.cache_key(arch, m, geo.n, geo.c, geo.kh, geo.kw, geo.stride[0], dtype)
    x = torch.zeros((geo.b, geo.h, geo.w, geo.c), dtype=dtype, device=device)
    w = pack_weight(torch.zeros((geo.n, geo.c, geo.kh, geo.kw), device=device), dtype)
    y = torch.empty((geo.b, geo.oh, geo.ow, geo.n), dtype=torch.float32 if dtype == torch.int8 else dtype,
                    device=device)
    scale = torch.ones(geo.n, device=device) if dtype == torch.int8 else None

    def bench(choice):
        run = prepare_conv2d(x, w, None, stride=geo.stride, padding=geo.padding, out=y, scale=scale,
                             config=choice.meta())
        return triton.testing.do_bench(run, warmup=5, rep=20)

    return _tuning.autotune(key, options, bench)


# --------------------------------------------------------------------------------------
# Weight preparation (host side, once per model)
# --------------------------------------------------------------------------------------

def pack_weight(w_oihw: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """OIHW (PyTorch/ONNX) -> the layout the kernel reads, shaped ``[KH, KW, C, N]``.

    Float weights are HWIO contiguous: ``[KH*KW*C, N]`` with N contiguous. INT8 weights are
    stored ``[N, KH, KW, C_pad]`` and returned as the ``[KH, KW, C, N]`` view of it, so that
    K is contiguous: INT8 tensor-core MMA wants its B operand K-major, and with this layout
    the weight tile is copied to shared memory asynchronously like the activations instead
    of loaded to registers and transposed. ``C_pad`` is C when C is a multiple of 16, else
    C rounded up to 32 with zeros (the stem's 3 channels): each tap's run of channels then
    starts 16-byte aligned, and a K-tile may read into the zeros without a mask.
    Concatenate packed weights along N with :func:`concat_packed` (a plain
    ``torch.cat(dim=3)`` returns the N-contiguous layout, which the kernel also reads, more
    slowly for INT8).
    """
    if w_oihw.dim() != 4:
        raise ValueError(f"conv weight must be OIHW with 4 dims, got shape {tuple(w_oihw.shape)}")
    w = w_oihw if dtype is None else w_oihw.to(dtype)
    if w.dtype != torch.int8:
        return w.permute(2, 3, 1, 0).contiguous()
    n, c, kh, kw = w.shape
    c_pad = c if c % 16 == 0 else -(-c // 32) * 32
    buf = torch.zeros((n, kh, kw, c_pad), dtype=w.dtype, device=w.device)
    buf[..., :c] = w.permute(0, 2, 3, 1)
    return buf.permute(1, 2, 3, 0)[:, :, :c, :]


def weight_is_kmajor(weight: torch.Tensor) -> bool:
    """True for the K-contiguous layout of :func:`pack_weight` (a view of ``[N, KH, KW,
    C_pad]``), False for HWIO contiguous; raises for anything else."""
    if weight.is_contiguous():
        return False
    kh, kw, c, n = weight.shape
    st = weight.stride()
    c_pad = _kmajor_channel_run(weight)
    ok = c_pad >= c and (c == 1 or st[2] == 1)
    ok = ok and (kw == 1 or st[1] == c_pad) and (kh == 1 or st[0] == kw * c_pad)
    ok = ok and (n == 1 or st[3] == kh * kw * c_pad)
    if ok:
        return True
    raise ValueError("weight must be packed [KH, KW, C, N] (see kernels.conv.pack_weight): HWIO contiguous "
                     f"or the K-contiguous INT8 view; got strides {tuple(weight.stride())} for shape "
                     f"{tuple(weight.shape)}")


def _kmajor_channel_run(weight: torch.Tensor) -> int:
    """``C_pad`` of a K-contiguous weight view: the elements between consecutive taps."""
    kh, kw, c, n = weight.shape
    st = weight.stride()
    return st[1] if kw > 1 else (st[0] if kh > 1 else (st[3] if n > 1 else c))


def _kmajor_storage(weight: torch.Tensor) -> torch.Tensor:
    """The ``[N, KH, KW, C_pad]`` tensor behind a K-contiguous weight view, padding included."""
    kh, kw, c, n = weight.shape
    c_pad = _kmajor_channel_run(weight)
    return weight.as_strided((n, kh, kw, c_pad), (kh * kw * c_pad, kw * c_pad, c_pad, 1))


def concat_packed(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Packed weights side by side along N (horizontal fusion), keeping their layout."""
    weights = list(weights)
    if not weights:
        raise ValueError("concat_packed needs at least one weight")
    if all(weight_is_kmajor(w) for w in weights):
        c = weights[0].shape[2]
        buf = torch.cat([_kmajor_storage(w) for w in weights], dim=0)
        return buf.permute(1, 2, 3, 0)[:, :, :c, :]
    return torch.cat([w.contiguous() for w in weights], dim=3).contiguous()


def fold_bn(w_oihw: torch.Tensor, bn: torch.nn.BatchNorm2d, conv_bias: Optional[torch.Tensor] = None):
    """Fold an eval-mode BatchNorm into the conv: returns ``(w_oihw, bias)`` in fp32."""
    inv = (bn.weight.detach().float() if bn.weight is not None else torch.ones_like(bn.running_var)) \
        / torch.sqrt(bn.running_var.float() + bn.eps)
    shift = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(inv)
    w = w_oihw.detach().float() * inv[:, None, None, None]
    b0 = conv_bias.detach().float() if conv_bias is not None else torch.zeros_like(inv)
    b = shift + (b0 - bn.running_mean.float()) * inv
    return w, b


def fold_scale(w: torch.Tensor, bias: Optional[torch.Tensor], scale: float):
    """Residual up-projection: ``x + s * (W y + b)`` -> ``x + (sW) y + s b``."""
    return w * scale, (None if bias is None else bias * scale)


WEIGHT_QMAX = 127


def quantize_weight(w_oihw: torch.Tensor):
    """Symmetric per-output-channel INT8: returns ``(q_oihw int8, scale fp32 [O])``.

    ``scale = max|w| / 127`` per output channel (1 for an all-zero channel);
    ``q = clamp(round_half_even(w / scale), -127, 127)``.
    """
    w = w_oihw.detach().float()
    amax = w.abs().amax(dim=(1, 2, 3))
    scale = torch.where(amax > 0, amax / float(WEIGHT_QMAX), torch.ones_like(amax))
    # The narrow, symmetric weight range [-127, 127] is the one the Q/DQ file carries
    # (TensorRT's weight range), so the Triton engine runs exactly the file's integers;
    # -128 never appears in a weight, and the int8 GEMM stays symmetric around zero.
    q = torch.clamp(torch.round(w / scale[:, None, None, None]), -WEIGHT_QMAX, WEIGHT_QMAX)
    return q.to(torch.int8), scale


def dequant_scale(w_scale: torch.Tensor, x_scale: float) -> torch.Tensor:
    """The per-channel epilogue scale ``x_scale * w_scale[n]`` in fp32 (kernel and reference)."""
    return w_scale.float() * torch.tensor(float(x_scale), dtype=torch.float32, device=w_scale.device)


# --------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------

def out_size(h: int, w: int, kh: int, kw: int, stride, padding):
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _pair(v):
    if isinstance(v, int):
        return v, v
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v}")
    return v


def prepare_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                   stride=1, padding=0, relu: bool = True,
                   residual: Optional[torch.Tensor] = None,
                   out: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None,
                   out_dtype: Optional[torch.dtype] = None,
                   scale: Optional[torch.Tensor] = None, res_scale: float = 1.0,
                   out_scale: Optional[float] = None,
                   config=None) -> Callable[[], object]:
    """Fused NHWC convolution ``relu?(conv(x, W) [* scale] + bias [+ residual])``, prepared:
    every check, the tile and split-K choice, the grid, the split-K workspace and the
    argument packing are done now, once; the returned zero-argument callable only launches,
    on the tensors given here (their storage, not their values, is fixed), and returns
    ``out``. :func:`conv2d` is ``prepare_conv2d(...)()``.

    x:        [B, H, W, C] NHWC view (channel stride 1); fp16, bf16, fp32 or int8.
    weight:   [KH, KW, C, N] from :func:`pack_weight` (HWIO contiguous, or for INT8 the
              K-contiguous view), same dtype as ``x``.
    bias:     [N] fp32 or None (folded BN / conv bias; residual scale already folded in).
    stride, padding: int or (h, w) pairs; padding is symmetric (SAME for odd k is k // 2).
    relu:     apply ReLU last.
    residual: [B, OH, OW, N] NHWC view added before the ReLU; may alias ``out`` (in place).
              An int8 residual is dequantised with ``res_scale``.
    out:      None (allocated here, once), one NHWC view [B, OH, OW, N] (e.g. a concat
              slice), or a list of up to 3 views whose channel counts sum to N (horizontal
              fusion: output columns go to each in order).
    out_dtype: dtype when allocating; default x.dtype for float input, and for int8 input
              int8 if ``out_scale`` is given, else float32.
    scale:    int8 input only: [N] fp32 ``x_scale * w_scale[n]`` (:func:`dequant_scale`).
    out_scale: int8 destinations only: the per-tensor scale of the requantised output.
    config:   explicit meta-parameters (dict or triton.Config with BLOCK_M/N/K, GROUP_M,
              optionally SPLIT_K); default: the shipped tuning table on a GPU
              (:func:`chosen_config`), one problem-sized tile in the interpreter.
    """
    geo = _check_inputs(x, weight, bias, scale, stride, padding)
    outs, ret = _destinations(x, out, out_dtype, out_scale, geo)
    _check_residual(residual, outs, geo)
    return _launches(x, weight, bias, scale, residual, res_scale, outs, out_scale, relu, config, geo, ret)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, **options):
    """:func:`prepare_conv2d` and one launch; returns ``out`` (allocated when not given).
    The keywords are :func:`prepare_conv2d`'s."""
    return prepare_conv2d(x, weight, bias, **options)()


@dataclass(frozen=True)
class _Geometry:
    """The sizes of one conv call, checked: input [b, h, w, c], kernel kh x kw, n output
    channels, output oh x ow, strides and paddings."""

    b: int
    h: int
    w: int
    c: int
    kh: int
    kw: int
    n: int
    oh: int
    ow: int
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    kmajor: bool = False        # the weight is K-contiguous (see pack_weight)

    def describe(self) -> str:
        return (f"input {(self.b, self.h, self.w, self.c)}, kernel {self.kh}x{self.kw}, "
                f"stride {self.stride}, padding {self.padding}")


def _check_inputs(x, weight, bias, scale, stride, padding) -> _Geometry:
    """Check the input, the packed weight, bias, int8 scale, stride and padding."""
    check_input(x)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError("weight must be packed HWIO [KH, KW, C, N] (see kernels.conv.pack_weight), "
                         f"got {type(weight).__name__} of shape {tuple(getattr(weight, 'shape', ()))}")
    kmajor = weight_is_kmajor(weight)
    kh, kw, c, n = weight.shape
    b, h, w, cx = x.shape
    if cx != c:
        raise ValueError(f"x has {cx} channels but the weight expects {c} (weight shape {tuple(weight.shape)}, "
                         "packed HWIO; an OIHW weight must go through pack_weight first)")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device}, x on {x.device}")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"bad stride {stride} or padding {padding}: strides must be >= 1, paddings >= 0")
    oh, ow = out_size(h, w, kh, kw, (sh, sw), (ph, pw))
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{w} is too small for a {kh}x{kw} kernel, stride {stride}, padding {padding}")
    check_vector(bias, "bias", n, x.device)
    if x.dtype == torch.int8:
        if scale is None:
            raise ValueError("int8 convolution needs scale = x_scale * w_scale (see kernels.conv.dequant_scale)")
        check_vector(scale, "scale", n, x.device)
    elif scale is not None:
        raise ValueError("scale is only for int8 input; fold float scales into the weights")
    return _Geometry(b, h, w, c, kh, kw, n, oh, ow, (sh, sw), (ph, pw), kmajor)


def _destinations(x, out, out_dtype, out_scale, geo: _Geometry):
    """The destination views (allocated when ``out`` is None) and what conv2d returns;
    checks their shapes, shared dtype, channel split and int8 scale."""
    if out is None:
        if out_dtype is None:
            out_dtype = x.dtype if x.dtype != torch.int8 else (torch.int8 if out_scale is not None else torch.float32)
        outs = [torch.empty((geo.b, geo.oh, geo.ow, geo.n), dtype=out_dtype, device=x.device)]
        ret = outs[0]
    elif isinstance(out, torch.Tensor):
        outs, ret = [out], out
    else:
        outs, ret = list(out), out
    if not 1 <= len(outs) <= MAX_DESTINATIONS:
        raise ValueError(f"out takes 1 to {MAX_DESTINATIONS} destinations, got {len(outs)}")
    for i, o in enumerate(outs):
        name = f"out[{i}]" if len(outs) > 1 else "out"
        check_nhwc(o, name, device=x.device)
        check_dtype(o, name, ALL_DTYPES)
        if tuple(o.shape[:3]) != (geo.b, geo.oh, geo.ow):
            raise ValueError(f"{name} has shape {tuple(o.shape)}; expected [{geo.b}, {geo.oh}, {geo.ow}, channels] "
                             f"for {geo.describe()}")
        if o.dtype != outs[0].dtype:
            raise TypeError(f"all destinations must share one dtype: {name} is {o.dtype}, out[0] is {outs[0].dtype}")
        if overlaps(o, x):
            raise ValueError(f"{name} overlaps the input x; the conv cannot run in place")
    widths = [o.shape[3] for o in outs]
    if sum(widths) != geo.n:
        raise ValueError(f"destination channels {widths} sum to {sum(widths)}, but the weight has N = {geo.n} "
                         "output channels")
    y_int8 = outs[0].dtype == torch.int8
    if y_int8 and out_scale is None:
        raise ValueError("an int8 destination needs out_scale (the requantisation scale)")
    if out_scale is not None and not y_int8:
        raise ValueError("out_scale given but the destination is not int8")
    return outs, ret


def _check_residual(residual, outs, geo: _Geometry):
    if residual is None:
        return
    if len(outs) != 1:
        raise ValueError("residual needs a single destination")
    check_nhwc(residual, "residual", shape=(geo.b, geo.oh, geo.ow, geo.n), device=outs[0].device)
    check_dtype(residual, "residual", ALL_DTYPES)
    if overlaps(residual, outs[0]) and (residual.data_ptr() != outs[0].data_ptr()
                                        or residual.stride() != outs[0].stride()):
        raise ValueError("residual partly overlaps out; in place is only allowed when they are the same view")


_placeholders: dict = {}


def _placeholder(device: torch.device) -> torch.Tensor:
    """A one-element fp32 tensor per device for the pointer arguments a launch does not use
    (no bias, no int8 scale, no split-K workspace); made once, never read."""
    t = _placeholders.get(device)
    if t is None:
        t = _placeholders.setdefault(device, torch.zeros(1, dtype=torch.float32, device=device))
    return t


def gemm_view(x: torch.Tensor, geo: _Geometry) -> bool:
    """Whether the conv is a plain [M, C] GEMM over ``x``: 1x1, stride 1, no padding, and
    pixel ``m`` of the input at ``m * x.stride(2)`` (rows of a channel slice may be wider
    than C; the image and row strides must follow from the pixel stride)."""
    return (geo.kh == geo.kw == 1 and geo.stride == (1, 1) and geo.padding == (0, 0)
            and (geo.h == 1 or x.stride(1) == geo.w * x.stride(2))
            and (geo.b == 1 or x.stride(0) == geo.h * geo.w * x.stride(2)))


def _launches(x, weight, bias, scale, residual, res_scale, outs, out_scale, relu, config,
              geo: _Geometry, ret) -> Callable[[], object]:
    """The kernel launches (the conv, and the split-K reduction when K is split) of one
    checked conv call, with their arguments and grids bound, as one callable."""
    m, n = geo.b * geo.oh * geo.ow, geo.n
    meta = _meta(config, geo, x)
    split = meta.pop("SPLIT_K", 1)
    if split < 1:
        raise ValueError(f"SPLIT_K must be >= 1, got {split}")
    placeholder = _placeholder(x.device)
    widths = [o.shape[3] for o in outs] + [0] * (MAX_DESTINATIONS - len(outs))
    y = outs + [outs[0]] * (MAX_DESTINATIONS - len(outs))
    res = residual if residual is not None else outs[0]
    part = placeholder
    if split > 1:
        part = torch.empty((split, m, n), device=x.device,
                           dtype=torch.int32 if x.dtype == torch.int8 else torch.float32)
    y_scale = float(out_scale) if out_scale is not None else 1.0
    # the correctly rounded fp32 reciprocal of the requantisation scale
    y_inv = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(y_scale, dtype=torch.float32))
    bias_t = bias if bias is not None else placeholder
    scale_t = scale if scale is not None else placeholder
    epi_sizes = (n, widths[0], widths[0] + widths[1])
    epi_strides = (res.stride(0), res.stride(1), res.stride(2),
                   y[0].stride(0), y[0].stride(1), y[0].stride(2),
                   y[1].stride(0), y[1].stride(1), y[1].stride(2),
                   y[2].stride(0), y[2].stride(1), y[2].stride(2),
                   float(res_scale), y_scale, y_inv)
    epi_flags = dict(HAS_BIAS=bias is not None, RELU=bool(relu), HAS_RES=residual is not None,
                     NUM_DEST=len(outs), EXACT_FMA=not interpreting())
    w_strides = _weight_strides(weight, geo)
    args = (x, weight, bias_t, scale_t, res, y[0], y[1], y[2], part,
            geo.b, geo.h, geo.w, geo.c, geo.oh, geo.ow) + epi_sizes + \
           (x.stride(0), x.stride(1), x.stride(2)) + w_strides + epi_strides
    flags = dict(KH=geo.kh, KW=geo.kw, STRIDE_H=geo.stride[0], STRIDE_W=geo.stride[1],
                 PAD_H=geo.padding[0], PAD_W=geo.padding[1], EVEN_C=geo.c % meta["BLOCK_K"] == 0,
                 GEMM=gemm_view(x, geo), W_KMAJOR=geo.kmajor,
                 W_ZERO_TAIL=geo.kmajor and w_strides[1] % meta["BLOCK_K"] == 0,
                 SPLIT_K=split,
                 UPCAST_DOT=interpreting() and x.dtype == torch.bfloat16, **epi_flags)
    # INT8 results must be bit-exact: no contraction of ``acc * scale + bias`` into an
    # fma, which rounds differently from the reference.
    options = {"enable_fp_fusion": False} if x.dtype == torch.int8 else {}
    grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), split)
    steps = [functools.partial(_conv_kernel[grid], *args, **flags, **meta, **options)]
    if split > 1:
        rmeta = dict(REDUCE_META)
        rgrid = (triton.cdiv(m, rmeta["BLOCK_M"]), triton.cdiv(n, rmeta["BLOCK_N"]))
        rargs = (part, bias_t, scale_t, res, y[0], y[1], y[2], m, geo.oh, geo.ow) + epi_sizes + epi_strides
        steps.append(functools.partial(_splitk_reduce_kernel[rgrid], *rargs, SPLIT_K=split,
                                       IS_INT8=x.dtype == torch.int8, **epi_flags, **rmeta, **options))
    return bound_launch(steps, ret)


def _weight_strides(weight, geo: _Geometry) -> Tuple[int, int]:
    """(row, tap) strides of a K-contiguous weight; (0, 0) for HWIO (unused)."""
    if not geo.kmajor:
        return 0, 0
    c_pad = _kmajor_channel_run(weight)
    return geo.kh * geo.kw * c_pad, c_pad


def _meta(config, geo: _Geometry, x) -> dict:
    """The launch's meta-parameters: the explicit config, the interpreter's tile, or the
    tuning table's choice for this GPU."""
    if config is None and interpreting():
        config = interpreter_config(geo.b * geo.oh * geo.ow, geo.n, geo.c)
    if config is None:
        return chosen_config(geo, x.dtype, x.device).meta()
    meta = config_kwargs(config)
    missing = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"} - set(meta)
    if missing:
        raise ValueError(f"config lacks {sorted(missing)} (it needs BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)")
    return meta


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------

def conv2d_reference(x, weight, bias=None, *, stride=1, padding=0, relu=True, residual=None,
                     out_dtype=None, scale=None, res_scale=1.0, out_scale=None, splits=None):
    """Plain PyTorch version of :func:`conv2d` with the same arguments; returns new tensors.

    The convolution runs in fp64 (every int8 x int8 sum is exact; float inputs get an
    accurate sum, and no TF32 on a GPU), then the epilogue in fp32 in the kernel's order,
    so INT8 results are bit-exact.
    ``splits`` (channel counts) returns a list, like horizontal fusion's destinations.

    Memory traffic of the unfused sequence this replaces, per output element (fp16):
    conv writes 2 B, BN reads+writes 4 B, ReLU reads+writes 4 B, the concat copy reads+writes
    4 B, the residual add reads 2 x 2 B and writes 2 B: 14-20 B against 2 B fused (plus the
    2 B shortcut read when residual).
    """
    int8 = x.dtype == torch.int8
    xs = x.permute(0, 3, 1, 2)
    ws = weight.permute(3, 2, 0, 1)
    # fp64 products and sums: exact for int8, and never TF32 on a GPU
    acc = F.conv2d(xs.double(), ws.double(), stride=stride, padding=padding)
    if int8:
        v = acc.to(torch.int32).float() * scale.view(1, -1, 1, 1)
    else:
        v = acc.float()
    if bias is not None:
        v = v + bias.view(1, -1, 1, 1)
    if residual is not None:
        r = residual.permute(0, 3, 1, 2).float()
        if residual.dtype == torch.int8:
            r = r * torch.tensor(res_scale, dtype=torch.float32)
        v = v + r
    if relu:
        v = torch.relu(v)
    v = v.permute(0, 2, 3, 1)
    if out_dtype is None:
        out_dtype = x.dtype if not int8 else (torch.int8 if out_scale is not None else torch.float32)
    if out_dtype == torch.int8:
        v = quantize_reference(v, out_scale)
    else:
        v = v.to(out_dtype)
    v = v.contiguous()
    return list(torch.split(v, list(splits), dim=3)) if splits is not None else v


def quantize_reference(v: torch.Tensor, scale: float) -> torch.Tensor:
    """ONNX QuantizeLinear, symmetric: saturate(round_half_even(v / scale)) to int8."""
    q = v.float() / torch.tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(q), -128, 127).to(torch.int8)
