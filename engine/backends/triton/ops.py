"""Plan steps -> kernel calls: the one place where the plan meets :mod:`kernels`.

``prepare(step, plan, device)`` packs a step's weights for the device once (HWIO conv
weights, [K, N] linear weights, merged heads concatenated along N, int8 epilogue scales);
``bind(step, plan, views, params, impl)`` returns a zero-argument callable that runs the
step on fixed tensor views (the runtime's preallocated buffers), so a whole plan is a list
of closures, and on a GPU one CUDA graph.

Binding does the host work once, so a call does no checks, no lookups and no allocation:
every kernel step binds through its ``prepare_*`` launcher (:func:`kernels.conv.prepare_conv2d`,
``prepare_max_pool``, ``prepare_avg_pool``, ``prepare_global_avg_pool``, ``prepare_linear``,
``prepare_quantize``, ``prepare_dequantize``), which checks, chooses the tile and packs the
arguments once and returns the launch itself. The glue steps write into buffers allocated at
bind time.

Two implementations with the same semantics:

- ``impl="triton"`` (default): the project's Triton kernels (``kernels.conv2d`` with its
  bias/ReLU/residual/slice epilogues and horizontal fusion, ``max_pool``/``avg_pool`` into
  slices, ``global_avg_pool``, ``linear``, ``quantize``/``dequantize``);
- ``impl="torch"``: the kernels' plain PyTorch references (``*_reference``), each result
  copied into the same destination view. For debugging and for parity of the kernels at
  network level.

Glue that is not a kernel runs in PyTorch in both: the input step (NCHW float32 -> NHWC,
cast or quantise), a float copy into a concat slice (only when a concat cannot be written in
place), and the final L2 normalisation of the face embedder ([N, 512]).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional

import numpy as np

from .planner import Plan, Step

IMPLS = ("triton", "torch")


def _torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
            "int8": torch.int8, "fp32": torch.float32, "fp16": torch.float16,
            "bf16": torch.bfloat16}[name]


def _flat(t):
    """[N, 1, 1, C] NHWC view -> [N, C] view (feature stride 1)."""
    return t[:, 0, 0, :]


def prepare(step: Step, plan: Plan, device) -> Dict:
    """Device tensors for ``step`` (weights, bias, epilogue scales); ``{}`` when it has none."""
    import torch
    import kernels
    if step.op not in ("conv", "linear"):
        return {}
    fdt = _torch_dtype(plan.float_dtype)
    ws, bs, ss = [], [], []
    x_scale = plan.values[step.inputs[0]].scale
    for lay in step.layers:
        if step.int8:
            q = torch.from_numpy(np.array(lay.qweight.q, copy=True))
            ws.append(q)
            ss.append(torch.from_numpy(lay.qweight.scale.astype(np.float32)))
        else:
            ws.append(torch.from_numpy(np.array(lay.float_weight(), dtype=np.float32, copy=True)))
        bs.append(torch.from_numpy(lay.bias.astype(np.float32)))
    dest = [plan.values[o].scale for o in step.outputs]
    if step.int8 and dest[0] is not None and len(dest) > 1:
        # one requantisation scale per launch: head j's columns are pre-scaled by s0 / s_j
        for j, s in enumerate(dest):
            f = np.float32(dest[0] / s)
            ss[j] = ss[j] * f
            bs[j] = bs[j] * f
    if step.op == "conv":
        from kernels.conv import concat_packed
        packed = [kernels.pack_weight(w, None if step.int8 else fdt) for w in ws]
        weight = concat_packed(packed) if len(packed) > 1 else packed[0]
    else:
        packed = [kernels.pack_linear_weight(w, None if step.int8 else fdt) for w in ws]
        weight = torch.cat(packed, dim=1).contiguous() if len(packed) > 1 else packed[0]
    p = {"weight": weight.to(device), "bias": torch.cat(bs).to(device)}
    if step.int8:
        p["scale"] = kernels.dequant_scale(torch.cat(ss), x_scale).to(device).contiguous()
    return p


def conv_config(step: Step, plan: Plan, batch: int) -> Optional[dict]:
    """The tile a conv/linear step launches with: the kernels' one interpreter tile
    (:func:`kernels.conv.interpreter_config`) under the interpreter, ``None`` on a GPU (the
    kernels take it from their shipped tuning table, keyed on the problem)."""
    from kernels.env import interpreting
    if step.op not in ("conv", "linear") or not interpreting():
        return None
    from kernels.conv import interpreter_config
    out = plan.values[step.outputs[0]]
    n = sum(plan.values[o].channels for o in step.outputs)
    c = plan.values[step.inputs[0]].channels
    return interpreter_config(batch * out.h * out.w, n, c)


def describe_config(step: Step, plan: Plan, batch: int) -> str:
    """Tile of a conv/linear step: the interpreter's, or on a GPU the shipped tuning table's
    choice (:func:`kernels.conv.describe_choice`, for an sm_90 part when no GPU is here)."""
    if step.op not in ("conv", "linear"):
        return ""
    cfg = conv_config(step, plan, batch)
    if cfg is not None:
        return f"tile {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}"
    from kernels.conv import describe_choice
    out = plan.values[step.outputs[0]]
    n = sum(plan.values[o].channels for o in step.outputs)
    c = plan.values[step.inputs[0]].channels
    kh, kw = step.layers[0].attrs.get("kernel", (1, 1)) if step.op == "conv" else (1, 1)
    stride = step.layers[0].attrs["stride"][0] if step.op == "conv" else 1
    dtype = _torch_dtype("int8" if step.int8 else plan.float_dtype)
    return describe_choice(batch * out.h * out.w, n, c, kh, kw, stride, dtype)


@dataclass
class _StepViews:
    """What a binder needs of one step: its tensor views, scales and packed parameters."""

    step: Step
    plan: Plan
    views: Dict
    params: Dict
    reference: bool               # run the kernels' PyTorch references (impl="torch")
    io: Optional[Dict]

    @property
    def src(self):
        """The view of the step's (first) input."""
        return self.views[self.step.inputs[0]]

    @property
    def src_scale(self) -> Optional[float]:
        return self.plan.values[self.step.inputs[0]].scale

    @property
    def dests(self) -> List:
        """The views of the step's outputs (several for merged heads)."""
        return [self.views[o] for o in self.step.outputs]

    @property
    def dest(self):
        return self.views[self.step.outputs[0]]

    @property
    def dest_scale(self) -> Optional[float]:
        """The int8 scale of the (first) output; ``None`` for float storage."""
        return self.plan.values[self.step.outputs[0]].scale


