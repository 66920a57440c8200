"""Every bad value a user can give, through the API and the command line, in one table.

Each row makes one bad call and says what the error must be: its type (for the command line:
exit status 2 and a single line on stderr), a piece of text that names the argument or file
at fault, and a pattern for what to do about it. The files the rows need (a tiny ONNX graph,
a checkpoint holding NaN, checkpoints that are not state dicts, arrays of Python objects, a
damaged plan sidecar, two invalid graphs) are made once.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, NamedTuple, Union

import numpy as np
import pytest
import torch

import calibration
from calibration.data import batches
import engine
from calibration import CacheError, CalibrationDataError
from engine import cli
from engine.backends import UnknownBackendError
from engine.backends.tensorrt import meta
from engine.commands.bench import time_runtime
from engine.errors import (ArtifactError, InputError, InvalidGraphError, UnknownModelError,
                           WeightsError)
from engine import study
from engine.evaldata import load_eval_data
from engine.fileio import load_npy
from engine.preprocess import decode_image
from helpers import FMNIST, fake_sidecar, tiny_onnx

CLI = "cli"


class Case(NamedTuple):
    id: str
    call: Callable       # API: call(ctx) raises; CLI: call(ctx) -> argv
    error: Union[type, str]
    names: str           # text the message must hold, formatted with the ctx's fields
    remedy: str          # regex for what to do


def _conv_graph(path, mutate):
    """input -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, with ``mutate(nodes)``
    applied to the nodes before the model is made (skipping the ONNX checker on purpose)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "G"),
             numpy_helper.from_array(np.zeros(10, np.float32), "B")]
    nodes = [helper.make_node("Conv", ["input", "W"], ["c"], name="/conv/Conv", strides=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/Pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="/Flatten"),
             helper.make_node("Gemm", ["f", "G", "B"], ["logits"], name="/classif/Gemm",
                              transB=1)]
    mutate(nodes)
    g = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 75, 75])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _relu_as_conv(nodes):
    nodes[1].op_type = "Conv"          # a Conv with no weight input


def _negative_stride(nodes):
    from onnx import helper
    del nodes[0].attribute[:]
    nodes[0].attribute.extend([helper.make_attribute("strides", [-1, -1])])


def _damaged_sidecar(tmp, onnx_path, name, section, field, value):
    plan = tmp / f"{name}.plan"
    plan.write_bytes(b"plan bytes")
    side = fake_sidecar(plan, onnx_path)
    (side[section] if section else side)[field] = value
    meta.sidecar_path(plan).write_text(json.dumps(side))
    return plan


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    c = SimpleNamespace(tmp=tmp)
    c.onnx = tiny_onnx(tmp / "tiny.onnx")
    c.model = engine.create_model(FMNIST, seed=0)
    c.shape = c.model.config.input_size
    c.val100 = tmp / "val100.npz"        # a labelled split too small for a 0.1 pt budget
    np.savez(c.val100, images=np.zeros((100, *c.shape), np.float32),
             labels=np.zeros(100, np.int64))
    sd = {k: v.clone() for k, v in c.model.state_dict().items()}
    c.nan_tensor = "conv2d_2a.conv.weight"
    sd[c.nan_tensor].view(-1)[3] = float("nan")
    c.nan_weights = tmp / "nan.pth"
    torch.save(sd, c.nan_weights)
    _checkpoints_that_are_not_state_dicts(c, tmp)
    _object_arrays(c, tmp)
    c.garbage = tmp / "garbage.safetensors"
    c.garbage.write_bytes(b"not safetensors")
    c.file = tmp / "a-file"
    c.file.write_text("x")
    c.dir = tmp / "a-dir"
    c.dir.mkdir()
    c.image = tmp / "img.png"
    from PIL import Image
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(c.image)
    c.relu_as_conv = _conv_graph(tmp / "relu_as_conv.onnx", _relu_as_conv)
    c.negative_stride = _conv_graph(tmp / "negative_stride.onnx", _negative_stride)
    for name, section, field, value in [
            ("max_batch", "build_options", "max_batch", "thirty-two"),
            ("version", "", "format_version", "one"),
            ("cc", "gpu", "compute_capability", "eight"),
            ("bytes", "plan", "bytes", "12")]:
        setattr(c, f"plan_{name}", _damaged_sidecar(tmp, c.onnx, name, section, field, value))
    c.runtimes = {}
    yield c
    for rt in c.runtimes.values():
        rt.close()


