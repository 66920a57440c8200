"""Where the CPU time goes: our openvino-target INT8 file against NNCF's, layer class by layer
class, on OpenVINO's CPU plugin, from one process.

Inception-ResNet-v2 at 299x299 (random weights: speed does not depend on them), exported FP32,
then quantized from the same calibration images: ours (``calibration.quantize``, target
``openvino``, one file per ``--variants`` entry of :data:`VARIANTS`) and NNCF's (the ``nncf`` anchor of
``engine.anchors``: ``nncf.quantize``, default preset). Both are opened the same way
(:class:`engine.backends.openvino.OpenVINORuntime`, ``--threads`` threads, float layers at the
INT8 runtime's fallback: bf16 where the CPU has it).

What it prints and writes (``--out`` JSON):

- **the profile**: each file compiled with ``PERF_COUNT``; each node's best time over
  ``--profile-runs`` inferences at batch 1 (the files in turn) is summed per layer class
  (stem, Block35, Reduction-A, Block17, Reduction-B, Block8, the final 1x1 conv, head), with
  the sibling 1x1 heads' share (what merging them could save at most), the kernels
  OpenVINO chose (``exec_type``: ``brgconv_avx512_amx_I8``, ``jit_avx512_amx_bf16``, ...) and
  the Reorder/Convert nodes between layers;
- **the islands**: every compute layer of the runtime model (after the plugin's fusions) that
  runs in a float precision, with the source ops fused into it (what causes it);
- **the INT8 peak**: chains of large uint8 Q/DQ convolutions (3x3 and 1x1) on the same
  plugin, threads and hint; the fastest shape (best call of each) is then timed in every paired
  round beside the files, and each file's fraction of the peak is, per round, its MAC rate
  (the network's MACs, counted from the model by ``engine.models.stats.count_macs``, over its
  batch-1 latency) over the chain's MAC rate in that round;
- **speed, paired**: batch-1 latency and batch-8 call time under the LATENCY hint, and batch-8
  images/s under the THROUGHPUT hint (as many callers as infer requests,
  :func:`engine.timing.concurrent_rate`), the files interleaved round by round (the order
  flipped every round) so a busy machine slows them alike; medians over rounds with p10/p90,
  and the per-round ratio to NNCF's;
- **accuracy** (unless ``--skip-accuracy``): top-1 of ours (each variant) and NNCF's on the
  shipped subject's 10k test images with paired intervals against FP32 (:func:`accuracy`).

    python -m benchmarks.cpu_profile --work /tmp/cpu_profile --out /tmp/cpu_profile.json

The FP32 export, the calibration statistics and every quantized file are kept in ``--work``
and reused by the next run (by name: empty it after changing how a file is written).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np

from benchmarks.int8_speed import synthetic_images
from engine.fileio import atomic_path

ARCH = "inception_resnet_v2"
SIZE = 299

# layer classes of Inception-ResNet-v2, by the first module of a node's name
CLASSES = (
    ("stem", ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a",
              "maxpool_5a", "mixed_5b")),
    ("block35 x10", ("repeat",)),
    ("reduction-a", ("mixed_6a",)),
    ("block17 x20", ("repeat_1",)),
    ("reduction-b", ("mixed_7a",)),
    ("block8 x10", ("repeat_2", "block8")),
    ("conv2d_7b", ("conv2d_7b",)),
    ("head", ("global_pool", "classif", "Flatten", "head_drop", "logits")),
)
_CLASS_OF = {module: name for name, modules in CLASSES for module in modules}
ORDER = [name for name, _ in CLASSES] + ["input/output"]

# Our variants of the openvino-target file: name -> calibration.quantize keywords ("ours" is
# what `inception-engine quantize` writes, head float; "ours-int8-head" the head in int8 too, as
# NNCF writes it)
VARIANTS = {
    "ours": {},
    "ours-int8-head": {"quantize_gemm": True},
}


def layer_class(node_name: str) -> str:
    """The layer class of a runtime node name (an ONNX node name, NNCF's FakeQuantize names
    built on them, or a Reorder named after the layers it joins)."""
    for token in node_name.replace(".", "/").split("/"):
        if token in _CLASS_OF:
            return _CLASS_OF[token]
    for token in node_name.replace("/", " ").replace("_output", " ").split():
        if token.startswith(tuple(_CLASS_OF)):
            head = token.split(".")[0]
            if head in _CLASS_OF:
                return _CLASS_OF[head]
    return "input/output"


# ----------------------------------------------------------------------------- the files
def build_files(work: Path, threads: int, calib_images: int, log=print) -> Dict[str, Path]:
    """The FP32 export at 299, ours per variant and NNCF's, all from the same calibration
    images (reused from ``work`` when there)."""
    import calibration
    import engine
    from calibration.graph import load_fp32, plan_quantization
    from engine.anchors import ANCHORS
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        engine.export_onnx(engine.create_model(ARCH), fp32, input_size=(3, SIZE, SIZE))
    calib = synthetic_images(calib_images, SIZE)
    files = {"fp32": fp32}
    stats_path = work / f"stats.{calib_images}.pkl"
    if stats_path.exists():
        with open(stats_path, "rb") as f:
            stats = pickle.load(f)
    else:
        # histogram every tensor any variant may quantize (the Gemm plan is the superset)
        plan = plan_quantization(load_fp32(fp32), quantize_gemm=True)
        stats = calibration.collect_statistics(fp32, calib, tensors=plan.tensors,
                                               batch_size=2, threads=threads)
        with atomic_path(stats_path) as tmp, open(tmp, "wb") as f:   # reused when present
            pickle.dump(stats, f)
    for name, options in VARIANTS.items():
        path = work / f"{name}.onnx"
        if not path.exists():
            t0 = time.perf_counter()
            calibration.quantize(fp32, path, statistics=stats, method="minmax",
                                 target="openvino", **options)
            log(f"  {name}: quantized in {time.perf_counter() - t0:.0f} s")
        files[name] = path
    nncf = work / "nncf.xml"
    if not nncf.exists():
        nncf = ANCHORS["nncf"].quantize(fp32, calib, work, threads, name="nncf")[0]
    files["nncf"] = nncf
    return files


def open_runtime(path, threads: int, hint: str = "latency", profile: bool = False):
    """One file on OpenVINO, every file the same way: the INT8 runtime's float fallback (bf16
    where the CPU has it) for both ours and NNCF's IR (which carries no precision record)."""
    from engine.backends.openvino import OpenVINORuntime, supports
    config = {"INFERENCE_PRECISION_HINT": "bf16" if supports("bf16") else "f32"}
    if profile:
        config["PERF_COUNT"] = True
    return OpenVINORuntime(path, precision="int8" if str(path).endswith(".onnx") else None,
                           threads=threads, hint=hint, config=config)


