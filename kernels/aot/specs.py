"""The specializations the AOT tool compiles, named as its table prints them: one builder per
kernel (conv, split-K reduction, pools, requantiser), the layer classes compared from one
kernel revision to the next, and, for a network's :class:`kernels.launches.ConvLaunch` list,
every tile the tuning table picks at each batch and the grid's wave efficiency.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from .. import conv as _conv
from .. import pool as _pool
from .. import quant as _quant
from .. import tuning as _tuning
from .._launch import config_kwargs
from ..launches import ConvLaunch
from .compile import _TY, Spec

BATCHES = (1, 32, 128, 256)


def conv_spec(kh, kw, stride, x_dt, y_dt, res_dt=None, relu=True, dests=1, config=None, aligned=True,
              padding=None, c=None, kmajor=None) -> Spec:
    """The conv kernel for a ``kh x kw`` / ``stride`` layer reading ``x_dt`` and writing
    ``dests`` destinations of ``y_dt`` (with a ``res_dt`` shortcut when given), on the tile
    ``config`` (a dict or triton.Config; default the table's choice for a mid-sized layer).

    padding: default SAME for stride 1, VALID otherwise. c: the input channels, which decide
    EVEN_C (default: aligned to any tile when ``aligned``, else 3). kmajor: the weight layout,
    default the one :func:`kernels.conv.pack_weight` gives for ``x_dt``."""
    c = c if c is not None else (1024 if aligned else 3)
    if config is None:
        config = _tuning.choose(64 * 35 * 35, 256, c, kh, kw, stride, x_dt, 90).meta()
    meta = config_kwargs(config)
    warps, stages = meta.pop("num_warps", 4), meta.pop("num_stages", 3)
    split = meta.pop("SPLIT_K", 1)
    ph, pw = padding if padding is not None else ((kh // 2, kw // 2) if stride == 1 else (0, 0))
    kmajor = (x_dt == torch.int8) if kmajor is None else kmajor
    gemm = kh == kw == 1 and stride == 1 and ph == pw == 0
    # the channel run of a K-contiguous weight, padded as pack_weight pads it
    c_pad = c if c % 16 == 0 else -(-c // 32) * 32
    flags = dict(KH=kh, KW=kw, STRIDE_H=stride, STRIDE_W=stride, PAD_H=ph, PAD_W=pw,
                 EVEN_C=c % meta["BLOCK_K"] == 0, GEMM=gemm, W_KMAJOR=kmajor,
                 W_ZERO_TAIL=kmajor and c % meta["BLOCK_K"] != 0 and c_pad % meta["BLOCK_K"] == 0,
                 SPLIT_K=split,
                 HAS_BIAS=True, RELU=relu, HAS_RES=res_dt is not None, NUM_DEST=dests, UPCAST_DOT=False,
                 EXACT_FMA=True, **meta)
    ep = "bias" + (" +res" if res_dt is not None else "") + (" relu" if relu else "") + \
        (f" {dests}-dest" if dests > 1 else "")
    layout = ("" if kmajor == (x_dt == torch.int8) else (" w-kmajor" if kmajor else " w-nmajor"))
    tile = f"{meta['BLOCK_M']}x{meta['BLOCK_N']}x{meta['BLOCK_K']} w{warps} s{stages}" + \
        (f" splitk{split}" if split > 1 else "")
    geo = f"{kh}x{kw}/{stride}" + (f" p{ph}{pw}" if (ph, pw) != ((kh // 2, kw // 2) if stride == 1 else (0, 0))
                                   else "")
    even = "" if flags["EVEN_C"] else " ragged-c"
    name = (f"conv {geo} {_TY[x_dt]}->{_TY[y_dt]} {ep}{'' if aligned else ' unaligned'}{even}{layout} [{tile}]")
    res = res_dt if res_dt is not None else y_dt
    part = torch.int32 if x_dt == torch.int8 else torch.float32
    # pointers: x, w, bias, scale, res, y0, y1, y2, part
    dtypes = (x_dt, x_dt, torch.float32, torch.float32, res, y_dt, y_dt, y_dt, part)
    return Spec(name, "conv", dtypes, tuple(sorted(flags.items())), warps, stages, aligned,
                fp_fusion=x_dt != torch.int8)


def _tile_constexprs(meta: dict) -> Tuple:
    return tuple((k, v) for k, v in meta.items() if k.startswith("BLOCK"))


def pool_spec(kind: str, dtype) -> Spec:
    """The 3x3 pool kernel as the launchers run it: ``"max"`` (stride 2, VALID) or ``"avg"``
    (stride 1, pad 1), on the GPU tile :data:`kernels.pool.POOL_META`."""
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    geometry = (("IS_MAX", True), ("PAD", 0), ("STRIDE", 2)) if kind == "max" else \
        (("IS_MAX", False), ("PAD", 1), ("STRIDE", 1))
    label = "maxpool 3x3/2" if kind == "max" else "avgpool 3x3/1"
    return Spec(f"{label} {_TY[dtype]}", "pool3x3", (dtype, dtype),
                geometry + _tile_constexprs(_pool.POOL_META))


def global_avg_spec(dtype) -> Spec:
    """The global average pool on the GPU tile :data:`kernels.pool.GLOBAL_AVG_META`."""
    return Spec(f"global avgpool {_TY[dtype]}", "global_avg", (dtype, dtype),
                _tile_constexprs(_pool.GLOBAL_AVG_META))


def requant_spec(x_dt, y_dt) -> Spec:
    """The elementwise quantize (float -> int8) or dequantize (int8 -> float) kernel."""
    what = "quantize" if y_dt == torch.int8 else "dequantize"
    return Spec(f"{what} {_TY[x_dt]}->{_TY[y_dt]}", "requant", (x_dt, y_dt),
                _tile_constexprs(_quant.REQUANT_META))


def splitk_reduce_spec(x_dt, y_dt, split: int, res_dt=None, relu=True, dests=1) -> Spec:
    """The split-K reduction and epilogue for ``split`` partials of an ``x_dt`` conv."""
    part = torch.int32 if x_dt == torch.int8 else torch.float32
    res = res_dt if res_dt is not None else y_dt
    meta = dict(_conv.REDUCE_META)
    warps = meta.pop("num_warps")
    flags = dict(SPLIT_K=split, IS_INT8=x_dt == torch.int8, HAS_BIAS=True, RELU=relu, HAS_RES=res_dt is not None,
                 NUM_DEST=dests, EXACT_FMA=True, **meta)
    name = f"splitk-reduce x{split} {_TY[x_dt]}->{_TY[y_dt]}" + (" +res" if res_dt is not None else "")
    return Spec(name, "splitk_reduce", (part, torch.float32, torch.float32, res, y_dt, y_dt, y_dt),
                tuple(sorted(flags.items())), warps, 1, True, fp_fusion=x_dt != torch.int8)


# The large tile of each precision (the table's first choice for big layers on sm_90), on
# which the layer classes are compared from one kernel revision to the next.
BIG_TILES = {torch.float16: _tuning.Tile(128, 128, 64, 8, 3).meta(),
             torch.int8: _tuning.Tile(128, 128, 128, 8, 3).meta()}


def class_specs() -> List[Spec]:
    """One conv specialization per layer class and precision, on the tile the table gives a
    large layer: 1x1 (the GEMM path) and 3x3 in fp16 and int8, 1x7, a residual up-projection,
    3-way fused heads, the unaligned stem, a split-K tile, and its reduction."""
    fp16, i8 = torch.float16, torch.int8
    big, big8 = BIG_TILES[fp16], BIG_TILES[i8]
    specs = [conv_spec(1, 1, 1, fp16, fp16, c=320, config=big), conv_spec(3, 3, 1, fp16, fp16, c=256, config=big),
             conv_spec(1, 1, 1, i8, i8, c=256, config=big8), conv_spec(3, 3, 1, i8, i8, c=256, config=big8),
             conv_spec(1, 7, 1, fp16, fp16, c=128, config=big),
             conv_spec(1, 1, 1, fp16, fp16, res_dt=fp16, c=128, config=big),
             conv_spec(1, 1, 1, i8, fp16, res_dt=fp16, c=128, config=big8),
             conv_spec(1, 1, 1, fp16, fp16, dests=3, c=320, config=big),
             conv_spec(3, 3, 2, fp16, fp16, aligned=False, c=3)]
    small = _tuning.choose(64, 192, 2080, 1, 1, 1, fp16, 90)
    specs.append(conv_spec(1, 1, 1, fp16, fp16, c=2080, config=small.meta()))
    if small.split_k > 1:
        specs.append(splitk_reduce_spec(fp16, fp16, small.split_k))
    return specs


# --------------------------------------------------------------------------------------
# Launches: tiles chosen per batch, and the grid's wave efficiency
# --------------------------------------------------------------------------------------

def launch_specs(launch: ConvLaunch, batch: int, dtype, arch: int = 90) -> List[Spec]:
    """The conv (and split-K reduction) ``launch`` runs at ``batch``. int8 plans write int8
    except the up-projections, which add the fp16 trunk and write fp16."""
    float_dt = torch.float16 if dtype == torch.int8 else dtype
    choice = _tuning.choose_launch(launch, batch, dtype, arch)
    y_dt = float_dt if launch.residual else dtype
    res = float_dt if launch.residual else None
    kw = dict(res_dt=res, dests=launch.dests, config=choice.meta(), aligned=launch.c_in % 16 == 0,
              padding=(launch.pad_h, launch.pad_w), c=launch.c_in)
    out = [conv_spec(launch.kh, launch.kw, launch.stride, dtype, y_dt, **kw)]
    if choice.split_k > 1:
        out.append(splitk_reduce_spec(dtype, y_dt, choice.split_k, res_dt=res, dests=launch.dests))
    return out


def wave_table(launches: Sequence[ConvLaunch], dtypes, batches=BATCHES, arch: int = 90,
               sms: int = _tuning.DEFAULT_SMS) -> List[dict]:
    """Per launch, precision and batch: the chosen tile, split-K, programs and wave efficiency."""
    rows = []
    for launch in launches:
        for dt in dtypes:
            for b in batches:
                ch = _tuning.choose_launch(launch, b, dt, arch, sms)
                rows.append({"layer": launch.label, "dtype": _TY[dt], "batch": b, "tile": ch.tile.label(),
                             "split_k": ch.split_k, "programs": ch.blocks, "waves": ch.waves,
                             "wave_efficiency": round(ch.wave_efficiency, 4)})
    return rows


def layer_specs(launches: Sequence[ConvLaunch], dtypes, batches=BATCHES, arch: int = 90) -> List[Spec]:
    """Every distinct specialization the launches make at the batches (deduplicated by name)."""
    specs: Dict[str, Spec] = {}
    for launch in launches:
        for dt in dtypes:
            for b in batches:
                for s in launch_specs(launch, b, dt, arch):
                    specs.setdefault(s.name, s)
    return list(specs.values())