def _checkpoints_that_are_not_state_dicts(c, tmp):
    """A list, a whole pickled model, a state dict nested under an unknown key, a bare tensor,
    a safetensors file of another network and a state dict whose keys carry a prefix."""
    from safetensors.torch import save_file
    sd = c.model.state_dict()
    for name, obj in [("list", [1, 2, 3]), ("module", c.model),
                      ("nested", {"epoch": 3, "net": sd}), ("tensor", torch.zeros(3)),
                      ("prefixed", {f"backbone.{k}": v for k, v in sd.items()})]:
        setattr(c, f"ckpt_{name}", tmp / f"{name}.pth")
        torch.save(obj, getattr(c, f"ckpt_{name}"))
    c.ckpt_foreign = tmp / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(c.ckpt_foreign))


def _object_arrays(c, tmp):
    """Calibration images saved as arrays of Python objects (one per image): loading needs
    allow_pickle. And a float batch with a NaN in image 4."""
    objects = np.empty(4, dtype=object)
    for i in range(4):
        objects[i] = np.zeros(c.shape, np.float32)
    c.objects = objects
    c.obj_npy = tmp / "objects.npy"
    np.save(c.obj_npy, objects, allow_pickle=True)
    c.obj_npz = tmp / "objects.npz"
    np.savez(c.obj_npz, images=objects, labels=np.zeros(4, np.int64))
    c.nan_images = np.zeros((6, *c.shape), np.float32)
    c.nan_images[4, 1, 2, 3] = np.nan


def _verify(ctx, inputs, **kw):
    return engine.verify(_runtime(ctx, "onnxruntime"), lambda x: x, inputs, **kw)


def _runtime(ctx, backend):
    if backend not in ctx.runtimes:
        ctx.runtimes[backend] = engine.load(ctx.onnx, backend=backend)
    return ctx.runtimes[backend]


def _batch(ctx, n, fill=0.0):
    return np.full((n, *ctx.shape), fill, np.float32)


def _quantize(ctx, **kw):
    return calibration.quantize(ctx.onnx, ctx.tmp / "q.onnx", data=_batch(ctx, 4), **kw)


def _raise_from_generator(gen):
    next(iter(gen))


