"""Plan steps -> kernel calls: the one place where the plan meets :mod:`kernels`.

``prepare(step, plan, device)`` packs a step's weights for the device once (HWIO conv
weights, [K, N] linear weights, merged heads concatenated along N, int8 epilogue scales);
``bind(step, plan, views, params, impl)`` returns a zero-argument callable that runs the
step on fixed tensor views (the runtime's preallocated buffers), so a whole plan is a list
of closures, and on a GPU one CUDA graph.

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

from typing import Callable, Dict, Optional

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
        packed = [kernels.pack_weight(w, None if step.int8 else fdt) for w in ws]
        weight = torch.cat(packed, dim=3).contiguous() if len(packed) > 1 else packed[0]
    else:
        packed = [kernels.pack_linear_weight(w, None if step.int8 else fdt) for w in ws]
        weight = torch.cat(packed, dim=1).contiguous() if len(packed) > 1 else packed[0]
    p = {"weight": weight.to(device), "bias": torch.cat(bs).to(device)}
    if step.int8:
        p["scale"] = kernels.dequant_scale(torch.cat(ss), x_scale).to(device).contiguous()
    return p


def interpreter_tile(m: int, n: int, c: int) -> dict:
    """Conv tile under the interpreter: as large as the problem allows (up to 256x128x128),
    since the interpreter's cost is per program and per loop step, not per element."""
    from kernels._launch import clamp_pow2
    return {"BLOCK_M": clamp_pow2(m, 16, 256), "BLOCK_N": clamp_pow2(n, 16, 128),
            "BLOCK_K": clamp_pow2(c, 16, 128), "GROUP_M": 8, "num_warps": 4, "num_stages": 1}


def conv_config(step: Step, plan: Plan, batch: int) -> Optional[dict]:
    """The tile a conv/linear step launches with: fixed under the interpreter, ``None`` on a
    GPU (the kernels autotune over their configs, keyed on the problem shape)."""
    from kernels._launch import interpreting
    if step.op not in ("conv", "linear") or not interpreting():
        return None
    out = plan.values[step.outputs[0]]
    n = sum(plan.values[o].channels for o in step.outputs)
    c = plan.values[step.inputs[0]].channels
    return interpreter_tile(batch * out.h * out.w, n, c)


def _tuned(step: Step, plan: Plan, batch: int) -> str:
    """The config the autotuner chose for this conv (GPU, after a run at ``batch``)."""
    try:
        from kernels.conv import _conv_kernel_tuned
        lay = step.layers[0]
        x = plan.values[step.inputs[0]]
        out = plan.values[step.outputs[0]]
        kh, kw = lay.attrs["kernel"]
        n = sum(plan.values[o].channels for o in step.outputs)
        want = (batch, x.h, x.w, x.channels, out.h, out.w, n, kh, kw, lay.attrs["stride"][0],
                len(step.outputs), step.residual is not None)
        for key, cfg in getattr(_conv_kernel_tuned, "cache", {}).items():
            if tuple(key[:len(want)]) == want:
                k = cfg.kwargs
                return (f"autotuned {k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} "
                        f"w{cfg.num_warps} s{cfg.num_stages}")
    except (ImportError, AttributeError, KeyError, IndexError, TypeError):
        pass
    return "autotuned on first run"


def describe_config(step: Step, plan: Plan, batch: int) -> str:
    """Tile of a conv/linear step: fixed under the interpreter, autotuned on a GPU."""
    if step.op not in ("conv", "linear"):
        return ""
    cfg = conv_config(step, plan, batch)
    if cfg is None:
        return _tuned(step, plan, batch) if step.op == "conv" else "autotuned"
    return f"tile {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}"


