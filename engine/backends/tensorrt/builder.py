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
from ...runtime import count_option
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


def _build_mode(trt, precision: str, constraints: Optional[str]) -> dict:
    probe = ["FP16", "INT8", "TF32"]
    if constraints is not None:
        probe.append(meta.PRECISION_CONSTRAINTS[constraints])
    flags = [n for n in probe if hasattr(trt.BuilderFlag, n)]
    return meta.build_mode(precision, flags,
                           hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
                           constraints)


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


def _set_layer_precisions(trt, network, spec: dict) -> dict:
    """Give the parsed network's layers the precisions of ``spec`` (see
    :func:`meta.parse_layer_precisions`); returns ``{layer: precision}`` as applied."""
    if not spec:
        return {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    chosen = meta.assign_layer_precisions([layer.name for layer in layers], spec)
    for layer in layers:
        if layer.name in chosen:
            layer.precision = getattr(trt.DataType, meta.LAYER_DTYPES[chosen[layer.name]])
    return chosen


def _builder_config(trt, builder, mode: dict, input_name: str, shapes, options: dict,
                    detailed_profile: bool):
    """The builder config: precision flags, workspace limit, optimization level, hardware
    compatibility, profiling detail (for ``layer_info``) and the optimization profile of the
    batch axis."""
    config = builder.create_builder_config()
    for name in mode["set_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in mode["clear_flags"]:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if options["workspace"] is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options["workspace"]))
    if options["builder_optimization_level"] is not None:
        config.builder_optimization_level = options["builder_optimization_level"]
    if detailed_profile:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options["hardware_compatible"]:
        if not hasattr(trt, "HardwareCompatibilityLevel"):
            raise BackendUnavailableError("this TensorRT cannot build hardware-compatible "
                                          "plans (no HardwareCompatibilityLevel)")
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *(tuple(shape) for shape in shapes))
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


def write_layer_info(trt, logger, serialized, path) -> None:
    """The built engine's layers as ``IEngineInspector`` JSON (trtexec's ``--exportLayerInfo``),
    written atomically to ``path``."""
    from ...fileio import atomic_write_text
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(memoryview(serialized)))
    if engine is None:
        raise UnsupportedGraphError(f"TensorRT {trt.__version__} could not load the plan it "
                                    "just built, so its layer information cannot be read")
    inspector = engine.create_engine_inspector()
    atomic_write_text(path, inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# --------------------------------------------------------------------------- build
def build_options(min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32,
                  workspace: Optional[int] = None, timing_cache=None,
                  hardware_compatible: bool = False, keep_io_fp32: bool = True,
                  builder_optimization_level: Optional[int] = None,
                  precision_constraints: Optional[str] = None, layer_precisions=None) -> dict:
    """The build options, checked (an :class:`InputError` names a bad one), as the sidecar
    records them."""
    workspace = count_option("workspace", workspace)
    layers = meta.parse_layer_precisions(layer_precisions)
    meta.check_precision_constraints(precision_constraints, layers)
    return {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
            "workspace": workspace, "hardware_compatible": bool(hardware_compatible),
            "keep_io_fp32": bool(keep_io_fp32),
            "timing_cache": str(timing_cache) if timing_cache else None,
            "builder_optimization_level": meta.check_optimization_level(
                builder_optimization_level),
            "precision_constraints": precision_constraints, "layer_precisions": layers}


def build(onnx, plan=None, precision: Optional[str] = None, min_batch: int = 1,
          opt_batch: int = 8, max_batch: int = 32, workspace: Optional[int] = None,
          timing_cache=None, hardware_compatible: bool = False, keep_io_fp32: bool = True,
          device: int = 0, verbose: bool = False, builder_optimization_level: Optional[int] = None,
          layer_info=None, precision_constraints: Optional[str] = None,
          layer_precisions=None) -> Path:
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
    builder_optimization_level: 0 (fastest build) .. 5 (longest tactic search); ``None``:
        TensorRT's default (3).
    layer_info: path for the built engine's layer information (``IEngineInspector`` JSON,
        with detailed profiling verbosity), written atomically.
    precision_constraints: ``"obey"`` or ``"prefer"``, with ``layer_precisions``
        (``"LAYER:fp16,*:fp32"`` or a dict) for mixed precision; TensorRT 10 only (11 builds
        strongly typed networks, whose layers take the graph's types).
    Returns the plan path. Raises BackendUnavailableError when TensorRT is missing.
    """
    from ...fileio import atomic_write_bytes, sha256_file
    onnx = Path(onnx)
    plan = Path(plan) if plan is not None else onnx.with_suffix(".plan")
    options = build_options(min_batch, opt_batch, max_batch, workspace, timing_cache,
                            hardware_compatible, keep_io_fp32, builder_optimization_level,
                            precision_constraints, layer_precisions)
    proto, precision, src_meta = prepare_onnx(onnx, precision, keep_io_fp32)  # file errors first
    io = onnx_io(proto)
    inp = _image_input(io, onnx)
    shapes = meta.profile_shapes(inp["shape"], min_batch, opt_batch, max_batch, inp["name"])
    trt = import_tensorrt()
    mode = _build_mode(trt, precision, precision_constraints)
    gpu = gpu_info(device)

    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    # the parser holds the weights the network points to: keep it until the build is done
    network, parser = _parse(trt, builder, logger, proto, onnx, mode["strongly_typed"])
    options["layer_precisions"] = _set_layer_precisions(trt, network,
                                                        options["layer_precisions"])
    config = _builder_config(trt, builder, mode, inp["name"], shapes, options,
                             layer_info is not None)
    cached = _attach_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "\n".join(f"  {m}" for m in logger.errors[-10:]) or "  (no error logged)"
        raise UnsupportedGraphError(f"TensorRT {trt.__version__} failed to build {onnx} "
                                    f"({precision}) on {meta.describe_gpu(gpu)}:\n{detail}")
    if cached:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    if layer_info is not None:
        write_layer_info(trt, logger, serialized, layer_info)
    onnx_sha = sha256_file(onnx)

    def sidecar(plan_sha, plan_bytes):
        return meta.make_sidecar(
            plan_path=plan, plan_sha256=plan_sha, plan_bytes=plan_bytes, onnx_path=onnx,
            onnx_sha256=onnx_sha, onnx_meta=src_meta, precision=precision, io=io,
            tensorrt_version=trt.__version__, gpu=gpu, build_options=options, mode=mode)

    meta.write_plan_and_sidecar(plan, serialized, sidecar)
    return plan
