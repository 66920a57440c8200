"""Kernel microbenchmarks: our fused Triton kernels against cuDNN and torch.compile on every
distinct conv/pool shape of Inception-ResNet-v2 and Inception-v4.

For each shape and batch (1, 32, 128), in one run on one GPU:
  ours_fp16        kernels.conv2d: conv + folded BN + ReLU (or + shortcut for up-projections)
  cudnn_bn_relu    F.conv2d -> BatchNorm -> ReLU, channels_last fp16 (cuDNN)
  cudnn_bias_relu  F.conv2d(bias) -> ReLU, channels_last fp16 (BN already folded)
  unfused_cat      cudnn_bn_relu, then the copy into the block's concat buffer (for the
                   residual up-projections: conv(bias) -> * s -> + x -> ReLU)
  compiled         torch.compile of cudnn_bn_relu (limited by --compile-limit)
  ours_int8        kernels.conv2d int8 x int8 -> int32, requantised int8 output
Pools: ours vs F.max_pool2d / F.avg_pool2d (channels_last) + concat copy, in GB/s.

Shapes come from forward hooks on the PyTorch models (engine.models.shapes), never from tables.
Each of our kernels is checked against its reference before it is timed; every time is the
device time of one call (CUDA events, :func:`engine.timing.time_calls`), median and 20th/80th
percentiles over a timing window.
Output: CSV (one row per shape x batch x implementation), a PNG of TFLOPS at the largest
batch, and the summary the targets (:data:`TARGETS`) are judged on (geometric means over
IR-v2 conv shapes at batch 128). On a machine without CUDA it says so and exits 0.

    python -m benchmarks.kernel_bench --out kernels.csv [--models inception_resnet_v2] [--batch 128]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine.timing import time_calls
from kernels.env import cuda_usable  # noqa: E402

# peak dense TFLOPS (fp16/bf16, int8) by GPU name fragment, from the vendors' data sheets
PEAKS = {"H100": (989.0, 1979.0), "H200": (989.0, 1979.0), "A100": (312.0, 624.0)}
BATCHES = (128, 32, 1)
TARGETS = "vs cudnn_bias_relu >= 1.0, vs unfused_cat >= 1.3, int8 vs fp16 >= 1.6"


def _peak(name: str):
    for frag, peak in PEAKS.items():
        if frag in name:
            return peak
    return (float("nan"), float("nan"))


def _bench(fn, reps_ms: int, cuda: bool = True, quick: bool = False):
    """(median, p20, p80) milliseconds of ``fn()`` (device time with ``cuda``), timed for at
    least ``reps_ms`` ms (and 10 calls) after 5 warm-up calls (the first one autotunes);
    ``quick``: 2 calls after 1 (a dry run's code path, not a measurement)."""
    iters, warmup = (2, 1) if quick else (10, 5)
    samples = time_calls(fn, iters=iters, warmup=warmup, duration=reps_ms / 1e3, cuda=cuda)
    med, p20, p80 = np.percentile(samples, [50, 20, 80])
    return float(med), float(p20), float(p80)


def conv_cases(models):
    """Distinct conv shapes over the models, IR-v2's first (the targets are judged on it)."""
    from engine.models.shapes import network_shapes
    seen, cases = set(), []
    for m in models:
        shapes = network_shapes(m)
        for s, names in shapes.convs.items():
            if s in seen:
                continue
            seen.add(s)
            cases.append((m, s, len(names)))
    return cases


def cases_by_flop_share(model: str):
    """``[(shape, count, share)]``: the model's distinct conv shapes, biggest share of the
    network's conv FLOPs first (so a run cut short has measured most of the work)."""
    from engine.models.shapes import network_shapes
    convs = network_shapes(model).convs
    work = {s: s.flops(1) * len(names) for s, names in convs.items()}
    total = sum(work.values())
    return [(s, len(convs[s]), work[s] / total) for s in sorted(work, key=work.get, reverse=True)]


def tiny_shape(s):
    """The same kernel geometry on at most 16 channels and a 9x9 map (interpreter runs)."""
    from dataclasses import replace
    return replace(s, c_in=min(s.c_in, 16), c_out=min(s.c_out, 16), h=min(s.h, 9), w=min(s.w, 9))


def check_case(s, batch: int, dev):
    """Our conv against its PyTorch reference on shape ``s``: FP16 within 2e-2 of the
    reference's range, INT8 bit-exact (int8 in, requantised int8 out)."""
    import kernels as K
    g = torch.Generator(device="cpu").manual_seed(0)
    oh, ow = s.out_hw
    pad = (s.pad_h, s.pad_w)
    x = torch.randn(batch, s.h, s.w, s.c_in, generator=g).to(dev, torch.float16)
    w = torch.randn(s.c_out, s.c_in, s.kh, s.kw, generator=g) / math.sqrt(s.c_in * s.kh * s.kw)
    bias = torch.randn(s.c_out, generator=g).to(dev)
    wp = K.pack_weight(w, torch.float16).to(dev)
    got = K.conv2d(x, wp, bias, stride=s.stride, padding=pad)
    want = K.conv2d_reference(x, wp, bias, stride=s.stride, padding=pad)
    err = float((got.float() - want.float()).abs().max() / max(1e-6, want.float().abs().max()))
    rows = [{"dtype": "fp16", "batch": batch, "max_rel_err": err, "passed": err <= 2e-2}]
    wq, w_scale = K.quantize_weight(w)
    xq = torch.randint(-128, 128, (batch, s.h, s.w, s.c_in), dtype=torch.int8, generator=g).to(dev)
    wqp = K.pack_weight(wq).to(dev)
    dq = K.dequant_scale(w_scale.to(dev), 0.02)
    kw = dict(stride=s.stride, padding=pad, scale=dq, out_scale=0.05)
    out = torch.empty(batch, oh, ow, s.c_out, dtype=torch.int8, device=dev)
    K.conv2d(xq, wqp, bias, out=out, **kw)
    ref = K.conv2d_reference(xq, wqp, bias, out_dtype=torch.int8, **kw)
    diff = int((out.int() - ref.int()).abs().max())
    rows.append({"dtype": "int8", "batch": batch, "max_rel_err": float(diff), "passed": diff == 0})
    return rows


def bench_case(s, batch: int, dev, rep_ms: int = 25, compile_ok: bool = False, quick: bool = False):
    """Rows (impl, ms, TFLOPS, % of peak) for one conv shape at ``batch``, each of our
    kernels checked against its reference first; a failure is one ``error`` row."""
    cuda = dev.type == "cuda"
    peak16, peak8 = _peak(torch.cuda.get_device_name()) if cuda else (float("nan"), float("nan"))
    rows = []
    try:
        impls, flops, check = _conv_impls(s, batch, dev, compile_ok)
        check()
        for impl, fn in impls.items():
            med, p20, p80 = _bench(fn, rep_ms, cuda, quick)
            tf = flops / med * 1e-9
            pk = peak8 if impl.endswith("int8") else peak16
            rows.append(dict(kind="conv", batch=batch, impl=impl, ms=med, ms_p20=p20, ms_p80=p80,
                             tflops=tf, pct_peak=100 * tf / pk))
    except Exception as e:   # record and carry on: one bad shape must not hide the rest
        rows.append(dict(kind="conv", batch=batch, impl="error", ms=float("nan"), error=f"{type(e).__name__}: {e}"))
        print(f"  {s.label} b{batch}: {type(e).__name__}: {e}", flush=True)
    return rows


def pool_cases(models):
    from engine.models.shapes import network_shapes
    seen, cases = set(), []
    for m in models:
        for p, names in network_shapes(m).pools.items():
            if p not in seen:
                seen.add(p)
                cases.append((m, p, len(names)))
    return cases


def _conv_impls(s, batch, dev, compile_ok):
    """Build the callables for one conv shape; returns {impl: fn}, flops, and a check fn."""
    import kernels as K
    oh, ow = s.out_hw
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, s.c_in, s.h, s.w, generator=g).to(dev, torch.float16)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x_nhwc = x_cl.permute(0, 2, 3, 1)                      # same memory, NHWC view
    w = (torch.randn(s.c_out, s.c_in, s.kh, s.kw, generator=g) / math.sqrt(s.c_in * s.kh * s.kw)).to(dev)
    pad = (s.pad_h, s.pad_w)
    bn = torch.nn.BatchNorm2d(s.c_out, eps=1e-3).to(dev).eval()
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 1.5)
        bn.running_mean.normal_(0, 0.1)
    bn = bn.half()
    w16 = w.half().contiguous(memory_format=torch.channels_last)
    wf, bf = K.fold_bn(w, bn)
    bias16 = bf.half()
    w_packed = K.pack_weight(wf, torch.float16)
    bias = bf.float().contiguous()
    concat = torch.empty(batch, oh, ow, s.c_out + 64, dtype=torch.float16, device=dev)  # concat buffer
    out_slice = concat[..., 32:32 + s.c_out]
    impls = {}
    if s.residual:
        scale = 0.17
        trunk = torch.randn(batch, oh, ow, s.c_out, device=dev, dtype=torch.float16)
        trunk_cl = trunk.permute(0, 3, 1, 2)
        wr, br = K.fold_scale(wf, bf, scale)
        wr_packed, br = K.pack_weight(wr, torch.float16), br.float().contiguous()
        impls["ours_fp16"] = lambda: K.conv2d(x_nhwc, wr_packed, br, residual=trunk, out=trunk)
        impls["cudnn_bias_relu"] = lambda: torch.relu_(F.conv2d(x_cl, w16, bias16, padding=pad).add_(trunk_cl))
        impls["cudnn_bn_relu"] = lambda: torch.relu_(trunk_cl + scale * F.conv2d(x_cl, w16, bias16, padding=pad))
        impls["unfused_cat"] = impls["cudnn_bn_relu"]
        eager = lambda xx, tt: torch.relu(tt + scale * F.conv2d(xx, w16, bias16, padding=pad))
        comp_args = (x_cl, trunk_cl)
    else:
        impls["ours_fp16"] = lambda: K.conv2d(x_nhwc, w_packed, bias, stride=s.stride, padding=pad, out=out_slice)
        impls["cudnn_bias_relu"] = lambda: torch.relu_(F.conv2d(x_cl, w16, bias16, stride=s.stride, padding=pad))
        impls["cudnn_bn_relu"] = lambda: torch.relu(bn(F.conv2d(x_cl, w16, None, stride=s.stride, padding=pad)))

        def unfused_cat():
            y = torch.relu(bn(F.conv2d(x_cl, w16, None, stride=s.stride, padding=pad)))
            out_slice.copy_(y.permute(0, 2, 3, 1))
        impls["unfused_cat"] = unfused_cat
        eager = lambda xx: torch.relu(bn(F.conv2d(xx, w16, None, stride=s.stride, padding=pad)))
        comp_args = (x_cl,)
    if compile_ok:
        compiled = torch.compile(eager, mode="max-autotune")
        impls["compiled"] = lambda: compiled(*comp_args)
    # int8: symmetric per-channel weights, per-tensor activations, requantised int8 output
    wq, w_scale = K.quantize_weight(wf)
    xq = torch.randint(-128, 128, (batch, s.h, s.w, s.c_in), dtype=torch.int8, device=dev)
    wq_packed = K.pack_weight(wq).to(dev)
    dq = K.dequant_scale(w_scale.to(dev), 0.02)
    if not s.residual:
        outq = torch.empty(batch, oh, ow, s.c_out, dtype=torch.int8, device=dev)
        impls["ours_int8"] = lambda: K.conv2d(xq, wq_packed, bias, stride=s.stride, padding=pad, scale=dq,
                                              out=outq, out_scale=0.05)

    def check():
        xs = x_nhwc[:1]
        if s.residual:
            t0 = trunk[:1].clone()
            got = K.conv2d(xs, wr_packed, br, residual=t0, out=t0)
            want = K.conv2d_reference(xs, wr_packed, br, residual=trunk[:1])
        else:
            got = K.conv2d(xs, w_packed, bias, stride=s.stride, padding=pad)
            want = K.conv2d_reference(xs, w_packed, bias, stride=s.stride, padding=pad)
        err = (got.float() - want.float()).abs().max().item()
        if not err <= 2e-2 * max(1.0, want.float().abs().max().item()):
            raise AssertionError(f"{s.label}: ours differs from the reference by {err}")
    return impls, s.flops(batch), check