API_CASES = [
    # runtime contract, on each CPU engine
    Case("openvino batch 0", lambda c: _runtime(c, "openvino")(_batch(c, 0)),
         InputError, "batch of 0", r"pass at\s+least one image"),
    Case("onnxruntime batch 0", lambda c: _runtime(c, "onnxruntime")(_batch(c, 0)),
         InputError, "batch of 0", r"pass at\s+least one image"),
    Case("openvino NaN input", lambda c: _runtime(c, "openvino")(_batch(c, 1, np.nan)),
         InputError, "NaN", r"fix"),
    Case("onnxruntime rank 3", lambda c: _runtime(c, "onnxruntime")(_batch(c, 1)[0]),
         InputError, "shape", r"Add a batch dimension"),
    # parity
    Case("verify zero images", lambda c: _verify(c, _batch(c, 0)),
         InputError, "no images (shape (0, 3, 75, 75))", r"pass at least one"),
    Case("verify inputs=0", lambda c: _verify(c, 0),
         InputError, "inputs=0", r"pass inputs=n with n >= 1"),
    Case("verify batch_size 0", lambda c: _verify(c, _batch(c, 2), batch_size=0),
         InputError, "batch_size", r"must be an integer >= 1 .*or None to run all 2 images"),
    # loading
    Case("onnxruntime optimization max",
         lambda c: engine.load(c.onnx, backend="onnxruntime", optimization="max"),
         InputError, "optimization", r"must be one of .*all"),
    Case("load threads 0", lambda c: engine.load(c.onnx, backend="onnxruntime", threads=0),
         InputError, "threads", r"must be an integer >= 1"),
    Case("load missing file", lambda c: engine.load(c.tmp / "none.onnx"),
         ArtifactError, "none.onnx", r"export|check the path|give"),
    Case("load unknown backend", lambda c: engine.load(c.onnx, backend="nope"),
         UnknownBackendError, "nope", r"valid backends are: .*openvino"),
    Case("graph: Relu retyped as Conv", lambda c: engine.load(c.relu_as_conv),
         InvalidGraphError, "/relu/Relu", r"export|fix|re-?save|regenerate"),
    Case("graph: conv stride -1", lambda c: engine.load(c.negative_stride),
         InvalidGraphError, "/conv/Conv", r"export|fix|re-?save|regenerate"),
    # weights
    Case("NaN weights", lambda c: engine.create_model(FMNIST, weights=c.nan_weights),
         WeightsError, "{nan_tensor}", r"allow_non_finite=True"),
    Case("garbage safetensors", lambda c: engine.create_model(FMNIST, weights=c.garbage),
         WeightsError, "garbage.safetensors", r"re-save it with safetensors"),
    Case("missing checkpoint", lambda c: engine.create_model(FMNIST, weights=c.tmp / "no.pth"),
         WeightsError, "no.pth", r"pass a \.pth"),
    Case("checkpoint: a list", lambda c: engine.create_model(FMNIST, weights=c.ckpt_list),
         WeightsError, "holds a list of 3 items, not a state dict",
         r"dict \{parameter name: tensor\}: save one .*torch\.save\(model\.state_dict\(\), "
         r"path\)"),
    Case("checkpoint: a whole nn.Module",
         lambda c: engine.create_model(FMNIST, weights=c.ckpt_module),
         WeightsError, "holds a pickled engine.models.inception_resnet_v2.",
         r"re-save its weights with torch\.save\(torch\.load\(path, "
         r"weights_only=False\)\.state_dict\(\), 'w\.pth'\)"),
    Case("checkpoint: state dict under an unknown key",
         lambda c: engine.create_model(FMNIST, weights=c.ckpt_nested),
         WeightsError, "'epoch' (int), 'net' (dict of",
         r"under 'net': re-save that alone with torch\.save\(torch\.load\(path\)\['net'\]"),
    Case("checkpoint: a tensor", lambda c: engine.create_model(FMNIST, weights=c.ckpt_tensor),
         WeightsError, "holds a tensor (3,), not a state dict",
         r"torch\.save\(model\.state_dict\(\), path\)"),
    Case("checkpoint: keys with a prefix",
         lambda c: engine.create_model(FMNIST, weights=c.ckpt_prefixed),
         WeightsError, "prefix 'backbone.'", r"strip it and re-save, torch\.save\("),
    Case("checkpoint: another network's safetensors",
         lambda c: engine.create_model(FMNIST, weights=c.ckpt_foreign),
         WeightsError, "unexpected keys: encoder.weight",
         r"not a checkpoint of this architecture; pass one saved from .*state_dict\(\)"),
    Case("width 0", lambda c: engine.create_model(FMNIST, width=0),
         InputError, "width", r"must be in \(0, 4\]"),
    Case("num_classes -1", lambda c: engine.create_model(FMNIST, num_classes=-1),
         InputError, "num_classes", r"must be an integer >= 0"),
    Case("seed -1", lambda c: engine.create_model(FMNIST, seed=-1),
         InputError, "seed", r"must be an integer >= 0"),
    Case("unknown model", lambda c: engine.create_model("nope"),
         UnknownModelError, "nope", r"valid names are"),
    # plan sidecar fields
    Case("sidecar max_batch not a number", lambda c: meta.read_sidecar(c.plan_max_batch),
         ArtifactError, "build_options.max_batch", r"rebuild the plan"),
    Case("sidecar format_version not a number", lambda c: meta.read_sidecar(c.plan_version),
         ArtifactError, "format_version", r"rebuild the plan"),
    Case("sidecar compute capability", lambda c: meta.read_sidecar(c.plan_cc),
         ArtifactError, "gpu.compute_capability", r"rebuild the plan"),
    Case("sidecar plan bytes a string", lambda c: meta.read_sidecar(c.plan_bytes),
         ArtifactError, "plan.bytes", r"rebuild the plan"),
    # files written
    Case("export over a directory", lambda c: engine.export_onnx(c.model, c.dir),
         ArtifactError, "{dir}", r"pass a file path"),
    Case("export under a file", lambda c: engine.export_onnx(c.model, c.file / "x.onnx"),
         ArtifactError, "{file}", r"choose an output path in a directory"),
    Case("cache over a directory", lambda c: calibration.write_cache(c.dir, {"input": 0.1}),
         ArtifactError, "{dir}", r"pass a file path"),
    Case("read cache from a directory", lambda c: calibration.read_cache(c.dir),
         CacheError, "{dir}", r"pass the cache file"),
    Case("read missing cache", lambda c: calibration.read_cache(c.tmp / "none.cache"),
         CacheError, "none.cache", r"write one with"),
    # calibration numbers
    Case("quantize batch_size 0", lambda c: _quantize(c, batch_size=0),
         InputError, "batch_size", r"must be an integer >= 1"),
    Case("quantize percentile 0", lambda c: _quantize(c, method="percentile", percentile=0),
         InputError, "percentile", r"must be a number in \(0, 100\]"),
    Case("quantize percentile 101", lambda c: _quantize(c, method="percentile", percentile=101),
         InputError, "percentile", r"must be a number in \(0, 100\]"),
    Case("quantize num_images 0", lambda c: _quantize(c, num_images=0),
         InputError, "num_images", r"must be an integer >= 1.*pass num_images=N .*leave it None"),
    Case("collect_statistics num_images 0",
         lambda c: calibration.collect_statistics(c.onnx, _batch(c, 4), num_images=0),
         InputError, "num_images", r"at least one image: pass num_images=N .*leave it None"),
    Case("calibration batches limit 0",
         lambda c: _raise_from_generator(batches(_batch(c, 2), limit=0)),
         InputError, "limit", r"pass limit=N"),
    # calibration data
    Case("collect_statistics NaN image",
         lambda c: calibration.collect_statistics(c.onnx, c.nan_images, batch_size=2),
         CalibrationDataError, "batch 2 (images 4-5) holds 1 NaN and 0 Inf values, in image 4",
         r"check the preprocessing .*or drop the image"),
    Case("quantize NaN image",
         lambda c: calibration.quantize(c.onnx, c.tmp / "q.onnx", data=c.nan_images,
                                        batch_size=4),
         CalibrationDataError, "batch 1 (images 4-5)", r"or drop the image"),
    Case("calibration .npy of Python objects",
         lambda c: calibration.collect_statistics(c.onnx, c.obj_npy),
         CalibrationDataError, "objects.npy holds Python objects (dtype object",
         r"numeric array .*np\.stack\(list\(arr\)\)\.astype\(np\.float32\).*np\.save\("),
    Case("quantize from an .npz of Python objects",
         lambda c: calibration.quantize(c.onnx, c.tmp / "q.onnx", data=c.obj_npz),
         CalibrationDataError, "objects.npz (array 'images') holds Python objects",
         r"np\.stack\(list\(arr\)\).*np\.savez\(path, images=x"),
    Case("load_npy of Python objects", lambda c: load_npy(c.obj_npy),
         InputError, "objects.npy", r"allow_pickle=True.*Save a numeric array"),
    Case("calibration array of Python objects",
         lambda c: calibration.collect_statistics(c.onnx, c.objects),
         CalibrationDataError, "dtype object", r"np\.stack\(list\(arr\)\)"),
    Case("quantize threads 0", lambda c: _quantize(c, threads=0),
         InputError, "threads", r"must be an integer >= 1"),
    Case("quantize auto_exclude -1", lambda c: _quantize(c, auto_exclude=-1),
         InputError, "auto_exclude", r"must be an integer >= 0"),
    Case("quantize sensitivity_images 0", lambda c: _quantize(c, sensitivity_images=0),
         InputError, "sensitivity_images", r"must be an integer >= 1"),
    Case("calibration batches batch_size 0",
         lambda c: _raise_from_generator(batches(_batch(c, 2), batch_size=0)),
         InputError, "batch_size", r"must be an integer >= 1"),
    # timing and the study
    Case("time_runtime batch 0", lambda c: time_runtime(_runtime(c, "onnxruntime"), 0),
         InputError, "batch", r"must be an integer >= 1"),
    Case("time_runtime iters 0", lambda c: time_runtime(_runtime(c, "onnxruntime"), 1, iters=0),
         InputError, "iters", r"must be an integer >= 1"),
    Case("time_runtime duration -1",
         lambda c: time_runtime(_runtime(c, "onnxruntime"), 1, duration=-1),
         InputError, "duration", r"must be a finite number of seconds >= 0"),
    Case("time_runtime duration inf",
         lambda c: time_runtime(_runtime(c, "onnxruntime"), 1, duration=float("inf")),
         InputError, "duration", r"must be a finite number of seconds >= 0"),
    Case("quantize cache_version 8.6.1", lambda c: _quantize(c, cache_version="8.6.1"),
         InputError, "'8.6.1'", r"must be digits \(e\.g\. 8601 for 8\.6\.1\)"),
    Case("decode_image max_pixels nan",
         lambda c: decode_image(b"\x89PNG", max_pixels=float("nan")),
         InputError, "max_pixels", r"must be an integer >= 1"),
    Case("eval data missing", lambda c: load_eval_data(c.tmp / "nope.npz", None),
         InputError, "nope.npz: no such file or folder", r"give a \.npz file or a folder"),
    Case("eval folder without a config",
         lambda c: load_eval_data(c.tmp, None),
         InputError, "the model carries no config", r"inception-engine export"),
    Case("study predict batch 0", lambda c: study.predict(lambda x: x, _batch(c, 2), batch=0),
         InputError, "batch", r"must be an integer >= 1"),
    Case("study latency iters 0", lambda c: study.latency_ms(lambda x: x, _batch(c, 1), iters=0),
         InputError, "iters", r"must be an integer >= 1"),
    Case("study threads 0", lambda c: study.run_study(threads=0, out=c.tmp / "study"),
         InputError, "threads", r"must be an integer >= 1"),
    Case("study num_calib 0", lambda c: study.run_study(num_calib=0, out=c.tmp / "study"),
         InputError, "num_calib", r"must be an integer >= 1"),
    Case("study unknown method", lambda c: study.run_study(methods=("mse", "kl"),
                                                           out=c.tmp / "study"),
         InputError, "unknown 'kl'", r"choose one or more of minmax, percentile"),
    Case("study no method", lambda c: study.run_study(methods=(), out=c.tmp / "study"),
         InputError, "methods: none given", r"choose one or more of"),
    Case("study user model without --calib",
         lambda c: study.run_study(model="inception_resnet_v2", weights=None,
                                   data=c.tmp / "test.npz", out=c.tmp / "study"),
         InputError, "inception_resnet_v2 was not trained on the shipped", r"--calib with images"),
]