# ----------------------------------------------------------------------------- the profile
def profile(runtimes: Dict[str, object], x: np.ndarray, runs: int) -> Dict[str, List[dict]]:
    """Per file, per executed node: name, type, exec_type, ``ms`` (the best of ``runs``
    inferences: on a shared machine a node's median can include time the thread was
    preempted, its minimum is the node's own work) and ``median_ms``; the files run in turn,
    one inference each per round."""
    requests = {k: rt.compiled.create_infer_request() for k, rt in runtimes.items()}
    samples: Dict[str, Dict[str, dict]] = {k: {} for k in runtimes}
    for k, request in requests.items():
        request.infer({0: x})                              # first run: allocations
    for r in range(runs):
        for k in (list(requests) if r % 2 == 0 else list(requests)[::-1]):
            requests[k].infer({0: x})
            for p in requests[k].profiling_info:
                if str(p.status).endswith("NOT_RUN"):
                    continue
                row = samples[k].setdefault(p.node_name, {
                    "name": p.node_name, "type": p.node_type, "exec_type": p.exec_type,
                    "times": []})
                row["times"].append(p.real_time.total_seconds() * 1e3)
    return {k: [{"name": n["name"], "type": n["type"], "exec_type": n["exec_type"],
                 "ms": float(np.min(n["times"])), "median_ms": float(np.median(n["times"]))}
                for n in nodes.values()]
            for k, nodes in samples.items()}


