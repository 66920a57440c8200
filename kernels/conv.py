"""NHWC implicit-GEMM convolution with fused epilogues.

The GEMM view: rows are output pixels ``M = B * OH * OW``, columns are output channels
``N``, and the reduction runs over ``K = KH * KW * C`` (filter taps x input channels). The
input is never unfolded: each K-tile is one filter tap ``(r, s)`` and a block of channels,
loaded straight from the NHWC input with the padding handled by the load mask. Small
``C`` (the stem's 3 channels) is padded up to the dot's minimum K by the same mask.

Epilogue, in this order, each part chosen by a constexpr (or by a pointer's dtype):
  1. INT8 only: ``acc(int32) -> fp32 * scale[n]`` with ``scale = x_scale * w_scale[n]``
  2. ``+ bias[n]`` (folded BatchNorm, or the conv's own bias)
  3. ``+ residual`` (the block's shortcut; an INT8 shortcut is dequantised with
     ``res_scale``); the residual scale of Inception-ResNet is folded into the weights
     and the bias beforehand (:func:`fold_scale`)
  4. ReLU
  5. store, for each destination: float, or INT8 requantised as ONNX ``QuantizeLinear``
     does it (``saturate(round_half_even(v / y_scale))``, zero point 0)

Destinations: the output columns may be split over up to three tensors (horizontal fusion
of the 1x1 heads that read the same input). Each destination is any NHWC view with channel
stride 1, typically a channel slice ``buf[..., off:off + n]`` of a concat buffer, so a
branch writes its part of the concat in place.

Precisions: fp16/bf16 inputs with fp32 accumulation; fp32 with IEEE dot products
(no TF32), for parity tests; int8 x int8 with int32 accumulation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import (ALL_DTYPES, check_dtype, check_runnable, check_nhwc, check_vector, clamp_pow2,
                      config_kwargs, overlaps)
from .env import interpreting

MAX_DESTINATIONS = 3


# --------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------

@triton.jit
def _store_slice(y_ptr, v, nb, oh, ow, m_ok, cols, lo, hi,
                 syn, syh, syw, y_scale):
    """Store the tile columns ``lo <= col < hi`` of ``v`` into ``y`` at channel ``col - lo``.

    The conversion is done per destination on purpose: converting once and storing three
    times keeps the converted tile live across the stores and spills the 3-way INT8 case.
    """
    ok = m_ok[:, None] & (cols >= lo)[None, :] & (cols < hi)[None, :]
    row = nb.to(tl.int64) * syn + oh * syh + ow * syw
    ptrs = y_ptr + row[:, None] + (cols - lo)[None, :]
    if y_ptr.dtype.element_ty == tl.int8:
        # ONNX QuantizeLinear: saturate(round_half_to_even(v / y_scale)), zero point 0.
        q = tl.math.div_rn(v, y_scale)
        q = tl.minimum(tl.maximum(q, -128.0), 127.0)
        q = (q + 12582912.0) - 12582912.0          # 1.5 * 2**23: fp32 rounds half to even
        tl.store(ptrs, q.to(tl.int8), mask=ok)
    else:
        tl.store(ptrs, v.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _conv_kernel(
    # pointers
    x_ptr,                    # input, NHWC view (channel stride 1)
    w_ptr,                    # weights packed HWIO: [KH, KW, C, N_TOTAL] contiguous
    bias_ptr,                 # [N_TOTAL] fp32 (used if HAS_BIAS)
    scale_ptr,                # [N_TOTAL] fp32 dequant scale x_scale * w_scale[n] (INT8 input)
    res_ptr,                  # shortcut, NHWC view shaped like destination 0 (used if HAS_RES)
    y0_ptr, y1_ptr, y2_ptr,   # destinations: columns [0, N0), [N0, N01), [N01, N_TOTAL)
    # sizes
    BATCH, H, W, C,           # input
    OH, OW, N_TOTAL,          # output pixels and total output channels
    N0, N01,                  # column boundaries between destinations
    PAD_H, PAD_W,             # top/left padding (bottom/right follow from OH/OW)
    # strides, in elements (channel stride is 1 everywhere)
    sxn, sxh, sxw,
    srn, srh, srw,
    sy0n, sy0h, sy0w,
    sy1n, sy1h, sy1w,
    sy2n, sy2h, sy2w,
    # quantisation scalars (fp32)
    res_scale,                # INT8 shortcut -> float
    y_scale,                  # float -> INT8 destinations
    # constexprs
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr,
    NUM_DEST: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter only: its dot mishandles bf16, so widen to fp32
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    M = BATCH * OH * OW
    # Grouped ordering: GROUP_M row-tiles share each column-tile sweep (L2 reuse of weights).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N_TOTAL, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_rows
    pid_n = (pid % group) // group_rows

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)        # output pixel index
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)        # output channel index
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N_TOTAL
    ow = rm % OW
    t = rm // OW
    oh = t % OH
    nb = t // OH
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_rows = x_ptr + nb.to(tl.int64) * sxn               # [BLOCK_M] pointers to each image

    IS_INT8: tl.constexpr = x_ptr.dtype.element_ty == tl.int8
    IS_FP32: tl.constexpr = x_ptr.dtype.element_ty == tl.float32
    if IS_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    # One flat loop over (tap, channel block) so the compiler can pipeline it.
    c_blocks = tl.cdiv(C, BLOCK_K)
    for kt in range(0, KH * KW * c_blocks):
        tap = kt // c_blocks
        c0 = (kt - tap * c_blocks) * BLOCK_K
        r = tap // KW
        s = tap - r * KW
        ih = ih0 + r
        iw = iw0 + s
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        ck = c0 + rk
        k_ok = ck < C
        a = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + ck[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(w_ptr + (tap * C + ck).to(tl.int64)[:, None] * N_TOTAL + rn[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0)
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IS_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)

    # ---- epilogue (fp32) ----
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
        _store_slice(y0_ptr, v, nb, oh, ow, m_ok, rn, 0, N_TOTAL, sy0n, sy0h, sy0w, y_scale)
    else:
        _store_slice(y0_ptr, v, nb, oh, ow, m_ok, rn, 0, N0, sy0n, sy0h, sy0w, y_scale)
        _store_slice(y1_ptr, v, nb, oh, ow, m_ok, rn, N0, N01, sy1n, sy1h, sy1w, y_scale)
        if NUM_DEST == 3:
            _store_slice(y2_ptr, v, nb, oh, ow, m_ok, rn, N01, N_TOTAL, sy2n, sy2h, sy2w, y_scale)


# --------------------------------------------------------------------------------------
# Autotuning (GPU only)
# --------------------------------------------------------------------------------------

def _cfg(bm, bn, bk, warps, stages, group=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                         num_warps=warps, num_stages=stages)


# Large tiles for the 35x35/17x17 maps at batch >= 32; small-N tiles for the 32-64-channel
# branches of block35 and the stem; small-M tiles for the 8x8 maps at batch 1 (M = 64).
# At most 64 accumulator elements per thread (BLOCK_M * BLOCK_N / (32 * warps)): 128x128
# on 4 warps spills with the residual and fused-head epilogues (slow AOT sweep). Tiles with
# BLOCK_M >= 64 and 4+ warps get wgmma on sm_90; the small-M ones use mma.sync there.
CONFIGS = [
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 128, 32, 8, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
    _cfg(128, 32, 64, 4, 4),   # small N
    _cfg(64, 32, 64, 4, 4),    # small N
    _cfg(32, 64, 64, 2, 4),    # small M
    _cfg(16, 128, 64, 4, 4),   # small M, wide N (8x8 maps at batch 1)
    _cfg(32, 128, 128, 4, 3),  # small M, long K (1x1 over 1088-2080 channels)
]

# The tile AOT compiles use when no autotune config is named (kernels.aot.conv_spec).
DEFAULT_CONFIG = _cfg(64, 64, 32, 4, 3)


def fits_registers(cfg) -> bool:
    """At most 64 fp32 accumulator elements per thread: the rule under which every
    epilogue (residual, three destinations, INT8) compiled without spills in the AOT sweep."""
    return cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"] // (32 * cfg.num_warps) <= 64


def _prune(configs, named_args, **kwargs):
    """Drop tiles far larger than the problem (BLOCK_M over 2x M, BLOCK_N over 2x N) and
    tiles that spill for the epilogue."""
    m = named_args["BATCH"] * named_args["OH"] * named_args["OW"]
    n = named_args["N_TOTAL"]
    c = named_args["C"]
    int8 = named_args["x_ptr"].dtype == torch.int8
    keep = []
    for cfg in configs:
        kw = cfg.kwargs
        if not fits_registers(cfg):
            continue
        if kw["BLOCK_M"] > 2 * max(m, 16) or kw["BLOCK_N"] > 2 * max(n, 16):
            continue
        if kw["BLOCK_K"] > 2 * max(c, 16) and kw["BLOCK_K"] > 32:
            continue
        if int8 and kw["BLOCK_K"] < 32:
            continue
        keep.append(cfg)
    return keep or [configs[4]]


_conv_kernel_tuned = triton.autotune(
    configs=CONFIGS,
    key=["BATCH", "H", "W", "C", "OH", "OW", "N_TOTAL", "KH", "KW", "STRIDE_H", "NUM_DEST", "HAS_RES"],
    prune_configs_by={"early_config_prune": _prune},
    restore_value=["y0_ptr"],   # an in-place residual (out aliases the shortcut) survives tuning
)(_conv_kernel)


def interpreter_config(m: int, n: int, c: int) -> dict:
    """The one tile used under the interpreter, for an ``m x n`` output over ``c`` input
    channels: as large as the problem allows (up to 256x128x128), since the interpreter's
    cost is per program and per loop step, not per element."""
    return {"BLOCK_M": clamp_pow2(m, 16, 256), "BLOCK_N": clamp_pow2(n, 16, 128),
            "BLOCK_K": clamp_pow2(c, 16, 128), "GROUP_M": 8, "num_warps": 4, "num_stages": 1}


# --------------------------------------------------------------------------------------
# Weight preparation (host side, once per model)
# --------------------------------------------------------------------------------------

def pack_weight(w_oihw: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """OIHW (PyTorch/ONNX) -> HWIO contiguous, the layout the kernel reads as [KH*KW*C, N]."""
    if w_oihw.dim() != 4:
        raise ValueError(f"conv weight must be OIHW with 4 dims, got shape {tuple(w_oihw.shape)}")
    w = w_oihw.permute(2, 3, 1, 0).contiguous()
    return w if dtype is None else w.to(dtype)


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


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
           stride=1, padding=0, relu: bool = True,
           residual: Optional[torch.Tensor] = None,
           out: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None,
           out_dtype: Optional[torch.dtype] = None,
           scale: Optional[torch.Tensor] = None, res_scale: float = 1.0,
           out_scale: Optional[float] = None,
           config=None):
    """Fused NHWC convolution ``relu?(conv(x, W) [* scale] + bias [+ residual])``.

    x:        [B, H, W, C] NHWC view (channel stride 1); fp16, bf16, fp32 or int8.
    weight:   [KH, KW, C, N] contiguous (:func:`pack_weight`), same dtype as ``x``.
    bias:     [N] fp32 or None (folded BN / conv bias; residual scale already folded in).
    stride, padding: int or (h, w) pairs; padding is symmetric (SAME for odd k is k // 2).
    relu:     apply ReLU last.
    residual: [B, OH, OW, N] NHWC view added before the ReLU; may alias ``out`` (in place).
              An int8 residual is dequantised with ``res_scale``.
    out:      None (allocate), one NHWC view [B, OH, OW, N] (e.g. a concat slice), or a list
              of up to 3 views whose channel counts sum to N (horizontal fusion: output
              columns go to each in order).
    out_dtype: dtype when allocating; default x.dtype for float input, and for int8 input
              int8 if ``out_scale`` is given, else float32.
    scale:    int8 input only: [N] fp32 ``x_scale * w_scale[n]`` (:func:`dequant_scale`).
    out_scale: int8 destinations only: the per-tensor scale of the requantised output.
    config:   explicit meta-parameters (dict or triton.Config with BLOCK_M/N/K, GROUP_M);
              default autotunes on GPU and uses one problem-sized config in the interpreter.

    Returns ``out`` (the allocated tensor, or what was passed).
    """
    geo = _check_inputs(x, weight, bias, scale, stride, padding)
    outs, ret = _destinations(x, out, out_dtype, out_scale, geo)
    _check_residual(residual, outs, geo)
    _launch(x, weight, bias, scale, residual, res_scale, outs, out_scale, relu, config, geo)
    return ret


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

    def describe(self) -> str:
        return (f"input {(self.b, self.h, self.w, self.c)}, kernel {self.kh}x{self.kw}, "
                f"stride {self.stride}, padding {self.padding}")


def _check_inputs(x, weight, bias, scale, stride, padding) -> _Geometry:
    """Check the input, the packed weight, bias, int8 scale, stride and padding."""
    check_nhwc(x, "x")
    check_runnable(x)
    check_dtype(x, "x", ALL_DTYPES)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError("weight must be packed HWIO [KH, KW, C, N] (see kernels.conv.pack_weight), "
                         f"got {type(weight).__name__} of shape {tuple(getattr(weight, 'shape', ()))}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous HWIO (see kernels.conv.pack_weight)")
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
    return _Geometry(b, h, w, c, kh, kw, n, oh, ow, (sh, sw), (ph, pw))


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


def _launch(x, weight, bias, scale, residual, res_scale, outs, out_scale, relu, config, geo: _Geometry):
    """Launch the kernel on checked arguments: the explicit (or interpreter) tile, else the
    autotuner."""
    widths = [o.shape[3] for o in outs] + [0] * (MAX_DESTINATIONS - len(outs))
    y = outs + [outs[0]] * (MAX_DESTINATIONS - len(outs))
    dummy = torch.empty(1, dtype=torch.float32, device=x.device)
    res = residual if residual is not None else outs[0]
    (sh, sw), (ph, pw) = geo.stride, geo.padding
    m, n = geo.b * geo.oh * geo.ow, geo.n
    args = (x, weight, bias if bias is not None else dummy, scale if scale is not None else dummy, res,
            y[0], y[1], y[2],
            geo.b, geo.h, geo.w, geo.c, geo.oh, geo.ow, n, widths[0], widths[0] + widths[1], ph, pw,
            x.stride(0), x.stride(1), x.stride(2),
            res.stride(0), res.stride(1), res.stride(2),
            y[0].stride(0), y[0].stride(1), y[0].stride(2),
            y[1].stride(0), y[1].stride(1), y[1].stride(2),
            y[2].stride(0), y[2].stride(1), y[2].stride(2),
            float(res_scale), float(out_scale) if out_scale is not None else 1.0)
    flags = dict(KH=geo.kh, KW=geo.kw, STRIDE_H=sh, STRIDE_W=sw, HAS_BIAS=bias is not None, RELU=bool(relu),
                 HAS_RES=residual is not None, NUM_DEST=len(outs),
                 UPCAST_DOT=interpreting() and x.dtype == torch.bfloat16)
    # INT8 results must be bit-exact: no fused multiply-add in the dequantising epilogue
    # (``acc * scale + bias`` contracted to one fma rounds differently from the reference).
    options = {"enable_fp_fusion": False} if x.dtype == torch.int8 else {}
    if config is None and interpreting():
        config = interpreter_config(m, n, geo.c)
    if config is not None:
        meta = config_kwargs(config)
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
        _conv_kernel[grid](*args, **flags, **meta, **options)
    else:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        _conv_kernel_tuned[grid](*args, **flags, **options)


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