def run(args) -> int:
    if not cuda_usable():
        print("benchmarks/kernel_bench.py needs an NVIDIA GPU (CUDA); none here, nothing measured.")
        return 0
    import kernels as K  # noqa: F401  (imports triton kernels for the GPU)
    torch.backends.cudnn.benchmark = True      # the cuDNN baselines pick their best algorithm
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    t_start = time.time()
    rows = []
    cases = [(m, s, count) for m in args.models for s, count, _ in cases_by_flop_share(m)]
    cases = list({s: (m, s, c) for m, s, c in reversed(cases)}.values())[::-1]   # first model wins
    if args.limit:
        cases = cases[:args.limit]
    n_compiled = 0
    print(f"{name}: {len(cases)} conv shapes by FLOP share, batches {args.batch}, torch {torch.__version__}",
          flush=True)
    for batch in args.batch:
        for model, s, count in cases:
            if time.time() - t_start > args.budget_s:
                print(f"time budget {args.budget_s}s spent; stopping early (partial results)", flush=True)
                break
            compile_ok = n_compiled < args.compile_limit
            n_compiled += compile_ok
            for r in bench_case(s, batch, dev, args.rep_ms, compile_ok):
                rows.append(dict(model=model, layer=s.label, count=count, **r))
            _write_csv(rows, args.out)          # after every shape: a timeout keeps them
        for model, p, count in pool_cases(args.models):
            x = torch.randn(batch, p.h, p.w, p.c, device=dev, dtype=torch.float16)
            x_cl = x.permute(0, 3, 1, 2)
            fn_ours = (lambda: K.max_pool(x)) if p.kind == "max" else (lambda: K.avg_pool(x))
            fn_torch = (lambda: F.max_pool2d(x_cl, 3, 2)) if p.kind == "max" else \
                (lambda: F.avg_pool2d(x_cl, 3, 1, 1, count_include_pad=False))
            nbytes = x.numel() * 2 * (1.25 if p.kind == "max" else 2.0)
            for impl, fn in (("ours_fp16", fn_ours), ("torch_fp16", fn_torch)):
                med, p20, p80 = _bench(fn, args.rep_ms)
                rows.append(dict(model=model, layer=p.label, kind="pool", count=count, batch=batch, impl=impl,
                                 ms=med, ms_p20=p20, ms_p80=p80, tflops=float("nan"),
                                 pct_peak=float("nan"), gbps=nbytes / med * 1e-6))
        _write_csv(rows, args.out)
    _write(rows, args, name)
    return 0


