"""NHWC pooling: max 3x3/2 VALID and average 3x3/1/1 (count_include_pad=False) written
into a channel slice of a concat buffer, and the global average pool of the head.

Each program owns a tile of output pixels x channels; channels are contiguous, so every
load and store is a coalesced row of the NHWC buffer.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import (ALL_DTYPES, FLOAT_DTYPES, bound_launch, check_dtype, check_input, check_nhwc,
                      clamp_pow2, config_kwargs, overlaps)
from .env import interpreting

KSIZE = 3


@triton.jit
def _quant_store(ptrs, v, mask, y_scale):
    """Store fp32 ``v``; an int8 destination is requantised like ONNX QuantizeLinear."""
    if ptrs.dtype.element_ty == tl.int8:
        q = tl.math.div_rn(v, y_scale)
        q = tl.minimum(tl.maximum(q, -128.0), 127.0)
        q = (q + 12582912.0) - 12582912.0          # round half to even in fp32
        tl.store(ptrs, q.to(tl.int8), mask=mask)
    else:
        tl.store(ptrs, v.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _pool3x3_kernel(
    # pointers
    x_ptr, y_ptr,             # NHWC views (channel stride 1)
    # sizes
    BATCH, H, W, C, OH, OW,
    # strides, in elements
    sxn, sxh, sxw,
    syn, syh, syw,
    # quantisation scalars
    x_scale, y_scale,
    # constexprs
    IS_MAX: tl.constexpr,     # True: max 3x3 stride STRIDE VALID; False: avg 3x3/1/1 excl. pad
    STRIDE: tl.constexpr, PAD: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)     # output pixel
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)     # channel
    p_ok = rp < BATCH * OH * OW
    c_ok = rc < C
    ow = rp % OW
    t = rp // OW
    oh = t % OH
    nb = t // OH
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    x_rows = x_ptr + nb.to(tl.int64) * sxn
    if IS_MAX:
        best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    else:
        total = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for r in tl.static_range(3):
        for s in tl.static_range(3):
            ih = ih0 + r
            iw = iw0 + s
            ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + rc[None, :],
                        mask=ok[:, None] & c_ok[None, :], other=0).to(tl.float32)
            if IS_MAX:
                best = tl.maximum(best, tl.where(ok[:, None], v, float("-inf")))
            else:
                total += v
    if IS_MAX:
        out = best
    else:
        # taps inside the image: count_include_pad=False
        h_cnt = tl.minimum(ih0 + 3, H) - tl.maximum(ih0, 0)
        w_cnt = tl.minimum(iw0 + 3, W) - tl.maximum(iw0, 0)
        cnt = tl.maximum(h_cnt * w_cnt, 1).to(tl.float32)
        if x_ptr.dtype.element_ty == tl.int8:
            total = total * x_scale                   # exact int sum, then dequantise
        out = tl.math.div_rn(total, cnt[:, None])
    yrow = nb.to(tl.int64) * syn + oh * syh + ow * syw
    ptrs = y_ptr + yrow[:, None] + rc[None, :]
    _quant_store(ptrs, out, p_ok[:, None] & c_ok[None, :], y_scale)


@triton.jit
def _global_avg_kernel(
    # pointers
    x_ptr,                    # NHWC view
    y_ptr,                    # [B, C] view (channel stride 1)
    # sizes
    H, W, C,
    # strides, in elements
    sxn, sxh, sxw,
    syn,
    # scalars
    x_scale,                  # int8 input: dequantisation scale
    # constexprs
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    nb = tl.program_id(0)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = rc < C
    x_img = x_ptr + nb.to(tl.int64) * sxn
    total = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    for p0 in range(0, H * W, BLOCK_HW):
        rp = p0 + tl.arange(0, BLOCK_HW)
        ok = rp < H * W
        h = rp // W
        w = rp % W
        total += tl.load(x_img + (h * sxh + w * sxw)[:, None] + rc[None, :],
                         mask=ok[:, None] & c_ok[None, :], other=0).to(tl.float32)
    s = tl.sum(total, axis=0)
    if x_ptr.dtype.element_ty == tl.int8:
        s = s * x_scale
    mean = tl.math.div_rn(s, (H * W * 1.0))
    tl.store(y_ptr + nb.to(tl.int64) * syn + rc, mean.to(y_ptr.dtype.element_ty), mask=c_ok)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------

# GPU tiles. Pooling is memory-bound: 64 channels (128 B of fp16) per pixel row, 32 pixels
# per program (ptxas 12.9 spills 16x64 and 32x32 tiles on sm_90a at 72 registers; 32x64
# compiles to ~170 registers without spills on sm_80 and sm_90a).
POOL_META = {"BLOCK_P": 32, "BLOCK_C": 64, "num_warps": 4}
GLOBAL_AVG_META = {"BLOCK_HW": 16, "BLOCK_C": 128, "num_warps": 4}

# The jitted kernels of this file under the names the AOT specs use (kernels.aot.specs).
JIT_KERNELS = {"pool3x3": _pool3x3_kernel, "global_avg": _global_avg_kernel}


def _pool_config(p: int, c: int, config) -> dict:
    if config is not None:
        return config_kwargs(config)
    if interpreting():   # few, large programs: the interpreter's cost is per program
        return {"BLOCK_P": clamp_pow2(p, 16, 64), "BLOCK_C": clamp_pow2(c, 16, 64), "num_warps": 4}
    return dict(POOL_META)


def _prepare_pool3x3(x, out, is_max, x_scale, out_scale, config, name) -> Callable[[], torch.Tensor]:
    check_input(x)
    b, h, w, c = x.shape
    stride, pad = (2, 0) if is_max else (1, 1)
    oh, ow = (h + 2 * pad - KSIZE) // stride + 1, (w + 2 * pad - KSIZE) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{name}: input {h}x{w} is smaller than the 3x3 window")
    if out is None:
        if is_max:
            dt = x.dtype
        else:
            dt = torch.int8 if out_scale is not None else (x.dtype if x.dtype != torch.int8 else torch.float32)
        out = torch.empty((b, oh, ow, c), dtype=dt, device=x.device)
    check_nhwc(out, "out", shape=(b, oh, ow, c), device=x.device)
    check_dtype(out, "out", ALL_DTYPES)
    if overlaps(out, x):
        raise ValueError(f"{name}: out overlaps x; pooling cannot run in place")
    if is_max:
        if out.dtype != x.dtype:
            raise TypeError(f"max_pool keeps the dtype (and int8 scale): out is {out.dtype}, x is {x.dtype}")
    else:
        if x.dtype == torch.int8 and x_scale is None:
            raise ValueError("avg_pool of an int8 input needs x_scale")
        if out.dtype == torch.int8 and out_scale is None:
            raise ValueError("avg_pool into an int8 destination needs out_scale")
        if out.dtype != torch.int8 and out_scale is not None:
            raise ValueError("out_scale given but out is not int8")
    meta = _pool_config(b * oh * ow, c, config)
    grid = (triton.cdiv(b * oh * ow, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))
    return bound_launch([functools.partial(
        _pool3x3_kernel[grid],
        x, out, b, h, w, c, oh, ow,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        float(x_scale if x_scale is not None else 1.0), float(out_scale if out_scale is not None else 1.0),
        IS_MAX=is_max, STRIDE=stride, PAD=pad, **meta)], out)


def prepare_max_pool(x: torch.Tensor, out: Optional[torch.Tensor] = None, *,
                     config=None) -> Callable[[], torch.Tensor]:
    """3x3 stride-2 VALID max pool of NHWC ``x`` into ``out`` ([B, OH, OW, C] view, same
    dtype; allocated here when None), prepared: checks, tile and arguments now, once; the
    returned callable only launches and returns ``out``."""
    return _prepare_pool3x3(x, out, True, None, None, config, "max_pool")


def prepare_avg_pool(x: torch.Tensor, out: Optional[torch.Tensor] = None, *, x_scale: Optional[float] = None,
                     out_scale: Optional[float] = None, config=None) -> Callable[[], torch.Tensor]:
    """3x3 stride-1 pad-1 average pool, count_include_pad=False, into ``out`` ([B, H, W, C]
    view), prepared like :func:`prepare_max_pool`. An int8 input needs ``x_scale``, an int8
    destination ``out_scale``."""
    return _prepare_pool3x3(x, out, False, x_scale, out_scale, config, "avg_pool")


def prepare_global_avg_pool(x: torch.Tensor, out: Optional[torch.Tensor] = None, *,
                            x_scale: Optional[float] = None, config=None) -> Callable[[], torch.Tensor]:
    """Mean over H and W of NHWC ``x`` -> ``out`` [B, C] (float; fp32 by default for int8
    input), prepared like :func:`prepare_max_pool`."""
    check_input(x)
    b, h, w, c = x.shape
    if x.dtype == torch.int8 and x_scale is None:
        raise ValueError("global_avg_pool of an int8 input needs x_scale")
    if out is None:
        out = torch.empty((b, c), dtype=x.dtype if x.dtype != torch.int8 else torch.float32, device=x.device)
    if out.dim() != 2 or tuple(out.shape) != (b, c) or (c > 1 and out.stride(1) != 1):
        raise ValueError(f"out must be a [{b}, {c}] view with channel stride 1, got shape {tuple(out.shape)} "
                         f"strides {tuple(out.stride())}")
    check_dtype(out, "out", FLOAT_DTYPES)
    if config is not None:
        meta = config_kwargs(config)
    elif interpreting():
        meta = {"BLOCK_HW": clamp_pow2(h * w, 16, 64), "BLOCK_C": clamp_pow2(c, 16, 128), "num_warps": 4}
    else:
        meta = dict(GLOBAL_AVG_META)
    grid = (b, triton.cdiv(c, meta["BLOCK_C"]))
    return bound_launch([functools.partial(
        _global_avg_kernel[grid], x, out, h, w, c, x.stride(0), x.stride(1), x.stride(2), out.stride(0),
        float(x_scale if x_scale is not None else 1.0), **meta)], out)


def max_pool(x: torch.Tensor, out: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """:func:`prepare_max_pool` and one launch; returns ``out``."""
    return prepare_max_pool(x, out, **options)()


def avg_pool(x: torch.Tensor, out: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """:func:`prepare_avg_pool` and one launch; returns ``out``."""
    return prepare_avg_pool(x, out, **options)()


def global_avg_pool(x: torch.Tensor, out: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """:func:`prepare_global_avg_pool` and one launch; returns ``out``."""
    return prepare_global_avg_pool(x, out, **options)()


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------

def max_pool_reference(x: torch.Tensor) -> torch.Tensor:
    """Reads the input once, writes 1/4 of it. Unfused, a concat then copies the output again."""
    v = F.max_pool2d(x.permute(0, 3, 1, 2).float(), 3, stride=2)
    return v.permute(0, 2, 3, 1).to(x.dtype).contiguous()


def avg_pool_reference(x: torch.Tensor, *, x_scale=None, out_scale=None, out_dtype=None) -> torch.Tensor:
    """Reads the input once and writes it once; int8 sums exactly, then dequantises,
    divides and requantises in fp32 (the kernel's order). Unfused: + a concat copy."""
    xs = x.permute(0, 3, 1, 2)
    if x.dtype == torch.int8:
        total = F.avg_pool2d(xs.double(), 3, stride=1, padding=1, divisor_override=1).float()
        total = total * torch.tensor(x_scale, dtype=torch.float32)
        ones = torch.ones_like(xs[:, :1], dtype=torch.float32)
        cnt = F.avg_pool2d(ones, 3, stride=1, padding=1, divisor_override=1)
        v = total / cnt
    else:
        v = F.avg_pool2d(xs.float(), 3, stride=1, padding=1, count_include_pad=False)
    v = v.permute(0, 2, 3, 1)
    if out_dtype is None:
        out_dtype = torch.int8 if out_scale is not None else (x.dtype if x.dtype != torch.int8 else torch.float32)
    if out_dtype == torch.int8:
        from .conv import quantize_reference
        return quantize_reference(v, out_scale).contiguous()
    return v.to(out_dtype).contiguous()


def global_avg_pool_reference(x: torch.Tensor, *, x_scale=None, out_dtype=None) -> torch.Tensor:
    """Reads the final 8x8 map once, writes B x C."""
    v = x.double().sum(dim=(1, 2)).float() if x.dtype == torch.int8 else x.float().sum(dim=(1, 2))
    if x.dtype == torch.int8:
        v = v * torch.tensor(x_scale, dtype=torch.float32)
    v = v / (x.shape[1] * x.shape[2])
    return v.to(out_dtype or (x.dtype if x.dtype != torch.int8 else torch.float32))
