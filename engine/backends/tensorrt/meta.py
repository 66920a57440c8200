"""What a TensorRT plan needs around it, in plain Python: no TensorRT, no GPU.

- the sidecar ``X.plan.json`` written beside every plan (what was built, from what, with
  which TensorRT on which GPU) and its validation when the plan is loaded;
- the compatibility check of a plan against the running TensorRT version and GPU, with a
  message that names both and the command that rebuilds the plan;
- the Q/DQ zero points a build checks, and the fixed precision of a plan;
- the optimization-profile shapes for a dynamic batch.

``engine.backends.tensorrt`` calls these with the facts it gets from TensorRT and CUDA;
tests call them with facts they choose, so every message is checked without a GPU.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import shlex
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ...errors import (ArtifactError, BackendUnavailableError, InputError,
                       UnsupportedPrecisionError)
from ...onnxmeta import QDQ_OPS, calibration_info, normalize_precision
from .. import BACKENDS

BACKEND = "tensorrt"
PRECISIONS = BACKENDS[BACKEND].precisions      # what a plan can be built at
SIDECAR_FORMAT = "inception-plan"
SIDECAR_VERSION = 1
# The oldest GPU architecture a hardware-compatible (Ampere+) plan runs on.
HARDWARE_COMPAT_MIN_CC = (8, 0)
# --workspace units (powers of 1024); a bare number is MiB, as in trtexec
WORKSPACE_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
WORKSPACE_DEFAULT_UNIT = "M"
# IBuilderConfig.builder_optimization_level: 0 builds fastest, 5 searches longest (default 3)
OPTIMIZATION_LEVELS = (0, 5)
# --precision-constraints -> the BuilderFlag that makes the builder honour layer precisions
PRECISION_CONSTRAINTS = {"obey": "OBEY_PRECISION_CONSTRAINTS",
                         "prefer": "PREFER_PRECISION_CONSTRAINTS"}
# a layer precision -> its DataType member
LAYER_DTYPES = {"fp32": "FLOAT", "fp16": "HALF", "int8": "INT8"}

INSTALL_HINT = (
    "TensorRT is not installed. Its wheels come from NVIDIA's package index, not PyPI: "
    "`pip install --extra-index-url https://pypi.nvidia.com tensorrt` (on a machine with an "
    "NVIDIA GPU and driver), or use an NVIDIA container (nvcr.io/nvidia/tensorrt or "
    "nvcr.io/nvidia/pytorch). Without TensorRT, run the ONNX file instead: "
    "engine.load(\"model.onnx\") picks a CPU engine (OpenVINO or ONNX Runtime).")


class PlanMismatchError(ArtifactError):
    """A plan built with another TensorRT version or for another GPU than the running ones."""


def tensorrt_unavailable(reason: str = "") -> BackendUnavailableError:
    msg = INSTALL_HINT if not reason else f"{INSTALL_HINT} ({reason})"
    return BackendUnavailableError(msg)


def sidecar_path(plan) -> Path:
    """``irv2.plan`` -> ``irv2.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


# --------------------------------------------------------------------------- ONNX facts
def nonzero_zero_points(proto) -> List[str]:
    """Q/DQ nodes whose zero point is a non-zero initializer (TensorRT rejects them)."""
    import numpy as np
    from onnx import numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    bad = []
    for n in proto.graph.node:
        if n.op_type in QDQ_OPS and len(n.input) > 2 and n.input[2] in inits:
            if np.any(numpy_helper.to_array(inits[n.input[2]]) != 0):
                bad.append(n.name or n.op_type)
    return bad


