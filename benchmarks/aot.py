"""Compile every kernel specialization a network needs for sm_80/sm_90, without a GPU, and
print registers, spills and tensor-core use per specialization.

    python benchmarks/aot.py --out aot.txt [--model inception_resnet_v2] [--arch 80 90]
        [--dtypes fp16 bf16 int8] [--all-configs]

The specializations come from the network's traced layer shapes (:mod:`engine.models.shapes`);
the compiling, the table and the gate (no spills in FP16, tensor cores in every fp16/bf16/int8
conv) are :mod:`kernels.aot`'s. Exits 1 when the gate finds problems.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

# Run as a script, this folder comes first on the import path, and its kernels.py (the
# microbenchmark) would hide the ``kernels`` package: put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402

from kernels import aot  # noqa: E402
from kernels import conv as kconv  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8, "fp32": torch.float32}


def network_specs(model_name: str = "inception_resnet_v2", dtypes=(torch.float16, torch.int8),
                  configs=None) -> List[aot.Spec]:
    """Every kernel specialization the network's layers need, per compute dtype.

    fp16/bf16: activations stay in that dtype. int8: convs read int8 and write int8
    (requantised), except the residual up-projections, which add the fp16 trunk and write
    fp16 (Q/DQ on the shortcut input is applied when the trunk is next quantised).
    configs: conv tiles to compile each conv for (default: the default tile only).
    """
    from engine.models.shapes import network_shapes

    shapes = network_shapes(model_name)   # full width: alignment (channels % 16) matters
    specs: Dict[str, aot.Spec] = {}

    def add(spec: aot.Spec):
        specs.setdefault(spec.name, spec)

    for dt in dtypes:
        float_dt = torch.float16 if dt == torch.int8 else dt   # where an int8 plan stays float
        for cfg in configs or [None]:
            for shape in shapes.convs:
                if shape.residual:
                    add(aot.conv_spec(1, 1, 1, dt, float_dt, res_dt=float_dt, relu=True, config=cfg))
                    add(aot.conv_spec(1, 1, 1, dt, float_dt, res_dt=float_dt, relu=False,
                                      config=cfg))   # the final block8 has no ReLU
                else:
                    add(aot.conv_spec(shape.kh, shape.kw, shape.stride, dt, dt, config=cfg,
                                      aligned=shape.c_in % 16 == 0))
            for group in shapes.fusion_groups:
                add(aot.conv_spec(1, 1, 1, dt, dt, dests=len(group), config=cfg))
            head_dt = torch.float32 if dt == torch.int8 else dt
            add(aot.conv_spec(1, 1, 1, dt, head_dt, relu=False, config=cfg))   # the classifier
        kinds = {p.kind for p in shapes.pools}
        for kind in ("max", "avg"):
            if kind in kinds:
                add(aot.pool_spec(kind, dt))
        add(aot.global_avg_spec(float_dt))
        if dt == torch.int8:
            add(aot.requant_spec(torch.float16, torch.int8))
            add(aot.requant_spec(torch.int8, torch.float16))
    return list(specs.values())


def main(argv=None) -> int:
    import triton

    ap = argparse.ArgumentParser(description="Compile a network's kernel specializations for sm_80/sm_90 "
                                             "without a GPU; print registers, spills and tensor-core use.")
    ap.add_argument("--model", default="inception_resnet_v2")
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "int8"], choices=sorted(DTYPES))
    ap.add_argument("--all-configs", action="store_true", help="every autotune config, not only the default tile")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args(argv)
    specs = network_specs(args.model, tuple(DTYPES[d] for d in args.dtypes),
                          configs=kconv.CONFIGS if args.all_configs else None)
    t0 = time.time()
    results = aot.compile_many(specs, args.arch)
    problems = aot.check(results)
    text = (f"{args.model}: {len(specs)} specializations x {len(args.arch)} archs compiled in "
            f"{time.time() - t0:.0f} s (triton {triton.__version__})\n{aot.format_table(results)}\n")
    text += ("problems:\n  " + "\n  ".join(problems) + "\n") if problems else \
        "no spills in fp16, tensor cores everywhere expected\n"
    print(text)
    if args.out:
        from engine.fileio import atomic_write_bytes
        atomic_write_bytes(args.out, text.encode())
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
