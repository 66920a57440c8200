"""The AOT gate and its outputs: the table, the problems that fail the gate, the JSON report,
the dump of each specialization's code, and the ``python -m kernels.aot`` command.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import List, Optional, Sequence

import torch
import triton

from .. import tuning as _tuning
from ..atomic import atomic_write_text
from ..launches import ConvLaunch
from .compile import CompileResult, compile_many
from .specs import BATCHES, class_specs, layer_specs, wave_table


def format_table(results: List[CompileResult]) -> str:
    lines = [f"{'specialization':78s} {'arch':>6s} {'regs':>5s} {'spill':>6s} {'smem':>7s} {'mma':>8s} "
             f"{'A/B':>11s} {'ins/step':>8s} {'ins/mma':>8s}"]
    for r in results:
        ops = "/".join(r.operands) if r.operands else "-"
        step = f"{r.loop.instructions:8d}" if r.loop else f"{'-':>8s}"
        per = f"{r.loop.per_mma:8.1f}" if r.loop else f"{'-':>8s}"
        lines.append(f"{r.spec.name:78s} {r.ptx_target:>6s} {r.registers:5d} {r.spills:6d} {r.smem:7d} "
                     f"{r.mma_kind:>8s} {ops:>11s} {step} {per}")
    return "\n".join(lines)


def check(results: List[CompileResult]) -> List[str]:
    """Problems that fail the AOT gate:

    - spills in any fp16 or int8 conv;
    - an fp16/bf16/int8 conv without tensor-core instructions (mma.sync, or wgmma on sm_90);
    - a pipelined (num_stages >= 2) fp16/bf16/int8 conv whose A or B operand is not loaded
      asynchronously in the main loop (A is exempt for an unaligned input: 3-channel pixels
      are 6-byte rows, below the 4-byte granule of cp.async);
    - an int8 wgmma conv on an aligned input whose main loop permutes bytes (PRMT: a
      register transpose; wgmma reads both operands from shared memory, so any PRMT there is
      staging. The unaligned stem packs its byte-wise A loads with PRMT by necessity).
    """
    problems = []
    for r in results:
        where = f"{r.spec.name} on {r.ptx_target}"
        tc = r.spec.tensor_core_dtype
        if r.spec.kernel == "conv" and r.spec.dtypes[0] in (torch.float16, torch.int8) and r.spills:
            problems.append(f"{where}: {r.spills} bytes spilled")
        if tc is None:
            continue
        if not (r.mma or r.wgmma):
            problems.append(f"{where}: no tensor-core instruction (mma/wgmma) in the PTX")
        if r.spec.num_stages >= 2:
            for name, how in zip("AB", r.operands or ("?", "?")):
                if how != "async" and (name == "B" or r.spec.aligned):
                    problems.append(f"{where}: operand {name} is loaded {'synchronously' if how == 'sync' else how} "
                                    "in the main loop (not cp.async/TMA into a shared-memory ring)")
        if tc == "int8" and r.wgmma and r.spec.aligned and r.loop is not None and r.loop.prmt:
            problems.append(f"{where}: {r.loop.prmt} PRMT in the main loop (register transpose of an operand)")
    return problems


def write_dump(results: List[CompileResult], folder: str):
    """Each result's TTGIR, PTX and SASS as ``<index>-sm<arch>.<ext>``, with ``index.txt``
    naming the specialization of each index."""
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i, r in enumerate(results):
        stem = f"{i:03d}-sm{r.arch}"
        lines.append(f"{stem}\t{r.spec.name}")
        for ext in ("ttgir", "ptx", "sass"):
            atomic_write_text(os.path.join(folder, f"{stem}.{ext}"), r.asm.get(ext, ""))
    atomic_write_text(os.path.join(folder, "index.txt"), "\n".join(lines) + "\n")


def report(results: List[CompileResult], waves: Optional[List[dict]] = None) -> dict:
    """The JSON report: the Triton version, one entry per compiled specialization, the wave
    table (when layers were given), and the gate's problems."""
    return {"triton": triton.__version__, "sms": _tuning.DEFAULT_SMS,
            "specializations": [r.summary() for r in results],
            "waves": waves or [], "problems": check(results)}


def load_layers(path: str) -> List[ConvLaunch]:
    with open(path) as f:
        rows = json.load(f)
    try:
        return [ConvLaunch(**row) for row in rows]
    except TypeError as e:
        raise ValueError(f"{path}: each layer needs the fields of kernels.launches.ConvLaunch ({e}); "
                         "write the file with kernels.aot.layers_to_json") from e


def layers_to_json(layers: Sequence[ConvLaunch]) -> str:
    return json.dumps([asdict(layer) for layer in layers], indent=1)


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}


def main(argv=None, layers: Optional[Sequence[ConvLaunch]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.aot",
                                 description="Compile conv specializations for sm_80/sm_90 without a GPU and "
                                             "report registers, spills, shared memory, MMA kind, operand "
                                             "async-ness, main-loop instructions and wave efficiency.")
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--dump", help="write each specialization's .ttgir/.ptx/.sass into this folder")
    ap.add_argument("--layers", help="JSON list of kernels.launches.ConvLaunch fields (default: one spec per layer class)")
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "int8"], choices=sorted(_DTYPES))
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    args = ap.parse_args(argv)
    if args.layers:
        layers = load_layers(args.layers)
    dtypes = [_DTYPES[d] for d in args.dtypes]
    waves = None
    if layers:
        specs = layer_specs(layers, dtypes, args.batches)
        waves = wave_table(layers, dtypes, args.batches)
    else:
        specs = class_specs()
    results = compile_many(specs, args.arch)
    rep = report(results, waves)
    print(f"triton {triton.__version__}: {len(specs)} specializations x {len(args.arch)} archs")
    print(format_table(results))
    if waves:
        low = [w for w in waves if w["wave_efficiency"] < _tuning.TARGET_WAVE_EFFICIENCY]
        print(f"wave efficiency: min {min(w['wave_efficiency'] for w in waves):.0%} over {len(waves)} "
              f"launches; {len(low)} below {_tuning.TARGET_WAVE_EFFICIENCY:.0%}")
    print("problems:\n  " + "\n  ".join(rep["problems"]) if rep["problems"] else "gate: no problems")
    if args.dump:
        write_dump(results, args.dump)
    if args.report:
        atomic_write_text(args.report, json.dumps(rep, indent=1))
    return 1 if rep["problems"] else 0


