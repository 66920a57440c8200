"""engine.load: backend choice, clear errors for bad files, unknown and missing backends."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import engine
from engine import backends
from engine.errors import ArtifactError, BackendUnavailableError
from engine.loader import ConfigUnknownWarning

pytest.importorskip("onnx")
SMALL = dict(width=0.25, input_size=(3, 75, 75))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """The reference runs single-threaded (see conftest.one_torch_thread)."""


@pytest.fixture
def small(exported_onnx):
    return exported_onnx("inception_resnet_v2", **SMALL)


def _block_import(monkeypatch, name):
    """Make ``import name`` fail as if the package were not installed."""
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, name, None)


def test_onnx_defaults_to_openvino(small):
    if not backends.is_installed("openvino"):
        pytest.skip("openvino not installed")
    with engine.load(small[0]) as rt:
        assert rt.backend == "openvino"
        assert rt.config.name == "inception_resnet_v2"


def test_falls_back_to_onnxruntime_without_openvino(small, monkeypatch):
    if not backends.is_installed("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    _block_import(monkeypatch, "openvino")
    assert "openvino" not in engine.available_backends()
    with engine.load(small[0]) as rt:
        assert rt.backend == "onnxruntime"


def test_backend_not_installed_says_how_to_install(small, monkeypatch):
    _block_import(monkeypatch, "onnxruntime")
    with pytest.raises(BackendUnavailableError) as e:
        engine.load(small[0], backend="onnxruntime")
    msg = str(e.value)
    assert "pip install onnxruntime" in msg
    if backends.is_installed("openvino"):
        assert "would run on: openvino" in msg


def test_no_engine_for_onnx(small, monkeypatch):
    _block_import(monkeypatch, "openvino")
    _block_import(monkeypatch, "onnxruntime")
    with pytest.raises(BackendUnavailableError) as e:
        engine.load(small[0])
    msg = str(e.value)
    assert "pip install openvino" in msg and "pip install onnxruntime" in msg


def test_unknown_backend_lists_valid_ones(small):
    with pytest.raises(BackendUnavailableError) as e:
        engine.load(small[0], backend="tensorflow")
    assert isinstance(e.value, ValueError)
    for name in ("openvino", "onnxruntime", "tensorrt", "triton", "torch"):
        assert name in str(e.value)


def test_backend_that_does_not_read_the_format(small):
    with pytest.raises(ArtifactError, match="runs on: .*openvino"):
        engine.load(small[0], backend="tensorrt")


def test_plan_without_tensorrt(tmp_path):
    if backends.check_available("tensorrt")[0]:
        pytest.skip("TensorRT usable here")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 64)
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        engine.load(plan)


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    (b"", "empty"),
    (b"this is not a model at all\n" * 10, "not a readable ONNX|holds no graph"),
])
def test_bad_files(tmp_path, content, match):
    p = tmp_path / "m.onnx"
    if content is not None:
        p.write_bytes(content)
    for backend in (None, "onnxruntime"):
        with pytest.raises(ArtifactError, match=match):
            engine.load(p, backend=backend)


def test_missing_files_say_how_to_make_them(tmp_path):
    with pytest.raises(ArtifactError, match="inception-engine export"):
        engine.load(tmp_path / "m.onnx")
    with pytest.raises(ArtifactError, match="inception-engine build"):
        engine.load(tmp_path / "m.plan")


def test_truncated_file(small, tmp_path):
    data = small[0].read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="truncated"):
        engine.load(p)


def test_directory_and_unknown_suffix(tmp_path):
    with pytest.raises(ArtifactError, match="directory"):
        engine.load(tmp_path)
    p = tmp_path / "m.tflite"
    p.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="unknown model file type"):
        engine.load(p)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_foreign_onnx_runs_config_unknown(small, tmp_path, backend):
    pytest.importorskip(backend)          # the engine's library, decided by importing it
    import onnx
    proto = onnx.load(str(small[0]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    x = np.random.default_rng(0).standard_normal((2, 3, 75, 75)).astype(np.float32)
    with pytest.warns(ConfigUnknownWarning, match="config"):
        rt = engine.load(foreign, backend=backend, threads=1)
    with rt:
        assert rt.config is None and rt.precision == "fp32"
        assert "unknown model" in repr(rt)
        y = rt(x)
        report = engine.verify(rt, small[1], x)
    assert y.shape == (2, 1000)
    assert report.passed and not report.config_known
    assert "config unknown" in str(report)


def test_available_backends():
    av = engine.available_backends()
    for name in ("openvino", "onnxruntime"):
        assert (name in av) == backends.is_installed(name)
    assert av.index("openvino") < av.index("onnxruntime") if {"openvino", "onnxruntime"} <= set(av) \
        else True
    assert "tensorrt" not in engine.available_backends("m.onnx")


def test_import_is_light_and_load_is_callable():
    """``import engine`` pulls in no engine library, and importing the modules that define
    them leaves ``engine.load`` and ``engine.verify`` the functions, not the modules."""
    code = ("import sys, types, engine\n"
            "heavy = [m for m in ('openvino', 'onnxruntime', 'onnx', 'tensorrt') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import engine.loader, engine.parity\n"
            "from engine.loader import load; from engine.parity import verify\n"
            "for name, fn in (('load', load), ('verify', verify)):\n"
            "    got = getattr(engine, name)\n"
            "    assert isinstance(got, types.FunctionType) and got is fn, (name, got)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_invalid_graph_refused_on_the_auto_picked_engine(small, tmp_path):
    """A conv stride of -1 (which the engines ran, returning an empty array) is refused
    by engine.load with the node named, whichever engine it picks."""
    import onnx
    from onnx import helper
    from engine.errors import InvalidGraphError
    proto = onnx.load(str(small[0]))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    for a in [a for a in conv.attribute if a.name == "strides"]:
        conv.attribute.remove(a)
    conv.attribute.append(helper.make_attribute("strides", [-1, -1]))
    bad = tmp_path / "stride.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(InvalidGraphError, match=f"{bad}: node {conv.name!r} .*strides") as e:
        engine.load(bad)
    assert "inception-engine export" in str(e.value)
