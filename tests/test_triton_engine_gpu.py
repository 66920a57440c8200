"""The triton engine on an NVIDIA GPU: parity at full size, CUDA-graph replay, device
tensors (validated on the device, no host copy). Skipped without CUDA.

Run on a GPU machine: ``pytest -m gpu tests/test_triton_engine_gpu.py``. Speed is not judged
here: the engine's targets are measured against their baselines, in one run, by
``benchmarks/gpu_check.sh`` (its e2e section, :func:`benchmarks.gpu_run.e2e_targets`).
"""
import numpy as np
import pytest
import torch

import engine
from benchmarks import triton_engine as bench
from engine.errors import InputError
from kernels.env import cuda_usable

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_usable(), reason="needs an NVIDIA GPU")]


@pytest.fixture(scope="module")
def irv2(tmp_path_factory):
    torch.manual_seed(0)
    model = bench.lively(engine.create_model("inception_resnet_v2"), (3, 299, 299))
    path = tmp_path_factory.mktemp("triton_gpu") / "irv2.onnx"
    engine.export_onnx(model, path)
    return model, path


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_irv2_299_parity(irv2, precision):
    from engine.backends.triton.runtime import TritonRuntime
    model, path = irv2
    rt = TritonRuntime(path, precision=precision)
    x = np.random.default_rng(0).standard_normal((4, 3, 299, 299)).astype(np.float32)
    tol = {"top1": None, "top5": None} if precision != "fp32" else None
    rep = engine.verify(rt, model, x, tolerance=tol)
    assert rep.passed, str(rep)


def test_cuda_graph_replay_matches_eager(irv2):
    from engine.backends.triton.runtime import TritonRuntime
    _, path = irv2
    x = torch.randn(2, 3, 299, 299, device="cuda")
    eager = TritonRuntime(path, precision="fp16", cuda_graphs=False)
    graphed = TritonRuntime(path, precision="fp16")
    a = eager(x)
    b1, b2 = graphed(x), graphed(x)          # first call: eager + capture; second: replay
    assert graphed._bound[2].graph is not None
    assert a.device.type == "cuda" and b2.device.type == "cuda"
    torch.testing.assert_close(b1, a)
    torch.testing.assert_close(b2, a)


def test_parallel_streams_in_the_graph_match_one_stream(irv2):
    """The graph records the branches on the schedule's side streams; its results equal the
    eager single-pass run, and replays of a bucket run no host code of ours."""
    from engine.backends.triton.runtime import TritonRuntime
    _, path = irv2
    x = torch.randn(3, 3, 299, 299, device="cuda")
    rt = TritonRuntime(path, precision="fp16", buckets=[4])
    assert rt.schedule.n_streams >= 2
    a = rt(x)
    b = rt._bound[4]
    assert b.graph is not None and len(b.side) == rt.schedule.n_streams - 1
    seq = TritonRuntime(path, precision="fp16", cuda_graphs=False)
    seq._get(3).program = None               # every step on the caller's stream, in plan order
    ref = seq(x)
    torch.testing.assert_close(rt(x), a)
    torch.testing.assert_close(a, ref, rtol=2e-2, atol=2e-2)
    assert "CUDA graphs on" in rt.explain(4)


def test_cuda_input_is_validated_on_the_device(irv2):
    """A CUDA tensor goes through the common checks (NaN/Inf included) and to the device path."""
    from engine.backends.triton.runtime import TritonRuntime
    _, path = irv2
    rt = TritonRuntime(path, precision="fp16")
    assert rt.runs_on_device
    x = torch.randn(1, 3, 299, 299, device="cuda")
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="1 NaN"):
        rt(x)
    with pytest.raises(InputError, match="expected"):
        rt(torch.randn(1, 3, 64, 64, device="cuda"))


def test_int8_on_gpu_matches_onnxruntime(tmp_path):
    import calibration
    import onnxruntime as ort
    from engine.backends.triton.runtime import TritonRuntime
    torch.manual_seed(0)
    model = engine.create_model("inception_resnet_v2_fmnist")
    p = tmp_path / "s.onnx"
    engine.export_onnx(model, p)
    data = np.random.default_rng(0).standard_normal((32, 3, 75, 75)).astype(np.float32)
    q = tmp_path / "s.int8.onnx"
    calibration.quantize(p, q, data=data, method="minmax")
    rt = TritonRuntime(q)
    layers = []
    for st in rt.plan.steps[1:5]:
        v = rt.plan.values[st.outputs[0]]
        layers += [(n, v.scale) for n in v.names if n.endswith("_dequantized")][:1]
    x = data[:4]
    got = rt.intermediates(x, [n for n, _ in layers])
    import onnx
    proto = onnx.load(str(q))
    for n, _ in layers:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input": x})))
    for n, scale in layers:
        d = np.abs(got[n] - ref[n]) / scale
        assert d.max() <= 1.0 + 1e-3 and (d > 0.5).mean() <= 0.01, n
