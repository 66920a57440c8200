"""Triton Inference Server model repositories: write one, and run the bundled server on it.

Layout written (every file atomically)::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/labels.txt                 (classification models with a label set)
    <repo>/<name>/<version>/model.plan       (+ model.plan.json, the plan's sidecar)
    <repo>/<name>/<version>/model.onnx
    <repo>/<name>/<version>/model.py         (target ``python`` only)

Inputs: ``tensor`` (the default: the model's own float NCHW input, preprocessed by the client)
or ``encoded`` (target ``python`` only: one JPEG or PNG file's bytes per request, as a ragged
UINT8 ``image`` tensor of shape [1, N]; ``model.py`` decodes and preprocesses it with
``engine.preprocess``, as ``inception-engine run`` does for a file, within stated limits on
bytes and pixels). An encoded model warms up on a grey PNG written to ``<name>/warmup/``.

Targets (the server backend that runs the model):

- ``python``: the server's Python backend runs ``model.py``, which opens the model file with
  ``engine.load`` (OpenVINO on a CPU). It runs wherever this package is installed, so it is
  the default for an ``.onnx`` on a machine without a GPU.
- ``tensorrt_plan``: a ``.plan`` on the server's TensorRT backend (the default for a plan).
- ``onnxruntime_onnx`` and ``openvino``: an ``.onnx`` on those server backends, for servers
  that ship them (the NGC container does; the ``nvidia-pytriton`` wheel does not).

The I/O names, dims and types come from the plan's sidecar or from the ONNX graph, so
exporting needs neither TensorRT nor a GPU. The batch axis is left out of ``dims``
(``max_batch_size`` > 0) and requests are batched by the server's dynamic batcher.

:class:`Server` starts the Triton Inference Server that the ``nvidia-pytriton`` wheel bundles,
bound to 127.0.0.1, on such a repository.

Note: the Triton Inference Server must run the same TensorRT version (and GPU architecture)
that built a plan; the sidecar beside it says which (``tensorrt.version``, ``gpu``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import ArtifactError, BackendUnavailableError, EngineError, InputError
from .runtime import count_option
from .tritonguard import Guard, end_group, port_holder

# numpy dtype name -> the server's data type
SERVER_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16",
                "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
# target -> (the config.pbtxt field naming it, that field's value, model files it serves)
TARGETS = {"python": ("backend", "python", (".onnx", ".plan")),
           "tensorrt_plan": ("platform", "tensorrt_plan", (".plan",)),
           "onnxruntime_onnx": ("platform", "onnxruntime_onnx", (".onnx",)),
           "openvino": ("backend", "openvino", (".onnx",))}
LABELS_FILE = "labels.txt"
INPUT_KINDS = ("tensor", "encoded")
# the input of an --input encoded model: one image's encoded bytes per request (ragged: the
# requests of one dynamic batch have different lengths)
ENCODED_INPUT = {"name": "image", "dtype": "uint8", "shape": [None, None], "ragged": True}
WARMUP_IMAGE = "image.png"      # in <name>/warmup/, the server's warm-up data folder
# the Python-backend model, shipped as package data and copied into each version directory
MODEL_PY = Path(__file__).with_name("data") / "tritonserver_model.py"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _model_info(model_file: Path, onnx: Optional[Path]):
    """(io, config, sidecar, plan max batch) of a plan or an ONNX file."""
    from .backends.tensorrt import meta
    from .onnxmeta import load_onnx, onnx_io, read_metadata
    if model_file.suffix == ".plan":
        meta.check_plan_file(model_file)
        side = meta.read_sidecar(model_file, required=onnx is None)
        if side is not None:
            cfg = None
            if side.get("model_config"):
                from .models.registry import ModelConfig
                cfg = ModelConfig.from_dict(side["model_config"])
            return side["io"], cfg, side, side["build_options"].get("max_batch")
        proto = load_onnx(onnx, load_weights=False)
        return onnx_io(proto), read_metadata(proto)["config"], None, None
    proto = load_onnx(model_file, load_weights=False)
    return onnx_io(proto), read_metadata(proto)["config"], None, None


def _labels(config) -> Optional[List[str]]:
    """Class names matching the classifier's outputs, or None (embeddings, unknown sets)."""
    if config is None or config.output != "logits" or not config.labels:
        return None
    from .preprocess import labels_for
    names = labels_for(config)
    if names is None and config.label_offset:
        base = labels_for(config.with_(num_classes=config.num_classes - config.label_offset))
        if base is not None:
            names = ["background"] * config.label_offset + list(base)
    return names