def class_table(nodes: List[dict], layers: List[dict]) -> Dict[str, dict]:
    """Per layer class: ms, the kernels (exec_type: count), Reorder/Convert count and ms."""
    precision = {layer["name"]: layer["precision"] for layer in layers}
    table = {c: {"ms": 0.0, "nodes": 0, "kernels": Counter(), "moves": 0, "moves_ms": 0.0}
             for c in ORDER}
    for n in nodes:
        row = table[layer_class(n["name"])]
        row["ms"] += n["ms"]
        row["nodes"] += 1
        if n["type"] in ("Reorder", "Convert"):
            row["moves"] += 1
            row["moves_ms"] += n["ms"]
        elif n["type"] in ("Convolution", "FullyConnected", "Pooling", "Eltwise",
                           "Concatenation", "Subgraph", "Reduce", "MatMul"):
            row["kernels"][f"{n['type']}:{n['exec_type']}:{precision.get(n['name'], '?')}"] += 1
    return {c: dict(r, kernels=dict(r["kernels"].most_common())) for c, r in table.items()
            if r["nodes"]}


def islands(nodes: List[dict], layers: List[dict]) -> List[dict]:
    """The float compute layers of the runtime model, with their time and fused sources."""
    from engine.backends.openvino import COMPUTE_LAYERS, FLOAT_PRECISIONS
    ms = {n["name"]: n["ms"] for n in nodes}
    exec_type = {n["name"]: n["exec_type"] for n in nodes}
    return [{"class": layer_class(layer["name"]), "name": layer["name"], "type": layer["type"],
             "precision": layer["precision"], "exec_type": exec_type.get(layer["name"], ""),
             "ms": ms.get(layer["name"], 0.0), "fused": layer["original"]}
            for layer in layers
            if layer["type"] in COMPUTE_LAYERS and layer["precision"] in FLOAT_PRECISIONS]


def moves(nodes: List[dict]) -> List[dict]:
    """Every Reorder and Convert that ran, with its time."""
    return [dict(n, **{"class": layer_class(n["name"])}) for n in nodes
            if n["type"] in ("Reorder", "Convert")]


def sibling_heads(fp32_path) -> List[List[str]]:
    """Groups of 1x1 convs of the FP32 export that read the same tensor (the branch heads of
    an Inception block): what one merged conv (weights concatenated, output split) would
    replace. Node names as the ONNX has them."""
    import onnx
    proto = onnx.load(str(fp32_path), load_external_data=False)
    by_input: Dict[str, List[str]] = defaultdict(list)
    for n in proto.graph.node:
        kernel = next((list(a.ints) for a in n.attribute if a.name == "kernel_shape"), None)
        if n.op_type == "Conv" and kernel == [1, 1]:
            by_input[n.input[0]].append(n.name)
    return [names for names in by_input.values() if len(names) > 1]


def heads_ms(nodes: List[dict], groups: List[List[str]]) -> dict:
    """The time of the sibling heads in a profile: its total and node count (a merge could at
    best remove part of it: the per-node overhead of all but one conv per group)."""
    wanted = {name for group in groups for name in group}
    hits = [n for n in nodes if n["type"] == "Convolution"
            and n["name"].rsplit("/", 1)[0] in wanted]
    return {"ms": sum(n["ms"] for n in hits), "convs": len(hits), "groups": len(groups)}


