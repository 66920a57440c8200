"""The TensorRT builder: our ONNX (FP32, FP16, or INT8 as Q/DQ) -> a plan and its sidecar.

The file is checked before TensorRT is imported (precision, Q/DQ zero points), so a wrong
input fails with the same message on a machine without TensorRT. TensorRT 10 and 11 differ in
how a precision is asked for; :func:`meta.build_mode` decides from the names the installed
module has (``hasattr``), never from its version string.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from ...errors import BackendUnavailableError, UnsupportedGraphError
from ...onnxmeta import file_precision, load_onnx, onnx_io, read_metadata, resolve_precision
from . import meta
from .probe import gpu_info, import_tensorrt, make_logger


# --------------------------------------------------------------------------- the ONNX side
def prepare_onnx(onnx_path, precision: Optional[str], keep_io_fp32: bool):
    """Read the ONNX file and decide what TensorRT parses: ``(proto_to_parse, precision,
    source_meta)``. FP16 converts an FP32 graph; INT8 requires a symmetric Q/DQ graph."""
    proto = load_onnx(onnx_path)
    src_meta = read_metadata(proto)
    precision = resolve_precision(precision, file_precision(proto), meta.PRECISIONS,
                                  meta.BACKEND, onnx_path)
    if precision == "int8":
        _require_symmetric(proto, onnx_path)
    if precision == "fp16" and src_meta["precision"] != "fp16":
        proto = _converted_to_fp16(proto, keep_io_fp32)
    return proto, precision, src_meta


def _require_symmetric(proto, onnx_path) -> None:
    bad = meta.nonzero_zero_points(proto)
    if bad:
        raise UnsupportedGraphError(
            f"{onnx_path}: {len(bad)} Q/DQ nodes have non-zero zero points (first: {bad[0]}); "
            "TensorRT takes symmetric INT8 only. Quantize with `inception-engine quantize`, "
            "which writes zero points of 0")


def _converted_to_fp16(proto, keep_io_fp32: bool):
    from .fp16 import convert_to_fp16
    proto, stats = convert_to_fp16(proto, keep_io_fp32=keep_io_fp32)
    if stats["clipped"]:
        warnings.warn(f"{stats['clipped']} weight values exceed the float16 range and were "
                      "clipped to +-65504", stacklevel=4)
    return proto


def _image_input(io: dict, onnx_path) -> dict:
    if len(io["inputs"]) != 1:
        raise UnsupportedGraphError(f"{onnx_path}: expected one image input, found "
                                    f"{[i['name'] for i in io['inputs']]}")
    return io["inputs"][0]


# --------------------------------------------------------------------------- the TensorRT side
def parser_errors(parser, proto) -> str:
    """One line per parser error, each naming the ONNX node (name, operator, index)."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        idx = err.node() if hasattr(err, "node") else -1
        name = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        if (not name or not op) and 0 <= idx < len(proto.graph.node):
            node = proto.graph.node[idx]
            name, op = name or node.name, op or node.op_type
        where = f"node {name!r} ({op or 'unknown op'}, #{idx})" if (name or idx >= 0) \
            else "the graph"
        code = err.code() if hasattr(err, "code") else "?"
        lines.append(f"  {where}: {err.desc()} [{code}]")
    return "\n".join(lines)


def _build_mode(trt, precision: str) -> dict:
    flags = [n for n in ("FP16", "INT8", "TF32") if hasattr(trt.BuilderFlag, n)]
    return meta.build_mode(precision, flags,
                           hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))


def _parse(trt, builder, logger, proto, onnx_path: Path, strongly_typed: bool):
    """``(network, parser)``; the parser owns the weights, so it must live until the build."""
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(proto.SerializeToString(), str(onnx_path.resolve())):
        raise UnsupportedGraphError(f"TensorRT {trt.__version__} could not parse {onnx_path}:\n"
                                    + parser_errors(parser, proto))
    return network, parser