def bind(step: Step, plan: Plan, views: Dict, params: Dict, impl: str = "triton",
         io: Optional[Dict] = None) -> Callable[[], None]:
    """A closure that runs ``step`` on ``views`` (value name -> NHWC tensor view).

    io: ``{"x": NCHW float32 tensor}`` for the input step (the runtime's static input).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    import torch
    import kernels
    vals = plan.values
    op = step.op
    ref = impl == "torch"

    if op == "input":
        out = views[step.outputs[0]]
        s = vals[step.outputs[0]].scale
        x = io["x"]
        if s is None:
            return lambda: out.copy_(x.permute(0, 2, 3, 1))
        st = torch.tensor(s, dtype=torch.float32, device=out.device)

        def run_input():
            out.copy_(torch.clamp(torch.round(x.permute(0, 2, 3, 1) / st), -128, 127))
        return run_input

    if op == "output":
        return lambda: None

    x = views[step.inputs[0]]
    xs = vals[step.inputs[0]].scale
    outs = [views[o] for o in step.outputs]
    oscale = vals[step.outputs[0]].scale

    if op == "conv":
        lay = step.layers[0]
        (ph, pw) = lay.attrs["pads"][:2]
        stride = lay.attrs["stride"]
        relu = lay.relu
        res = views[step.residual] if step.residual else None
        rs = vals[step.residual].scale if step.residual else None
        kw = dict(stride=stride, padding=(ph, pw), relu=relu, residual=res,
                  scale=params.get("scale"), res_scale=rs if rs is not None else 1.0,
                  out_scale=oscale)
        w, b = params["weight"], params["bias"]
        cfg = conv_config(step, plan, x.shape[0])
        if ref:
            splits = [o.shape[3] for o in outs]

            def run_conv_ref():
                ys = kernels.conv2d_reference(x, w, b, out_dtype=outs[0].dtype, splits=splits, **kw)
                for o, y in zip(outs, ys):
                    o.copy_(y)
            return run_conv_ref
        dest = outs[0] if len(outs) == 1 else outs
        return lambda: kernels.conv2d(x, w, b, out=dest, config=cfg, **kw)

    out = outs[0]
    if op == "maxpool":
        if ref:
            return lambda: out.copy_(kernels.max_pool_reference(x))
        return lambda: kernels.max_pool(x, out)
    if op == "avgpool":
        if ref:
            return lambda: out.copy_(kernels.avg_pool_reference(x, x_scale=xs, out_scale=oscale,
                                                                out_dtype=out.dtype))
        return lambda: kernels.avg_pool(x, out, x_scale=xs, out_scale=oscale)
    if op == "gap":
        o2 = _flat(out)
        if ref:
            return lambda: o2.copy_(kernels.global_avg_pool_reference(x, x_scale=xs,
                                                                      out_dtype=o2.dtype))
        return lambda: kernels.global_avg_pool(x, o2, x_scale=xs)
    if op == "linear":
        x2, o2 = _flat(x), _flat(out)
        lay = step.layers[0]
        kw = dict(relu=lay.relu, scale=params.get("scale"), out_scale=oscale)
        w, b = params["weight"], params["bias"]
        if ref:
            return lambda: o2.copy_(kernels.linear_reference(x2, w, b, out_dtype=o2.dtype, **kw))
        cfg = conv_config(step, plan, x.shape[0])
        return lambda: kernels.linear(x2, w, b, out=o2, config=cfg, **kw)
    if op == "quantize":
        if ref:
            def run_q_ref():
                v = x.float() * xs if xs is not None else x.float()
                out.copy_(kernels.quantize_reference(v, oscale))
            return run_q_ref
        return lambda: kernels.quantize(x, oscale, out, x_scale=xs)
    if op == "dequantize":
        if ref:
            return lambda: out.copy_(kernels.dequantize_reference(x, xs, out_dtype=out.dtype))
        return lambda: kernels.dequantize(x, xs, out, out_dtype=out.dtype)
    if op == "copy":
        return lambda: out.copy_(x)
    if op == "l2norm":
        x2, o2 = _flat(x), _flat(out)
        eps = float(step.layers[0].attrs.get("eps", 0.0))

        def run_l2():
            v = x2.float()
            n = torch.linalg.vector_norm(v, dim=1, keepdim=True)
            o2.copy_(v / (torch.clamp(n, min=eps) if eps > 0 else n))
        return run_l2
    raise ValueError(f"step {step.name!r}: unknown op {op!r}")  # pragma: no cover
