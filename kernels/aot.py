"""Ahead-of-time compilation of kernel specializations for a GPU architecture this machine
need not have (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``), with
register and spill counts from ``ptxas -v`` and a check for tensor-core instructions
(``mma`` on sm_80, ``wgmma`` on sm_90).

A specialization (:class:`Spec`) is what Triton compiles once: the kernel, the dtypes of its
pointers and its constexprs (kernel size, stride, epilogue flags, tile sizes). The builders
here (:func:`conv_spec`, :func:`pool_spec`, :func:`global_avg_spec`, :func:`requant_spec`)
make one each; which ones a network needs is read off its traced layer shapes outside this
package (``benchmarks/aot.py``), since kernels never import the engine.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import triton

from . import conv as _conv
from . import pool as _pool
from . import quant as _quant

_TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8"}


@dataclass(frozen=True)
class Spec:
    name: str                   # readable: "conv 3x3/2 fp16->fp16 bias relu"
    kernel: str                 # "conv" | "pool3x3" | "global_avg" | "requant"
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
        x = self.dtypes[0]
        return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.int8: "int8"}.get(x)


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
    ptxas_log: str = field(repr=False, default="")

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


# --------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------

def _kernel_fn(kind):
    return {"conv": _conv._conv_kernel, "pool3x3": _pool._pool3x3_kernel,
            "global_avg": _pool._global_avg_kernel, "requant": _quant._requant_kernel}[kind]


# Integer arguments that are multiples of 16 for every IR-v2 layer except the stem's
# 3-channel input: channel counts and strides. The JIT marks such arguments at run time
# (``tt.divisibility``), which lets loads vectorise along channels; AOT mirrors it.
_ALIGNED_SIZES = {"C", "N_TOTAL", "N0", "N01"}


def _signature(spec: Spec):
    """(signature, constexprs, attrs) for ASTSource: pointers typed by the spec, scalars
    i32/fp32; pointers, strides and channel counts marked 16-divisible (as the JIT does at
    run time for aligned NHWC buffers whose channel counts are multiples of 16)."""
    fn = _kernel_fn(spec.kernel)
    names = fn.arg_names
    consts = dict(spec.constexprs)
    float_scalars = {"res_scale", "y_scale", "x_scale"}
    ptrs = [n for n in names if n.endswith("_ptr")]
    if len(ptrs) != len(spec.dtypes):
        raise ValueError(f"{spec.name}: {len(spec.dtypes)} dtypes for pointers {ptrs}")
    ptr_ty = dict(zip(ptrs, spec.dtypes))
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptr_ty:
            sig[n] = "*" + _TY[ptr_ty[n]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in float_scalars:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if spec.aligned and (n in _ALIGNED_SIZES or (n.startswith("s") and n[-1] in "nhw")):
                attrs[(i,)] = [["tt.divisibility", 16]]
    missing = [n for n in names if n not in sig]
    if missing:
        raise ValueError(f"{spec.name}: no signature for {missing}")
    return sig, consts, attrs


def _ptxas() -> str:
    here = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    for cand in (os.environ.get("TRITON_PTXAS_PATH"), here, shutil.which("ptxas")):
        if cand and os.path.exists(cand):
            return cand
    raise FileNotFoundError("no ptxas found (looked at TRITON_PTXAS_PATH, triton's bundled ptxas, PATH)")


def compile_spec(spec: Spec, arch: int) -> CompileResult:
    """Compile ``spec`` for sm_<arch> and read registers/spills from ``ptxas -v``.
    Needs the kernels imported without TRITON_INTERPRET; :func:`compile_many` handles both."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, consts, attrs = _signature(spec)
    src = ASTSource(fn=_kernel_fn(spec.kernel), signature=sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                       "enable_fp_fusion": spec.fp_fusion})
    ptx = compiled.asm["ptx"]
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([_ptxas(), "-v", f"-arch={target}", path, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed for {spec.name} on sm_{arch}:\n{log}")
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return CompileResult(spec, arch, int(regs.group(1)) if regs else -1,
                         int(spill.group(1)) if spill else 0, int(spill.group(2)) if spill else 0,
                         mma=bool(re.search(r"\bmma\.sync", ptx)), wgmma="wgmma.mma_async" in ptx,
                         ptx_target=target, ptxas_log=log)


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
    import sys
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

def conv_spec(kh, kw, stride, x_dt, y_dt, res_dt=None, relu=True, dests=1, config=None, aligned=True) -> Spec:
    """The conv kernel for a ``kh x kw`` / ``stride`` layer reading ``x_dt`` and writing
    ``dests`` destinations of ``y_dt`` (with a ``res_dt`` shortcut when given), on the tile
    ``config`` (default :data:`kernels.conv.DEFAULT_CONFIG`)."""
    cfg = config or _conv.DEFAULT_CONFIG
    meta = dict(cfg.kwargs)
    flags = dict(KH=kh, KW=kw, STRIDE_H=stride, STRIDE_W=stride, HAS_BIAS=True, RELU=relu,
                 HAS_RES=res_dt is not None, NUM_DEST=dests, UPCAST_DOT=False, **meta)
    ep = "bias" + (" +res" if res_dt is not None else "") + (" relu" if relu else "") + \
        (f" {dests}-dest" if dests > 1 else "")
    tile = f"{meta['BLOCK_M']}x{meta['BLOCK_N']}x{meta['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"
    name = f"conv {kh}x{kw}/{stride} {_TY[x_dt]}->{_TY[y_dt]} {ep}{'' if aligned else ' unaligned'} [{tile}]"
    res = res_dt if res_dt is not None else y_dt
    # pointers: x, w, bias, scale, res, y0, y1, y2
    dtypes = (x_dt, x_dt, torch.float32, torch.float32, res, y_dt, y_dt, y_dt)
    return Spec(name, "conv", dtypes, tuple(sorted(flags.items())), cfg.num_warps, cfg.num_stages, aligned,
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


def format_table(results: List[CompileResult]) -> str:
    lines = [f"{'specialization':64s} {'arch':>6s} {'regs':>5s} {'spill B':>8s} {'mma':>4s} {'wgmma':>6s}"]
    for r in results:
        lines.append(f"{r.spec.name:64s} {r.ptx_target:>6s} {r.registers:5d} {r.spills:8d} "
                     f"{'y' if r.mma else '-':>4s} {'y' if r.wgmma else '-':>6s}")
    return "\n".join(lines)


def check(results: List[CompileResult]) -> List[str]:
    """Problems that fail the AOT gate: spills in the FP16 path, and fp16/bf16/int8 convs
    without tensor-core instructions (mma.sync, or wgmma on sm_90 for tiles of >= 64 rows
    on >= 4 warps; smaller tiles use mma.sync there)."""
    problems = []
    for r in results:
        tc = r.spec.tensor_core_dtype
        if r.spec.dtypes[0] == torch.float16 and r.spills:
            problems.append(f"{r.spec.name} on {r.ptx_target}: {r.spills} bytes spilled")
        if tc is not None and not (r.mma or r.wgmma):
            problems.append(f"{r.spec.name} on {r.ptx_target}: no tensor-core instruction (mma/wgmma) in the PTX")
    return problems