def _bind_input(sv: _StepViews):
    """NCHW float32 static input -> the NHWC input value (cast, or quantised)."""
    import torch
    out, scale = sv.dest, sv.dest_scale
    x = sv.io["x"].permute(0, 2, 3, 1)             # the NHWC view, made once
    if scale is None:
        return partial(out.copy_, x)
    scale_t = torch.tensor(scale, dtype=torch.float32, device=out.device)
    tmp = torch.empty(x.shape, dtype=torch.float32, device=out.device)

    def run_input():
        # ONNX QuantizeLinear: saturate(round_half_even(x / scale)), in a buffer made at bind
        torch.div(x, scale_t, out=tmp)
        torch.round(tmp, out=tmp)
        torch.clamp(tmp, -128, 127, out=tmp)
        out.copy_(tmp)
    return run_input


def _bind_output(sv: _StepViews):
    return lambda: None            # the runtime reads the output view itself


def _bind_conv(sv: _StepViews):
    import kernels
    step, x, outs = sv.step, sv.src, sv.dests
    lay = step.layers[0]
    res = sv.views[step.residual] if step.residual else None
    res_scale = sv.plan.values[step.residual].scale if step.residual else None
    kw = dict(stride=lay.attrs["stride"], padding=tuple(lay.attrs["pads"][:2]), relu=lay.relu,
              residual=res, scale=sv.params.get("scale"),
              res_scale=res_scale if res_scale is not None else 1.0, out_scale=sv.dest_scale)
    weight, bias = sv.params["weight"], sv.params["bias"]
    if sv.reference:
        splits = [o.shape[3] for o in outs]

        def run_conv_reference():
            ys = kernels.conv2d_reference(x, weight, bias, out_dtype=outs[0].dtype, splits=splits, **kw)
            for o, y in zip(outs, ys):
                o.copy_(y)
        return run_conv_reference
    dest = outs[0] if len(outs) == 1 else outs
    return kernels.prepare_conv2d(x, weight, bias, out=dest, config=conv_config(step, sv.plan, x.shape[0]), **kw)


