"""TensorRT path without TensorRT: sidecar, atomic writes, compatibility messages, build
options, Q/DQ and precision rules, FP16 graph conversion (run on ONNX Runtime), the runtime's
input contract, and the clear failure when TensorRT is missing.

The "running" TensorRT version and GPU are passed in as plain facts here, and the builder
tests talk to a recording stand-in for the ``tensorrt`` module (what ``build`` asks of it, and
what it writes from the answers); nothing in this file claims a TensorRT result. The real
builds are in ``test_tensorrt_gpu.py`` (marked ``tensorrt``); the code against the real
TensorRT 10.13 and 11.4 Python API is in ``test_tensorrt_contract.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import warnings
from datetime import datetime

import numpy as np
import pytest

import engine
from engine.backends.tensorrt import meta
from helpers import FMNIST, fake_sidecar, temp_files, tiny_onnx  # noqa: F401
from engine.onnxmeta import file_precision, onnx_io, qdq_nodes, resolve_precision
from engine.errors import ArtifactError, BackendUnavailableError, UnsupportedPrecisionError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


# --------------------------------------------------------------------------- sidecar
def test_sidecar_contents_and_round_trip(tmp_path):
    calib = {"method": "entropy", "dataset": "engine/data/fashion_mnist/calib.npz",
             "num_images": 2000}
    onnx_path = tiny_onnx(tmp_path / "m.int8.onnx", qdq=True, calibration=calib)
    plan = tmp_path / "m.plan"
    blob = b"\x01plan-bytes\x00" * 100
    gpu = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}

    def make(sha, n):
        from engine.onnxmeta import read_metadata
        return meta.make_sidecar(
            plan_path=plan, plan_sha256=sha, plan_bytes=n, onnx_path=onnx_path,
            onnx_sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            onnx_meta=read_metadata(onnx_path), precision="int8",
            io=onnx_io(__import__("onnx").load(str(onnx_path))),
            tensorrt_version="11.1.0.7", gpu=gpu,
            build_options={"min_batch": 1, "opt_batch": 4, "max_batch": 16, "workspace": 1 << 30,
                           "hardware_compatible": False, "keep_io_fp32": True,
                           "timing_cache": None},
            mode=meta.build_mode("int8", ["TF32"], True))

    meta.write_plan_and_sidecar(plan, blob, make)
    assert plan.read_bytes() == blob
    side = meta.read_sidecar(plan, required=True)
    assert json.loads(meta.sidecar_path(plan).read_text()) == side
    assert meta.sidecar_path(plan).name == "m.plan.json"
    assert side["plan"] == {"file": "m.plan", "sha256": hashlib.sha256(blob).hexdigest(),
                            "bytes": len(blob)}
    assert side["source_onnx"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert side["source_onnx"]["path"] == str(onnx_path.resolve())
    from engine.models.registry import ModelConfig
    assert ModelConfig.from_dict(side["model_config"]) == engine.get_config(FMNIST)
    assert side["precision"] == "int8"
    assert side["calibration"]["method"] == "entropy"
    assert side["calibration"]["source"] == calib["dataset"]
    assert side["calibration"]["details"]["num_images"] == 2000
    assert side["tensorrt"] == {"version": "11.1.0.7", "strongly_typed": True,
                                "builder_flags": [], "cleared_flags": []}
    assert side["gpu"] == gpu
    assert side["build_options"]["max_batch"] == 16
    assert side["build_options"]["workspace"] == 1 << 30
    assert side["io"]["inputs"] == [{"name": "input", "shape": [None, 3, 75, 75],
                                     "dtype": "float32"}]
    assert side["io"]["outputs"] == [{"name": "logits", "shape": [None, 10], "dtype": "float32"}]
    created = datetime.fromisoformat(side["created"])
    assert created.tzinfo is not None
    assert temp_files(tmp_path) == []


def test_fp32_file_has_no_calibration(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x" * 10)
    side = fake_sidecar(plan, onnx_path, precision="fp32")
    assert side["calibration"] is None
    assert side["tensorrt"]["cleared_flags"] == ["TF32"]


@pytest.mark.parametrize("where", ["plan_hash", "sidecar_fn", "sidecar_json"])
def test_atomic_write_failure_leaves_targets_untouched(tmp_path, monkeypatch, where):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"old plan")
    old_side = fake_sidecar(plan, onnx_path)
    meta.sidecar_path(plan).write_text(json.dumps(old_side))
    before = (plan.read_bytes(), meta.sidecar_path(plan).read_text())

    def make(sha, n):
        if where == "sidecar_fn":
            raise RuntimeError("simulated crash while describing the plan")
        d = dict(old_side, plan={"file": "m.plan", "sha256": sha, "bytes": n})
        if where == "sidecar_json":
            d["build_options"] = {"not json": object()}
        return d

    if where == "plan_hash":
        import engine.fileio
        monkeypatch.setattr(engine.fileio, "sha256_file",
                            lambda p: (_ for _ in ()).throw(OSError("simulated disk error")))
    with pytest.raises((RuntimeError, OSError, TypeError)):
        meta.write_plan_and_sidecar(plan, b"new plan bytes", make)
    assert (plan.read_bytes(), meta.sidecar_path(plan).read_text()) == before
    assert temp_files(tmp_path) == []


def test_write_replaces_both(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"old")
    meta.sidecar_path(plan).write_text(json.dumps(fake_sidecar(plan, onnx_path)))
    tmpl = fake_sidecar(plan, onnx_path, trt="11.0.0.1")
    meta.write_plan_and_sidecar(plan, bytearray(b"new plan"),
                                lambda sha, n: dict(tmpl, plan={"file": "m.plan", "sha256": sha,
                                                                "bytes": n}))
    side = meta.read_sidecar(plan)
    assert plan.read_bytes() == b"new plan"
    assert side["tensorrt"]["version"] == "11.0.0.1"
    meta.check_plan_hash(side, hashlib.sha256(b"new plan").hexdigest(), plan)


def test_sidecar_missing_damaged_and_hash_mismatch(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    with pytest.warns(UserWarning, match="no sidecar"):
        assert meta.read_sidecar(plan) is None
    with pytest.raises(ArtifactError, match="no sidecar"):
        meta.read_sidecar(plan, required=True)
    meta.sidecar_path(plan).write_text("{ truncated")
    with pytest.raises(ArtifactError, match="unreadable sidecar"):
        meta.read_sidecar(plan)
    meta.sidecar_path(plan).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not an inception plan sidecar"):
        meta.read_sidecar(plan)
    side = fake_sidecar(plan, onnx_path)
    del side["gpu"]
    meta.sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match="'gpu' is missing"):
        meta.read_sidecar(plan)
    side = fake_sidecar(plan, onnx_path)
    with pytest.raises(ArtifactError, match="does not match its sidecar") as e:
        meta.check_plan_hash(side, "0" * 64, plan)
    assert "inception-engine build" in str(e.value)


def test_plan_file_checks(tmp_path):
    with pytest.raises(ArtifactError, match="no such plan file"):
        meta.check_plan_file(tmp_path / "missing.plan")
    (tmp_path / "empty.plan").write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty"):
        meta.check_plan_file(tmp_path / "empty.plan")
    with pytest.raises(ArtifactError, match="directory"):
        meta.check_plan_file(tmp_path)


def test_runtime_rejects_missing_and_empty_plan_before_tensorrt(tmp_path):
    from engine.backends.tensorrt import TensorRTRuntime
    with pytest.raises(ArtifactError, match="no such plan file"):
        TensorRTRuntime(tmp_path / "missing.plan")
    (tmp_path / "empty.plan").write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty"):
        TensorRTRuntime(tmp_path / "empty.plan")


# --------------------------------------------------------------------------- compatibility
@pytest.fixture
def built(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "irv2.onnx")
    plan = tmp_path / "irv2.plan"
    plan.write_bytes(b"plan")
    side = fake_sidecar(plan, onnx_path, trt="10.8.0.43",
                        gpu={"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"},
                        precision="fp16", max_batch=16, opt_batch=4,
                        timing_cache=str(tmp_path / "trt.cache"))
    return plan, onnx_path, side


def test_same_environment_passes(built):
    plan, _, side = built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert meta.check_compatibility(side, "10.8.0.43", dict(side["gpu"]), plan) == []


def test_tensorrt_version_mismatch_names_both_and_rebuild_command(built):
    plan, onnx_path, side = built
    with pytest.raises(meta.PlanMismatchError) as e:
        meta.check_compatibility(side, "10.9.0.34", side["gpu"], plan)
    msg = str(e.value)
    assert "TensorRT 10.8.0.43" in msg and "TensorRT 10.9.0.34" in msg
    cmd = meta.rebuild_command(onnx_path.resolve(), plan, "fp16", side["build_options"])
    assert cmd in msg
    assert "--precision fp16" in cmd and "--max-batch 16" in cmd and "--opt-batch 4" in cmd
    assert "--timing-cache" in cmd


def test_gpu_architecture_mismatch(built):
    plan, _, side = built
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    with pytest.raises(meta.PlanMismatchError) as e:
        meta.check_compatibility(side, "10.8.0.43", h100, plan)
    msg = str(e.value)
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in msg
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in msg
    assert "--hardware-compatible" in msg and "inception-engine build" in msg
    # both wrong: both named
    with pytest.raises(meta.PlanMismatchError, match="TensorRT 11.0.0.1.*compute capability 9.0"):
        meta.check_compatibility(side, "11.0.0.1", h100, plan)
    # not strict: the same message as a warning
    with pytest.warns(UserWarning, match="cannot run here"):
        meta.check_compatibility(side, "10.8.0.43", h100, plan, strict=False)


def test_same_architecture_other_card_only_warns(built):
    plan, _, side = built
    a30 = {"name": "NVIDIA A30", "compute_capability": "8.0"}
    with pytest.warns(UserWarning, match="same architecture"):
        notes = meta.check_compatibility(side, "10.8.0.43", a30, plan)
    assert len(notes) == 1


def test_hardware_compatible_plan(built):
    plan, _, side = built
    side["build_options"]["hardware_compatible"] = True
    h100 = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    assert meta.check_compatibility(side, "10.8.0.43", h100, plan) == []
    t4 = {"name": "Tesla T4", "compute_capability": "7.5"}
    with pytest.raises(meta.PlanMismatchError, match="older than Ampere"):
        meta.check_compatibility(side, "10.8.0.43", t4, plan)


def test_missing_source_onnx_is_mentioned(built):
    plan, onnx_path, side = built
    onnx_path.unlink()
    with pytest.raises(meta.PlanMismatchError, match="is not on this machine"):
        meta.check_compatibility(side, "10.9.0.34", side["gpu"], plan)


def test_rebuild_command_parses_back(built):
    plan, onnx_path, side = built
    import shlex
    from engine.cli import make_parser
    opts = dict(side["build_options"], workspace=1 << 31, hardware_compatible=True,
                keep_io_fp32=False)
    argv = shlex.split(meta.rebuild_command(onnx_path, plan, "fp16", opts))
    assert argv[:2] == ["inception-engine", "build"]
    args = make_parser().parse_args(argv[1:])
    assert (args.onnx, args.out, args.precision) == (str(onnx_path), str(plan), "fp16")
    assert (args.min_batch, args.opt_batch, args.max_batch) == (1, 4, 16)
    assert args.workspace == 1 << 31 and args.hardware_compatible and args.fp16_io
    assert args.timing_cache == opts["timing_cache"]


def test_workspace_sizes(capsys):
    from engine.cli import make_parser
    from engine.commands.build import byte_size
    assert byte_size("4096") == 4096 << 20                  # a bare number is MiB
    assert byte_size("512M") == 512 << 20 and byte_size("2g") == 2 << 30
    assert byte_size("2GiB") == 2 << 30 and byte_size("4096B") == 4096
    assert byte_size("1.5KB") == 1536
    for bad in ("lots", "0", "-2G", "G", "nan", "0.5B"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
            byte_size(bad)
    with pytest.raises(SystemExit):
        make_parser().parse_args(["build", "m.onnx", "--workspace", "lots"])
    assert "'lots' is not a size" in capsys.readouterr().err


def test_workspace_text_reads_back():
    from engine.commands.build import byte_size
    for nbytes in (1 << 20, 3 << 30, 4096, (1 << 20) + 1):
        assert byte_size(meta.workspace_text(nbytes)) == nbytes
    assert meta.workspace_text(2 << 30) == "2048M" and meta.workspace_text(100) == "100B"


def test_layer_precision_specs():
    from engine.errors import InputError
    assert meta.parse_layer_precisions("/a/Conv:fp16, /b:Gemm:FP32 ,*:int8") == {
        "/a/Conv": "fp16", "/b:Gemm": "fp32", "*": "int8"}       # the last ':' separates
    assert meta.parse_layer_precisions(None) == {} == meta.parse_layer_precisions("")
    for bad in ("/a/Conv", "/a/Conv:fp64", ":fp16"):
        with pytest.raises(InputError, match="LAYER:PRECISION"):
            meta.parse_layer_precisions(bad)
    layers = ["/pool", "/gemm", "/softmax"]
    assert meta.assign_layer_precisions(layers, {"/gemm": "fp32", "*": "fp16"}) == {
        "/pool": "fp16", "/gemm": "fp32", "/softmax": "fp16"}
    assert meta.assign_layer_precisions(layers, {"/gemm": "fp32"}) == {"/gemm": "fp32"}
    with pytest.raises(InputError, match="lacks .*'/conv'.*'/pool'"):
        meta.assign_layer_precisions(layers, {"/conv": "fp32"})


def test_precision_constraint_and_level_checks():
    from engine.errors import InputError
    meta.check_precision_constraints(None, {})
    meta.check_precision_constraints("prefer", {"*": "fp16"})
    with pytest.raises(InputError, match="add --precision-constraints"):
        meta.check_precision_constraints(None, {"*": "fp16"})
    with pytest.raises(InputError, match="needs layer precisions"):
        meta.check_precision_constraints("obey", {})
    assert meta.check_optimization_level(None) is None and meta.check_optimization_level(0) == 0
    for bad in (-1, 6, 2.5, True, "3"):
        with pytest.raises(InputError, match="from 0 .* to 5"):
            meta.check_optimization_level(bad)


def test_build_mode_with_precision_constraints():
    ten = ["FP16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    mode = meta.build_mode("fp16", ten, True, "prefer")
    assert mode == {"strongly_typed": False, "set_flags": ["FP16", "PREFER_PRECISION_CONSTRAINTS"],
                    "clear_flags": []}
    with pytest.raises(UnsupportedPrecisionError, match="strongly typed"):
        meta.build_mode("fp16", ["TF32"], True, "obey")              # TensorRT 11


def test_rebuild_command_keeps_the_new_options(built):
    plan, onnx_path, side = built
    import shlex
    from engine.cli import make_parser
    opts = dict(side["build_options"], builder_optimization_level=1,
                precision_constraints="obey", layer_precisions={"/classif/Gemm": "fp32"},
                workspace=(1 << 20) + 1)
    args = make_parser().parse_args(shlex.split(meta.rebuild_command(onnx_path, plan, "fp16",
                                                                     opts))[1:])
    assert args.builder_optimization_level == 1 and args.precision_constraints == "obey"
    assert args.layer_precisions == {"/classif/Gemm": "fp32"}
    assert args.workspace == (1 << 20) + 1


# --------------------------------------------------------------------------- runtime contract
def _runtime_without_tensorrt(side, plan):
    """A TensorRTRuntime whose TensorRT parts are left out: enough for every check that runs
    before TensorRT does (the base class's input checks, the profile's batch range)."""
    from engine.backends.tensorrt import TensorRTRuntime
    from engine.runtime import Runtime, TensorSpec
    rt = object.__new__(TensorRTRuntime)
    Runtime.__init__(rt, path=plan, precision=side["precision"],
                     inputs=[TensorSpec("input", (None, 3, 75, 75))],
                     outputs=[TensorSpec("logits", (None, 10))])
    rt.sidecar, rt.device = side, "cuda:0"
    rt._batch_range = (side["build_options"]["min_batch"], side["build_options"]["max_batch"])
    return rt


def test_runtime_keeps_the_base_contract(built):
    from engine.backends.tensorrt import TensorRTRuntime
    from engine.errors import InputError
    plan, _, side = built                        # profile 1..16
    assert "__call__" not in TensorRTRuntime.__dict__
    rt = _runtime_without_tensorrt(side, plan)
    assert rt.runs_on_device                     # CUDA tensors go to _infer_device
    with pytest.raises(InputError, match="outside this plan's optimization profile \\(1..16\\)") \
            as e:
        rt(np.zeros((17, 3, 75, 75), np.float32))
    assert "--max-batch 17" in str(e.value) and "inception-engine build" in str(e.value)
    bad = np.zeros((2, 3, 75, 75), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        rt(bad)
    with pytest.raises(InputError, match="axis 2: got 64, expected 75"):
        rt(np.zeros((2, 3, 64, 75), np.float32))


# --------------------------------------------------------------------------- build inputs
def test_qdq_detection_and_precision_rules(tmp_path):
    import onnx
    fp32 = onnx.load(str(tiny_onnx(tmp_path / "a.onnx")))
    int8 = onnx.load(str(tiny_onnx(tmp_path / "b.onnx", qdq=True)))
    assert qdq_nodes(fp32) == []
    assert qdq_nodes(int8) == ["/in/Q", "/in/DQ"]
    assert file_precision(fp32) == "fp32" and file_precision(int8) == "int8"
    assert meta.nonzero_zero_points(int8) == []
    asym = onnx.load(str(tiny_onnx(tmp_path / "c.onnx", qdq=True, zero_point=3)))
    assert meta.nonzero_zero_points(asym) == ["/in/Q", "/in/DQ"]

    def resolve(requested, file_prec, path="model.onnx"):
        return resolve_precision(requested, file_prec, meta.PRECISIONS, meta.BACKEND, path)

    assert meta.PRECISIONS == ("fp32", "fp16", "int8")
    assert resolve(None, "fp32") == "fp32"
    assert resolve(None, "int8") == "int8"
    assert resolve("FP16", "fp32") == "fp16"
    with pytest.raises(UnsupportedPrecisionError, match="inception-engine quantize"):
        resolve("int8", "fp32", "irv2.onnx")
    with pytest.raises(UnsupportedPrecisionError, match="precision='int8'"):
        resolve("fp16", "int8")
    with pytest.raises(ValueError, match="tensorrt backend runs fp32, fp16, int8, not bf16"):
        resolve("bf16", "fp32")
    assert resolve(None, "fp16") == "fp16"      # a converted FP16 file
    with pytest.raises(UnsupportedPrecisionError, match="FP16 graph"):
        resolve("fp32", "fp16")


def test_plan_precision_is_fixed_at_build(built):
    plan, onnx_path, side = built                # an fp16 plan
    meta.check_plan_precision(side, None, plan)
    meta.check_plan_precision(side, "FP16", plan)
    meta.check_plan_precision(None, "int8", plan)      # a raw plan: nothing to compare
    with pytest.raises(UnsupportedPrecisionError, match="is a fp16 plan") as e:
        meta.check_plan_precision(side, "fp32", plan)
    assert "inception-engine build --precision fp32" in str(e.value)
    assert str(onnx_path.resolve()) in str(e.value)
    with pytest.raises(UnsupportedPrecisionError, match="inception-engine quantize"):
        meta.check_plan_precision(side, "int8", plan)
    with pytest.raises(UnsupportedPrecisionError, match="built at fp32, fp16, int8, not bf16"):
        meta.check_plan_precision(side, "bf16", plan)


def test_build_checks_the_file_before_tensorrt(tmp_path):
    """Wrong inputs fail with the same message with or without TensorRT."""
    from engine.errors import UnsupportedGraphError
    fp32 = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(UnsupportedPrecisionError, match="inception-engine quantize"):
        engine.build(fp32, tmp_path / "m.plan", precision="int8")
    asym = tiny_onnx(tmp_path / "asym.onnx", qdq=True, zero_point=5)
    with pytest.raises(UnsupportedGraphError, match="non-zero zero points"):
        engine.build(asym, tmp_path / "asym.plan")
    with pytest.raises(ArtifactError, match="no such file"):
        engine.build(tmp_path / "missing.onnx", tmp_path / "x.plan")
    assert not list(tmp_path.glob("*.plan*"))


def test_profile_shapes():
    assert meta.profile_shapes([None, 3, 75, 75], 1, 8, 32) == \
        ((1, 3, 75, 75), (8, 3, 75, 75), (32, 3, 75, 75))
    assert meta.profile_shapes([4, 3, 9, 9], 4, 4, 4)[1] == (4, 3, 9, 9)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        meta.profile_shapes([None, 3, 75, 75], 8, 4, 32)
    with pytest.raises(ValueError, match="positive integer"):
        meta.profile_shapes([None, 3, 75, 75], 0, 4, 32)
    with pytest.raises(ValueError, match="only the batch axis"):
        meta.profile_shapes([None, 3, None, None], 1, 4, 32)
    with pytest.raises(ValueError, match="fixed batch of 2"):
        meta.profile_shapes([2, 3, 75, 75], 1, 4, 32)


TRT10_FLAGS = ["FP16", "INT8", "TF32"]      # BuilderFlag names TensorRT 10 has
TRT11_FLAGS = ["TF32"]                      # TensorRT 11 removed FP16 and INT8


@pytest.mark.parametrize("flags,strong,precision,expected", [
    (TRT10_FLAGS, True, "fp16", (False, ["FP16"], [])),
    (TRT10_FLAGS, True, "int8", (False, ["INT8"], [])),
    (TRT10_FLAGS, True, "fp32", (False, [], ["TF32"])),
    (TRT11_FLAGS, True, "fp16", (True, [], [])),
    (TRT11_FLAGS, True, "int8", (True, [], [])),
    (TRT11_FLAGS, True, "fp32", (True, [], ["TF32"])),
    ([], True, "fp32", (True, [], [])),
])
def test_build_mode_by_feature(flags, strong, precision, expected):
    m = meta.build_mode(precision, flags, strong)
    assert (m["strongly_typed"], m["set_flags"], m["clear_flags"]) == expected


def test_build_mode_without_either():
    with pytest.raises(BackendUnavailableError, match="TensorRT 10 or newer"):
        meta.build_mode("fp16", [], False)


class _FakeParserError:
    """Stands for TensorRT's ParserError: only the accessors a given version has."""

    def __init__(self, node, desc, name=None, op=None):
        self._node, self._desc = node, desc
        if name is not None:
            self.node_name = lambda: name
            self.node_operator = lambda: op

    def node(self):
        return self._node

    def desc(self):
        return self._desc

    def code(self):
        return "ErrorCode.UNSUPPORTED_NODE"


