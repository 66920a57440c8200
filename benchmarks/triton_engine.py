"""GPU benchmark of the triton engine against PyTorch, in one run, judged on its targets.

    python -m benchmarks.triton_engine [--model inception_resnet_v2] [--size 299]
        [--large-batch 256] [--out triton_engine.json]

Measured on the same GPU, same weights, same process:

- batch 1 latency (median ms): PyTorch eager (cuDNN, channels_last, FP16) vs triton FP16;
- batch N throughput (img/s): torch.compile(mode="max-autotune") FP16 vs triton FP16 and
  triton INT8 (Q/DQ from calibration.quantize, minmax on random images: speed only);
- the fraction of the FP16 compute roofline (~37k img/s for IR-v2 at 299 on an H100) that
  triton FP16 reaches.

Targets (:data:`TARGETS`): latency <= 0.5x eager; throughput >= 1.2x torch.compile; INT8
>= 1.5x our FP16. Every figure is timed by :func:`engine.timing.time_calls` with CUDA events.
Without a GPU it says so and exits 0. Weights are random (with BN statistics from one batch
so activations stay finite in FP16); speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.timing import time_calls
from kernels.env import cuda_usable

ROOFLINE_IMG_S = {"inception_resnet_v2": 37000.0}
TARGETS = {"latency_vs_eager": 0.5, "throughput_vs_compile": 1.2, "int8_vs_fp16": 1.5}


def _median_ms(fn, iters: int, warmup: int) -> float:
    """Median device time of one call (CUDA events)."""
    return float(np.median(time_calls(fn, iters=iters, warmup=warmup, cuda=True)))


def _img_s(fn, batch: int, iters: int) -> float:
    """Throughput of ``fn`` on a batch of ``batch`` images (images per second)."""
    return batch * 1e3 / _median_ms(fn, max(5, iters // 5), 3)


def lively(model, size, batch=8):
    """``model`` with BN statistics from one random batch, so activations stay finite."""
    import torch
    from engine.weights import set_bn_statistics
    return set_bn_statistics(model, torch.randn(batch, *size))


def run(model_name: str = "inception_resnet_v2", size: int = 299, large_batch: int = 256,
        iters: int = 50, workdir=None, int8: bool = True) -> dict:
    import torch
    import engine
    from engine.backends.triton.runtime import TritonRuntime
    if not cuda_usable():
        raise RuntimeError("no CUDA GPU: the triton engine benchmark runs on an NVIDIA GPU")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    shape = (3, size, size)
    model = lively(engine.create_model(model_name), shape)
    work = Path(workdir or tempfile.mkdtemp(prefix="triton_bench_"))
    onnx_path = work / f"{model_name}_{size}.onnx"
    engine.export_onnx(model, onnx_path, input_size=shape)
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(), "model": model_name, "size": size,
           "large_batch": large_batch, "torch": torch.__version__}

    eager = model.half().to(dev, memory_format=torch.channels_last)
    x1 = torch.randn(1, *shape, device=dev)
    xn = torch.randn(large_batch, *shape, device=dev)
    with torch.no_grad():
        x1h = x1.half().to(memory_format=torch.channels_last)
        xnh = xn.half().to(memory_format=torch.channels_last)
        res["eager_fp16_b1_ms"] = _median_ms(lambda: eager(x1h), iters, 10)
        res["eager_fp16_bN_img_s"] = _img_s(lambda: eager(xnh), large_batch, iters)
        compiled = torch.compile(eager, mode="max-autotune")
        res["compile_fp16_bN_img_s"] = _img_s(lambda: compiled(xnh), large_batch, iters)
    del compiled
    torch.cuda.empty_cache()

    rt = TritonRuntime(onnx_path, precision="fp16")
    res["triton_fp16_b1_ms"] = _median_ms(lambda: rt(x1), iters, 10)
    res["triton_fp16_bN_img_s"] = _img_s(lambda: rt(xn), large_batch, iters)
    rt.close()
    if int8:
        import calibration
        q_path = work / f"{model_name}_{size}.int8.onnx"
        data = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
        calibration.quantize(onnx_path, q_path, data=data, method="minmax", batch_size=8)
        rq = TritonRuntime(q_path, precision="int8")
        res["triton_int8_bN_img_s"] = _img_s(lambda: rq(xn), large_batch, iters)
        rq.close()
    res.update(judge(res, model_name, size))
    return res


def judge(res: dict, model_name: str, size: int) -> dict:
    """The ratios the targets are judged on, the roofline fraction, and pass/fail per target."""
    out = {"latency_vs_eager": res["triton_fp16_b1_ms"] / res["eager_fp16_b1_ms"],
           "throughput_vs_compile": res["triton_fp16_bN_img_s"] / res["compile_fp16_bN_img_s"]}
    if "triton_int8_bN_img_s" in res:
        out["int8_vs_fp16"] = res["triton_int8_bN_img_s"] / res["triton_fp16_bN_img_s"]
    roof = ROOFLINE_IMG_S.get(model_name)
    if roof and size == 299:
        out["fp16_roofline_fraction"] = res["triton_fp16_bN_img_s"] / roof
    out["targets"] = TARGETS
    out["passed"] = {
        "latency_vs_eager": out["latency_vs_eager"] <= TARGETS["latency_vs_eager"],
        "throughput_vs_compile": out["throughput_vs_compile"] >= TARGETS["throughput_vs_compile"],
        **({"int8_vs_fp16": out["int8_vs_fp16"] >= TARGETS["int8_vs_fp16"]} if "int8_vs_fp16" in out else {}),
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="inception_resnet_v2")
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--large-batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    a = ap.parse_args(argv)
    if not cuda_usable():
        print("no CUDA GPU on this machine: the triton engine benchmark needs one (nothing "
              "measured)")
        return 0
    res = run(a.model, a.size, a.large_batch, a.iters, int8=not a.no_int8)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        from engine.fileio import atomic_write_bytes
        atomic_write_bytes(a.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