def _dims(shape, what: str) -> List[int]:
    if not shape or shape[0] not in (None, -1):
        raise ArtifactError(f"{what} has shape {shape}: the server's batching needs a dynamic "
                            "batch axis first; export with a dynamic batch (the default)")
    return [-1 if d is None else int(d) for d in shape[1:]]


def _tensor_block(t: dict, label_file: Optional[str] = None) -> str:
    dtype = SERVER_DTYPES.get(t["dtype"])
    if dtype is None:
        raise ArtifactError(f"tensor {t['name']!r} has dtype {t['dtype']}, which the Triton "
                            "Inference Server has no data type for")
    lines = ["  {", f"    name: {json.dumps(t['name'])}", f"    data_type: {dtype}",
             f"    dims: [ {', '.join(str(d) for d in _dims(t['shape'], t['name']))} ]"]
    if label_file:
        lines.append(f"    label_filename: {json.dumps(label_file)}")
    if t.get("ragged"):
        lines.append("    allow_ragged_batch: true")
    lines.append("  }")
    return "\n".join(lines)


def _parameters_block(parameters: Dict[str, str]) -> List[str]:
    """``parameters`` entries (the server hands them to the backend as strings)."""
    return [f"parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}"
            for k, v in parameters.items()]


def _warmup_block(io: dict, batch_sizes: Sequence[int],
                  warmup_file: Optional[tuple] = None) -> List[str]:
    """``model_warmup``: one all-zeros request per batch size, run before the model is READY,
    so the first client does not pay for the engine's first-call setup. ``warmup_file``
    (``(name, size in bytes)`` in ``<name>/warmup/``) is the one request of an encoded model
    instead."""
    t = io["inputs"][0]
    value = f"data_type: {SERVER_DTYPES[t['dtype']]} dims: [ " + (
        f"{warmup_file[1]} ] input_data_file: {json.dumps(warmup_file[0])}" if warmup_file else
        ", ".join(str(d) for d in _dims(t["shape"], t["name"])) + " ] zero_data: true")
    sizes = [1] if warmup_file and batch_sizes else batch_sizes
    samples = [f"  {{ name: \"warmup_{b}\" batch_size: {int(b)} inputs {{ key: "
               f"{json.dumps(t['name'])} value: {{ {value} }} }} }}" for b in sizes]
    return ["model_warmup [", ",\n".join(samples), "]"] if samples else []


def make_config(name: str, target: str, max_batch: int, io: dict,
                preferred_batch_sizes: Sequence[int], max_queue_delay_us: int,
                instances: int, kind: str, label_file: Optional[str] = None,
                default_model_filename: Optional[str] = None,
                parameters: Optional[Dict[str, str]] = None,
                warmup_batch_sizes: Sequence[int] = (), warmup_file: Optional[tuple] = None,
                max_queue_size: int = 0) -> str:
    """The text of ``config.pbtxt`` (the server's ModelConfig in protobuf text format)."""
    field, value, _ = TARGETS[target]
    ins = ",\n".join(_tensor_block(t) for t in io["inputs"])
    outs = ",\n".join(_tensor_block(t, label_file if i == 0 else None)
                      for i, t in enumerate(io["outputs"]))
    pref = ", ".join(str(b) for b in preferred_batch_sizes)
    text = [f"name: {json.dumps(name)}",
            f"{field}: {json.dumps(value)}",
            f"max_batch_size: {int(max_batch)}"]
    if default_model_filename:
        text.append(f"default_model_filename: {json.dumps(default_model_filename)}")
    text += [f"input [\n{ins}\n]",
             f"output [\n{outs}\n]",
             "dynamic_batching {",
             f"  preferred_batch_size: [ {pref} ]" if pref else "",
             f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
             # past max_queue_size queued requests the server rejects at once (HTTP 503,
             # gRPC UNAVAILABLE) instead of queueing without bound
             f"  default_queue_policy {{ max_queue_size: {int(max_queue_size)} }}"
             if max_queue_size else "",
             "}",
             "instance_group [",
             "  {",
             f"    count: {int(instances)}",
             f"    kind: {kind}",
             "  }",
             "]"]
    text += _parameters_block(parameters or {})
    text += _warmup_block(io, warmup_batch_sizes, warmup_file)
    return "\n".join(line for line in text if line) + "\n"


