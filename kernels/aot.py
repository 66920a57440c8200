"""Ahead-of-time compilation of kernel specializations for a GPU architecture this machine
need not have (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``), and
a static report of the compiled code.

For each specialization (:class:`Spec`: the kernel, its pointer dtypes, its constexprs) and
architecture, :func:`compile_spec` records registers and spills (``ptxas -v``), shared
memory, the MMA instruction kind, whether each MMA operand's main-loop load is asynchronous
(read off the TTGIR: the operand is a slot of a multi-buffered shared-memory ring written by
``cp.async`` or TMA, rather than registers stored to shared memory in the loop), and the main
loop's instruction count per K-step and per MMA (read off the SASS from the ``cuobjdump``
that ships with Triton). :func:`check` is the gate.

    python -m kernels.aot --arch 80 90 --report OUT.json --dump DIR [--layers LAYERS.json]

compiles the layer classes of :func:`class_specs` (or, with ``--layers``, every tile the
tuning table picks for those layers at batch 1, 32, 128 and 256) and writes the report;
``--dump`` writes each specialization's ``.ttgir``, ``.ptx`` and ``.sass``. The layers of the
real networks come from ``benchmarks/aot.py`` (kernels never import the engine).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton

from . import conv as _conv
from . import pool as _pool
from . import quant as _quant
from . import tuning as _tuning

_TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8",
       torch.int32: "i32"}
BATCHES = (1, 32, 128, 256)


@dataclass(frozen=True)
class Spec:
    name: str                   # readable: "conv 3x3/2 fp16->fp16 bias relu [tile]"
    kernel: str                 # "conv" | "pool3x3" | "global_avg" | "requant" | "splitk_reduce"
    dtypes: Tuple               # pointer dtypes, in the kernel's pointer order
    constexprs: Tuple           # ((name, value), ...)
    num_warps: int = 4
    num_stages: int = 3
    aligned: bool = True        # strides 16-divisible (false for the stem's 3-channel input)
    fp_fusion: bool = True      # False for INT8 convs (bit-exact epilogue, as the launcher does)

    @property
    def tensor_core_dtype(self) -> Optional[str]:
        """fp16/bf16/int8 for conv specializations that must use tensor cores."""
        if self.kernel != "conv":
            return None
        return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.int8: "int8"}.get(self.dtypes[0])


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


@dataclass
class CompileResult:
    spec: Spec
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    mma: bool
    wgmma: bool
    ptx_target: str
    smem: int = 0
    operands: Tuple[str, ...] = ()          # per MMA operand (A, B): "async" | "sync" | "?"
    loop: Optional[LoopStats] = None
    ptxas_log: str = field(repr=False, default="")
    asm: Dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def mma_kind(self) -> str:
        return "wgmma" if self.wgmma else ("mma.sync" if self.mma else "none")

    def summary(self) -> dict:
        out = {"specialization": self.spec.name, "arch": self.ptx_target, "registers": self.registers,
               "spill_bytes": self.spills, "smem_bytes": self.smem, "mma": self.mma_kind,
               "operands": dict(zip("AB", self.operands))}
        if self.loop is not None:
            out["loop"] = {"instructions_per_k_step": self.loop.instructions, "mma_per_k_step": self.loop.mma,
                           "instructions_per_mma": round(self.loop.per_mma, 1), "prmt": self.loop.prmt,
                           "sts": self.loop.sts}
        return out


# --------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------

def _kernel_fn(kind):
    return {"conv": _conv._conv_kernel, "splitk_reduce": _conv._splitk_reduce_kernel,
            "pool3x3": _pool._pool3x3_kernel, "global_avg": _pool._global_avg_kernel,
            "requant": _quant._requant_kernel}[kind]


# Integer arguments that are multiples of 16 for every IR-v2 layer: channel counts and
# strides, except the input's channels and strides in the stem (3 channels). The JIT marks
# such arguments at run time (``tt.divisibility``), which lets loads vectorise along
# channels and become asynchronous copies; AOT mirrors it.
_ALIGNED_SIZES = {"C", "N_TOTAL", "N0", "N01", "swt"}
_INPUT_SIZES = {"C", "sxn", "sxh", "sxw"}
_FLOAT_SCALARS = {"res_scale", "y_scale", "y_inv", "x_scale"}


def _signature(spec: Spec, fn):
    """(signature, constexprs, attrs) for ASTSource: pointers typed by the spec, scalars
    i32/fp32; pointers, strides and channel counts marked 16-divisible (as the JIT does at
    run time for aligned NHWC buffers whose channel counts are multiples of 16). Constexprs
    the kernel does not take are dropped, so an older kernel compiles from the same spec."""
    names = fn.arg_names
    declared = {p.name for p in fn.params if p.is_constexpr}
    consts = {k: v for k, v in spec.constexprs if k in declared}
    ptrs = [n for n in names if n.endswith("_ptr")]
    if len(ptrs) > len(spec.dtypes):
        raise ValueError(f"{spec.name}: {len(spec.dtypes)} dtypes for pointers {ptrs}")
    ptr_ty = dict(zip(ptrs, spec.dtypes))
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in declared:
            if n not in consts:
                raise ValueError(f"{spec.name}: no value for the constexpr {n}")
            sig[n] = "constexpr"
        elif n in ptr_ty:
            sig[n] = "*" + _TY[ptr_ty[n]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in _FLOAT_SCALARS:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            is_size = n in _ALIGNED_SIZES or (n.startswith("s") and n[-1] in "nhw")
            if is_size and (spec.aligned or n not in _INPUT_SIZES):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _tool(name: str) -> str:
    """A CUDA binary tool: ``TRITON_<NAME>_PATH``, Triton's bundled copy, or PATH."""
    here = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    for cand in (os.environ.get(f"TRITON_{name.upper()}_PATH"), here, shutil.which(name)):
        if cand and os.path.exists(cand):
            return cand
    raise FileNotFoundError(f"no {name} found (looked at TRITON_{name.upper()}_PATH, triton's bundled "
                            f"backends/nvidia/bin, PATH)")