class _FakeParser:
    def __init__(self, errors):
        self._errors = errors
        self.num_errors = len(errors)

    def get_error(self, i):
        return self._errors[i]


def test_parser_errors_name_the_node(tmp_path):
    import onnx
    from engine.backends.tensorrt.builder import parser_errors
    proto = onnx.load(str(tiny_onnx(tmp_path / "m.onnx")))
    text = parser_errors(_FakeParser([
        _FakeParserError(2, "unsupported attribute", "/classif/Gemm", "Gemm"),   # 10.x accessors
        _FakeParserError(0, "no importer"),                                      # older: index only
        _FakeParserError(-1, "graph-level problem"),
    ]), proto)
    lines = text.splitlines()
    assert "'/classif/Gemm' (Gemm, #2): unsupported attribute" in lines[0]
    assert "'/global_pool/Pool' (GlobalAveragePool, #0): no importer" in lines[1]
    assert "the graph: graph-level problem" in lines[2]


# --------------------------------------------------------------------------- builder, fake TensorRT
def fake_tensorrt(flags=("FP16", "INT8", "TF32"), build_fails=False, parse_fails=False):
    """A stand-in for the ``tensorrt`` module with the builder API ``build`` calls. It records
    what was asked (flags, profile, workspace, parsed graph) and serializes to fixed bytes."""
    import enum
    import types
    trt = types.SimpleNamespace(__version__="10.99.0.1", calls={})

    class Severity(enum.Enum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Config:
        def __init__(self):
            self.cache_blob = None

        def set_flag(self, flag):
            trt.calls.setdefault("set_flags", []).append(flag)

        def clear_flag(self, flag):
            trt.calls.setdefault("clear_flags", []).append(flag)

        def set_memory_pool_limit(self, pool, size):
            trt.calls["workspace"] = (pool, size)

        def add_optimization_profile(self, profile):
            trt.calls["profile"] = profile.shapes

        def create_timing_cache(self, blob):
            return types.SimpleNamespace(serialize=lambda: b"cache:" + bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"timings")

    class Profile:
        def set_shape(self, name, *shapes):
            self.shapes = (name, *shapes)

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            trt.calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if build_fails:
                self.logger.log(Severity.ERROR, "out of tactics for /classif/Gemm")
                return None
            return b"serialized plan"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse(self, blob, path):
            trt.calls["parsed"] = blob
            if parse_fails:
                self.num_errors = 1
                return False
            return True

        def get_error(self, i):
            return _FakeParserError(2, "unsupported attribute", "/classif/Gemm", "Gemm")

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=3)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS")
    return trt