# ----------------------------------------------------------------------------- the INT8 peak
def conv_chain(path: Path, channels: int, size: int, kernel: int, depth: int) -> int:
    """Write a Q/DQ ONNX of ``depth`` uint8 convolutions (``channels`` in and out, ``kernel``
    square, same padding, ReLU between) on a ``size`` x ``size`` input; returns its MACs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "z")
    inits += [scale, zero]
    current = "x"
    for i in range(depth):
        w = rng.integers(-127, 128, (channels, channels, kernel, kernel), dtype=np.int8)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.full(channels, 1e-3, np.float32), f"ws{i}"),
                  numpy_helper.from_array(np.zeros(channels, np.int8), f"wz{i}"),
                  numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32),
                                          f"b{i}")]
        nodes += [
            helper.make_node("Relu", [current], [f"r{i}"]),
            helper.make_node("QuantizeLinear", [f"r{i}", "s", "z"], [f"q{i}"]),
            helper.make_node("DequantizeLinear", [f"q{i}", "s", "z"], [f"d{i}"]),
            helper.make_node("DequantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"wd{i}"],
                             axis=0),
            helper.make_node("Conv", [f"d{i}", f"wd{i}", f"b{i}"], [f"c{i}"],
                             pads=[kernel // 2] * 4)]
        current = f"c{i}"
    graph = helper.make_graph(
        nodes, "int8_peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with atomic_path(path, ".onnx") as tmp:
        onnx.save(model, str(tmp))
    return depth * channels * channels * kernel * kernel * size * size


PEAK_SHAPES = ((384, 35, 3, 4), (1024, 17, 1, 8), (256, 71, 3, 2))


def peak_files(work: Path) -> Dict[str, dict]:
    """``{shape name: {"path", "macs", "channels", "size"}}`` of :data:`PEAK_SHAPES` (channels,
    size, kernel, depth): the candidates for the INT8 peak."""
    out = {}
    for channels, size, kernel, depth in PEAK_SHAPES:
        name = f"{depth} x conv {kernel}x{kernel} {channels}->{channels} at {size}x{size}"
        path = work / f"peak_{channels}_{size}_{kernel}x{kernel}_{depth}.onnx"
        macs = conv_chain(path, channels, size, kernel, depth)
        out[name] = {"path": path, "macs": macs, "channels": channels, "size": size}
    return out


def choose_peak(peaks: Dict[str, dict], threads: int, iters: int) -> dict:
    """Each candidate's best (minimum) MAC rate at batch 1 and its runtime precision; the
    fastest shape is the one the paired rounds time beside the files."""
    from engine.backends.openvino import runtime_layers
    from engine.timing import time_calls
    shapes = {}
    for name, p in peaks.items():
        with open_runtime(p["path"], threads) as rt:
            kinds = Counter(f"{layer['type']} {layer['precision']}"
                            for layer in runtime_layers(rt.compiled)
                            if layer["type"] == "Convolution")
            x = np.random.default_rng(1).standard_normal((1, p["channels"], p["size"],
                                                          p["size"]), np.float32)
            ms = min(time_calls(lambda: rt(x), iters=iters, warmup=2, cuda=False))
        shapes[name] = {"gmacs": p["macs"] / 1e9, "best_ms": ms,
                        "best_tmacs_per_s": p["macs"] / ms / 1e9, "convs": dict(kinds)}
    best = max(shapes, key=lambda k: shapes[k]["best_tmacs_per_s"])
    return {"shape": best, "shapes": shapes}


# ----------------------------------------------------------------------------- speed, paired
def _spread(values) -> dict:
    a = np.asarray(values, np.float64)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "min": float(a.min()), "n": int(a.size)}


def paired_speed(files: Dict[str, Path], threads: int, rounds: int, iters: int,
                 peak: dict, baseline: str = "nncf") -> dict:
    """Batch-1 latency and batch-8 call time (LATENCY hint) and batch-8 images/s (THROUGHPUT
    hint, one caller per infer request) of every file, and the batch-1 time of the ``peak``
    conv chain (``{"path", "macs", "channels", "size"}``), interleaved round by round;
    per-round ratios to ``baseline``, and the peak's MAC rate per round."""
    from engine.timing import concurrent_rate, time_calls
    x1 = synthetic_images(1, SIZE, seed=1)
    x8 = synthetic_images(8, SIZE, seed=2)
    xp = np.random.default_rng(1).standard_normal((1, peak["channels"], peak["size"],
                                                   peak["size"]), np.float32)
    latency = {k: open_runtime(p, threads, "latency") for k, p in files.items()}
    latency["peak"] = open_runtime(peak["path"], threads, "latency")
    throughput = {k: open_runtime(p, threads, "throughput") for k, p in files.items()}
    inputs = {k: x1 for k in files}
    inputs["peak"] = xp
    samples = defaultdict(lambda: defaultdict(list))
    names = list(files)
    try:
        for k in names:                                    # warm every request once
            latency[k](x1), latency[k](x8), throughput[k](x8)
        latency["peak"](xp)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for k in (*order, "peak"):
                samples["b1_ms"][k].append(float(np.median(time_calls(
                    lambda: latency[k](inputs[k]), iters=iters, warmup=0, cuda=False))))
            for k in order:
                samples["b8_ms"][k].append(float(np.median(time_calls(
                    lambda: latency[k](x8), iters=iters, warmup=0, cuda=False))))
            for k in order:
                rt = throughput[k]
                rate = concurrent_rate(lambda: rt(x8), rt.num_requests, 2 * rt.num_requests,
                                       warmup=0)
                samples["b8_tput_ips"][k].append(rate["calls_per_s"] * 8)
        streams = {k: int(rt.compiled.get_property("NUM_STREAMS"))
                   for k, rt in throughput.items()}
    finally:
        for rt in (*latency.values(), *throughput.values()):
            rt.close()
    peak_ms = np.asarray(samples["b1_ms"].pop("peak"))
    out = {"streams_throughput_hint": streams,
           "peak_tmacs_per_s": _spread(peak["macs"] / peak_ms / 1e9)}
    for metric, per_file in samples.items():
        out[metric] = {k: _spread(v) for k, v in per_file.items()}
        out[metric + "_vs_" + baseline] = {
            k: _spread(np.asarray(v) / np.asarray(per_file[baseline]))
            for k, v in per_file.items() if k != baseline}
    out["b1_ms_rounds"] = {k: list(v) for k, v in samples["b1_ms"].items()}
    out["peak_ms_rounds"] = peak_ms.tolist()
    return out


