"""Which tile and split-K a conv launches with, chosen without running anything.

The shipped table (``kernels/tuning/conv.json``) lists candidate tiles per GPU architecture,
layer class and M bucket. :func:`choose` takes those candidates and picks the tile and the
split of the reduction that minimise a wave model of the launch on the GPU's SM count: a
grid of ``blocks`` programs runs in ``ceil(blocks / SMs)`` waves (one program per SM: the
big tiles use most of the register file), each as long as its slowest program's K-steps.
Small-M layers (the 8x8 maps at batch 1) split K so that every SM gets work; the partial
sums are reduced, in a fixed order, by a second small kernel (:mod:`kernels.conv`).

Autotuning is only done when asked (``KERNELS_AUTOTUNE=1``, or :func:`autotune` directly):
it times the candidates on the GPU and keeps the winner in a JSON cache on disk, keyed by
architecture, layer class, M bucket and the layer's other sizes, so a new batch size in the
same bucket reuses it.
"""
from __future__ import annotations

import functools
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .atomic import atomic_write_text
from .launches import ConvLaunch

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuning", "conv.json")
DEFAULT_SMS = 132           # H100 / H200 SXM
TARGET_WAVE_EFFICIENCY = 0.8
MIN_STEPS_PER_SPLIT = 1     # splits as short as one K-step, for the smallest layers
MAX_SPLIT_K = 16
# Fixed cost of a program (prologue fill, epilogue, launch of its CTA), in K-steps.
PROGRAM_OVERHEAD_STEPS = 3
# The smallest K-step worth its issue slots: below this a tile is latency-bound, not MMA-bound.
MIN_STEP_WORK = 64 * 32 * 64
# The split-K reduction: a second launch (about REDUCE_LAUNCH_STEPS smallest K-steps) that
# reads each fp32 partial tile once (a 128x128 partial is about one 128x128x64 step's bytes).
REDUCE_LAUNCH_STEPS = 4


@dataclass(frozen=True)
class Tile:
    """One launch tile: the meta-parameters of :func:`kernels.conv._conv_kernel`."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8

    def meta(self, split_k: int = 1) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "GROUP_M": self.group_m, "SPLIT_K": split_k,
                "num_warps": self.num_warps, "num_stages": self.num_stages}

    def accumulators_per_thread(self) -> int:
        return self.block_m * self.block_n // (32 * self.num_warps)

    def label(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} s{self.num_stages}"


@dataclass(frozen=True)
class Choice:
    """A tile and split-K for one problem, with the wave model's view of its grid."""

    tile: Tile
    split_k: int
    blocks: int
    waves: int
    sms: int
    source: str = "table"       # "table" | "autotune cache"

    @property
    def wave_efficiency(self) -> float:
        return wave_efficiency(self.blocks, self.sms)

    def meta(self) -> dict:
        return self.tile.meta(self.split_k)

    def describe(self) -> str:
        split = f" split-K {self.split_k}" if self.split_k > 1 else ""
        return (f"{self.tile.label()}{split} ({self.source}; {self.blocks} programs, "
                f"{self.wave_efficiency:.0%} of {self.waves} wave(s) on {self.sms} SMs)")


def wave_efficiency(blocks: int, sms: int = DEFAULT_SMS) -> float:
    """Busy share of the SMs over the grid's waves: ``blocks / (ceil(blocks / sms) * sms)``."""
    if blocks < 1 or sms < 1:
        raise ValueError(f"blocks and sms must be >= 1, got {blocks} and {sms}")
    return blocks / (math.ceil(blocks / sms) * sms)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------

_table_lock = threading.Lock()
_table: Optional[dict] = None


def _load_table() -> dict:
    global _table
    with _table_lock:
        if _table is None:
            with open(TABLE_PATH) as f:
                _table = json.load(f)
        return _table


def family(dtype: torch.dtype) -> str:
    """The table's precision family: int8, fp16 (also bf16: same tile shapes) or fp32."""
    if dtype == torch.int8:
        return "int8"
    if dtype in (torch.float16, torch.bfloat16):
        return "fp16"
    if dtype == torch.float32:
        return "fp32"
    raise ValueError(f"no conv tiles for dtype {dtype}")


