"""Elementwise INT8 quantise / dequantise of NHWC views (ONNX QuantizeLinear /
DequantizeLinear, symmetric, zero point 0, per-tensor scale): the network input, the
graph output, or a re-quantisation where concat inputs carry different scales.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from ._launch import (ALL_DTYPES, FLOAT_DTYPES, bound_launch, check_dtype, check_runnable, check_nhwc, clamp_pow2,
                      config_kwargs)
from .env import interpreting
from .pool import _quant_store

REQUANT_META = {"BLOCK_P": 32, "BLOCK_C": 64, "num_warps": 4}   # GPU tile: 4 KB of fp16 per program


@triton.jit
def _requant_kernel(
    # pointers
    x_ptr, y_ptr,             # NHWC views (channel stride 1)
    # sizes
    P, HW, W, C,              # P = B * H * W pixels
    # strides, in elements
    sxn, sxh, sxw,
    syn, syh, syw,
    # scalars
    x_scale,                  # int8 input: v = q * x_scale
    y_scale,                  # int8 output: q = saturate(round_half_even(v / y_scale))
    # constexprs
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rp < P)[:, None] & (rc < C)[None, :]
    nb = (rp // HW).to(tl.int64)
    h = (rp % HW) // W
    w = rp % W
    v = tl.load(x_ptr + (nb * sxn + h * sxh + w * sxw)[:, None] + rc[None, :], mask=ok, other=0).to(tl.float32)
    if x_ptr.dtype.element_ty == tl.int8:
        v = v * x_scale
    _quant_store(y_ptr + (nb * syn + h * syh + w * syw)[:, None] + rc[None, :], v, ok, y_scale)


# The jitted kernel of this file under the name the AOT specs use (kernels.aot.specs).
JIT_KERNELS = {"requant": _requant_kernel}


def _prepared(x, out, x_scale, y_scale, config) -> Callable[[], torch.Tensor]:
    check_runnable(x)
    b, h, w, c = x.shape
    p = b * h * w
    if config is not None:
        meta = config_kwargs(config)
    elif interpreting():
        meta = {"BLOCK_P": clamp_pow2(p, 16, 64), "BLOCK_C": clamp_pow2(c, 16, 64), "num_warps": 4}
    else:
        meta = dict(REQUANT_META)
    grid = (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))
    return bound_launch([functools.partial(
        _requant_kernel[grid], x, out, p, h * w, w, c, x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2), float(x_scale), float(y_scale), **meta)], out)


def prepare_quantize(x: torch.Tensor, scale: float, out: Optional[torch.Tensor] = None, *,
                     x_scale: Optional[float] = None, config=None) -> Callable[[], torch.Tensor]:
    """Float (or int8 with ``x_scale``: re-quantisation) NHWC view -> int8 ``out``, prepared:
    checks, tile and arguments now, once; the returned callable only launches and returns
    ``out``."""
    check_nhwc(x, "x")
    check_dtype(x, "x", ALL_DTYPES)
    if x.dtype == torch.int8 and x_scale is None:
        raise ValueError("re-quantising an int8 input needs x_scale")
    if out is None:
        out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    check_nhwc(out, "out", shape=x.shape, device=x.device)
    check_dtype(out, "out", (torch.int8,))
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return _prepared(x, out, x_scale if x_scale is not None else 1.0, scale, config)


def prepare_dequantize(q: torch.Tensor, scale: float, out: Optional[torch.Tensor] = None, *,
                       out_dtype: torch.dtype = torch.float16, config=None) -> Callable[[], torch.Tensor]:
    """int8 NHWC view -> float ``out`` (``q * scale``), prepared like :func:`prepare_quantize`."""
    check_nhwc(q, "q")
    check_dtype(q, "q", (torch.int8,))
    if out is None:
        out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    check_nhwc(out, "out", shape=q.shape, device=q.device)
    check_dtype(out, "out", FLOAT_DTYPES)
    return _prepared(q, out, scale, 1.0, config)


def quantize(x: torch.Tensor, scale: float, out: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """:func:`prepare_quantize` and one launch; returns ``out``."""
    return prepare_quantize(x, scale, out, **options)()


def dequantize(q: torch.Tensor, scale: float, out: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """:func:`prepare_dequantize` and one launch; returns ``out``."""
    return prepare_dequantize(q, scale, out, **options)()


def dequantize_reference(q: torch.Tensor, scale: float, out_dtype=torch.float16) -> torch.Tensor:
    return (q.float() * torch.tensor(scale, dtype=torch.float32)).to(out_dtype)
