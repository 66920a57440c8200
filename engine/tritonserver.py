"""Export a model file to a Triton Inference Server model repository.

Layout written (every file atomically)::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/labels.txt                 (classification models with a label set)
    <repo>/<name>/<version>/model.plan       (+ model.plan.json, the plan's sidecar)
    <repo>/<name>/<version>/model.onnx

A ``.plan`` is served by the server's TensorRT backend (platform ``tensorrt_plan``), an
``.onnx`` (FP32 or Q/DQ INT8) by its ONNX Runtime backend (``onnxruntime_onnx``). The I/O
names, dims and types come from the plan's sidecar or from the ONNX graph, so exporting needs
neither TensorRT nor a GPU. The batch axis is left out of ``dims`` (``max_batch_size`` > 0)
and requests are batched by the server's dynamic batcher.

Note: the Triton Inference Server must run the same TensorRT version (and GPU architecture)
that built a plan; the sidecar beside it says which (``tensorrt.version``, ``gpu``).
"""
from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import ArtifactError, InputError

# numpy dtype name -> the server's data type
SERVER_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16",
                "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
# model file suffix -> (the server's platform, file name in the version directory)
PLATFORMS = {".plan": ("tensorrt_plan", "model.plan"),
             ".onnx": ("onnxruntime_onnx", "model.onnx")}
LABELS_FILE = "labels.txt"
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
    lines.append("  }")
    return "\n".join(lines)


def make_config(name: str, platform: str, max_batch: int, io: dict,
                preferred_batch_sizes: Sequence[int], max_queue_delay_us: int,
                instances: int, kind: str, label_file: Optional[str] = None,
                default_model_filename: Optional[str] = None) -> str:
    """The text of ``config.pbtxt`` (the server's ModelConfig in protobuf text format)."""
    ins = ",\n".join(_tensor_block(t) for t in io["inputs"])
    outs = ",\n".join(_tensor_block(t, label_file if i == 0 else None)
                      for i, t in enumerate(io["outputs"]))
    pref = ", ".join(str(b) for b in preferred_batch_sizes)
    text = [f"name: {json.dumps(name)}",
            f"platform: {json.dumps(platform)}",
            f"max_batch_size: {int(max_batch)}"]
    if default_model_filename:
        text.append(f"default_model_filename: {json.dumps(default_model_filename)}")
    text += [f"input [\n{ins}\n]",
             f"output [\n{outs}\n]",
             "dynamic_batching {",
             f"  preferred_batch_size: [ {pref} ]" if pref else "",
             f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
             "}",
             "instance_group [",
             "  {",
             f"    count: {int(instances)}",
             f"    kind: {kind}",
             "  }",
             "]"]
    return "\n".join(line for line in text if line) + "\n"


def default_preferred(max_batch: int, opt_batch: Optional[int] = None) -> List[int]:
    """Preferred dynamic-batch sizes: the plan's optimum batch (or 8) and the maximum."""
    opt = opt_batch or 8
    return sorted({b for b in (opt, max_batch) if 1 <= b <= max_batch})


def export_triton(model_file, repo, name: Optional[str] = None, max_batch: Optional[int] = None,
                  version: int = 1, instances: int = 1,
                  preferred_batch_sizes: Optional[Sequence[int]] = None,
                  max_queue_delay_us: int = 100, kind: Optional[str] = None,
                  onnx=None) -> Path:
    """Write a Triton Inference Server model repository entry for ``model_file`` (``.plan``
    or ``.onnx``).

    name: model name in the repository (default: the model file's stem).
    max_batch: the server's ``max_batch_size`` (default: the plan's profile maximum, or 32
        for ONNX); for a plan it cannot exceed the profile's maximum.
    kind: instance kind, ``KIND_GPU``/``KIND_CPU``/``KIND_AUTO`` (default: GPU for a plan,
        AUTO for ONNX).
    onnx: for a plan without a sidecar, the ONNX it was built from (read for the I/O).
    Returns the model directory ``<repo>/<name>``.
    """
    model_file = Path(model_file)
    platform, filename = _platform(model_file)
    name = _model_name(name, model_file)
    for what, value in (("version", version), ("instances", instances)):
        if int(value) < 1:
            raise InputError(f"{what} must be >= 1, got {value}")
    io, cfg, side, plan_max = _model_info(model_file, Path(onnx) if onnx else None)
    build = side["build_options"] if side else {}
    max_batch = _max_batch(max_batch, plan_max, build.get("min_batch"))
    if preferred_batch_sizes is None:
        preferred_batch_sizes = default_preferred(max_batch, build.get("opt_batch"))
    preferred_batch_sizes = _preferred(preferred_batch_sizes, max_batch)
    kind = _instance_kind(kind, platform)
    labels = _checked_labels(cfg, io)
    text = make_config(name, platform, max_batch, io, preferred_batch_sizes,
                       max_queue_delay_us, instances, kind,
                       LABELS_FILE if labels is not None else None)
    model_dir = Path(repo) / name
    _write_entry(model_dir, int(version), model_file, filename, side, labels, text)
    return model_dir


def _platform(model_file: Path):
    """``(platform, file name)`` the server runs ``model_file`` with; it must exist."""
    if model_file.suffix not in PLATFORMS:
        raise ArtifactError(f"{model_file}: serve-export takes a .plan (TensorRT) or .onnx file, "
                            f"not {model_file.suffix or 'a file without extension'}")
    if not model_file.exists():
        raise ArtifactError(f"{model_file}: no such file")
    return PLATFORMS[model_file.suffix]


def _model_name(name: Optional[str], model_file: Path) -> str:
    name = name or model_file.stem.replace(".", "_")
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


def _instance_kind(kind: Optional[str], platform: str) -> str:
    """``KIND_GPU``/``KIND_CPU``/``KIND_AUTO`` from ``gpu``, ``KIND_CPU``, ... (default: GPU
    for a plan, AUTO for ONNX)."""
    kind = (kind or ("KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO")).upper()
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
                 side: Optional[dict], labels: Optional[List[str]], config_text: str) -> None:
    """Write the model (and its sidecar), the labels and ``config.pbtxt``, each atomically;
    the config last, so the server never sees a config without its model."""
    from .backends.tensorrt.meta import sidecar_path
    from .fileio import atomic_path, atomic_write_text
    vdir = model_dir / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(vdir / filename) as tmp:
        shutil.copyfile(model_file, tmp)
    if side is not None:
        side_copy = dict(side, plan=dict(side["plan"], file=filename))
        atomic_write_text(sidecar_path(vdir / filename),
                          json.dumps(side_copy, indent=2, sort_keys=True) + "\n")
    if labels is not None:
        atomic_write_text(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
    atomic_write_text(model_dir / "config.pbtxt", config_text)
