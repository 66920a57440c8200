"""Ahead-of-time compilation of one kernel specialization for a GPU architecture this machine
need not have (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``), with
``ptxas -v`` and ``cuobjdump`` run on the result.

A specialization (:class:`Spec`) names its kernel by the key under which the kernel's own
module lists it (``JIT_KERNELS`` in :mod:`kernels.conv`, :mod:`kernels.pool`,
:mod:`kernels.quant`), so nothing here reaches into a kernel file's private names.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import triton

from .. import conv, pool, quant
from .inspect import LoopStats, operand_sources, sass_main_loop

_TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8",
       torch.int32: "i32"}


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

def jit_kernels() -> Dict[str, object]:
    """Every jitted kernel by its spec name, as the kernel modules list them."""
    found: Dict[str, object] = {}
    for module in (conv, pool, quant):
        for name, fn in module.JIT_KERNELS.items():
            if name in found:
                raise ValueError(f"two kernel modules list a kernel named {name!r} in JIT_KERNELS")
            found[name] = fn
    return found


def kernel_fn(kind: str):
    """The jitted kernel a spec of ``kind`` compiles."""
    kernels = jit_kernels()
    if kind not in kernels:
        raise ValueError(f"no kernel module lists a kernel named {kind!r} in JIT_KERNELS; "
                         f"known: {', '.join(sorted(kernels))}")
    return kernels[kind]


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


def tool(name: str) -> str:
    """A CUDA binary tool: ``TRITON_<NAME>_PATH``, Triton's bundled copy, or PATH."""
    here = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    for cand in (os.environ.get(f"TRITON_{name.upper()}_PATH"), here, shutil.which(name)):
        if cand and os.path.exists(cand):
            return cand
    raise FileNotFoundError(f"no {name} found (looked at TRITON_{name.upper()}_PATH, triton's bundled "
                            f"backends/nvidia/bin, PATH)")


def _run_tool(name: str, data: bytes, filename: str, arguments) -> subprocess.CompletedProcess:
    """Run the CUDA tool ``name`` on ``data`` written to ``filename`` in a temporary folder;
    ``arguments(path, folder)`` gives the command line after the tool."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, filename)
        with open(path, "wb") as f:
            f.write(data)
        return subprocess.run([tool(name), *arguments(path, tmp)], capture_output=True, text=True, timeout=300)


def _sass(cubin: bytes) -> str:
    proc = _run_tool("cuobjdump", cubin, "k.cubin", lambda path, _: ["-sass", path])
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {proc.stderr[-2000:]}")
    return proc.stdout


def _ptxas_stats(ptx: str, target: str, name: str, arch: int) -> Tuple[int, int, int, str]:
    proc = _run_tool("ptxas", ptx.encode(), "k.ptx",
                     lambda path, folder: ["-v", f"-arch={target}", path, "-o", os.path.join(folder, "k.cubin")])
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

    fn = fn or kernel_fn(spec.kernel)
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
    return isinstance(kernel_fn("conv"), JITFunction)


def compile_many(specs: List[Spec], archs) -> List[CompileResult]:
    """Compile every spec for every arch. When this process runs the interpreter, the
    compiles run in a child process without TRITON_INTERPRET (one start, all specs)."""
    specs, archs = list(specs), list(archs)
    if _kernels_are_jit():
        return [compile_spec(s, a) for s in specs for a in archs]
    import pickle
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = ("import pickle, sys\n"
            "from kernels.aot import compile as aot_compile\n"
            "specs, archs = pickle.load(open(sys.argv[1], 'rb'))\n"
            "res = [aot_compile.compile_spec(s, a) for s in specs for a in archs]\n"
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