H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture
def with_fake_tensorrt(monkeypatch):
    """Install a fake TensorRT into the builder; returns a function that swaps in another."""
    from engine.backends.tensorrt import builder

    def use(**kw):
        trt = fake_tensorrt(**kw)
        monkeypatch.setattr(builder, "import_tensorrt", lambda: trt)
        monkeypatch.setattr(builder, "gpu_info", lambda device=0: dict(H100))
        return trt
    return use


def test_build_asks_tensorrt_10_for_fp16_and_writes_the_sidecar(tmp_path, with_fake_tensorrt):
    import onnx
    from onnx import TensorProto
    trt = with_fake_tensorrt()
    src = tiny_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "trt.cache"
    plan = engine.build(src, precision="fp16", min_batch=2, opt_batch=4, max_batch=8,
                        workspace=1 << 30, timing_cache=cache)
    assert plan == tmp_path / "m.plan" and plan.read_bytes() == b"serialized plan"
    assert trt.calls["set_flags"] == ["FP16"] and "clear_flags" not in trt.calls
    assert trt.calls["network_flags"] == 0                   # weakly typed, with the flag
    assert trt.calls["profile"] == ("input", (2, 3, 75, 75), (4, 3, 75, 75), (8, 3, 75, 75))
    assert trt.calls["workspace"] == ("WORKSPACE", 1 << 30)
    parsed = onnx.load_from_string(trt.calls["parsed"])     # the FP16 graph, float32 I/O
    assert {i.data_type for i in parsed.graph.initializer} == {TensorProto.FLOAT16}
    assert parsed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert cache.read_bytes() == b"timings"
    side = meta.read_sidecar(plan, required=True)
    assert side["precision"] == "fp16" and side["gpu"] == H100
    assert side["tensorrt"] == {"version": "10.99.0.1", "strongly_typed": False,
                                "builder_flags": ["FP16"], "cleared_flags": []}
    assert side["build_options"]["timing_cache"] == str(cache)
    assert side["plan"]["sha256"] == hashlib.sha256(b"serialized plan").hexdigest()
    assert temp_files(tmp_path) == []