def preprocess_parameters(config) -> Dict[str, str]:
    """The preprocessing a client must apply, from the model config, as ``parameters``
    (JSON values): what ``engine.preprocess`` does for this model."""
    if config is None:
        return {}
    return {f"preprocess.{k}": json.dumps(getattr(config, k))
            for k in ("input_size", "mean", "std", "crop_pct", "interpolation")}


def default_target(model_file) -> str:
    """``tensorrt_plan`` for a plan; for an ONNX file ``python`` (this package's runtime in the
    server) on a machine without a GPU, else the server's ``onnxruntime_onnx``."""
    if Path(model_file).suffix == ".plan":
        return "tensorrt_plan"
    from kernels.env import cuda_usable
    return "onnxruntime_onnx" if cuda_usable() else "python"


def default_preferred(max_batch: int, opt_batch: Optional[int] = None) -> List[int]:
    """Preferred dynamic-batch sizes: the plan's optimum batch (or 8) and the maximum."""
    opt = opt_batch or 8
    return sorted({b for b in (opt, max_batch) if 1 <= b <= max_batch})


def export_triton(model_file, repo, name: Optional[str] = None, max_batch: Optional[int] = None,
                  version: int = 1, instances: int = 1,
                  preferred_batch_sizes: Optional[Sequence[int]] = None,
                  max_queue_delay_us: int = 100, kind: Optional[str] = None,
                  onnx=None, target: Optional[str] = None, engine: Optional[str] = None,
                  threads: Optional[int] = None, warmup: bool = True,
                  input_kind: str = "tensor", max_image_bytes: Optional[int] = None,
                  max_image_pixels: Optional[int] = None, max_queue_size: int = 0) -> Path:
    """Write a Triton Inference Server model repository entry for ``model_file`` (``.plan``
    or ``.onnx``).

    name: model name in the repository (default: the model file's stem).
    max_batch: the server's ``max_batch_size`` (default: the plan's profile maximum, or 32
        for ONNX); for a plan it cannot exceed the profile's maximum.
    kind: instance kind, ``KIND_GPU``/``KIND_CPU``/``KIND_AUTO`` (default: GPU for a plan,
        CPU for ``python``, AUTO for the server's ONNX backends).
    onnx: for a plan without a sidecar, the ONNX it was built from (read for the I/O).
    target: one of :data:`TARGETS` (default: :func:`default_target`).
    engine, threads: for ``python``, the engine ``engine.load`` uses in the server (default:
        its own pick) and its CPU threads per instance (default: the engine's).
    warmup: send all-zeros requests (batch 1 and the largest preferred size) before the model
        is READY.
    input_kind: ``tensor`` (the model's input) or ``encoded`` (JPEG/PNG bytes; the target
        defaults to ``python``, the only one that takes it); max_image_bytes and max_image_pixels cap an encoded image (default
        ``engine.preprocess.MAX_IMAGE_BYTES`` / ``MAX_IMAGE_PIXELS``).
    max_queue_size: requests the dynamic batcher queues before it rejects new ones at once
        (0: no limit).
    Returns the model directory ``<repo>/<name>``.
    """
    model_file = Path(model_file)
    # images are decoded by this package inside the server: an encoded input picks python
    target, filename = _target(model_file, target or ("python" if input_kind == "encoded"
                                                      else None))
    name = model_name(name, model_file)
    for what, value in (("version", version), ("instances", instances)):
        if int(value) < 1:
            raise InputError(f"{what} must be >= 1, got {value}")
    threads = count_option("threads", threads)
    if target != "python" and (engine is not None or threads is not None):
        raise InputError(f"engine and threads choose this package's runtime inside the server; "
                         f"they apply to --target python only, not {target}")
    if int(max_queue_size) < 0:
        raise InputError(f"max_queue_size must be >= 0 (0: no limit), got {max_queue_size}")
    io, cfg, side, plan_max = _model_info(model_file, Path(onnx) if onnx else None)
    build = side["build_options"] if side else {}
    max_batch = _max_batch(max_batch, plan_max, build.get("min_batch"))
    if preferred_batch_sizes is None:
        preferred_batch_sizes = default_preferred(max_batch, build.get("opt_batch"))
    preferred_batch_sizes = _preferred(preferred_batch_sizes, max_batch)
    kind = _instance_kind(kind, target)
    labels = _checked_labels(cfg, io)
    parameters = preprocess_parameters(cfg)
    if target == "python":
        parameters.update(model_file=filename, engine=engine or "", threads=str(threads or ""))
    warm = sorted({1, max(preferred_batch_sizes, default=1)}) if warmup else ()
    warm_image = None
    if _input_kind(input_kind, target, cfg, model_file) == "encoded":
        io = dict(io, inputs=[ENCODED_INPUT])
        parameters.update(input="encoded", **_image_limits(max_image_bytes, max_image_pixels))
        warm_image = _warmup_image(cfg) if warmup else None
    text = make_config(name, target, max_batch, io, preferred_batch_sizes,
                       max_queue_delay_us, instances, kind,
                       LABELS_FILE if labels is not None else None,
                       default_model_filename=filename if target == "openvino" else None,
                       parameters=parameters, warmup_batch_sizes=warm,
                       warmup_file=(WARMUP_IMAGE, len(warm_image)) if warm_image else None,
                       max_queue_size=max_queue_size)
    model_dir = Path(repo) / name
    _write_entry(model_dir, int(version), model_file, filename, side, labels, text,
                 with_model_py=target == "python", warmup_image=warm_image)
    return model_dir


