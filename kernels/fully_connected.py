"""The classifier: ``y = x @ W + b`` on the implicit-GEMM conv kernel (a 1x1 conv over a
1x1 map), so it shares the conv's tiles, precisions and epilogues (INT8 dequantisation,
requantisation, ReLU).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .conv import conv2d_reference, prepare_conv2d


def pack_linear_weight(w_nk: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``nn.Linear`` / ONNX Gemm(transB=1) weight [N, K] -> [K, N] contiguous."""
    if w_nk.dim() != 2:
        raise ValueError(f"linear weight must be [N, K], got shape {tuple(w_nk.shape)}")
    w = w_nk.t().contiguous()
    return w if dtype is None else w.to(dtype)


def _as_map(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [B, features], got shape {tuple(x.shape)}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"{name} must have feature stride 1, got strides {tuple(x.stride())}")
    return x.as_strided((x.shape[0], 1, 1, x.shape[1]), (x.stride(0), x.stride(0), x.stride(0), 1))


def prepare_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                   relu: bool = False, out: Optional[torch.Tensor] = None, out_dtype=None,
                   scale: Optional[torch.Tensor] = None, out_scale: Optional[float] = None,
                   config=None) -> Callable[[], torch.Tensor]:
    """``x [B, K] @ weight [K, N] (+ bias [N] fp32)`` into ``out`` [B, N] (allocated here
    when None), prepared through :func:`kernels.conv.prepare_conv2d` on the 1x1-map views;
    int8 as there. The returned callable only launches and returns ``out``."""
    xm = _as_map(x, "x")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be [K, N] (see kernels.pack_linear_weight)")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but weight is {tuple(weight.shape)} ([K, N]); "
                         "an nn.Linear weight [N, K] must go through pack_linear_weight first")
    b, n = x.shape[0], weight.shape[1]
    if out is None:
        if out_dtype is None:
            out_dtype = x.dtype if x.dtype != torch.int8 else (torch.int8 if out_scale is not None else torch.float32)
        out = torch.empty((b, n), dtype=out_dtype, device=x.device)
    if tuple(out.shape) != (b, n):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected ({b}, {n})")
    launch = prepare_conv2d(xm, weight.view(1, 1, *weight.shape), bias, relu=relu, out=_as_map(out, "out"),
                            scale=scale, out_scale=out_scale, config=config)

    def run_linear():
        launch()
        return out
    return run_linear


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """:func:`prepare_linear` and one launch; returns ``out`` [B, N]."""
    return prepare_linear(x, weight, bias, **options)()


def linear_reference(x, weight, bias=None, *, relu=False, out_dtype=None, scale=None, out_scale=None):
    """Reads x and W once, writes B x N."""
    y = conv2d_reference(x.view(x.shape[0], 1, 1, -1), weight.view(1, 1, *weight.shape), bias,
                         relu=relu, out_dtype=out_dtype, scale=scale, out_scale=out_scale)
    return y.view(x.shape[0], -1)
