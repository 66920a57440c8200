"""Reading compiled kernel code without running it: where each MMA operand of the main loop
comes from (TTGIR) and what the main loop issues per K-step (SASS).

An operand is loaded asynchronously when it is a slot of a multi-buffered shared-memory ring
written by ``cp.async`` or TMA, rather than registers stored to shared memory in the loop;
the main loop is the innermost SASS loop (a backward branch) that issues MMA instructions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple


@dataclass
class LoopStats:
    """The innermost SASS loop that issues MMAs: one iteration is one K-step."""

    instructions: int
    mma: int
    prmt: int                   # byte permutes: a register transpose of 8-bit operands
    sts: int                    # shared-memory stores from registers

    @property
    def per_mma(self) -> float:
        return self.instructions / self.mma if self.mma else float("nan")


_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?\s*=\s*([\w.]+)\s*(.*)$")
_PASS_THROUGH = {"ttg.memdesc_index", "ttg.memdesc_subview", "ttg.memdesc_trans", "ttg.memdesc_reinterpret",
                 "ttg.local_load", "ttg.convert_layout", "arith.extf", "arith.extsi", "arith.sitofp",
                 "tt.fp_to_fp", "ttg.memdesc_subslice", "tt.trans"}
_ASYNC_COPY = ("async_copy_global_to_local", "async_tma_copy_global_to_local", "async_tma_gather")
_DOT = re.compile(r"=\s*(ttng\.warp_group_dot|tt\.dot)\s+(%[\w.$-]+),\s*(%[\w.$-]+)")


def _ttgir_defs(ttgir: str) -> Tuple[Dict[str, Tuple[str, str]], Dict[str, str]]:
    """SSA definitions ``name -> (op, rest of line)`` and loop-carried block arguments
    ``name -> initial value`` (from ``scf.for ... iter_args(%a = %init, ...)``)."""
    defs, carried = {}, {}
    for line in ttgir.splitlines():
        m = _DEF.match(line)
        if m:
            defs[m.group(1)] = (m.group(2), m.group(3))
        for it in re.finditer(r"iter_args\((.*?)\)\s*->", line):
            for arg, init in re.findall(r"(%[\w.$-]+)\s*=\s*(%[\w.$-]+)", it.group(1)):
                carried[arg] = init
    return defs, carried


def _root(value: str, defs, carried, depth: int = 0) -> Tuple[str, str]:
    """Follow an MMA operand back through views, layout changes and loop arguments to where
    its data comes from: ``("buffer", name)`` (a shared ring allocated empty), ``("sync", op)``
    (registers: a load, or a local_alloc of a register tensor), or ``("?", ...)``."""
    for _ in range(64 - depth):
        if value in carried:
            value = carried[value]
            continue
        if value not in defs:
            return "?", value
        op, rest = defs[value]
        if op in _PASS_THROUGH:
            m = re.match(r"(%[\w.$-]+)", rest)
            if not m:
                return "?", op
            value = m.group(1)
            continue
        if op == "ttg.local_alloc":
            return ("sync", "local_alloc of registers") if rest.startswith("%") else ("buffer", value)
        if op == "tt.load":
            return "sync", "tt.load"
        return "?", op
    return "?", "too deep"


def operand_sources(ttgir: str) -> Tuple[str, ...]:
    """For the A and B operands of the kernel's MMAs: ``"async"`` when every MMA reads that
    operand from a shared-memory ring filled by asynchronous copies (cp.async or TMA),
    ``"sync"`` when any reads it from registers loaded in the loop, ``"?"`` otherwise; ``()``
    when the kernel has no MMA."""
    defs, carried = _ttgir_defs(ttgir)
    async_buffers = set()
    for line in ttgir.splitlines():
        if any(op in line for op in _ASYNC_COPY):
            for v in re.findall(r"%[\w.$-]+", line.split("=", 1)[-1]):
                kind, name = _root(v, defs, carried)
                if kind == "buffer":
                    async_buffers.add(name)
    verdicts: List[set] = [set(), set()]
    for m in _DOT.finditer(ttgir):
        for i, v in enumerate((m.group(2), m.group(3))):
            kind, name = _root(v, defs, carried)
            verdicts[i].add("async" if kind == "buffer" and name in async_buffers else
                            "sync" if kind in ("sync", "buffer") else "?")
    if not verdicts[0]:
        return ()
    return tuple("sync" if "sync" in v else ("?" if "?" in v else "async") for v in verdicts)


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_MMA_OPS = ("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA", "BGMMA")


def sass_main_loop(sass: str) -> Optional[LoopStats]:
    """The innermost loop (a backward branch) that issues MMA instructions; None if none."""
    insts = []
    for m in _SASS_LINE.finditer(sass):
        insts.append((int(m.group(1), 16), m.group(2).strip()))
    loops = []
    for addr, text in insts:
        b = re.search(r"\bBRA\s+(?:`?\(?\.L_x_\d+\)?|0x([0-9a-f]+))", text)
        if b and b.group(1):
            target = int(b.group(1), 16)
            if target < addr:
                body = [t for a, t in insts if target <= a <= addr and not t.startswith("NOP")]
                mma = sum(1 for t in body if t.split()[-1:] and any(
                    re.search(rf"(^|\s){op}\.", t) for op in _MMA_OPS))
                if mma:
                    loops.append(LoopStats(len(body), mma, sum("PRMT" in t for t in body),
                                           sum(bool(re.search(r"(^|\s)STS(\.|\s)", t)) for t in body)))
    return min(loops, key=lambda s: s.instructions) if loops else None
