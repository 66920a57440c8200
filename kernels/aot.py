"""Ahead-of-time compilation of the kernel specializations a network uses, for a GPU
architecture this machine need not have (``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))``), with register and spill counts from ``ptxas -v``
and a check for tensor-core instructions (``mma`` on sm_80, ``wgmma`` on sm_90).

A specialization is what Triton compiles once: the kernel, the dtypes of its pointers and
its constexprs (kernel size, stride, epilogue flags, tile sizes). The list for a network
comes from its traced layer shapes (:mod:`engine.models.shapes`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

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
# Specializations of a network
# --------------------------------------------------------------------------------------

def _conv_spec(kh, kw, stride, x_dt, y_dt, res_dt=None, relu=True, dests=1, config=None, aligned=True):
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


def network_specs(model_name: str = "inception_resnet_v2", dtypes=(torch.float16, torch.int8),
                  configs=None) -> List[Spec]:
    """Every kernel specialization the network's layers need, per compute dtype.

    fp16/bf16: activations stay in that dtype. int8: convs read int8 and write int8
    (requantised), except the residual up-projections, which add the fp16 trunk and write
    fp16 (Q/DQ on the shortcut input is applied when the trunk is next quantised).
    """
    from engine.models.shapes import network_shapes

    shapes = network_shapes(model_name)   # full width: alignment (channels % 16) matters
    specs: Dict[str, Spec] = {}
    cfgs = configs or [None]

    def add(s: Spec):
        specs.setdefault(s.name, s)

    for dt in dtypes:
        act = dt
        for cfg in cfgs:
            for shape in shapes.convs:
                if shape.residual:
                    res = torch.float16 if dt == torch.int8 else dt
                    add(_conv_spec(1, 1, 1, dt, res, res_dt=res, relu=True, config=cfg))
                    add(_conv_spec(1, 1, 1, dt, res, res_dt=res, relu=False, config=cfg))  # final block8
                else:
                    add(_conv_spec(shape.kh, shape.kw, shape.stride, dt, act, config=cfg,
                                   aligned=shape.c_in % 16 == 0))
            for group in shapes.fusion_groups:
                add(_conv_spec(1, 1, 1, dt, act, dests=len(group), config=cfg))
            add(_conv_spec(1, 1, 1, dt, torch.float32 if dt == torch.int8 else dt, relu=False, config=cfg))  # head
        pool_meta = tuple((k, v) for k, v in _pool.POOL_META.items() if k.startswith("BLOCK"))
        kinds = {p.kind for p in shapes.pools}
        if "max" in kinds:
            add(Spec(f"maxpool 3x3/2 {_TY[dt]}", "pool3x3", (dt, dt),
                     (("IS_MAX", True), ("PAD", 0), ("STRIDE", 2)) + pool_meta))
        if "avg" in kinds:
            add(Spec(f"avgpool 3x3/1 {_TY[dt]}", "pool3x3", (dt, dt),
                     (("IS_MAX", False), ("PAD", 1), ("STRIDE", 1)) + pool_meta))
        gdt = torch.float16 if dt == torch.int8 else dt
        add(Spec(f"global avgpool {_TY[gdt]}", "global_avg", (gdt, gdt),
                 tuple((k, v) for k, v in _pool.GLOBAL_AVG_META.items() if k.startswith("BLOCK"))))
        if dt == torch.int8:
            rq = tuple((k, v) for k, v in _quant.REQUANT_META.items() if k.startswith("BLOCK"))
            add(Spec("quantize fp16->i8", "requant", (torch.float16, torch.int8), rq))
            add(Spec("dequantize i8->fp16", "requant", (torch.int8, torch.float16), rq))
    return list(specs.values())


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


def main(argv=None) -> int:
    import argparse
    import time

    ap = argparse.ArgumentParser(description="Compile a network's kernel specializations for sm_80/sm_90 "
                                             "without a GPU; print registers, spills and tensor-core use.")
    ap.add_argument("--model", default="inception_resnet_v2")
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "int8"])
    ap.add_argument("--all-configs", action="store_true", help="every autotune config, not only the default tile")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args(argv)
    dts = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8, "fp32": torch.float32}
    specs = network_specs(args.model, tuple(dts[d] for d in args.dtypes),
                          configs=_conv.CONFIGS if args.all_configs else None)
    t0 = time.time()
    results = compile_many(specs, args.arch)
    table = format_table(results)
    problems = check(results)
    text = (f"{args.model}: {len(specs)} specializations x {len(args.arch)} archs compiled in "
            f"{time.time() - t0:.0f} s (triton {triton.__version__})\n{table}\n")
    text += ("problems:\n  " + "\n  ".join(problems) + "\n") if problems else "no spills in fp16, tensor cores everywhere expected\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