def fraction_of_peak(speed: dict, macs: int, peak_macs: int) -> Dict[str, dict]:
    """Per file, per round: (the network's MACs / its batch-1 time) / (the peak chain's MACs /
    its time in the same round)."""
    peak_rate = peak_macs / np.asarray(speed["peak_ms_rounds"])
    return {k: _spread(macs / np.asarray(v) / peak_rate)
            for k, v in speed["b1_ms_rounds"].items()}


# ----------------------------------------------------------------------------- accuracy
SUBJECT = "inception_resnet_v2_fmnist"


def accuracy(work: Path, threads: int, method: str, calib_images: int, log=print) -> dict:
    """Top-1 on the subject's 10k test images of ours (each variant) and NNCF's file, all
    quantized from the same ``calib_images`` calibration images and run as in the profile,
    each paired with FP32 on the same images (:class:`engine.intervals.Paired`). The FP32
    reference is the FP32 export on OpenVINO at f32 (``inception-engine verify`` holds it to
    PyTorch's logits; its top-1 count is checked against the subject's record, which PyTorch
    measured), because PyTorch eager takes far longer on 10k images on a shared 2-core box."""
    import calibration
    import engine
    from engine.anchors import ANCHORS
    from engine.datasets import fashion_mnist, to_model_input
    from engine.intervals import Paired
    from engine.study import predict
    work = work / "subject"
    work.mkdir(parents=True, exist_ok=True)
    model = engine.create_model(SUBJECT, weights="bundled")
    cfg = model.config
    images, labels = fashion_mnist("test")
    x = to_model_input(images, cfg).numpy()
    calib = to_model_input(fashion_mnist("calib", limit=calib_images)[0], cfg).numpy()
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        engine.export_onnx(model, fp32)
    from engine.backends.openvino import OpenVINORuntime
    with OpenVINORuntime(fp32, precision="fp32", threads=threads) as rt:
        ref = predict(rt, x).argmax(1)
    record = json.loads((Path(engine.__file__).parent / "data" / f"{SUBJECT}.json").read_text())
    if int((ref == labels).sum()) != record["test_correct"]:
        log(f"  note: FP32 on OpenVINO gets {int((ref == labels).sum())} right, the record "
            f"(PyTorch) {record['test_correct']}")
    stats = calibration.collect_statistics(fp32, calib, threads=threads)
    files = {}
    for name, options in VARIANTS.items():
        files[name] = calibration.quantize(fp32, work / f"{name}.{method}.onnx", data=calib,
                                           statistics=stats, method=method, target="openvino",
                                           **options).path
    files["nncf"] = ANCHORS["nncf"].quantize(fp32, calib, work, threads, name="nncf")[0]
    rows = {"fp32 (openvino f32)": {"top1": 100.0 * float((ref == labels).mean()),
                                    "record_top1_pytorch": record["test_top1"]}}
    for name, path in files.items():
        with open_runtime(path, threads) as rt:
            pred = predict(rt, x).argmax(1)
        paired = Paired.from_predictions(ref, pred, labels)
        lo, hi = paired.delta_interval()
        rows[name] = {"top1": 100.0 * float((pred == labels).mean()), **paired.record()}
        log(f"  {name}: top-1 {rows[name]['top1']:.2f}% (Δ {paired.delta_pt:+.2f} pt "
            f"[{lo:+.2f}, {hi:+.2f}], agreement {paired.agreement_pt:.2f}%)")
    return {"subject": SUBJECT, "method": method, "calib_images": calib_images,
            "test_images": int(len(labels)), "rows": rows}


