"""The plan as text: a summary of fusions, buffers and streams, one line per launch (its
stream and joins, op, layer, what it reads and writes, notes), and the buffers.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from .plan import Plan, Step
from .streams import Schedule, plan_streams


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def _where(plan: Plan, name: str) -> str:
    v = plan.values[name]
    b = plan.buffers[v.buf]
    kind = f"i8@{v.scale:.3g}" if v.scale is not None else b.dtype.replace("float", "f")
    sl = f"[{v.offset}:{v.offset + v.channels}]" if v.channels != b.channels else ""
    return f"B{b.id}{sl} {kind}"


def _step_line(plan: Plan, n: int, st: Step, config: Optional[str], stream: str) -> str:
    """Launch ``n`` of the plan as one line: op, layer, what it reads and writes, notes."""
    notes = []
    lay = st.layers[0] if st.layers else None
    op = st.op
    if st.op == "conv" and lay is not None:
        kh, kw = lay.attrs["kernel"]
        sh, _ = lay.attrs["stride"]
        op = f"conv{kh}x{kw}" + (f"/{sh}" if sh != 1 else "")
        if st.int8:
            notes.append("int8 GEMM")
        if any(l.relu for l in st.layers):
            notes.append("+relu")
        if st.residual:
            notes.append("+residual" + (" in place" if st.in_place else ""))
        if len(st.layers) > 1:
            notes.append(f"merged {len(st.layers)} heads")
    if st.op == "linear" and st.int8:
        notes.append("int8 GEMM")
    if st.why:
        notes.append(st.why)
    if config:
        notes.append(config)
    name = st.name if len(st.name) <= 58 else "..." + st.name[-55:]
    reads = ", ".join(_where(plan, i) for i in st.inputs)
    if st.residual:                  # the shortcut, shown apart from the inputs
        reads += " + " + _where(plan, st.residual)
    writes = ", ".join(_where(plan, o) for o in st.outputs)
    return f"{n:>4}  {stream:<10} {op:<10} {name:<58} {reads:<24} {writes:<34} {' '.join(notes)}"


def _display_numbers(plan: Plan) -> List[str]:
    """The number explain prints for each step (launches from 1; "in"/"out" for the ends)."""
    out, n = [], 0
    for st in plan.steps:
        if st.op in ("input", "output"):
            out.append("in" if st.op == "input" else "out")
        else:
            n += 1
            out.append(str(n))
    return out


def _streams_line(plan: Plan, sched: Schedule) -> str:
    """The stream summary: how many streams, how many steps on each, how many joins."""
    per = [sched.stream.count(k) for k in range(sched.n_streams)]
    return (f"streams (GPU, inside the CUDA graph): {sched.n_streams}, launches per stream "
            f"{'/'.join(map(str, per))}; {sum(len(w) for w in sched.waits)} event joins; "
            f"'s2 <5,7' = on stream 2, after launches 5 and 7 on other streams")


def explain_plan(plan: Plan, batch: int = 1, configs: Optional[Dict[int, str]] = None,
                 title: str = "") -> str:
    """The plan as text: summary of fusions and buffers, then one line per launch."""
    s = plan.stats
    lines = []
    c, h, w = plan.input_shape
    lines.append(f"triton plan{': ' + title if title else ''} | precision {plan.precision} "
                 f"(float values {plan.float_dtype}) | input {c}x{h}x{w}, batch {batch}")
    lines.append(
        f"fusions: {s['conv_layers']} convs in {s['conv_launches']} launches; "
        f"{s['relu_fused']} ReLUs in conv epilogues; {s['residuals']} residual epilogues "
        f"({s['residuals_in_place']} in place on the trunk); concats written in place: "
        f"{s['concats_in_place']}/{s['concats']} ({s['concat_copies']} input copies); merged 1x1 "
        f"heads: {s['merged_groups']} groups of {s['merged_heads']} heads"
        + (f"; int8 GEMMs: {s['int8_gemms']}" if plan.precision == "int8" else "")
        + f"; convert steps: {s['convert_steps']}")
    lines.append(f"buffers: {s['buffers']} in one arena of {_mib(s['arena_bytes_per_image'] * batch)}"
                 f" (without reuse {_mib(s['naive_bytes_per_image'] * batch)}), "
                 f"{s['steps']} launches")
    sched = plan_streams(plan)
    number = _display_numbers(plan)
    lines.append(_streams_line(plan, sched))
    lines.append("")
    lines.append(f"{'#':>4}  {'stream':<10} {'op':<10} {'layer':<58} {'reads':<24} {'writes':<34} notes")
    for idx, st in enumerate(plan.steps):
        joins = ",".join(number[i] for i in sched.waits[idx])
        stream = f"s{sched.stream[idx]}" + (f" <{joins}" if joins else "")
        if st.op in ("input", "output"):
            what = (f"NCHW float32 -> {_where(plan, st.outputs[0])}" if st.op == "input"
                    else f"{_where(plan, st.inputs[0])} -> float32 [{plan.values[st.inputs[0]].channels}]")
            lines.append(f"{'':>4}  {stream:<10} {st.op:<10} {what}")
            continue
        lines.append(_step_line(plan, int(number[idx]), st, (configs or {}).get(idx), stream))
    lines.append("")
    lines.append("buffers (per image; x batch at run time):")
    for b in plan.buffers:
        vals = [v for v in plan.values.values() if v.buf == b.id]
        lines.append(f"  B{b.id:<3} {b.h}x{b.w}x{b.channels} {b.dtype:<8} {_mib(b.nbytes):>10} "
                     f"@ {b.offset:>9}  live steps {b.first}-{b.last}  {len(vals)} values")
    return "\n".join(lines)