def check_plan_precision(sidecar: Optional[dict], requested: Optional[str], plan) -> None:
    """A plan's precision is fixed when it is built: asking for another one is an error that
    says how to build a plan of the wanted precision."""
    requested = normalize_precision(requested)
    if requested is not None and requested not in PRECISIONS:
        raise UnsupportedPrecisionError(f"TensorRT plans are built at {', '.join(PRECISIONS)}, "
                                        f"not {requested}; pick one of those or another backend")
    if requested is None or sidecar is None or requested == sidecar["precision"]:
        return
    hint = (" from the Q/DQ file of `inception-engine quantize`" if requested == "int8"
            else f" from its source ONNX ({sidecar['source_onnx'].get('path')})")
    raise UnsupportedPrecisionError(
        f"{plan} is a {sidecar['precision']} plan; a plan's precision is fixed when it is "
        f"built. Build a {requested} plan with `inception-engine build --precision "
        f"{requested}`{hint}, or load it with precision=None")


# --------------------------------------------------------------------------- build options
def profile_shapes(input_shape: Sequence[Optional[int]], min_batch: int, opt_batch: int,
                   max_batch: int, name: str = "input") -> Tuple[tuple, tuple, tuple]:
    """(min, opt, max) shapes of the optimization profile for a dynamic batch axis.

    ``input_shape`` is the ONNX input shape, batch first; every other axis must be fixed.
    """
    for label, v in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch sizes must satisfy min <= opt <= max, got min={min_batch}, "
                         f"opt={opt_batch}, max={max_batch}")
    rest = tuple(input_shape[1:])
    if any(d is None for d in rest):
        raise ValueError(f"input {name!r} has shape {list(input_shape)}: only the batch axis may "
                         "be dynamic; export with a fixed image size")
    batch = input_shape[0] if input_shape else None
    if batch is not None and not (min_batch == opt_batch == max_batch == batch):
        raise ValueError(f"input {name!r} has a fixed batch of {batch}; export with a dynamic "
                         f"batch (the default) or build with min=opt=max={batch}")
    return ((min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))


def build_mode(precision: str, builder_flags: Sequence[str], has_strongly_typed: bool,
               constraints: Optional[str] = None) -> dict:
    """How to ask TensorRT for ``precision``, from the names that exist in the installed one.

    TensorRT 10 still has ``BuilderFlag.FP16``/``INT8``: the network is weakly typed and the
    flag lets the builder choose FP16/INT8 kernels (from the converted FP16 graph, or the Q/DQ
    graph). TensorRT 11 removed them: the network is strongly typed and the graph's own types
    decide. ``TF32`` is cleared for ``fp32`` wherever it exists, so FP32 means FP32.
    ``constraints`` (``"obey"``/``"prefer"``) adds the flag that makes per-layer precisions
    binding; only a weakly typed network has them.
    Returns ``{"strongly_typed": bool, "set_flags": [...], "clear_flags": [...]}``.
    """
    mode = _precision_mode(precision, set(builder_flags), has_strongly_typed)
    if constraints is not None:
        flag = PRECISION_CONSTRAINTS[constraints]
        if mode["strongly_typed"] or flag not in builder_flags:
            raise UnsupportedPrecisionError(
                f"--precision-constraints {constraints} needs a weakly typed network and "
                f"BuilderFlag.{flag} (TensorRT 10); this TensorRT builds strongly typed "
                "networks, where each layer runs in the type its tensors have in the graph. "
                "Drop the option, or give the layers those types in the ONNX file")
        mode["set_flags"].append(flag)
    return mode


def _precision_mode(precision: str, flags: set, has_strongly_typed: bool) -> dict:
    want = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[precision]
    if want and all(f in flags for f in want):
        mode = {"strongly_typed": False, "set_flags": list(want), "clear_flags": []}
    elif not want and "FP16" in flags:         # TensorRT 10, FP32: weakly typed, no flag
        mode = {"strongly_typed": False, "set_flags": [], "clear_flags": []}
    elif has_strongly_typed or not want:
        mode = {"strongly_typed": True, "set_flags": [], "clear_flags": []}
    else:
        raise BackendUnavailableError(
            f"this TensorRT has neither BuilderFlag.{want[0]} nor strongly typed networks; "
            "install TensorRT 10 or newer")
    if precision == "fp32" and "TF32" in flags:
        mode["clear_flags"].append("TF32")
    return mode