# ----------------------------------------------------------------------------- report
def print_report(res: dict) -> None:
    files = [k for k in res["profiles"]]
    print(f"\n{res['machine']['cpu']} ({res['machine']['isa']}), {res['threads']} threads, "
          f"loadavg {res['machine']['loadavg_start']} -> {res['machine']['loadavg_end']}")
    head = " | ".join(f"{k} ms | {k} kernels (count) | {k} reorders" for k in files)
    print(f"| class | {head} | " + " | ".join(f"{k} / nncf" for k in files if k != "nncf")
          + " |")
    print("|---|" + "---|---|---|" * len(files) + "---|" * (len(files) - 1))
    for c in ORDER:
        cells, base = [], res["profiles"]["nncf"]["classes"].get(c, {}).get("ms")
        for k in files:
            row = res["profiles"][k]["classes"].get(c)
            if row is None:
                cells.append("- | - | -")
                continue
            kernels = ", ".join(f"{name} ({n})" for name, n in row["kernels"].items())
            cells.append(f"{row['ms']:.2f} | {kernels} | {row['moves']} ({row['moves_ms']:.2f} "
                         "ms)")
        for k in files:
            ms = res["profiles"][k]["classes"].get(c, {}).get("ms")
            if k != "nncf":
                cells.append(f"{ms / base:.2f}" if ms and base else "-")
        print(f"| {c} | " + " | ".join(cells) + " |")
    for k in files:
        p = res["profiles"][k]
        print(f"\n{k}: {p['total_ms']:.2f} ms profiled, {len(p['islands'])} float layers "
              f"({sum(i['ms'] for i in p['islands']):.2f} ms), {len(p['moves'])} reorders/"
              f"converts ({sum(m['ms'] for m in p['moves']):.2f} ms)")
        h = p["sibling_heads"]
        print(f"  sibling 1x1 heads: {h['convs']} convs in {h['groups']} groups, "
              f"{h['ms']:.2f} ms")
        for i in p["islands"]:
            print(f"  float {i['class']}: {i['type']} {i['precision']} {i['exec_type']} "
                  f"{i['ms']:.3f} ms  {i['name']}  (fused: {i['fused'][:120]})")
        for m in sorted(p["moves"], key=lambda m: -m["ms"])[:12]:
            print(f"  {m['type']} {m['class']}: {m['exec_type']} {m['ms']:.3f} ms  {m['name']}")
    peak = res["int8_peak"]
    tm = peak["paired_tmacs_per_s"]
    print(f"\nINT8 peak ({peak['shape']}, timed in the rounds): {tm['median']:.3f} TMAC/s "
          f"[p10 {tm['p10']:.3f}, p90 {tm['p90']:.3f}]")
    for name, s in peak["shapes"].items():
        print(f"  {name}: best {s['best_ms']:.2f} ms, {s['best_tmacs_per_s']:.3f} TMAC/s  "
              f"{s['convs']}")
    sp = res["speed"]
    for metric in ("b1_ms", "b8_ms", "b8_tput_ips"):
        for k, v in sp[metric].items():
            ratio = sp[f"{metric}_vs_nncf"].get(k)
            extra = "" if ratio is None else (f"  x nncf {ratio['median']:.3f} "
                                              f"[{ratio['p10']:.3f}, {ratio['p90']:.3f}]")
            frac = ""
            if metric == "b1_ms":
                f = res["fraction_of_peak"][k]
                frac = (f"  {f['median']:.1%} of the INT8 peak [p10 {f['p10']:.1%}, "
                        f"p90 {f['p90']:.1%}]")
            print(f"{metric} {k}: {v['median']:.2f} [p10 {v['p10']:.2f}, p90 {v['p90']:.2f}]"
                  f"{extra}{frac}")
    print(f"THROUGHPUT-hint streams: {sp['streams_throughput_hint']}")