def _bind_maxpool(sv: _StepViews):
    import kernels
    x, out = sv.src, sv.dest
    if sv.reference:
        return lambda: out.copy_(kernels.max_pool_reference(x))
    return kernels.prepare_max_pool(x, out)


def _bind_avgpool(sv: _StepViews):
    import kernels
    x, out, x_scale, out_scale = sv.src, sv.dest, sv.src_scale, sv.dest_scale
    if sv.reference:
        return lambda: out.copy_(kernels.avg_pool_reference(x, x_scale=x_scale, out_scale=out_scale,
                                                            out_dtype=out.dtype))
    return kernels.prepare_avg_pool(x, out, x_scale=x_scale, out_scale=out_scale)


def _bind_gap(sv: _StepViews):
    import kernels
    x, x_scale, out = sv.src, sv.src_scale, _flat(sv.dest)
    if sv.reference:
        return lambda: out.copy_(kernels.global_avg_pool_reference(x, x_scale=x_scale, out_dtype=out.dtype))
    return kernels.prepare_global_avg_pool(x, out, x_scale=x_scale)


def _bind_linear(sv: _StepViews):
    from kernels import linear_reference, prepare_linear
    x, out = _flat(sv.src), _flat(sv.dest)
    kw = dict(relu=sv.step.layers[0].relu, scale=sv.params.get("scale"), out_scale=sv.dest_scale)
    weight, bias = sv.params["weight"], sv.params["bias"]
    if sv.reference:
        return lambda: out.copy_(linear_reference(x, weight, bias, out_dtype=out.dtype, **kw))
    cfg = conv_config(sv.step, sv.plan, sv.src.shape[0])
    return prepare_linear(x, weight, bias, out=out, config=cfg, **kw)


def _bind_quantize(sv: _StepViews):
    import kernels
    x, out, x_scale, out_scale = sv.src, sv.dest, sv.src_scale, sv.dest_scale
    if sv.reference:
        def run_quantize_reference():
            v = x.float() * x_scale if x_scale is not None else x.float()
            out.copy_(kernels.quantize_reference(v, out_scale))
        return run_quantize_reference
    return kernels.prepare_quantize(x, out_scale, out, x_scale=x_scale)


def _bind_dequantize(sv: _StepViews):
    import kernels
    x, out, x_scale = sv.src, sv.dest, sv.src_scale
    if sv.reference:
        return lambda: out.copy_(kernels.dequantize_reference(x, x_scale, out_dtype=out.dtype))
    return kernels.prepare_dequantize(x, x_scale, out, out_dtype=out.dtype)


def _bind_copy(sv: _StepViews):
    return partial(sv.dest.copy_, sv.src)


def _bind_l2norm(sv: _StepViews):
    import torch
    x, out = _flat(sv.src), _flat(sv.dest)
    eps = float(sv.step.layers[0].attrs.get("eps", 0.0))
    v = torch.empty(x.shape, dtype=torch.float32, device=x.device)        # made at bind
    norm = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)

    def run_l2norm():
        v.copy_(x)
        torch.linalg.vector_norm(v, dim=1, keepdim=True, out=norm)
        if eps > 0:
            torch.clamp(norm, min=eps, out=norm)
        torch.div(v, norm, out=v)
        out.copy_(v)
    return run_l2norm


# plan step op -> the binder that turns the step into a closure
_BINDERS: Dict[str, Callable[[_StepViews], Callable[[], None]]] = {
    "input": _bind_input, "output": _bind_output, "conv": _bind_conv,
    "maxpool": _bind_maxpool, "avgpool": _bind_avgpool, "gap": _bind_gap,
    "linear": _bind_linear, "quantize": _bind_quantize, "dequantize": _bind_dequantize,
    "copy": _bind_copy, "l2norm": _bind_l2norm,
}


def bind(step: Step, plan: Plan, views: Dict, params: Dict, impl: str = "triton",
         io: Optional[Dict] = None) -> Callable[[], None]:
    """A closure that runs ``step`` on ``views`` (value name -> NHWC tensor view).

    io: ``{"x": NCHW float32 tensor}`` for the input step (the runtime's static input).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    binder = _BINDERS.get(step.op)
    if binder is None:
        raise ValueError(f"step {step.name!r}: unknown op {step.op!r}; the ops that run are "
                         f"{', '.join(sorted(_BINDERS))}")
    return binder(_StepViews(step, plan, views, params, impl == "torch", io))