_HELP = r"see `inception-engine \w[\w-]* --help`"
CLI_CASES = [
    Case("cli bench --iters 0", lambda c: ["bench", str(c.onnx), "--iters", "0"],
         CLI, "--iters", r"give a value >= 1"),
    Case("cli bench --batch 0", lambda c: ["bench", str(c.onnx), "--batch", "0"],
         CLI, "--batch", r"give a value >= 1"),
    Case("cli bench --threads -1", lambda c: ["bench", str(c.onnx), "--threads", "-1"],
         CLI, "--threads", r"give a value >= 1"),
    Case("cli bench --duration x", lambda c: ["bench", str(c.onnx), "--duration", "x"],
         CLI, "--duration", r"give a number"),
    Case("cli quantize --batch-size 0",
         lambda c: ["quantize", str(c.onnx), "o.onnx", "--batch-size", "0"],
         CLI, "--batch-size", r"give a value >= 1"),
    Case("cli quantize --percentile 0",
         lambda c: ["quantize", str(c.onnx), "o.onnx", "--percentile", "0"],
         CLI, "--percentile", r"in \(0, 100\].*99\.99 is the usual choice"),
    Case("cli quantize without data", lambda c: ["quantize", str(c.onnx), str(c.tmp / "o.onnx")],
         CLI, "--calib", r"give calibration images"),
    Case("cli quantize --confidence 1.5",
         lambda c: ["quantize", str(c.onnx), "o.onnx", "--confidence", "1.5"],
         CLI, "--confidence", r"give e\.g\. 0\.95"),
    Case("cli quantize --max-drop 0",
         lambda c: ["quantize", str(c.onnx), "o.onnx", "--max-drop", "0"],
         CLI, "--max-drop", r"give a value in \(0, 100\]"),
    Case("cli quantize --max-drop on a split too small",
         lambda c: ["quantize", str(c.onnx), str(c.tmp / "o.onnx"), "--calib", str(c.val100),
                    "--max-drop", "0.1", "--val", str(c.val100)],
         CLI, "100 validation images", r"at least 2995 validation images.*larger split"),
    Case("cli verify --batch 0", lambda c: ["verify", str(c.onnx), "--batch", "0"],
         CLI, "--batch", r"give a value >= 1"),
    Case("cli run --topk -1", lambda c: ["run", "--model", FMNIST, "--topk", "-1", str(c.image)],
         CLI, "--topk", r"give a value >= 1"),
    Case("cli run unknown model", lambda c: ["run", "--model", "nope", str(c.image)],
         CLI, "nope", r"valid names are"),
    Case("cli run --weights of a whole model",
         lambda c: ["run", "--model", FMNIST, "--weights", str(c.ckpt_module), str(c.image)],
         CLI, "module.pth", r"\.state_dict\(\), 'w\.pth'\) and pass 'w\.pth'"),
    Case("cli run NaN weights",
         lambda c: ["run", "--model", FMNIST, "--weights", str(c.nan_weights), str(c.image)],
         CLI, "{nan_tensor}", r"--allow-non-finite-weights"),
    Case("cli export --out FILE/x.onnx",
         lambda c: ["export", "--model", FMNIST, "--out", str(c.file / "x.onnx")],
         CLI, "{file}", r"choose an output path in a directory"),
    Case("cli export --width 5", lambda c: ["export", "--model", FMNIST, "--width", "5"],
         CLI, "--width", r"give a value in \(0, 4\]"),
    Case("cli export --opset 11", lambda c: ["export", "--model", FMNIST, "--opset", "11"],
         CLI, "--opset", r"give a value >= 17"),
    Case("cli build --min-batch 0", lambda c: ["build", str(c.onnx), "--min-batch", "0"],
         CLI, "--min-batch", r"give a value >= 1"),
    Case("cli serve-export --max-batch 0",
         lambda c: ["serve-export", str(c.onnx), "--repo", str(c.dir), "--max-batch", "0"],
         CLI, "--max-batch", r"give a value >= 1"),
    Case("cli study --threads 0", lambda c: ["study", "--threads", "0"],
         CLI, "--threads", r"give a value >= 1"),
    Case("cli missing required option", lambda c: ["export"],
         CLI, "--model", _HELP),
]


def _cli_error(argv, capsys) -> str:
    """Run the command in-process; return its stderr after checking status 2 and one line."""
    try:
        status = cli.main(argv)
    except SystemExit as e:           # argparse's usage errors exit
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.endswith("\n") and "\n" not in err.rstrip("\n"), err
    assert err.startswith("inception-engine") and "Traceback" not in err
    return err


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in API_CASES + CLI_CASES])
def test_bad_input_gives_a_clear_error(case, ctx, capsys):
    names = case.names.format(**vars(ctx))
    if case.error == CLI:
        message = _cli_error(case.call(ctx), capsys)
    else:
        with pytest.raises(case.error) as e:
            case.call(ctx)
        message = str(e.value)
    assert names in message, f"{names!r} not named in: {message}"
    assert re.search(case.remedy, message), f"no remedy /{case.remedy}/ in: {message}"