def isa() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8",
                                "amx_bf16") if f in flags)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/cpu_profile", help="files kept here, reused")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=8, help="synthetic calibration images")
    ap.add_argument("--profile-runs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    ap.add_argument("--iters", type=int, default=1, help="batch-1 calls per file per round")
    ap.add_argument("--peak-iters", type=int, default=10,
                    help="calls per peak candidate when choosing the shape")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"our files to compare (of {', '.join(VARIANTS)})")
    ap.add_argument("--accuracy-method", default="mse",
                    help="calibration method of the accuracy files (subject, 10k test images)")
    ap.add_argument("--accuracy-calib", type=int, default=1000)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    import openvino as ov
    import torch
    from engine.backends.openvino import runtime_layers
    from engine.models.registry import create_model
    from engine.models.stats import count_macs
    from engine.timing import cpu_model
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    load_start = os.getloadavg()
    files = build_files(work, args.threads, args.calib)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    compared = {k: files[k] for k in (*chosen, "nncf")}
    with torch.device("meta"):
        macs = count_macs(create_model(ARCH), (3, SIZE, SIZE))
    x1 = synthetic_images(1, SIZE, seed=1)
    runtimes = {k: open_runtime(p, args.threads, profile=True) for k, p in compared.items()}
    try:
        per_file = profile(runtimes, x1, args.profile_runs)
        layers = {k: runtime_layers(rt.compiled) for k, rt in runtimes.items()}
    finally:
        for rt in runtimes.values():
            rt.close()
    groups = sibling_heads(files["fp32"])
    profiles = {k: {"total_ms": sum(n["ms"] for n in nodes),
                    "sibling_heads": heads_ms(nodes, groups),
                    "classes": class_table(nodes, layers[k]),
                    "islands": islands(nodes, layers[k]), "moves": moves(nodes),
                    "nodes": nodes}
                for k, nodes in per_file.items()}
    candidates = peak_files(work)
    peak = choose_peak(candidates, args.threads, args.peak_iters)
    speed = paired_speed(compared, args.threads, args.rounds, args.iters,
                         candidates[peak["shape"]])
    peak["paired_tmacs_per_s"] = speed["peak_tmacs_per_s"]
    res = {"model": ARCH, "size": SIZE, "gmacs": macs / 1e9, "threads": args.threads,
           "openvino": ov.__version__, "profiles": profiles, "int8_peak": peak, "speed": speed,
           "fraction_of_peak": fraction_of_peak(speed, macs,
                                                candidates[peak["shape"]]["macs"]),
           "machine": {"cpu": cpu_model(), "isa": isa(), "nproc": os.cpu_count(),
                       "loadavg_start": load_start, "loadavg_end": os.getloadavg()}}
    if not args.skip_accuracy:
        res["accuracy"] = accuracy(work, args.threads, args.accuracy_method,
                                   args.accuracy_calib)
    print_report(res)
    if args.out:
        from engine.fileio import atomic_write_text
        atomic_write_text(args.out, json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