def test_build_with_tensorrt_11_is_strongly_typed(tmp_path, with_fake_tensorrt):
    trt = with_fake_tensorrt(flags=("TF32",))
    src = tiny_onnx(tmp_path / "m.int8.onnx", qdq=True)
    plan = engine.build(src, tmp_path / "q.plan", max_batch=8, hardware_compatible=True)
    assert trt.calls["network_flags"] == 1 << 3               # STRONGLY_TYPED
    assert "set_flags" not in trt.calls and "clear_flags" not in trt.calls
    assert meta.read_sidecar(plan)["precision"] == "int8"
    trt = with_fake_tensorrt(flags=("TF32",))
    engine.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "f.plan", max_batch=8)
    assert trt.calls["clear_flags"] == ["TF32"]                # fp32 means fp32


def test_build_failures_name_the_node_and_write_nothing(tmp_path, with_fake_tensorrt):
    from engine.errors import UnsupportedGraphError
    src = tiny_onnx(tmp_path / "m.onnx")
    with_fake_tensorrt(parse_fails=True)
    with pytest.raises(UnsupportedGraphError, match="could not parse") as e:
        engine.build(src, tmp_path / "m.plan")
    assert "'/classif/Gemm' (Gemm, #2): unsupported attribute" in str(e.value)
    with_fake_tensorrt(build_fails=True)
    with pytest.warns(UserWarning, match="out of tactics"):
        with pytest.raises(UnsupportedGraphError, match="failed to build") as e:
            engine.build(src, tmp_path / "m.plan")
    assert "out of tactics for /classif/Gemm" in str(e.value)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in str(e.value)
    assert not list(tmp_path.glob("*.plan*"))