def measured_instances(model_file, batch: int = 8, threads: Optional[int] = None,
                       measure=None) -> dict:
    """The instance count and threads per instance for ``--target python`` on OpenVINO, from
    a measurement: the model's images/s at ``batch`` under the LATENCY and THROUGHPUT hints
    (:func:`engine.backends.openvino.hint_throughput`). The faster hint's stream count
    becomes the instance count: each python-backend instance runs one batch at a time, so
    the server's instances play the part of the streams, and the threads are split between
    them (at least one each).

    ``measure`` replaces ``hint_throughput`` (same arguments, same result). Returns
    ``{"instances", "threads", "hint", "measured"}``."""
    from .backends.openvino import choose_hint, hint_throughput
    total = count_option("threads", threads) or os.cpu_count() or 1
    measured = (measure or hint_throughput)(model_file, batch=batch, threads=total)
    hint, streams = choose_hint(measured)
    streams = max(1, int(streams))
    return {"instances": streams, "threads": max(1, total // streams), "hint": hint,
            "measured": measured}


def _input_kind(kind: str, target: str, config, model_file: Path) -> str:
    if kind not in INPUT_KINDS:
        raise InputError(f"input {kind!r} is not one of {', '.join(INPUT_KINDS)}")
    if kind == "encoded" and target != "python":
        raise InputError(f"--input encoded decodes images with this package inside the "
                         f"server: it needs --target python, not {target}")
    if kind == "encoded" and config is None:
        raise ArtifactError(f"{model_file} carries no model config, so the server cannot "
                            "preprocess images for it; export it with inception-engine export")
    return kind


def _image_limits(max_bytes: Optional[int], max_pixels: Optional[int]) -> Dict[str, str]:
    from .preprocess import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
    limits = {"max_image_bytes": MAX_IMAGE_BYTES if max_bytes is None else max_bytes,
              "max_image_pixels": MAX_IMAGE_PIXELS if max_pixels is None else max_pixels}
    for what, value in limits.items():
        if int(value) < 1:
            raise InputError(f"{what} must be >= 1, got {value}")
    return {k: str(int(v)) for k, v in limits.items()}


def _warmup_image(config) -> bytes:
    """A mid-grey PNG of the model's input size: the warm-up request of an encoded model."""
    import io as _io
    from PIL import Image
    _, h, w = config.input_size
    buf = _io.BytesIO()
    Image.new("RGB", (w, h), (128, 128, 128)).save(buf, "PNG")
    return buf.getvalue()


def _target(model_file: Path, target: Optional[str]):
    """``(target, file name in the version directory)`` for ``model_file``; it must exist."""
    if model_file.suffix not in (".plan", ".onnx"):
        raise ArtifactError(f"{model_file}: serve-export takes a .plan (TensorRT) or .onnx file, "
                            f"not {model_file.suffix or 'a file without extension'}")
    if not model_file.exists():
        raise ArtifactError(f"{model_file}: no such file")
    target = target or default_target(model_file)
    if target not in TARGETS:
        raise InputError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if model_file.suffix not in TARGETS[target][2]:
        takes = " or ".join(TARGETS[target][2])
        raise InputError(f"target {target} serves {takes} files, not {model_file.name}; pick "
                         f"another target or export a {takes}")
    return target, "model" + model_file.suffix


def model_name(name: Optional[str], model_file) -> str:
    """The entry's name in the repository: ``name``, or the model file's stem."""
    name = name or Path(model_file).stem.replace(".", "_")
    if not _NAME_RE.match(name):
        raise InputError(f"model name {name!r} is not usable as a Triton Inference Server model "
                         "directory; use letters, digits, '_', '-' and '.'")
    return name


def _max_batch(max_batch: Optional[int], plan_max: Optional[int],
               plan_min: Optional[int]) -> int:
    """The ``max_batch_size``: the request, checked against the plan's profile."""
    max_batch = int(max_batch if max_batch is not None else plan_max or 32)
    if max_batch < 1:
        raise InputError(f"max_batch must be >= 1, got {max_batch}")
    if plan_max is not None and max_batch > plan_max:
        raise InputError(f"max_batch {max_batch} exceeds the plan's optimization profile "
                         f"(max batch {plan_max}); rebuild the plan with --max-batch {max_batch}")
    if plan_min and plan_min > 1:
        warnings.warn(f"the plan's profile starts at batch {plan_min}; the server sends batches "
                      "from 1 up, which this plan rejects. Rebuild with --min-batch 1",
                      stacklevel=3)
    return max_batch


def _preferred(sizes: Sequence[int], max_batch: int) -> List[int]:
    sizes = sorted({int(b) for b in sizes})
    bad = [b for b in sizes if not 1 <= b <= max_batch]
    if bad:
        raise InputError(f"preferred batch sizes {bad} are outside 1..{max_batch}")
    return sizes


_DEFAULT_KIND = {"tensorrt_plan": "KIND_GPU", "python": "KIND_CPU"}


def _instance_kind(kind: Optional[str], platform: str) -> str:
    """``KIND_GPU``/``KIND_CPU``/``KIND_AUTO`` from ``gpu``, ``KIND_CPU``, ... (default: GPU
    for a plan, CPU for ``python``, AUTO for the server's ONNX backends)."""
    kind = (kind or _DEFAULT_KIND.get(platform, "KIND_AUTO")).upper()
    if not kind.startswith("KIND_"):
        kind = "KIND_" + kind
    if kind not in ("KIND_GPU", "KIND_CPU", "KIND_AUTO"):
        raise InputError(f"instance kind {kind} is not one of KIND_GPU, KIND_CPU, KIND_AUTO")
    if platform == "tensorrt_plan" and kind == "KIND_CPU":
        raise InputError("a TensorRT plan runs on a GPU only; use KIND_GPU")
    return kind


def _checked_labels(config, io: dict) -> Optional[List[str]]:
    """:func:`_labels`, or None with a warning when they do not match the output size."""
    labels = _labels(config)
    out = io["outputs"][0]["shape"] if io["outputs"] else None
    n_out = out[-1] if out else None
    if labels is not None and n_out not in (None, len(labels)):
        warnings.warn(f"{len(labels)} labels for {n_out} outputs: no label file written",
                      stacklevel=3)
        return None
    return labels


def _write_entry(model_dir: Path, version: int, model_file: Path, filename: str,
                 side: Optional[dict], labels: Optional[List[str]], config_text: str,
                 with_model_py: bool = False, warmup_image: Optional[bytes] = None) -> None:
    """Write the model (and its sidecar, and ``model.py`` for the Python backend), the labels
    and ``config.pbtxt``, each atomically; the config last, so the server never sees a config
    without its model."""
    from .backends.tensorrt.meta import sidecar_path
    from .fileio import atomic_path, atomic_write_text
    vdir = model_dir / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    copies = [(model_file, filename)] + ([(MODEL_PY, "model.py")] if with_model_py else [])
    for src, dest in copies:
        with atomic_path(vdir / dest) as tmp:
            shutil.copyfile(src, tmp)
    if side is not None:
        side_copy = dict(side, plan=dict(side["plan"], file=filename))
        atomic_write_text(sidecar_path(vdir / filename),
                          json.dumps(side_copy, indent=2, sort_keys=True) + "\n")
    if labels is not None:
        atomic_write_text(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
    if warmup_image is not None:
        (model_dir / "warmup").mkdir(exist_ok=True)
        with atomic_path(model_dir / "warmup" / WARMUP_IMAGE) as tmp:
            Path(tmp).write_bytes(warmup_image)
    atomic_write_text(model_dir / "config.pbtxt", config_text)


# ---------------------------------------------------------------------------------------------
# Running the Triton Inference Server bundled in the nvidia-pytriton wheel

# nvidia-pytriton pins numpy<2 for its own Python API, which this package never imports (only
# the server binary and the Python backend it bundles are used; tensors reach model.py as
# DLPack, not numpy), so it is installed without its dependencies
SERVE_INSTALL = 'pip install -e ".[serve]" && pip install --no-deps nvidia-pytriton==0.7.0'
HOST = "127.0.0.1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
# files of the bundled Python backend that go into the backend directory the server reads
_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
# the start of the names of the Python backend's /dev/shm regions (then serve's PID)
SHM_PREFIX = "inception_triton_"
MODEL_CONTROL = ("none", "explicit")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def bundled_server() -> Path:
    """The ``tritonserver`` folder of the installed ``nvidia-pytriton`` wheel (found without
    importing it: only its server binary and backends are used)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("serving needs the Triton Inference Server from the "
                                      f"nvidia-pytriton wheel; install it with {SERVE_INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise BackendUnavailableError(f"{root}: no bin/tritonserver in the nvidia-pytriton "
                                      f"install; reinstall it with {SERVE_INSTALL}")
    return root


def _backend_directory(root: Path, dest: Path) -> Path:
    """A backend directory holding the bundled Python backend with the stub built for the
    running Python (the wheel ships one stub per Python version beside the backend)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendUnavailableError(f"the nvidia-pytriton wheel has no Python-backend stub "
                                      f"for Python {version}; serve from Python 3.8-3.13")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True)
    for name in _PYTHON_BACKEND_FILES:
        shutil.copyfile(root / "backends" / "python" / name, python_dir / name)
    shutil.copy2(stub, python_dir / stub.name)
    return dest


def server_environment(root: Path) -> Dict[str, str]:
    """The environment of the server process: the stub (copied out of the wheel, so away from
    the libraries its run path names) finds the wheel's libraries, embeds this interpreter's
    Python library (same patch level as its standard library) and imports what this one
    imports."""
    env = dict(os.environ)
    libs = [str(root.parent.parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and Path(libdir, sysconfig.get_config_var("INSTSONAME") or "").is_file():
        libs.append(libdir)
        env["PYTHONHOME"] = sys.base_prefix
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")]
                                                     if p])
    # the stub's interpreter ignores PYTHONPATH; model.py reads it and puts it on sys.path: the
    # directory holding this ``engine`` package first (an editable install is found through
    # a .pth hook the stub never runs), then this interpreter's own path
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
        [here] + [p for p in sys.path if p and Path(p).is_dir()]))
    env.pop("TRITON_INTERPRET", None)   # the stub runs real engines, not Triton's interpreter
    return env


