"""ONNX export: the graph conventions engines rely on, metadata, atomic writes, load errors."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import ArtifactError
from engine.export import weights_fingerprint
from engine.onnxmeta import META_CONFIG, META_PRECISION, META_WEIGHTS, load_onnx, read_metadata

onnx = pytest.importorskip("onnx")
ARCHS = ["inception_v4", "inception_resnet_v1", "inception_resnet_v2"]
SMALL = dict(width=0.25, input_size=(3, 75, 75))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Single-threaded tracing: on a shared, busy CPU torch's spinning pool costs more than
    it gains. Restored afterwards."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_conventions(exported_onnx, arch):
    path, model = exported_onnx(arch, **SMALL)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops            # BN folded into the convs
    assert "Mul" not in ops                           # residual scales folded
    assert "Identity" not in ops
    # every conv has its own weight initializer, named nodes carry module paths
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len({n.input[1] for n in convs}) == len(convs)
    assert all(n.name.startswith("/") for n in convs)
    first = model.config.first_conv.replace(".", "/")
    assert any(n.name.startswith("/" + first.replace("features/0", "features/features.0"))
               for n in convs)
    # input/output and a dynamic batch axis
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, 75, 75]


def test_metadata_roundtrip(exported_onnx):
    path, model = exported_onnx("inception_resnet_v2", **SMALL)
    meta = read_metadata(path)
    # the file records the size it was exported at (75 here), everything else as configured
    assert meta["config"] == model.config.with_(input_size=SMALL["input_size"])
    assert meta["precision"] == "fp32"
    assert meta["weights_sha256"] == weights_fingerprint(model)
    assert {META_CONFIG, META_PRECISION, META_WEIGHTS} <= set(meta["props"])


def test_residual_block_is_conv_add_relu(exported_onnx):
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    nodes = {n.name: n for n in onnx.load(str(path)).graph.node}
    add = nodes["/repeat/repeat.0/Add"]
    assert "/repeat/repeat.0/conv2d/Conv_output_0" in add.input
    assert nodes["/repeat/repeat.0/relu/Relu"].input[0] == add.output[0]
    assert "/block8/relu/Relu" not in nodes  # the last block has no ReLU


def test_static_batch_and_old_opset(tmp_path):
    import torch
    torch.manual_seed(0)
    model = engine.create_model("inception_resnet_v2_fmnist")
    with pytest.raises(ValueError, match="opset"):
        engine.export_onnx(model, tmp_path / "old.onnx", opset=13)
    assert not (tmp_path / "old.onnx").exists()
    p = engine.export_onnx(model, tmp_path / "static.onnx", dynamic_batch=False)
    dim0 = onnx.load(str(p)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "" and dim0.dim_value > 0


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import torch
    torch.manual_seed(0)
    model = engine.create_model("inception_resnet_v2_fmnist")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous version")

    def boom(*a, **k):
        raise RuntimeError("checker failed (simulated)")
    monkeypatch.setattr(onnx.checker, "check_model", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        engine.export_onnx(model, target)
    assert target.read_bytes() == b"previous version"     # not replaced
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left


def test_load_onnx_errors(tmp_path, exported_onnx):
    with pytest.raises(ArtifactError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty"):
        load_onnx(empty)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ArtifactError):
        load_onnx(junk)
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated"):
        load_onnx(cut)


def test_foreign_metadata_is_none(exported_onnx):
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    meta = read_metadata(proto)
    assert meta["config"] is None and meta["weights_sha256"] is None


def test_metadata_input_size_follows_the_exported_size(exported_onnx):
    import engine
    path, model = exported_onnx("inception_v4", width=0.25, input_size=(3, 75, 75))
    cfg = engine.read_metadata(path)["config"]
    assert model.config.input_size == (3, 299, 299)
    assert cfg.input_size == (3, 75, 75) and cfg.name == "inception_v4" and cfg.width == 0.25