def layer_class(kh: int, kw: int, stride: int, c: int, dtype: torch.dtype) -> str:
    """``family/class``: ``1x1`` (a plain GEMM), ``stem`` (fewer than 16 input channels)
    or ``kxk`` (every other kernel size and stride)."""
    fam = family(dtype)
    if fam == "fp32":
        return "fp32/any"
    if c < 16:
        return f"{fam}/stem"
    if kh == 1 and kw == 1 and stride == 1:
        return f"{fam}/1x1"
    return f"{fam}/kxk"


def m_bucket(m: int) -> str:
    """The M bucket of the table and of the autotune cache key: xs, s, m or l."""
    limits = _load_table()["buckets"]
    for name, limit in zip(("xs", "s", "m"), limits):
        if m <= limit:
            return name
    return "l"


def _arch_entry(arch: int) -> dict:
    archs = _load_table()["arch"]
    known = sorted(int(a) for a in archs)
    usable = [a for a in known if a <= arch] or known[:1]
    entry = archs[str(usable[-1])]
    while isinstance(entry, str):      # an alias: "80": "90" shares sm_90's tiles
        entry = archs[entry]
    return entry


def candidates(arch: int, cls: str, bucket: str) -> List[Tile]:
    """The table's tiles for ``cls`` in ``bucket`` on ``sm_<arch>`` (the nearest lower arch
    the table has)."""
    entry = _arch_entry(arch)
    if cls not in entry:
        raise KeyError(f"the tuning table has no class {cls!r} (it has {sorted(entry)})")
    return [Tile(*row) for row in entry[cls][bucket]]


def all_tiles(arch: int = 90) -> List[Tile]:
    """Every distinct tile of the table for ``arch`` (for the AOT compile)."""
    seen: Dict[Tile, None] = {}
    for buckets in _arch_entry(arch).values():
        for rows in buckets.values():
            for row in rows:
                seen.setdefault(Tile(*row), None)
    return list(seen)


# --------------------------------------------------------------------------------------
# The wave model
# --------------------------------------------------------------------------------------

def k_steps(tile: Tile, c: int, kh: int, kw: int) -> int:
    """Main-loop iterations of one program without split-K: one per (tap, channel block)."""
    return kh * kw * math.ceil(c / tile.block_k)


def _cost(tile: Tile, split: int, m: int, n: int, steps: int, sms: int) -> Tuple[float, int, int]:
    """(modelled time, programs, waves) of the grid: waves times the slowest program's
    steps (each at least MIN_STEP_WORK), plus the split-K reduction pass."""
    tiles = math.ceil(m / tile.block_m) * math.ceil(n / tile.block_n)
    blocks = tiles * split
    waves = math.ceil(blocks / sms)
    step = max(tile.block_m * tile.block_n * tile.block_k, MIN_STEP_WORK)
    time = waves * (math.ceil(steps / split) + PROGRAM_OVERHEAD_STEPS) * step
    if split > 1:
        partial_tiles = math.ceil(m * n * split / (128 * 128))
        time += REDUCE_LAUNCH_STEPS * MIN_STEP_WORK + math.ceil(partial_tiles / sms) * 128 * 128 * 64
    return time, blocks, waves


def _fits(tile: Tile, c: int, dtype: torch.dtype) -> bool:
    """BLOCK_K no wider than the channels need (a 64-wide K tile over 32 channels wastes
    half of every step), and the register rule."""
    least_k = 32 if dtype == torch.int8 else 16
    return tile.block_k <= max(least_k, 1 << max(0, c - 1).bit_length()) and tile.accumulators_per_thread() <= 64