def summary(rows, batch=128, model="inception_resnet_v2"):
    """Geometric means over the model's conv shapes at ``batch`` (each shape once)."""
    by = {}
    for r in rows:     # rows as measured, or read back from the CSV (strings)
        if r["kind"] == "conv" and int(r["batch"]) == batch and r.get("model", model) == model \
                and r["impl"] != "error":
            by.setdefault(r["layer"], {})[r["impl"]] = float(r["ms"])

    def gmean(num, den):
        vals = [v[num] / v[den] for v in by.values() if num in v and den in v]
        return (math.exp(sum(map(math.log, vals)) / len(vals)), len(vals)) if vals else (float("nan"), 0)
    out = {}
    for base in ("cudnn_bias_relu", "cudnn_bn_relu", "unfused_cat", "compiled"):
        g, n = gmean(base, "ours_fp16")
        out[f"speedup_vs_{base}"] = g
        out[f"n_{base}"] = n
    g, n = gmean("ours_fp16", "ours_int8")
    out["int8_speedup_vs_ours_fp16"], out["n_int8"] = g, n
    out.update(batch=batch, model=model,
               targets=TARGETS)
    return out


FIELDS = ["model", "layer", "kind", "count", "batch", "impl", "ms", "ms_p20", "ms_p80", "tflops", "pct_peak",
          "gbps", "error"]