# --------------------------------------------------------------------------- no TensorRT
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_says_how_to_install(tmp_path, capsys):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(BackendUnavailableError) as e:
        engine.build(onnx_path, tmp_path / "m.plan")
    msg = str(e.value)
    assert "pip install --extra-index-url https://pypi.nvidia.com tensorrt" in msg
    assert "container" in msg
    assert 'engine.load("model.onnx")' in msg and "CPU" in msg
    assert not (tmp_path / "m.plan").exists()
    from engine.cli import ERROR_STATUS, main
    assert main(["build", str(onnx_path), "--out", str(tmp_path / "m.plan")]) == ERROR_STATUS
    assert "pypi.nvidia.com" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_load_plan_without_tensorrt(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not really a plan")
    with pytest.raises(BackendUnavailableError) as e:
        engine.load(plan)
    assert "pypi.nvidia.com" in str(e.value) and 'engine.load("model.onnx")' in str(e.value)
    from engine.backends.tensorrt import TensorRTRuntime, is_available
    with pytest.raises(BackendUnavailableError, match="pypi.nvidia.com"):
        TensorRTRuntime(plan)
    ok, why = is_available()
    assert not ok and "pypi.nvidia.com" in why


# --------------------------------------------------------------------------- FP16 graph
@pytest.fixture
def irv2_onnx(exported_onnx):
    """Width-0.25 75x75 IR-v2 (the study subject's topology), random init, exported once."""
    return exported_onnx(FMNIST)[0]


def _ort(model_or_path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "graph") \
        else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def test_fp16_conversion_keeps_outputs_within_fp16_tolerance(irv2_onnx):
    import onnx
    from onnx import TensorProto
    from engine.backends.tensorrt.fp16 import convert_to_fp16
    proto = onnx.load(str(irv2_onnx))
    m16, stats = convert_to_fp16(proto, keep_io_fp32=True)
    # every float weight is float16 now; I/O stay float32
    assert stats["initializers"] > 400 and stats["clipped"] == 0
    assert {i.data_type for i in m16.graph.initializer} <= {TensorProto.FLOAT16, TensorProto.INT64}
    assert [i.type.tensor_type.elem_type for i in m16.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in m16.graph.output] == [TensorProto.FLOAT]
    assert {p.key: p.value for p in m16.metadata_props}["inception.precision"] == "fp16"
    # metadata carried over (config), so the sidecar and serving still know the model
    assert engine.read_metadata(m16)["config"] == engine.get_config(FMNIST)

    x = np.random.default_rng(0).standard_normal((8, 3, 75, 75)).astype(np.float32)
    ref = _ort(irv2_onnx).run(None, {"input": x})[0]
    out = _ort(m16).run(None, {"input": x})[0]
    assert out.dtype == np.float32 and out.shape == ref.shape
    scale = np.abs(ref).max()
    err = np.abs(out - ref).max() / scale
    assert err < 1e-2, f"FP16 graph deviates by {err:.2e} of the output scale"
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999


def test_fp16_conversion_with_fp16_io(irv2_onnx):
    import onnx
    from onnx import TensorProto
    from engine.backends.tensorrt.fp16 import convert_to_fp16
    m16, _ = convert_to_fp16(onnx.load(str(irv2_onnx)), keep_io_fp32=False)
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert m16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert not any(n.op_type == "Cast" for n in m16.graph.node)
    x = np.random.default_rng(1).standard_normal((2, 3, 75, 75)).astype(np.float32)
    ref = _ort(irv2_onnx).run(None, {"input": x})[0]
    out = _ort(m16).run(None, {"input": x.astype(np.float16)})[0]
    assert out.dtype == np.float16
    assert np.abs(out.astype(np.float32) - ref).max() / np.abs(ref).max() < 1e-2


def test_fp16_conversion_file_and_refusals(tmp_path):
    import onnx
    from engine.backends.tensorrt.fp16 import convert_file, convert_to_fp16
    from engine.errors import UnsupportedGraphError
    src = tiny_onnx(tmp_path / "m.onnx")
    # a weight beyond the float16 range is clipped and counted, not turned into inf
    proto = onnx.load(str(src))
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0]).copy()
    w[0, 0] = 1e6
    proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    m16, stats = convert_to_fp16(proto)
    assert stats["clipped"] == 1
    assert np.isfinite(onnx.numpy_helper.to_array(m16.graph.initializer[0])).all()
    stats = convert_file(src, tmp_path / "m.fp16.onnx")
    assert stats["initializers"] == 2 and (tmp_path / "m.fp16.onnx").exists()
    assert temp_files(tmp_path) == []
    with pytest.raises(UnsupportedGraphError, match="INT8 \\(Q/DQ\\) graph"):
        convert_to_fp16(onnx.load(str(tiny_onnx(tmp_path / "q.onnx", qdq=True))))
    # a QOperator-format graph is quantized too: refused, not half-converted
    qop = onnx.load(str(src))
    qop.graph.node[2].op_type = "QLinearMatMul"
    with pytest.raises(UnsupportedGraphError, match="is a QLinearMatMul"):
        convert_to_fp16(qop)


# --------------------------------------------------------------------------- bench
def test_bench_reports_trtexec_statistics_on_cpu(tmp_path, capsys):
    """``inception-engine bench`` is generic over engine.load: the same table for .onnx on CPU
    as for a .plan on a GPU (min/mean/median/p90/p95/p99/max, throughput)."""
    from engine.cli import main
    src = tiny_onnx(tmp_path / "m.onnx")
    assert main(["bench", str(src), "--batch", "2", "--iters", "3", "--warmup", "1",
                 "--duration", "0.05", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    for k in ("min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms",
              "throughput_ips"):
        assert res[k] > 0, k
    assert res["n"] >= 3 and res["min_ms"] <= res["p50_ms"] <= res["max_ms"]
