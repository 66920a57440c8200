"""engine.graphcheck: each refusal rule proven on a fault planted in a small export, the
verdict cache, and the op sets of the backend registry."""
from __future__ import annotations

import re

import pytest

import engine
from engine import backends, graphcheck
from engine.errors import InvalidGraphError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

SMALL = dict(width=0.25, input_size=(3, 75, 75))
REEXPORT = "inception-engine export --opset 17"


@pytest.fixture(scope="module")
def base(exported_onnx):
    """The small export's path and its parsed graph (never modified: faults go on copies)."""
    path = exported_onnx("inception_resnet_v2", **SMALL)[0]
    return path, onnx.load(str(path))


def first(proto, op_type):
    return next(n for n in proto.graph.node if n.op_type == op_type)


def set_attribute(node, name, value):
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def plant(base, tmp_path, fault, name="fault.onnx"):
    """A copy of the small export with ``fault(proto)`` applied, saved without checking.
    Returns the path and the node the fault is in (or None for a graph-level fault)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(base[1])
    node = fault(proto)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path, node


def relu_as_conv(proto):
    node = first(proto, "Relu")
    node.op_type = "Conv"           # one input: no weight
    return node


def conv_stride(proto):
    node = first(proto, "Conv")
    set_attribute(node, "strides", [-1, -1])
    return node


def conv_pads(proto):
    node = first(proto, "Conv")
    set_attribute(node, "pads", [0, -1, 0, 0])
    return node


def pool_kernel_zero(proto):
    node = first(proto, "MaxPool")
    set_attribute(node, "kernel_shape", [0, 0])
    return node


def unknown_op(proto):
    node = first(proto, "Add")
    node.op_type = "NoSuchOp"
    return node


def opset(version):
    def fault(proto):
        proto.opset_import[0].version = version
    return fault


def int64_input(proto):
    """The graph input declared int64: the first Conv reads an integer tensor."""
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    return first(proto, "Conv")


def dangling_input(proto):
    node = first(proto, "Concat")
    node.input[1] = "produced_by_nobody"
    return node


def short_initializer(proto):
    init = proto.graph.initializer[0]
    init.dims[0] += 1               # declares more elements than its raw data holds
    return None


NODE_FAULTS = [
    (relu_as_conv, "has 1 inputs; Conv takes 2 to 3"),
    (conv_stride, r"strides=\[-1, -1\] holds -1; every value must be positive"),
    (conv_pads, r"pads=\[0, -1, 0, 0\] holds -1; every value must be non-negative"),
    (pool_kernel_zero, r"kernel_shape=\[0, 0\] holds 0"),
    (unknown_op, "'NoSuchOp' is not an ONNX operator at opset 17"),
    (int64_input, "ONNX checker refuses the graph .*tensor\\(int64\\)"),
    (dangling_input, "reads 'produced_by_nobody', which no graph input"),
]


@pytest.mark.parametrize("fault, what", NODE_FAULTS, ids=[f[0].__name__ for f in NODE_FAULTS])
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_node_fault_refused_naming_the_node(base, tmp_path, fault, what, backend):
    path, node = plant(base, tmp_path, fault)
    with pytest.raises(InvalidGraphError) as e:
        graphcheck.check_onnx(path, backends.BACKENDS[backend].onnx, backend)
    msg = str(e.value)
    assert msg.startswith(f"{path}: node {node.name!r} (op type {node.op_type}): "), msg
    assert re.search(what, msg), msg
    assert REEXPORT in msg


@pytest.mark.parametrize("version, what", [(7, "opset 7 is too old"),
                                           (29, "opset 29 is newer than this installation"),
                                           (99, "opset 99 is newer")])
def test_opset_outside_the_engines_range(base, tmp_path, version, what):
    path, _ = plant(base, tmp_path, opset(version))
    with pytest.raises(InvalidGraphError) as e:
        graphcheck.check_onnx(path, backends.BACKENDS["openvino"].onnx, "openvino")
    msg = str(e.value)
    assert msg.startswith(str(path)) and what in msg and REEXPORT in msg
    assert "reads opsets 13 to 28" in msg


def test_initializer_data_must_fill_its_dims(base, tmp_path):
    path, _ = plant(base, tmp_path, short_initializer)
    name = base[1].graph.initializer[0].name
    with pytest.raises(InvalidGraphError, match=f"initializer {name!r} declares dims .* but "
                       "holds .* bytes of data") as e:
        graphcheck.check_onnx(path, backends.BACKENDS["onnxruntime"].onnx, "onnxruntime")
    assert REEXPORT in str(e.value)


@pytest.mark.parametrize("fault, what", [
    (lambda n: set_attribute(n, "group", 0), "group=0; it must be at least 1"),
    (lambda n: set_attribute(n, "dilations", [1, 0]), "dilations=.* holds 0"),
    (lambda n: set_attribute(n, "pads", [0, 0, 0]), "odd length"),
    (lambda n: set_attribute(n, "strides", [1, 1, 1]), "different ranks"),
    (lambda n: set_attribute(n, "auto_pad", "SIDEWAYS"), "auto_pad='SIDEWAYS'"),
    (lambda n: set_attribute(n, "strides", 2), "must be a list of integers"),
], ids=["group", "dilations", "odd-pads", "ranks", "auto_pad", "scalar-strides"])
def test_conv_attribute_rules(base, tmp_path, fault, what):
    def planted(proto):
        node = first(proto, "Conv")
        fault(node)
        return node
    path, node = plant(base, tmp_path, planted)
    with pytest.raises(InvalidGraphError, match=what) as e:
        graphcheck.check_onnx(path, backends.BACKENDS["openvino"].onnx, "openvino")
    assert f"node {node.name!r}" in str(e.value) and REEXPORT in str(e.value)


def test_op_the_engine_does_not_run(base, tmp_path):
    """A standard op outside the triton engine's set is refused for triton only."""
    def sigmoid(proto):
        node = first(proto, "Relu")
        node.op_type = "Sigmoid"
        return node
    path, node = plant(base, tmp_path, sigmoid)
    with pytest.raises(InvalidGraphError) as e:
        graphcheck.check_onnx(path, backends.BACKENDS["triton"].onnx, "triton")
    msg = str(e.value)
    assert f"node {node.name!r} (op type Sigmoid)" in msg
    assert "the triton engine does not run op type Sigmoid" in msg and "backend=" in msg
    graphcheck.check_onnx(path, backends.BACKENDS["openvino"].onnx, "openvino")