def _ptxas() -> str:
    return _tool("ptxas")


# --------------------------------------------------------------------------------------
# Reading the compiled code
# --------------------------------------------------------------------------------------

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


def _sass(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        proc = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {proc.stderr[-2000:]}")
    return proc.stdout


def _ptxas_stats(ptx: str, target: str, name: str, arch: int) -> Tuple[int, int, int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([_ptxas(), "-v", f"-arch={target}", path, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed for {name} on sm_{arch}:\n{log}")
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else 0,
            int(spill.group(2)) if spill else 0, log)


def compile_spec(spec: Spec, arch: int, fn=None) -> CompileResult:
    """Compile ``spec`` for sm_<arch> (``fn``: another build of the same kernel, e.g. an
    older revision, compiled from the same spec) and read the compiled code. Needs the
    kernels imported without TRITON_INTERPRET; :func:`compile_many` handles both."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = fn or _kernel_fn(spec.kernel)
    sig, consts, attrs = _signature(spec, fn)
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                       "enable_fp_fusion": spec.fp_fusion})
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    regs, st, ld, log = _ptxas_stats(ptx, target, spec.name, arch)
    sass = _sass(compiled.asm["cubin"])
    smem = getattr(compiled.metadata, "shared", 0)
    return CompileResult(spec, arch, regs, st, ld, mma=bool(re.search(r"\bmma\.sync", ptx)),
                         wgmma="wgmma.mma_async" in ptx, ptx_target=target, smem=int(smem),
                         operands=operand_sources(ttgir), loop=sass_main_loop(sass), ptxas_log=log,
                         asm={"ttgir": ttgir, "ptx": ptx, "sass": sass})


def _kernels_are_jit() -> bool:
    """False when this process imported the kernels under TRITON_INTERPRET=1 (the interpreter
    wraps them in objects the compiler cannot take)."""
    from triton.runtime.jit import JITFunction
    return isinstance(_conv._conv_kernel, JITFunction)


def compile_many(specs: List[Spec], archs) -> List[CompileResult]:
    """Compile every spec for every arch. When this process runs the interpreter, the
    compiles run in a child process without TRITON_INTERPRET (one start, all specs)."""
    specs, archs = list(specs), list(archs)
    if _kernels_are_jit():
        return [compile_spec(s, a) for s in specs for a in archs]
    import pickle
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = ("import pickle, sys\n"
            "from kernels import aot\n"
            "specs, archs = pickle.load(open(sys.argv[1], 'rb'))\n"
            "res = [aot.compile_spec(s, a) for s in specs for a in archs]\n"
            "pickle.dump(res, open(sys.argv[2], 'wb'))\n")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.pkl"), os.path.join(tmp, "out.pkl")
        with open(src, "wb") as f:
            pickle.dump((specs, archs), f)
        proc = subprocess.run([sys.executable, "-c", code, src, dst], env=env, cwd=root,
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"AOT compile in a child process failed:\n{proc.stderr[-4000:]}")
        with open(dst, "rb") as f:
            return pickle.load(f)


# --------------------------------------------------------------------------------------
# Spec builders: one specialization of each kernel, named as the table prints it
# --------------------------------------------------------------------------------------

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
    meta = _conv.config_kwargs(config)
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
# Layers: tiles chosen per batch, and the grid's wave efficiency
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One conv launch of a network plan: geometry, sizes and epilogue."""

    label: str
    kh: int
    kw: int
    stride: int
    pad_h: int
    pad_w: int
    h: int
    w: int
    c_in: int
    c_out: int
    residual: bool = False
    dests: int = 1

    @property
    def out_hw(self) -> Tuple[int, int]:
        return ((self.h + 2 * self.pad_h - self.kh) // self.stride + 1,
                (self.w + 2 * self.pad_w - self.kw) // self.stride + 1)

    def choice(self, batch: int, dtype, arch: int = 90, sms: int = _tuning.DEFAULT_SMS) -> _tuning.Choice:
        oh, ow = self.out_hw
        return _tuning.choose(batch * oh * ow, self.c_out, self.c_in, self.kh, self.kw, self.stride, dtype,
                              arch, sms)

    def specs(self, batch: int, dtype, arch: int = 90) -> List[Spec]:
        """The conv (and split-K reduction) this layer launches at ``batch``. int8 plans write
        int8 except the up-projections, which add the fp16 trunk and write fp16."""
        float_dt = torch.float16 if dtype == torch.int8 else dtype
        choice = self.choice(batch, dtype, arch)
        y_dt = float_dt if self.residual else dtype
        res = float_dt if self.residual else None
        kw = dict(res_dt=res, dests=self.dests, config=choice.meta(), aligned=self.c_in % 16 == 0,
                  padding=(self.pad_h, self.pad_w), c=self.c_in)
        out = [conv_spec(self.kh, self.kw, self.stride, dtype, y_dt, **kw)]
        if choice.split_k > 1:
            out.append(splitk_reduce_spec(dtype, y_dt, choice.split_k, res_dt=res, dests=self.dests))
        return out


def wave_table(layers: Sequence[Layer], dtypes, batches=BATCHES, arch: int = 90,
               sms: int = _tuning.DEFAULT_SMS) -> List[dict]:
    """Per layer, precision and batch: the chosen tile, split-K, programs and wave efficiency."""
    rows = []
    for layer in layers:
        for dt in dtypes:
            for b in batches:
                ch = layer.choice(b, dt, arch, sms)
                rows.append({"layer": layer.label, "dtype": _TY[dt], "batch": b, "tile": ch.tile.label(),
                             "split_k": ch.split_k, "programs": ch.blocks, "waves": ch.waves,
                             "wave_efficiency": round(ch.wave_efficiency, 4)})
    return rows


def layer_specs(layers: Sequence[Layer], dtypes, batches=BATCHES, arch: int = 90) -> List[Spec]:
    """Every distinct specialization the layers launch at the batches (deduplicated by name)."""
    specs: Dict[str, Spec] = {}
    for layer in layers:
        for dt in dtypes:
            for b in batches:
                for s in layer.specs(b, dt, arch):
                    specs.setdefault(s.name, s)
    return list(specs.values())


# --------------------------------------------------------------------------------------
# Table, gate, report
# --------------------------------------------------------------------------------------

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
            _write_text(os.path.join(folder, f"{stem}.{ext}"), r.asm.get(ext, ""))
    _write_text(os.path.join(folder, "index.txt"), "\n".join(lines) + "\n")


def _write_text(path: str, text: str):
    """Write-then-rename: a reader never finds half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def report(results: List[CompileResult], waves: Optional[List[dict]] = None) -> dict:
    """The JSON report: the Triton version, one entry per compiled specialization, the wave
    table (when layers were given), and the gate's problems."""
    return {"triton": triton.__version__, "sms": _tuning.DEFAULT_SMS,
            "specializations": [r.summary() for r in results],
            "waves": waves or [], "problems": check(results)}


def load_layers(path: str) -> List[Layer]:
    with open(path) as f:
        rows = json.load(f)
    try:
        return [Layer(**row) for row in rows]
    except TypeError as e:
        raise ValueError(f"{path}: each layer needs the fields of kernels.aot.Layer ({e})") from e


def layers_to_json(layers: Sequence[Layer]) -> str:
    return json.dumps([asdict(layer) for layer in layers], indent=1)


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}


def main(argv=None, layers: Optional[Sequence[Layer]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.aot",
                                 description="Compile conv specializations for sm_80/sm_90 without a GPU and "
                                             "report registers, spills, shared memory, MMA kind, operand "
                                             "async-ness, main-loop instructions and wave efficiency.")
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--dump", help="write each specialization's .ttgir/.ptx/.sass into this folder")
    ap.add_argument("--layers", help="JSON list of kernels.aot.Layer fields (default: one spec per layer class)")
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
        _write_text(args.report, json.dumps(rep, indent=1))
    return 1 if rep["problems"] else 0


if __name__ == "__main__":
    # Run the module under its import name: specs pickled for the interpreter-mode child
    # process must name kernels.aot.Spec, not __main__.Spec.
    from kernels import aot as _aot
    sys.exit(_aot.main())