def choose_from(tiles: Sequence[Tile], m: int, n: int, c: int, kh: int, kw: int, dtype: torch.dtype,
                sms: int = DEFAULT_SMS, allow_split: bool = True) -> Choice:
    """The best (tile, split-K) among ``tiles`` by the wave model; a grid that keeps at least
    TARGET_WAVE_EFFICIENCY of the SMs busy wins over a faster-modelled one that does not."""
    usable = [t for t in tiles if _fits(t, c, dtype)] or list(tiles)
    best = None
    for tile in usable:
        steps = k_steps(tile, c, kh, kw)
        max_split = min(MAX_SPLIT_K, max(1, steps // MIN_STEPS_PER_SPLIT)) if allow_split else 1
        for split in range(1, max_split + 1):
            if split > 1 and math.ceil(steps / split) * (split - 1) >= steps:
                continue            # the last split would be empty
            time, blocks, waves = _cost(tile, split, m, n, steps, sms)
            ok = wave_efficiency(blocks, sms) >= TARGET_WAVE_EFFICIENCY
            rank = (not ok, time, split, -tile.block_m * tile.block_n)
            if best is None or rank < best[0]:
                best = (rank, Choice(tile, split, blocks, waves, sms))
    return best[1]


@functools.lru_cache(maxsize=4096)
def choose(m: int, n: int, c: int, kh: int, kw: int, stride: int, dtype: torch.dtype,
           arch: int = 90, sms: int = DEFAULT_SMS, allow_split: bool = True) -> Choice:
    """Tile and split-K for an ``m x n`` output over ``c`` channels and a ``kh x kw`` kernel,
    from the shipped table (no run-time sweep; remembered per problem)."""
    cls = layer_class(kh, kw, stride, c, dtype)
    return choose_from(candidates(arch, cls, m_bucket(m)), m, n, c, kh, kw, dtype, sms, allow_split)


def choose_launch(launch: ConvLaunch, batch: int, dtype: torch.dtype, arch: int = 90,
                  sms: int = DEFAULT_SMS) -> Choice:
    """:func:`choose` for one described conv launch at ``batch``."""
    return choose(launch.rows(batch), launch.c_out, launch.c_in, launch.kh, launch.kw, launch.stride, dtype,
                  arch, sms)


# --------------------------------------------------------------------------------------
# Autotuning, only when asked, cached on disk
# --------------------------------------------------------------------------------------

def autotune_requested() -> bool:
    """True when ``KERNELS_AUTOTUNE`` is set to anything but empty or 0."""
    return os.environ.get("KERNELS_AUTOTUNE", "0") not in ("", "0")


def cache_path() -> str:
    """Where autotune results live: ``$KERNELS_TUNING_CACHE``, else
    ``~/.cache/inception-infer/conv-tuning.json``."""
    return os.environ.get("KERNELS_TUNING_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "inception-infer", "conv-tuning.json")


def cache_key(arch: int, m: int, n: int, c: int, kh: int, kw: int, stride: int, dtype: torch.dtype,
              extra: str = "") -> str:
    """The cache key: M enters only through its bucket, so batch sizes of one bucket share it."""
    return (f"sm{arch}|{layer_class(kh, kw, stride, c, dtype)}|{m_bucket(m)}|n{n}|c{c}|"
            f"{kh}x{kw}/{stride}|{extra}")


_cache_lock = threading.Lock()


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"the conv tuning cache {path} is not valid JSON ({e}); delete it to re-tune") from e


def _write_cache(path: str, data: dict):
    """Write-then-rename (:mod:`kernels.atomic`), so a reader never sees half a file."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def autotune(key: str, options: Sequence[Choice], bench: Callable[[Choice], float],
             path: Optional[str] = None) -> Choice:
    """The fastest of ``options`` by ``bench`` (seconds), remembered under ``key`` in the
    cache file: a key already there is returned without timing anything."""
    path = path or cache_path()
    with _cache_lock:
        hit = _read_cache(path).get(key)
    if hit is not None:
        tile = Tile(*hit["tile"])
        for opt in options:
            if opt.tile == tile and opt.split_k == hit["split_k"]:
                return Choice(opt.tile, opt.split_k, opt.blocks, opt.waves, opt.sms, "autotune cache")
    if not options:
        raise ValueError("autotune needs at least one option")
    best = min(options, key=bench)
    t = best.tile
    with _cache_lock:
        data = _read_cache(path)
        data[key] = {"tile": [t.block_m, t.block_n, t.block_k, t.num_warps, t.num_stages, t.group_m],
                     "split_k": best.split_k}
        _write_cache(path, data)
    return Choice(best.tile, best.split_k, best.blocks, best.waves, best.sms, "autotune cache")


def options_for(m: int, n: int, c: int, kh: int, kw: int, stride: int, dtype: torch.dtype,
                arch: int = 90, sms: int = DEFAULT_SMS) -> List[Choice]:
    """What autotuning times: each table candidate at its modelled-best split-K."""
    cls = layer_class(kh, kw, stride, c, dtype)
    tiles = [t for t in candidates(arch, cls, m_bucket(m)) if _fits(t, c, dtype)]
    return [choose_from([t], m, n, c, kh, kw, dtype, sms) for t in tiles]