class Server:
    """The bundled Triton Inference Server on a model repository, bound to 127.0.0.1.

    Use as a context manager, or :meth:`start` and :meth:`stop`. A port of 0 picks a free
    one; ``ports`` holds the ones in use, and a port something already listens on is refused
    with the process holding it. The server runs in its own process group, so :meth:`stop`
    ends it and every backend stub it started; a guard process (:mod:`engine.tritonguard`)
    does the same, and unlinks the stubs' shared memory, if this process dies without
    stopping it (SIGKILL included). Its log goes to ``log`` (default: ``server.log`` in a
    temporary directory, removed on stop).

    require_all: fail the start when any model fails to load (else the start fails only when
        no model loads; ``failed`` then lists the others, ``name: reason``).
    model_control: ``none`` (the repository as it is at start) or ``explicit`` (also load,
        reload and unload through the repository API, ``/v2/repository/models/NAME/load``).
    """

    def __init__(self, repo, http_port: int = DEFAULT_PORTS["http"],
                 grpc_port: int = DEFAULT_PORTS["grpc"],
                 metrics_port: int = DEFAULT_PORTS["metrics"], log=None,
                 require_all: bool = False, model_control: str = "none"):
        self.repo = Path(repo)
        if not self.repo.is_dir():
            raise ArtifactError(f"{self.repo}: no such model repository; write one with "
                                "inception-engine serve-export MODEL --repo DIR")
        asked = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        for what, port in asked.items():
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise InputError(f"{what} port must be an integer in 0..65535, got {port!r}")
        if model_control not in MODEL_CONTROL:
            raise InputError(f"model control {model_control!r} is not one of "
                             f"{', '.join(MODEL_CONTROL)}")
        self.asked = asked
        self.ports = dict(asked)
        self.log = Path(log) if log else None
        self.require_all = require_all
        self.model_control = model_control
        # the stubs' shared-memory regions carry this prefix, so the guard can find them
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"
        self.process: Optional[subprocess.Popen] = None
        self.failed: List[str] = []
        self._guard: Optional[Guard] = None
        self._workdir: Optional[Path] = None

    @property
    def url(self) -> str:
        """The HTTP endpoint, ``127.0.0.1:PORT`` (tritonclient's form)."""
        return f"{HOST}:{self.ports['http']}"

    @property
    def endpoints(self) -> Dict[str, str]:
        return {"http": f"http://{HOST}:{self.ports['http']}",
                "grpc": f"{HOST}:{self.ports['grpc']}",
                "metrics": f"http://{HOST}:{self.ports['metrics']}/metrics"}

    def command(self, backend_dir: Path) -> List[str]:
        binary = bundled_server() / "bin" / "tritonserver"
        cmd = [str(binary), "--model-repository", str(self.repo.resolve()),
               "--backend-directory", str(backend_dir),
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               "--http-address", HOST, "--http-port", str(self.ports["http"]),
               "--grpc-address", HOST, "--grpc-port", str(self.ports["grpc"]),
               "--metrics-address", HOST, "--metrics-port", str(self.ports["metrics"]),
               "--strict-readiness", "true",
               "--exit-on-error", "true" if self.require_all else "false",
               "--exit-timeout-secs", "10"]
        if self.model_control == "explicit":
            cmd += ["--model-control-mode", "explicit", "--load-model", "*"]
        return cmd

    def start(self, timeout: float = 180.0) -> "Server":
        """Start the server and wait (at most ``timeout`` s) until it and its models are
        ready; on failure the server is stopped and the error quotes its log."""
        if self.process is not None:
            raise EngineError("this server is already started; stop it first")
        root = bundled_server()
        check_ports_free({k: p for k, p in self.asked.items() if p})
        self.ports = {k: p or free_port() for k, p in self.asked.items()}
        self._workdir = Path(tempfile.mkdtemp(prefix="inception-tritonserver-"))
        log = self.log or self._workdir / "server.log"
        try:
            cmd = self.command(_backend_directory(root, self._workdir / "backends"))
            self._guard = Guard(self.shm_prefix)
            with open(log, "wb") as out:
                self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL,
                                                env=server_environment(root),
                                                start_new_session=True)
            self._guard.watch(self.process.pid)
            self._wait_ready(timeout, log)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float, log: Path) -> None:
        """Until the server answers and no model is loading; then fail if no model is ready,
        or (``require_all``) if any failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"the Triton Inference Server exited with status "
                                  f"{self.process.returncode} before it was ready:\n"
                                  f"{_tail(log)}")
            index = self.models() if self._live() else None
            if index is not None and all(m.get("state") in ("READY", "UNAVAILABLE")
                                         for m in index):
                self.failed = [f"{m.get('name')}: {m.get('reason', '')}" for m in index
                               if m.get("state") == "UNAVAILABLE"]
                ready = [m for m in index if m.get("state") == "READY"]
                if self.failed and (self.require_all or not ready):
                    raise EngineError(f"the Triton Inference Server could not load "
                                      f"{', '.join(self.failed)}:\n{_tail(log)}")
                if not index and self.model_control == "none":
                    raise EngineError(f"{self.repo}: the repository holds no model; write one "
                                      "with inception-engine serve-export MODEL --repo DIR")
                return
            time.sleep(0.25)
        raise EngineError(f"the Triton Inference Server was not ready within {timeout:g} s "
                          f"(a model still loading?):\n{_tail(log)}")

    def exited(self) -> Optional[str]:
        """None while the started server runs (or none was started); else its exit status
        and its log's tail."""
        if self.process is None or self.process.poll() is None:
            return None
        log = self.log or self._workdir / "server.log"
        return (f"the Triton Inference Server exited with status {self.process.returncode}:\n"
                f"{_tail(log)}")

    def _live(self) -> bool:
        return self._get("/v2/health/live") is not None

    def _get(self, path: str, data: Optional[bytes] = None):
        """The body of a 200 answer to ``path`` (POST when ``data`` is given), else None."""
        req = urllib.request.Request(f"{self.endpoints['http']}{path}", data=data,
                                     method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.read()
        except (OSError, urllib.error.URLError):
            return None

    def ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 (server and every model ready)."""
        return self._get("/v2/health/ready") is not None

    def models(self) -> Optional[List[dict]]:
        """The repository index (``name``, ``version``, ``state``, ``reason`` per model), or
        None when the server does not answer."""
        body = self._get("/v2/repository/index", b"{}")
        try:
            return json.loads(body) if body is not None else None
        except ValueError:
            return None

    def failed_models(self) -> List[str]:
        """``name: reason`` of each model the server reports UNAVAILABLE (failed to load)."""
        return [f"{m.get('name')}: {m.get('reason', '')}" for m in self.models() or []
                if m.get("state") == "UNAVAILABLE"]

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server and its stubs (SIGTERM to its process group, SIGKILL after
        ``grace`` s) and remove its temporary files; safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None:
            _end_group(proc, grace)
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def _end_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to ``proc``'s process group; SIGKILL what is left after ``grace`` s."""
    pgid = proc.pid     # the group leader: it was started in a new session
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    end_group(pgid, grace)
    proc.wait()


def check_ports_free(ports: Dict[str, int]) -> None:
    """Refuse a port that something already listens on, naming the process where it can be
    found: the server would otherwise fail later with only "address in use" in its log."""
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # SO_REUSEADDR: a port left in TIME_WAIT by a stopped server is free to bind
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
                continue
            except OSError as e:
                reason = e.strerror
        holder = port_holder(port)
        who = (f"process {holder[0]} ({holder[1][:200]})" if holder else
               "a process this user cannot see")
        raise InputError(f"{what} port {port} on {HOST} is in use ({reason}) by {who}; stop "
                         f"it, or pick another port with --{what}-port (0 picks a free one)")


_ERROR_LINE = re.compile(r"^(E\d{4} |error: )")


def _tail(log: Path, lines: int = 8) -> str:
    """The server log's error lines (a model's load failure says why there), then its last
    ``lines`` lines."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    errors = [line for line in text if _ERROR_LINE.match(line)]
    return "\n".join(errors + ["..."] + text[-lines:])
