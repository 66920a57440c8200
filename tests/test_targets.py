"""Q/DQ files per target engine: one calibration, the layout each engine runs best, the target
in the metadata, and engine.load's warning when a file runs on an engine of another layout."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import calibration  # noqa: E402
import engine  # noqa: E402
from calibration.errors import CalibrationArgumentError  # noqa: E402
from calibration.targets import TARGETS  # noqa: E402
from engine.loader import TargetMismatchWarning  # noqa: E402

SMALL = dict(width=0.25, input_size=(3, 75, 75))


@pytest.fixture(scope="module")
def fp32(exported_onnx):
    return exported_onnx("inception_resnet_v2", **SMALL)[0]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((8, 3, 75, 75)).astype(np.float32)


@pytest.fixture(scope="module")
def stats(fp32, images):
    return calibration.collect_statistics(fp32, images, threads=1)


@pytest.fixture(scope="module")
def files(fp32, stats, tmp_path_factory):
    d = tmp_path_factory.mktemp("targets")
    return calibration.quantize_targets(fp32, {t: d / f"{t}.onnx" for t in TARGETS},
                                        statistics=stats, method="minmax")


def _zero_point_types(path):
    """{activation tensor: zero point dtype} of every QuantizeLinear in the file."""
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {n.input[0]: inits[n.input[2]].dtype for n in proto.graph.node
            if n.op_type == "QuantizeLinear"}


def _record(path):
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props["inception.calibration"])


# ids unlike the bare engine names: the conftest skips tests whose keywords say "tensorrt"
@pytest.mark.parametrize("target", list(TARGETS), ids=[f"{t}-layout" for t in TARGETS])
def test_each_target_gets_its_layout_and_records_it(files, target):
    res = files[target]
    assert res.target == target and _record(res.path)["target"] == target
    types = _zero_point_types(res.path)
    unsigned = {t for t, dt in types.items() if dt == np.uint8}
    if TARGETS[target].unsigned_relu:
        assert unsigned == set(res.plan.nonnegative) & set(types) and unsigned
        assert types["input"] == np.int8            # the normalised image can be negative
    else:
        assert not unsigned


def _weights_by_reader(path):
    """{conv node: (int8 weights, its activation input)} of a Q/DQ file."""
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for n in proto.graph.node:
        if n.op_type == "Conv" and producer.get(n.input[1]) is not None:
            dq = producer[n.input[1]]
            act = producer[n.input[0]]               # the activation's DequantizeLinear
            src = producer[act.input[0]].input[0] if act.op_type == "DequantizeLinear" else None
            out[n.name] = (inits[dq.input[0]], src)
    return out


def test_openvino_gives_the_image_layers_7_bit_weights(files):
    for target in ("openvino", "tensorrt"):
        weights = _weights_by_reader(files[target].path)
        first = [w for w, src in weights.values() if src == "input"]
        rest = [w for w, src in weights.values() if src != "input"]
        assert first and rest
        want = 63 if target == "openvino" else 127
        # every output channel reaches the range's end: the scale is max|w| / qmax
        assert all(np.abs(w).reshape(len(w), -1).max(1).tolist() == [want] * len(w)
                   for w in first), target
        assert all(np.abs(w).max() == 127 for w in rest)
    assert "±63" in _record(files["openvino"].path)["input_layer_weights"]


def test_targets_share_one_set_of_ranges(files):
    """One calibration: every target's file quantizes the same tensors with the same ranges
    (the layouts differ in signedness, not in what is quantized)."""
    ranges = {t: r.amax for t, r in files.items()}
    assert all(a == ranges["tensorrt"] for a in ranges.values())


def test_several_targets_calibrate_once(fp32, images, tmp_path, monkeypatch):
    import calibration.stats as stats_module
    calls = []
    real = stats_module.collect_statistics

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(stats_module, "collect_statistics", counting)
    out = calibration.quantize_targets(
        fp32, {t: tmp_path / f"{t}.onnx" for t in ("openvino", "tensorrt", "triton")},
        data=images, method="percentile", threads=1)
    assert len(calls) == 1
    assert all(r.statistics is out["openvino"].statistics for r in out.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openvino.onnx", "tensorrt.onnx",
                                                          "triton.onnx"]


def test_unknown_target_and_contradiction(fp32, stats, tmp_path):
    with pytest.raises(CalibrationArgumentError, match="choose one of openvino"):
        calibration.quantize(fp32, tmp_path / "x.onnx", statistics=stats, target="cuda")
    with pytest.raises(CalibrationArgumentError, match="contradicts"):
        with pytest.warns(DeprecationWarning):
            calibration.quantize(fp32, tmp_path / "x.onnx", statistics=stats,
                                 target="tensorrt", unsigned_relu=True)
    assert not list(tmp_path.iterdir())


def test_unsigned_relu_is_target_openvino(fp32, stats, files, tmp_path):
    with pytest.warns(DeprecationWarning, match="target='openvino'"):
        res = calibration.quantize(fp32, tmp_path / "u8.onnx", statistics=stats,
                                   method="minmax", unsigned_relu=True)
    assert res.target == "openvino"
    assert _zero_point_types(res.path) == _zero_point_types(files["openvino"].path)


def test_default_is_the_signed_layout(fp32, stats, tmp_path):
    res = calibration.quantize(fp32, tmp_path / "d.onnx", statistics=stats, method="minmax")
    assert res.target == "tensorrt"
    assert set(_zero_point_types(res.path).values()) == {np.dtype(np.int8)}


def _load_warnings(path, backend):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with engine.load(path, backend=backend, threads=1):
            pass
    return [w for w in caught if issubclass(w.category, TargetMismatchWarning)]


def test_load_warns_once_on_another_layout(files):
    first = _load_warnings(files["openvino"].path, "onnxruntime")
    assert len(first) == 1
    text = str(first[0].message)
    assert "written for openvino" in text and "--target onnxruntime" in text
    assert _load_warnings(files["openvino"].path, "onnxruntime") == []      # once per file


def test_signed_file_on_openvino_names_the_openvino_target(files):
    pytest.importorskip("openvino")
    caught = _load_warnings(files["triton"].path, "openvino")
    assert len(caught) == 1 and "--target openvino" in str(caught[0].message)


def test_no_warning_when_the_layout_fits(files):
    assert _load_warnings(files["tensorrt"].path, "onnxruntime") == []     # same signed layout
    assert _load_warnings(files["onnxruntime"].path, "onnxruntime") == []


def test_cli_target_defaults_to_openvino(fp32, images, tmp_path, capsys):
    from engine.cli import main
    np.save(tmp_path / "calib.npy", images)
    out = tmp_path / "cli.onnx"
    assert main(["quantize", str(fp32), str(out), "--calib", str(tmp_path / "calib.npy"),
                 "--method", "minmax", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"] == "openvino" and _record(out)["target"] == "openvino"
    assert main(["quantize", str(fp32), str(out), "--calib", str(tmp_path / "calib.npy"),
                 "--method", "minmax", "--target", "triton", "--json"]) == 0
    assert _record(out)["target"] == "triton"
    assert set(_zero_point_types(out).values()) == {np.dtype(np.int8)}


def _float_islands(path):
    from engine.backends.openvino import OpenVINORuntime, float_layers, runtime_layers
    with OpenVINORuntime(path, threads=1) as rt:
        return runtime_layers(rt.compiled), float_layers(rt.compiled)


# what the profile says must stay float: the head (benchmarks/cpu_profile.py measured the
# int8 head slower end to end), whose pool and classifier run at the float fallback with the
# Multiply that dequantizes the pool's input
HEAD_FLOAT = {"Reduce", "FullyConnected", "Eltwise"}


def _outside_the_head(islands):
    return [la for la in islands if la["type"] not in HEAD_FLOAT]


def test_openvino_target_has_no_float_island_outside_the_head(files, fp32, stats, tmp_path):
    """On OpenVINO's compiled model (after its fusions, not the ONNX), every compute layer of
    the openvino-target file but the head runs in int8: convs, concats, pools. A conv kept
    float on purpose shows up as an island, so the check can fail; and the head in int8
    (``quantize_gemm=True``) leaves no island at all."""
    pytest.importorskip("openvino")
    layers, islands = _float_islands(files["openvino"].path)
    convs = [la for la in layers if la["type"] == "Convolution"]
    assert len(convs) > 200 and all(la["precision"] in ("u8", "i8") for la in convs)
    assert {"Reduce", "FullyConnected"} <= {la["type"] for la in islands}   # the float head
    assert _outside_the_head(islands) == [], "float layers: " + "; ".join(
        f"{la['type']} {la['precision']} {la['name']}" for la in _outside_the_head(islands))

    planted = calibration.quantize(fp32, tmp_path / "float-conv.onnx", statistics=stats,
                                   method="minmax", target="openvino",
                                   exclude=["conv2d_4a"])
    kinds = {la["type"] for la in _outside_the_head(_float_islands(planted.path)[1])}
    assert "Convolution" in kinds

    int8_head = calibration.quantize(fp32, tmp_path / "int8-head.onnx", statistics=stats,
                                     method="minmax", target="openvino", quantize_gemm=True)
    assert _float_islands(int8_head.path)[1] == []


def _head_is_int8(path) -> bool:
    """Whether the classifier reads int8 weights and a quantized input."""
    proto = onnx.load(str(path))
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    return [producers.get(t) for t in gemm.input[:2]] == ["DequantizeLinear"] * 2


def test_no_target_quantizes_the_head_by_default(files):
    """The classifier is float in every target's file unless asked for (measured faster on
    OpenVINO; the other engines were never measured faster with it)."""
    assert {t: _head_is_int8(r.path) for t, r in files.items()} == {t: False for t in files}


def test_a_cache_without_the_head_keeps_it_float(files, fp32, tmp_path):
    """Scales made for a float head (a TensorRT cache) still write an openvino file: its head
    stays float instead of the call failing on the missing tensors."""
    cache = tmp_path / "trt.cache"
    calibration.quantize(fp32, tmp_path / "t.onnx", statistics=None, scales=files["tensorrt"]
                         .amax, target="tensorrt", cache=cache)
    res = calibration.quantize(fp32, tmp_path / "ov.onnx", scales=cache, target="openvino")
    assert not _head_is_int8(res.path)
    with pytest.raises(calibration.CalibrationError, match="lack"):
        calibration.quantize(fp32, tmp_path / "ov2.onnx", scales=cache, target="openvino",
                             quantize_gemm=True)
