"""Calibration-cache interchange with NVIDIA ModelOpt (``nvidia-modelopt[onnx]``), both ways.

ModelOpt runs in a child process: with the interpreter named by ``INCEPTION_MODELOPT_PYTHON``
(a separate environment: its ``[onnx]`` extra installs ``onnxruntime-gpu``, which must not
replace the CPU ``onnxruntime`` this project runs on), or with this interpreter when
``modelopt`` imports here. Without either the tests skip.

- ours -> ModelOpt: ModelOpt quantizes our FP32 export with our TensorRT calibration cache
  (``calibration_cache_path``); every activation scale in its Q/DQ ONNX equals ours.
- ModelOpt -> ours: ModelOpt calibrates the export itself; its activation scales, read into
  a TensorRT cache (``calibration.cache.cache_from_qdq``), go into ``calibration.quantize
  (scales=CACHE)``, whose Q/DQ ONNX then holds ModelOpt's scales tensor by tensor.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import calibration
from calibration.cache import cache_from_qdq, qdq_activation_scales, read_cache, write_cache
from calibration.errors import CacheError
from engine.anchors import modelopt_python, run_modelopt

NUM_CALIB = 8


@pytest.fixture(scope="module")
def modelopt():
    """``modelopt(model, output, data, cache=None)``: ModelOpt's INT8 quantization of
    ``model`` (:func:`engine.anchors.run_modelopt`, in a child process)."""
    if modelopt_python() is None:
        pytest.skip("ModelOpt is not installed: set INCEPTION_MODELOPT_PYTHON to the python of "
                    "an environment with `pip install nvidia-modelopt[onnx]` (keep it apart: "
                    "the extra installs onnxruntime-gpu)")

    def run(model, output, data, cache=None):
        return Path(run_modelopt(model, output, data, cache=cache))
    return run


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """The bundled FMNIST subject exported to ONNX, and its calibration images (.npy)."""
    import engine
    from engine.datasets import fashion_mnist, to_model_input
    model = engine.create_model("inception_resnet_v2_fmnist", weights="bundled")
    d = tmp_path_factory.mktemp("modelopt-subject")
    path = engine.export_onnx(model, d / "subject.onnx")
    images, _ = fashion_mnist("calib", limit=NUM_CALIB)
    data = d / "calib.npy"
    np.save(data, to_model_input(images.copy(), model.config).numpy())
    return path, data


def test_modelopt_reads_our_cache(modelopt, subject, tmp_path):
    onnx_path, data = subject
    ours = calibration.quantize(onnx_path, tmp_path / "ours.onnx", data=np.load(data),
                                method="minmax", cache=tmp_path / "ours.cache")
    cache = read_cache(ours.cache)
    written = qdq_activation_scales(modelopt(onnx_path, tmp_path / "mo.onnx", data,
                                             cache=ours.cache))
    # ModelOpt places fewer Q/DQ pairs than we do; each one it placed carries our scale
    assert len(written) >= len(cache.scales) // 2
    assert set(written) <= set(cache.scales)
    differ = [t for t in written if np.float32(written[t]) != np.float32(cache.scales[t])]
    assert differ == [], f"{len(differ)} scales differ, first {differ[:3]}"


def test_our_quantize_reads_a_modelopt_cache(modelopt, subject, tmp_path):
    onnx_path, data = subject
    theirs = cache_from_qdq(modelopt(onnx_path, tmp_path / "mo.onnx", data))
    path = write_cache(tmp_path / "modelopt.cache", theirs)
    # the layers that read a tensor ModelOpt left in float stay in float here too
    plan = calibration.plan_quantization(calibration.load_fp32(onnx_path))
    missing = [t for t in plan.tensors if t not in theirs.scales]
    exclude = sorted({node for t in missing for node, _ in plan.readers[t]})
    res = calibration.quantize(onnx_path, tmp_path / "ours.onnx", scales=path, exclude=exclude)
    ours = qdq_activation_scales(res.path)
    assert len(ours) >= len(plan.tensors) // 2 and set(ours) <= set(theirs.scales)
    differ = [t for t in ours if np.float32(ours[t]) != np.float32(theirs.scales[t])]
    assert differ == [], f"{len(differ)} scales differ, first {differ[:3]}"


# --------------------------------------------------------------------------- without ModelOpt
def qdq_graph(scales):
    """x -> QuantizeLinear(scale_i) -> DequantizeLinear for each scale: one Q per entry, each
    on tensor ``x`` (``scales`` are arrays, so a per-channel one can be planted)."""
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, outs = [], [], []
    for i, scale in enumerate(scales):
        inits += [numpy_helper.from_array(np.asarray(scale, np.float32), f"s{i}"),
                  numpy_helper.from_array(np.zeros(np.shape(scale), np.int8), f"z{i}")]
        nodes += [helper.make_node("QuantizeLinear", ["x", f"s{i}", f"z{i}"], [f"q{i}"],
                                   name=f"Q{i}"),
                  helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}", f"z{i}"], [f"y{i}"])]
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 2]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2])], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_cache_from_qdq_reads_activation_scales(tmp_path):
    cache = cache_from_qdq(qdq_graph([0.25, 0.25]))
    assert cache.scales == {"x": 0.25}
    path = write_cache(tmp_path / "c.cache", cache)
    assert read_cache(path).scales == {"x": 0.25}        # exact: 0.25 is a float32


def test_cache_from_qdq_refuses_what_a_cache_cannot_hold():
    with pytest.raises(CacheError, match="two scales"):
        qdq_activation_scales(qdq_graph([0.25, 0.5]))
    with pytest.raises(CacheError, match="2 scales"):
        qdq_activation_scales(qdq_graph([[0.25, 0.5]]))