def _builder_config(trt, builder, mode: dict, input_name: str, shapes, workspace: Optional[int],
                    hardware_compatible: bool):
    """The builder config: precision flags, workspace limit, hardware compatibility, and the
    optimization profile of the batch axis."""
    config = builder.create_builder_config()
    for name in mode["set_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in mode["clear_flags"]:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if hardware_compatible:
        if not hasattr(trt, "HardwareCompatibilityLevel"):
            raise BackendUnavailableError("this TensorRT cannot build hardware-compatible "
                                          "plans (no HardwareCompatibilityLevel)")
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    return config


def _attach_timing_cache(config, timing_cache) -> bool:
    """Read ``timing_cache`` into ``config`` (a fresh cache when it is absent or foreign);
    ``False`` when no cache was asked for."""
    if timing_cache is None:
        return False
    path = Path(timing_cache)
    cache = config.create_timing_cache(path.read_bytes() if path.exists() else b"")
    if cache is None or not config.set_timing_cache(cache, False):
        warnings.warn(f"timing cache {timing_cache} was written by another TensorRT version "
                      "or GPU; starting a new one (it is replaced after the build)", stacklevel=3)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return True


# --------------------------------------------------------------------------- build
def build(onnx, plan=None, precision: Optional[str] = None, min_batch: int = 1,
          opt_batch: int = 8, max_batch: int = 32, workspace: Optional[int] = None,
          timing_cache=None, hardware_compatible: bool = False, keep_io_fp32: bool = True,
          device: int = 0, verbose: bool = False) -> Path:
    """Build a TensorRT plan from an ONNX file; write ``plan`` and ``plan.json`` atomically.

    onnx: our FP32 export, or the Q/DQ file from ``calibration.quantize``.
    plan: output path (default: the ONNX path with ``.plan``).
    precision: ``"fp32"``, ``"fp16"`` (the graph is converted to FP16 first; with
        ``keep_io_fp32`` its input and output stay float32) or ``"int8"`` (the file must hold
        Q/DQ nodes). ``None``: the file's own (``int8`` for a Q/DQ file, else ``fp32``).
    min_batch/opt_batch/max_batch: the optimization profile of the dynamic batch axis.
    workspace: builder workspace limit in bytes (``None``: TensorRT's default).
    timing_cache: path of a timing cache, read if it exists and written back (atomically).
    hardware_compatible: build for every GPU from Ampere on (slower kernels).
    Returns the plan path. Raises BackendUnavailableError when TensorRT is missing.
    """
    from ...fileio import atomic_write_bytes, sha256_file
    onnx = Path(onnx)
    plan = Path(plan) if plan is not None else onnx.with_suffix(".plan")
    proto, precision, src_meta = prepare_onnx(onnx, precision, keep_io_fp32)  # file errors first
    trt = import_tensorrt()
    io = onnx_io(proto)
    inp = _image_input(io, onnx)
    shapes = meta.profile_shapes(inp["shape"], min_batch, opt_batch, max_batch, inp["name"])
    mode = _build_mode(trt, precision)
    gpu = gpu_info(device)

    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    # the parser holds the weights the network points to: keep it until the build is done
    network, parser = _parse(trt, builder, logger, proto, onnx, mode["strongly_typed"])
    config = _builder_config(trt, builder, mode, inp["name"], shapes, workspace,
                             hardware_compatible)
    cached = _attach_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "\n".join(f"  {m}" for m in logger.errors[-10:]) or "  (no error logged)"
        raise UnsupportedGraphError(f"TensorRT {trt.__version__} failed to build {onnx} "
                                    f"({precision}) on {meta.describe_gpu(gpu)}:\n{detail}")
    if cached:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))

    options = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
               "workspace": workspace, "hardware_compatible": bool(hardware_compatible),
               "keep_io_fp32": bool(keep_io_fp32),
               "timing_cache": str(timing_cache) if timing_cache else None}
    onnx_sha = sha256_file(onnx)

    def sidecar(plan_sha, plan_bytes):
        return meta.make_sidecar(
            plan_path=plan, plan_sha256=plan_sha, plan_bytes=plan_bytes, onnx_path=onnx,
            onnx_sha256=onnx_sha, onnx_meta=src_meta, precision=precision, io=io,
            tensorrt_version=trt.__version__, gpu=gpu, build_options=options, mode=mode)

    meta.write_plan_and_sidecar(plan, serialized, sidecar)
    return plan