def _write_csv(rows, path):
    """The CSV of every row so far, written whole under a temporary name, then renamed."""
    from engine.fileio import atomic_path
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)


def _write(rows, args, gpu):
    _write_csv(rows, args.out)
    summ = {b: summary(rows, b) for b in sorted({r["batch"] for r in rows})}
    with open(os.path.splitext(args.out)[0] + "_summary.json", "w") as f:
        json.dump({"gpu": gpu, "torch": torch.__version__, "summary": summ}, f, indent=1)
    print(json.dumps(summ, indent=1))
    try:
        _plot(rows, os.path.splitext(args.out)[0] + ".png", gpu)
    except ImportError:
        print("matplotlib missing: no PNG")


def _plot(rows, path, gpu):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    batch = max(r["batch"] for r in rows)
    conv = [r for r in rows if r["kind"] == "conv" and r["batch"] == batch and r["impl"] != "error"]
    layers = list(dict.fromkeys(r["layer"] for r in conv))
    impls = list(dict.fromkeys(r["impl"] for r in conv))
    fig, ax = plt.subplots(figsize=(max(10, 0.35 * len(layers) * len(impls) / 3), 6))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        vals = {r["layer"]: r["tflops"] for r in conv if r["impl"] == impl}
        ax.bar([j + i * width for j in range(len(layers))], [vals.get(l, 0) for l in layers], width, label=impl)
    ax.set_xticks([j + 0.4 for j in range(len(layers))])
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_ylabel("TFLOPS (TOPS for int8)")
    ax.set_title(f"conv shapes at batch {batch}, {gpu}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["inception_resnet_v2", "inception_v4"])
    ap.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--out", default="kernels.csv")
    ap.add_argument("--rep-ms", type=int, default=50, help="timing window per measurement, in ms")
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="stop starting new shapes after this many seconds (results so far are written)")
    ap.add_argument("--compile-limit", type=int, default=10 ** 6,
                    help="torch.compile only the first N shape x batch cases (compiling is slow)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N conv shapes")
    args = ap.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
