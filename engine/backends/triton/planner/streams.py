"""The stream schedule of a plan: which CUDA stream runs each launch, and the event joins
between streams, from the dependency DAG (:mod:`.dependencies`). The runtime records it
once inside the CUDA graph, so parallel branches of an Inception block overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from .dependencies import ancestor_bits, step_dependencies

MAX_STREAMS = 4        # an Inception block has at most four parallel branches


@dataclass
class Schedule:
    """Which CUDA stream runs each step, and the event joins between streams.

    ``stream[i]``: the stream of step ``i`` (0 is the caller's stream). ``waits[i]``: the
    steps whose completion step ``i`` waits for on another stream (an event recorded after
    each). ``deps[i]``: every step that must finish before step ``i`` (the dependency DAG,
    from the values it reads and the arena bytes it reads and writes).
    """

    stream: List[int]
    waits: List[List[int]]
    deps: List[List[int]]

    @property
    def n_streams(self) -> int:
        return max(self.stream, default=0) + 1

    @property
    def recorded(self) -> List[int]:
        """The steps after which an event is recorded (someone waits for them)."""
        return sorted({j for w in self.waits for j in w})


def plan_streams(plan, max_streams: int = MAX_STREAMS) -> Schedule:
    """Assign the steps to at most ``max_streams`` streams, in plan order.

    A step continues the stream of a dependency that is the last step on its stream (a
    chain stays on one stream); when every such stream has moved on (a fork: a sibling
    branch took it), it takes a stream whose last step it depends on anyway, or a new one,
    or else the least recently used. It then waits, per other stream, for the latest of its
    dependencies there, unless that stream already told it (vector clocks), so each join
    is one event.
    """
    deps = step_dependencies(plan)
    ancestors = ancestor_bits(deps)
    tail: List[int] = []                      # per stream: its last step
    clock: List[List[int]] = []               # per stream: the latest step of each stream it follows
    after: List[List[int]] = []               # per step: its stream's clock once it is done
    stream, waits = [], []
    for j, d in enumerate(deps):
        s = _pick_stream(d, ancestors[j], tail, max_streams)
        if s == len(tail):
            tail.append(-1)
            clock.append([-1] * max_streams)
        mine = []
        for other in range(len(tail)):
            latest = max((i for i in d if stream[i] == other), default=-1)
            if other != s and latest > clock[s][other]:
                mine.append(latest)
                clock[s] = [max(a, b) for a, b in zip(clock[s], after[latest])]
        tail[s] = j
        clock[s][s] = j
        after.append(list(clock[s]))
        stream.append(s)
        waits.append(mine)
    return Schedule(stream, waits, deps)


def _pick_stream(deps: List[int], ancestors: int, tail: List[int], max_streams: int) -> int:
    for i in sorted(deps, reverse=True):      # continue the chain of the latest dependency
        for s, t in enumerate(tail):
            if t == i:
                return s
    for s, t in enumerate(tail):              # a stream whose work this step follows anyway
        if t < 0 or ancestors >> t & 1:
            return s
    if len(tail) < max_streams:
        return len(tail)
    return min(range(len(tail)), key=lambda s: tail[s])