def test_custom_domain_only_where_the_engine_runs_it(base, tmp_path):
    def custom(proto):
        node = first(proto, "Relu")
        node.domain = "com.microsoft"
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return node
    path, node = plant(base, tmp_path, custom)
    with pytest.raises(InvalidGraphError, match="op domain 'com.microsoft' is not one the "
                       "openvino engine runs") as e:
        graphcheck.check_onnx(path, backends.BACKENDS["openvino"].onnx, "openvino")
    assert f"node {node.name!r}" in str(e.value)
    # onnxruntime runs com.microsoft nodes and checks them itself: the file passes here
    graphcheck.check_onnx(path, backends.BACKENDS["onnxruntime"].onnx, "onnxruntime")


def count_verdicts(monkeypatch):
    """An empty verdict cache, and the list of checks actually run from now on."""
    monkeypatch.setattr(graphcheck, "_VERDICTS", {})
    calls = []
    real = graphcheck._verdict
    monkeypatch.setattr(graphcheck, "_verdict", lambda *a: calls.append(a) or real(*a))
    return calls


def test_valid_export_passes_and_the_verdict_is_cached(base, tmp_path, monkeypatch):
    path, _ = plant(base, tmp_path, lambda proto: None, "valid.onnx")
    support = backends.BACKENDS["openvino"].onnx
    calls = count_verdicts(monkeypatch)
    graphcheck.check_onnx(path, support, "openvino")
    graphcheck.check_onnx(path, support, "openvino")
    copy = tmp_path / "same-content.onnx"
    copy.write_bytes(path.read_bytes())
    graphcheck.check_onnx(copy, support, "openvino")
    assert len(calls) == 1, "the same content is checked once"
    assert graphcheck.cached_verdicts() == 1
    graphcheck.check_onnx(path, backends.BACKENDS["onnxruntime"].onnx, "onnxruntime")
    assert len(calls) == 2, "another engine's rules are another verdict"


def test_refusal_is_cached_and_names_each_file(base, tmp_path, monkeypatch):
    path, _ = plant(base, tmp_path, conv_stride, "a.onnx")
    other = tmp_path / "b.onnx"
    other.write_bytes(path.read_bytes())
    calls = count_verdicts(monkeypatch)
    support = backends.BACKENDS["onnxruntime"].onnx
    for p in (path, other, path):
        with pytest.raises(InvalidGraphError, match=f"^{re.escape(str(p))}: node .*strides"):
            graphcheck.check_onnx(p, support, "onnxruntime")
    assert len(calls) == 1


def test_a_rewritten_file_is_checked_again(base, tmp_path):
    path, _ = plant(base, tmp_path, lambda proto: None, "model.onnx")
    support = backends.BACKENDS["openvino"].onnx
    graphcheck.check_onnx(path, support, "openvino")
    plant(base, tmp_path, conv_stride, "model.onnx")
    with pytest.raises(InvalidGraphError, match="strides"):
        graphcheck.check_onnx(path, support, "openvino")


def test_load_refuses_before_the_engine_parses(base, tmp_path, monkeypatch):
    """engine.load raises InvalidGraphError and never constructs the backend's runtime."""
    path, node = plant(base, tmp_path, relu_as_conv)
    monkeypatch.setattr(backends, "get_backend",
                        lambda name: pytest.fail(f"the {name} engine was asked to parse"))
    for backend in ("openvino", "onnxruntime", "triton"):
        with pytest.raises(InvalidGraphError, match=re.escape(f"node {node.name!r}")):
            engine.load(path, backend=backend)


def test_every_onnx_backend_declares_what_it_reads():
    for name, info in backends.BACKENDS.items():
        assert (info.onnx is not None) == (".onnx" in info.formats), name
        if info.onnx is not None:
            low, high = info.onnx.opsets
            assert low == 13 and high >= 17, name   # the export's default opset is 17


def test_triton_op_set_is_what_its_graph_reader_reads():
    from engine.backends.triton.graph import _Reader
    reader_ops = {m[len("op_"):] for m in dir(_Reader) if m.startswith("op_")}
    assert backends.BACKENDS["triton"].onnx.ops == reader_ops
