"""The static kernel report for the real networks: every conv launch of the IR-v2 and
Inception-v4 plans (each conv, each group of fused 1x1 heads, the classifier), the tile and
split-K the shipped table gives it at batch 1, 32, 128 and 256, the wave efficiency of its
grid on 132 SMs, and the compiled code of every distinct specialization for sm_80/sm_90,
without a GPU.

    python -m benchmarks.aot_report --report OUT.json [--dump DIR] [--model inception_resnet_v2 inception_v4]
        [--arch 80 90] [--dtypes fp16 int8] [--waves-only]
    python -m benchmarks.aot_report --classes --arch 90 --report OUT.json [--kernel-rev REV]

``--classes`` compiles one specialization per layer class (:func:`kernels.aot.class_specs`);
``--kernel-rev REV`` compiles the same specializations with the conv kernel of git revision
REV (``git show REV:kernels/conv.py``), for a before/after comparison from one command.
The launches (:class:`kernels.launches.ConvLaunch`) come from :mod:`engine.models.shapes`;
compiling, the report and the gate are :mod:`kernels.aot`'s. Exits 1 when the gate finds problems (or, with ``--waves-only``, when
an IR-v2 conv at batch 1 or 128 is under 80% wave efficiency).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

from engine.fileio import atomic_write_text
from kernels import aot
from kernels import tuning
from kernels.launches import ConvLaunch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
MUST_BATCHES = (1, 128)      # where every IR-v2 conv must keep >= 80% of the SMs busy


def network_layers(model_name: str = "inception_resnet_v2") -> List[ConvLaunch]:
    """Every conv launch of the network's plan: each distinct conv, each group of 1x1 heads
    fused into one launch (their outputs side by side), and the classifier (a 1x1 conv over
    a 1x1 map)."""
    from engine.models.shapes import network_shapes

    shapes = network_shapes(model_name)   # full width: alignment (channels % 16) matters
    layers: Dict[str, ConvLaunch] = {}
    for s in shapes.convs:
        layers.setdefault(s.label, s)
    for group in shapes.fusion_groups:
        first = shapes.conv_of[group[0]]
        n = sum(shapes.conv_of[g].c_out for g in group)
        fused = ConvLaunch(first.c_in, n, 1, 1, 1, 0, 0, first.h, first.w, dests=len(group))
        layers.setdefault(fused.label, fused)
    features, classes = list(shapes.linears.values())[-1]    # the head: [B, features] @ [features, classes]
    head = ConvLaunch(features, classes, 1, 1, 1, 0, 0, 1, 1, role="classifier")
    layers.setdefault(head.label, head)
    return list(layers.values())


def network_specs(model_name: str = "inception_resnet_v2", dtypes=(torch.float16, torch.int8),
                  batches=aot.BATCHES) -> List[aot.Spec]:
    """Every kernel specialization the network's plan launches at ``batches``: the convs
    (with the table's tiles and split-K), the split-K reductions, pools and requantisers."""
    from engine.models.shapes import network_shapes

    specs = {s.name: s for s in aot.layer_specs(network_layers(model_name), dtypes, batches)}
    kinds = {p.kind for p in network_shapes(model_name).pools}
    for dt in dtypes:
        float_dt = torch.float16 if dt == torch.int8 else dt
        extra = [aot.pool_spec(k, dt) for k in ("max", "avg") if k in kinds] + [aot.global_avg_spec(float_dt)]
        if dt == torch.int8:
            extra += [aot.requant_spec(torch.float16, torch.int8), aot.requant_spec(torch.int8, torch.float16)]
        for s in extra:
            specs.setdefault(s.name, s)
    return list(specs.values())


def _conv_module_at(rev: str):
    """The conv module of the ``kernels`` package at git revision ``rev``: every file of the
    package at that revision, written to a temporary folder and imported under another name,
    so its conv kernel compiles beside today's. Its ``__init__`` is left empty: the
    package's lazy names are not needed, only its conv module and what that imports."""
    tmp = tempfile.mkdtemp(prefix="kernels-rev-")
    pkg = os.path.join(tmp, "kernels_rev")
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "kernels/"], cwd=_ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        data = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=_ROOT, capture_output=True,
                              check=True).stdout
        dest = os.path.join(pkg, os.path.relpath(name, "kernels"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(b"" if name == "kernels/__init__.py" else data)
    sys.path.insert(0, tmp)
    return importlib.import_module("kernels_rev.conv")


def _compile(specs, archs, rev):
    if not rev:
        return aot.compile_many(specs, archs)
    old = _conv_module_at(rev)
    # revisions before the kernel modules listed their kernels (JIT_KERNELS) name it privately
    listed = getattr(old, "JIT_KERNELS", None)
    fn = listed["conv"] if listed else old._conv_kernel
    return [aot.compile_spec(s, a, fn=fn) for s in specs for a in archs if s.kernel == "conv"]


def _wave_problems(layers, dtypes) -> List[str]:
    rows = aot.wave_table(layers, dtypes, MUST_BATCHES)
    return [f"{r['layer']} {r['dtype']} batch {r['batch']}: {r['wave_efficiency']:.0%} wave efficiency "
            f"({r['tile']}, split-K {r['split_k']}, {r['programs']} programs)"
            for r in rows if r["wave_efficiency"] < tuning.TARGET_WAVE_EFFICIENCY]


def main(argv=None) -> int:
    import triton

    ap = argparse.ArgumentParser(description="Static kernel report for the networks' conv launches (no GPU).")
    ap.add_argument("--model", nargs="+", default=["inception_resnet_v2", "inception_v4"])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "int8"], choices=sorted(DTYPES))
    ap.add_argument("--batches", type=int, nargs="+", default=list(aot.BATCHES))
    ap.add_argument("--classes", action="store_true", help="one specialization per layer class instead")
    ap.add_argument("--kernel-rev", help="with --classes: compile the conv kernel of this git revision")
    ap.add_argument("--waves-only", action="store_true", help="only the wave table; compile nothing")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--dump", help="write each specialization's .ttgir/.ptx/.sass here")
    args = ap.parse_args(argv)
    if args.kernel_rev and not args.classes:
        ap.error("--kernel-rev needs --classes (an older kernel compiles the class specializations)")
    dtypes = [DTYPES[d] for d in args.dtypes]
    layers = [layer for m in args.model for layer in network_layers(m)]
    waves = aot.wave_table(layers, dtypes, args.batches)
    problems = _wave_problems(network_layers("inception_resnet_v2"), dtypes)
    results = []
    if not args.waves_only:
        if args.classes:
            specs = aot.class_specs()
        else:
            specs = {}
            for m in args.model:
                for s in network_specs(m, tuple(dtypes), tuple(args.batches)):
                    specs.setdefault(s.name, s)
            specs = list(specs.values())
        t0 = time.time()
        results = _compile(specs, args.arch, args.kernel_rev)
        print(f"{len(specs)} specializations x {len(args.arch)} archs compiled in {time.time() - t0:.0f} s "
              f"(triton {triton.__version__}{', conv kernel of ' + args.kernel_rev if args.kernel_rev else ''})")
        print(aot.format_table(results))
        problems += aot.check(results)
    rep = aot.report(results, waves)
    rep["problems"] = problems
    rep["kernel_rev"] = args.kernel_rev or "working tree"
    low = min(w["wave_efficiency"] for w in waves)
    print(f"wave efficiency on {tuning.DEFAULT_SMS} SMs: min {low:.0%} over {len(waves)} launches")
    print("problems:\n  " + "\n  ".join(problems) if problems else "gate: no problems")
    if args.dump:
        aot.write_dump(results, args.dump)
    if args.report:
        atomic_write_text(args.report, json.dumps(rep, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
