"""Which steps of a plan must follow which: the accesses of each step (value -> buffer and
channel span), the dependency DAG built from them, its ancestor sets, and when each value
is complete. Arena packing (:mod:`.plan`) and the stream schedule (:mod:`.streams`) both
stand on these.

The functions take the plan's steps, values and buffers as they are being planned, so the
planner can use them before a :class:`~.plan.Plan` exists.
"""
from __future__ import annotations

from typing import Dict, List


def _overlap(a, b) -> bool:
    """Whether two values' channel spans meet in one buffer."""
    return a.buf == b.buf and a.offset < b.offset + b.channels and b.offset < a.offset + a.channels


def _contains(a, b) -> bool:
    """Whether value ``a``'s channel span holds all of ``b``'s."""
    return a.buf == b.buf and a.offset <= b.offset and b.offset + b.channels <= a.offset + a.channels


def ready_steps(steps, values) -> Dict[str, int]:
    """Value -> index of the step after which it is complete: the step that writes it, or,
    for a value no step writes (a concat, written in slices), the last step writing into its
    span before the first step that reads it, before anything overwrites its buffer (e.g.
    an in-place residual)."""
    r: Dict[str, int] = {}
    for i, st in enumerate(steps):
        for o in st.outputs:
            r[o] = i
    stepped = dict(r)
    for name, v in values.items():
        if name in r or v.buf < 0:
            continue
        first_read = min((i for i, st in enumerate(steps) for x in st.reads if _contains(values[x], v)),
                         default=len(steps))
        ks = [k for o, k in stepped.items() if _overlap(values[o], v) and k < first_read]
        r[name] = max(ks) if ks else 0
    return r


def _accesses(vals, st):
    """``(reads, writes)`` of a step as (buffer, first channel, last channel + 1)."""
    def span(name):
        v = vals[name]
        return (v.buf, v.offset, v.offset + v.channels)
    reads = [span(i) for i in st.reads]
    return reads, [span(o) for o in st.outputs]


def dependencies(steps, vals, bufs, arena: bool) -> List[List[int]]:
    """For each step, the earlier steps it must follow: it reads what they wrote, or writes
    what they read or wrote. Two accesses conflict on one buffer when their channels
    overlap; with ``arena``, also on two buffers whose arena bytes overlap."""
    def conflict(a, b) -> bool:
        if a[0] == b[0]:
            return a[1] < b[2] and b[1] < a[2]
        if not arena:
            return False
        ba, bb = bufs[a[0]], bufs[b[0]]
        return ba.offset < bb.offset + bb.nbytes and bb.offset < ba.offset + ba.nbytes

    acc = [_accesses(vals, st) for st in steps]
    deps: List[List[int]] = []
    for j, (rj, wj) in enumerate(acc):
        mine = []
        for i in range(j):
            ri, wi = acc[i]
            if any(conflict(w, r) for w in wi for r in rj) or \
                    any(conflict(w, x) for w in wj for x in ri + wi):
                mine.append(i)
        deps.append(mine)
    return deps


def ancestor_bits(deps: List[List[int]]) -> List[int]:
    """Per step, the bit set of every step it transitively depends on."""
    ancestors: List[int] = []
    for d in deps:
        bits = 0
        for i in d:
            bits |= ancestors[i] | (1 << i)
        ancestors.append(bits)
    return ancestors


def step_dependencies(plan) -> List[List[int]]:
    """The dependency DAG of a plan's steps, through values and the arena's shared bytes."""
    return dependencies(plan.steps, plan.values, plan.buffers, arena=True)