def workspace_text(nbytes: int) -> str:
    """A byte count as ``--workspace`` reads it: whole MiB as ``512M``, else ``<n>B``."""
    mib = WORKSPACE_UNITS["M"]
    return f"{nbytes // mib}M" if nbytes % mib == 0 else f"{nbytes}B"


def check_optimization_level(level) -> Optional[int]:
    """``builder_optimization_level`` as an int in :data:`OPTIMIZATION_LEVELS` (``None``:
    TensorRT's default), or an :class:`InputError` saying the range."""
    low, high = OPTIMIZATION_LEVELS
    if level is None:
        return None
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise InputError(f"builder_optimization_level must be an integer from {low} (fastest "
                         f"build) to {high} (longest search), got {level!r}; TensorRT's "
                         "default is 3")
    return level


def parse_layer_precisions(spec) -> dict:
    """Per-layer precisions from ``"name:fp16,name2:fp32,*:fp32"`` (trtexec's
    ``--layerPrecisions`` form; a name may hold ``:``, the last one separates) or a dict.
    ``*`` applies to every layer not named. An empty spec is ``{}``."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = [part.rpartition(":")[::2] for part in str(spec).split(",") if part.strip()]
    out = {}
    for name, precision in items:
        name, precision = str(name).strip(), str(precision).strip().lower()
        if not name or precision not in LAYER_DTYPES:
            raise InputError(f"layer precision {name or '<no name>'}:{precision or '?'} is not "
                             f"LAYER:PRECISION with PRECISION one of {', '.join(LAYER_DTYPES)} "
                             "(e.g. '/classif/Gemm:fp32,*:fp16')")
        out[name] = precision
    return out


def check_precision_constraints(constraints: Optional[str], layer_precisions: dict) -> None:
    """Layer precisions and ``constraints`` come together: one without the other is an
    :class:`InputError` saying what to add."""
    if constraints is not None and constraints not in PRECISION_CONSTRAINTS:
        raise InputError(f"precision_constraints must be one of "
                         f"{', '.join(PRECISION_CONSTRAINTS)}, got {constraints!r}")
    if layer_precisions and constraints is None:
        raise InputError("layer precisions are given without precision constraints: add "
                         "--precision-constraints obey (must hold) or prefer (may fall back)")
    if constraints is not None and not layer_precisions:
        raise InputError(f"--precision-constraints {constraints} needs layer precisions "
                         "(--layer-precisions LAYER:PRECISION,...), else it constrains nothing")


def assign_layer_precisions(layer_names: Sequence[str], spec: dict) -> dict:
    """``{layer name: precision}`` for the network's layers from a parsed spec; a named layer
    the network lacks is an :class:`InputError` listing a few it has."""
    missing = [n for n in spec if n != "*" and n not in set(layer_names)]
    if missing:
        some = ", ".join(repr(n) for n in list(layer_names)[:5])
        raise InputError(f"layer precisions name {len(missing)} layer(s) the parsed network "
                         f"lacks (first: {missing[0]!r}); TensorRT's layer names are the ONNX "
                         f"node names, e.g. {some}")
    default = spec.get("*")
    return {n: spec.get(n, default) for n in layer_names if spec.get(n, default) is not None}


def rebuild_command(onnx, plan, precision: str, options: dict) -> str:
    """The ``inception-engine build`` command that rebuilds a plan with the same options."""
    cmd = ["inception-engine", "build", str(onnx), "--out", str(plan), "--precision", precision]
    for key, flag in (("min_batch", "--min-batch"), ("opt_batch", "--opt-batch"),
                      ("max_batch", "--max-batch")):
        if options.get(key) is not None:
            cmd += [flag, str(options[key])]
    if options.get("workspace") is not None:
        cmd += ["--workspace", workspace_text(options["workspace"])]
    if options.get("timing_cache"):
        cmd += ["--timing-cache", str(options["timing_cache"])]
    if options.get("builder_optimization_level") is not None:
        cmd += ["--builder-optimization-level", str(options["builder_optimization_level"])]
    if options.get("hardware_compatible"):
        cmd.append("--hardware-compatible")
    if options.get("precision_constraints"):
        cmd += ["--precision-constraints", options["precision_constraints"],
                "--layer-precisions", ",".join(f"{k}:{v}" for k, v in
                                               options.get("layer_precisions", {}).items())]
    if options.get("keep_io_fp32") is False:
        cmd.append("--fp16-io")
    return " ".join(shlex.quote(c) for c in cmd)


# --------------------------------------------------------------------------- sidecar
def _now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def make_sidecar(*, plan_path, plan_sha256: str, plan_bytes: int, onnx_path, onnx_sha256: str,
                 onnx_meta: dict, precision: str, io: dict, tensorrt_version: str, gpu: dict,
                 build_options: dict, mode: dict, created: Optional[str] = None) -> dict:
    """The sidecar's content (a JSON-able dict). ``onnx_meta`` is ``engine.read_metadata``'s
    result; ``gpu`` is ``{"name", "compute_capability": "major.minor"}``."""
    from ...version import __version__
    cfg = onnx_meta.get("config")
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "created": created or _now_utc(),
        "producer": f"inception-infer {__version__}",
        "plan": {"file": Path(plan_path).name, "sha256": plan_sha256, "bytes": int(plan_bytes)},
        "source_onnx": {"path": str(Path(onnx_path).resolve()), "sha256": onnx_sha256,
                        "weights_sha256": onnx_meta.get("weights_sha256")},
        "model_config": cfg.to_dict() if cfg is not None else None,
        "precision": precision,
        "calibration": calibration_info(onnx_meta.get("props", {})),
        "io": io,
        "tensorrt": {"version": str(tensorrt_version),
                     "strongly_typed": bool(mode.get("strongly_typed")),
                     "builder_flags": list(mode.get("set_flags", ())),
                     "cleared_flags": list(mode.get("clear_flags", ()))},
        "gpu": {"name": gpu.get("name"), "compute_capability": gpu.get("compute_capability")},
        "build_options": dict(build_options),
    }


_REQUIRED = {"plan": dict, "precision": str, "tensorrt": dict, "gpu": dict, "io": dict,
             "build_options": dict, "source_onnx": dict}
_CC = re.compile(r"^\d+\.\d+$")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# (section, field, required, the check, what the field must be); format_version is checked
# first, on its own, since a newer format may lay out the rest differently
_FIELDS = [
    ("plan", "bytes", False, _positive_int, "a positive integer (the plan's size)"),
    ("plan", "sha256", False, lambda v: isinstance(v, str) and len(v) == 64,
     "64 hex digits"),
    ("tensorrt", "version", True, lambda v: isinstance(v, str) and bool(v.strip()),
     "a TensorRT version string such as \"10.8.0.43\""),
    ("gpu", "compute_capability", False, lambda v: isinstance(v, str) and bool(_CC.match(v)),
     "\"major.minor\" such as \"8.6\""),
    ("build_options", "min_batch", False, _positive_int, "a positive integer"),
    ("build_options", "opt_batch", False, _positive_int, "a positive integer"),
    ("build_options", "max_batch", False, _positive_int, "a positive integer"),
    ("build_options", "workspace", False, _positive_int, "a positive number of bytes"),
]


def _check_fields(data: dict, where) -> None:
    """Each field of :data:`_FIELDS` present (when required) and of its kind, or an
    :class:`ArtifactError` naming the field, its value and what it must be."""
    for section, name, required, valid, want in _FIELDS:
        value = data[section].get(name)
        if (value is not None or required) and not valid(value):
            raise _field_error(where, f"{section}.{name}", value, want)


def _field_error(where, label: str, value, want: str) -> ArtifactError:
    return ArtifactError(f"{where}: field {label!r} is {value!r}, not {want}; the sidecar is "
                         "damaged: rebuild the plan with `inception-engine build`")


def validate_sidecar(data, where="sidecar") -> dict:
    """Check the sidecar's structure and fields; raise :class:`ArtifactError` naming what is
    wrong."""
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ArtifactError(f"{where}: not an inception plan sidecar (no \"format\": "
                            f"\"{SIDECAR_FORMAT}\"); delete it or rebuild the plan")
    if not _positive_int(data.get("format_version")):
        raise _field_error(where, "format_version", data.get("format_version"),
                           "a positive integer")
    if data["format_version"] > SIDECAR_VERSION:
        raise ArtifactError(f"{where}: sidecar format {data['format_version']} is newer than "
                            f"this package reads ({SIDECAR_VERSION}); upgrade inception-infer")
    for key, typ in _REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise ArtifactError(f"{where}: field {key!r} is missing or not a {typ.__name__}; "
                                "the sidecar is damaged: rebuild the plan")
    _check_fields(data, where)
    if data["precision"] not in PRECISIONS:
        raise ArtifactError(f"{where}: unknown precision {data['precision']!r}; the sidecar is "
                            f"damaged (a plan is one of {', '.join(PRECISIONS)}): rebuild the plan")
    return data


def read_sidecar(plan, required: bool = False) -> Optional[dict]:
    """The validated sidecar of ``plan``, or ``None`` (with a warning) when there is none."""
    path = sidecar_path(plan)
    if not path.exists():
        if required:
            raise ArtifactError(f"{path}: no sidecar beside {Path(plan).name}; rebuild the plan "
                                "with `inception-engine build`, which writes one")
        warnings.warn(f"{Path(plan).name} has no sidecar ({path.name}): its TensorRT version and "
                      "GPU cannot be checked before loading, and its model config is unknown. "
                      "Plans built with `inception-engine build` carry one", stacklevel=3)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable sidecar ({type(e).__name__}: {e}); delete it "
                            "or rebuild the plan") from e
    return validate_sidecar(data, path)


def check_plan_file(plan) -> Path:
    """A plan that exists and is not empty, or a clear :class:`ArtifactError`."""
    p = Path(plan)
    if not p.exists():
        raise ArtifactError(f"{p}: no such plan file; build one with `inception-engine build "
                            f"model.onnx --out {p.name}`")
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory, not a TensorRT plan file")
    if p.stat().st_size == 0:
        raise ArtifactError(f"{p}: the plan file is empty (an interrupted copy?); rebuild it")
    return p


def check_plan_hash(sidecar: dict, plan_sha256: str, plan) -> None:
    want = sidecar["plan"].get("sha256")
    if want and want != plan_sha256:
        raise ArtifactError(
            f"{plan}: SHA-256 {plan_sha256[:12]}... does not match its sidecar "
            f"({want[:12]}...): the plan was replaced or damaged after it was built. Rebuild it: "
            + rebuild_command(sidecar["source_onnx"].get("path", "model.onnx"), plan,
                              sidecar["precision"], sidecar["build_options"]))


# --------------------------------------------------------------------------- compatibility
def _cc_tuple(cc) -> Optional[Tuple[int, int]]:
    if cc is None:
        return None
    if isinstance(cc, (tuple, list)):
        return int(cc[0]), int(cc[1])
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def describe_gpu(gpu: dict) -> str:
    cc = _cc_tuple(gpu.get("compute_capability"))
    arch = f"compute capability {cc[0]}.{cc[1]}" if cc else "unknown compute capability"
    return f"{gpu.get('name') or 'unknown GPU'} ({arch})"


def check_compatibility(sidecar: dict, running_trt: str, running_gpu: dict, plan="model.plan",
                        strict: bool = True) -> List[str]:
    """Compare the sidecar's TensorRT version and GPU with the running ones.

    A plan runs only with the TensorRT version that built it, and only on the GPU
    architecture (compute capability) it was built for, unless built hardware-compatible
    (Ampere and newer). A mismatch raises :class:`PlanMismatchError` naming both sides and
    the command that rebuilds the plan here (``strict=False`` turns it into a warning).
    A different GPU name with the same compute capability only warns (it runs, but its
    tactics were timed on the other card). Returns the warnings issued.
    """
    built_trt = str(sidecar["tensorrt"]["version"])
    built_gpu = sidecar["gpu"]
    hw_compat = bool(sidecar["build_options"].get("hardware_compatible"))
    problems, notes = [], []
    if built_trt != str(running_trt):
        problems.append(f"it was built with TensorRT {built_trt}, and this machine runs TensorRT "
                        f"{running_trt} (a plan only loads on the exact TensorRT version that "
                        "built it)")
    b_cc, r_cc = _cc_tuple(built_gpu.get("compute_capability")), \
        _cc_tuple(running_gpu.get("compute_capability"))
    if hw_compat:
        if r_cc is not None and r_cc < HARDWARE_COMPAT_MIN_CC:
            problems.append(f"it was built hardware-compatible (Ampere and newer) on "
                            f"{describe_gpu(built_gpu)}, and this GPU is "
                            f"{describe_gpu(running_gpu)}, older than Ampere")
    elif b_cc is not None and r_cc is not None and b_cc != r_cc:
        problems.append(f"it was built for {describe_gpu(built_gpu)}, and this GPU is "
                        f"{describe_gpu(running_gpu)} (a plan only runs on the GPU architecture "
                        "it was built for, unless built with --hardware-compatible)")
    elif built_gpu.get("name") and running_gpu.get("name") and \
            built_gpu["name"] != running_gpu["name"]:
        notes.append(f"{Path(plan).name} was built on {describe_gpu(built_gpu)} and runs on "
                     f"{describe_gpu(running_gpu)}: same architecture, so it loads, but its "
                     "kernels were timed on the other card; rebuild here for best speed")
    if problems:
        src = sidecar["source_onnx"].get("path") or "model.onnx"
        cmd = rebuild_command(src, plan, sidecar["precision"], sidecar["build_options"])
        msg = (f"{plan} cannot run here: " + "; and ".join(problems) + ". Rebuild it on this "
               f"machine from its source ONNX: {cmd}")
        if src and not Path(src).exists():
            msg += (f" ({src} is not on this machine: copy it here, or export it again with "
                    "`inception-engine export`)")
        if strict:
            raise PlanMismatchError(msg)
        notes.insert(0, msg)
    for n in notes:
        warnings.warn(n, stacklevel=3)
    return notes


# --------------------------------------------------------------------------- writing
def write_plan_and_sidecar(plan, blob, make_sidecar_fn) -> Tuple[Path, Path]:
    """Write the plan bytes and its sidecar, both atomically.

    ``blob`` is anything with the buffer protocol (TensorRT's ``IHostMemory``, bytes);
    ``make_sidecar_fn(plan_sha256, plan_bytes) -> dict``. Both go to temporary files beside
    their targets first; an exception before the renames leaves any existing plan and sidecar
    untouched and no temporary file behind. The old sidecar is removed just before the new
    plan is renamed into place, so an interruption between the two renames leaves a plan with
    no sidecar (it loads, with a warning), never a plan with another plan's sidecar.
    """
    import os
    from ...fileio import atomic_path, sha256_file
    plan = Path(plan)
    side = sidecar_path(plan)
    with atomic_path(side) as tmp_side, atomic_path(plan) as tmp_plan:
        with open(tmp_plan, "wb") as f:
            f.write(memoryview(blob))
            f.flush()
            os.fsync(f.fileno())
        size = tmp_plan.stat().st_size
        if size == 0:
            raise ArtifactError("TensorRT returned an empty plan; nothing was written")
        data = validate_sidecar(make_sidecar_fn(sha256_file(tmp_plan), size), side)
        with open(tmp_side, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if side.exists():
            side.unlink()
    return plan, side
