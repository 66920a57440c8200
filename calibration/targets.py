"""Target engines of a Q/DQ file: the layout each engine runs fastest, from one calibration.

The statistics (histograms of every activation) do not depend on the engine; the Q/DQ layout
does. Two layouts exist:

- **signed**: int8 activations everywhere, zero point 0. TensorRT's Q/DQ takes int8 only, and
  our Triton engine's kernels are int8 only, so both get it.
- **unsigned ReLU**: uint8 (zero point 0, scale ``amax / 255``) on tensors that are provably
  >= 0 (ReLU outputs, their concats and pools), int8 elsewhere. OpenVINO's CPU convolutions
  take unsigned activations; on a signed file its CPU plugin runs each Concat, and the conv
  that reads it, in FP32, which halves the INT8 speed-up. The layers that read the image
  (signed int8, it is normalised about 0) get 7-bit weights (±63): on CPUs without VNNI,
  OpenVINO multiplies signed int8 inputs in int16 pairs that saturate with full-range weights
  (measured on the shipped subject, 2-vCPU AVX2-only EPYC, 1,000 validation images: 96.3 %
  agreement with FP32 with ±127 first-layer weights, 99.8 % with ±63; NNCF's overflow fix does
  the same). Every other layer keeps ±127.

ONNX Runtime gets the signed layout. Its U8S8 CPU kernels run the uint8 file faster (2.3x at
batch 8 on the shipped subject), but on x86 CPUs without VNNI they multiply with VPMADDUBSW,
whose int16 sums saturate: measured on a 2-vCPU AVX2-only EPYC, the uint8 file agreed with
FP32 on 96.5 % of 1,000 test images against 99.6 % for the signed one (benchmarks/RESULTS.md,
"Q/DQ per target engine"). A file must not lose accuracy on the CPU it is moved to, so the
signed layout, accurate everywhere, is the onnxruntime target.

The target is written into the file's ``inception.calibration`` record under
:data:`TARGET_FIELD`; ``engine.load`` reads it back with :func:`file_target` and warns, through
:func:`mismatch`, when a file runs on an engine whose layout differs.

The head (global pool, Flatten, classifier: < 0.1 % of the MACs) stays float on every target
unless ``quantize_gemm=True`` (:attr:`Target.quantize_head`). On OpenVINO's CPU plugin a float
head runs the pool and the classifier in bf16 and the last conv with a float output (its jit
kernel instead of brgconv), yet the whole network was faster that way: on an idle 2-vCPU AMX
Xeon, batch 1, 120 interleaved rounds, the int8 head (as NNCF writes it) was slower in 88 of
120 (median ×1.050, sign test p = 3e-7), and the float-head file beat NNCF's in 88 of 120
(×0.956, ``benchmarks/cpu_profile.py``; benchmarks/RESULTS.md, "Where the CPU time goes").

Layers kept in higher precision (``exclude``, ``auto_exclude``, ``max_drop``) stay float in the
file; the engine runs them at its float precision: :attr:`Target.fallback` names it (OpenVINO:
BF16 where the CPU has it, else FP32; TensorRT and Triton: FP16 on the GPU; ONNX Runtime's CPU
provider: FP32).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional

from .errors import CalibrationArgumentError
from .methods import QMAX

TARGET_FIELD = "target"          # key of the target engine in the inception.calibration record


@dataclass(frozen=True)
class Target:
    name: str
    unsigned_relu: bool     # uint8 zero point 0 on non-negative tensors (else int8 everywhere)
    fallback: str           # the float precision the engine gives layers left unquantized
    reason: str             # why this layout, in one line (shown in warnings and --help)
    input_weight_qmax: int = QMAX   # weight range of the layers that read the (signed) image
    # calibration methods whose files bias correction improved on this target's engines
    # (validation split of the three shipped subjects; ``calibration/bias.py``)
    bias_correction: FrozenSet[str] = frozenset()
    # the head (global pool, Flatten, classifier) in int8 when ``quantize_gemm`` is not given
    quantize_head: bool = False


# Bias correction pays where the range method clips hard: entropy cuts the long tails of ReLU
# outputs, which lowers every channel's mean. Measured with and without it, every method, both
# layouts, the three shipped subjects, on the validation split (benchmarks/RESULTS.md, "Bias
# correction"): entropy gained on both layouts (summed over subjects and engines: +11.1 pt
# top-1 and +12.8 pt agreement with FP32 uint8, +6.8 / +5.7 signed); for minmax, percentile
# and mse the changes were within a few images either way and mostly negative, so they go
# without. The signed layout's figure covers the targets that run it (Triton's int8 kernels
# compute what ONNX Runtime does).
CLIPPING_METHODS = frozenset({"entropy"})

TARGETS: Dict[str, Target] = {t.name: t for t in (
    Target("openvino", True, "bf16 where the CPU has it, else fp32",
           "OpenVINO's CPU plugin keeps a Concat (and the conv after it) in int8 only when its "
           "input is uint8", input_weight_qmax=63, bias_correction=CLIPPING_METHODS),
    Target("onnxruntime", False, "fp32",
           "ONNX Runtime's uint8 kernels saturate on x86 CPUs without VNNI; signed int8 stays "
           "accurate on every CPU", bias_correction=CLIPPING_METHODS),
    Target("tensorrt", False, "fp16",
           "TensorRT's Q/DQ takes int8 only", bias_correction=CLIPPING_METHODS),
    Target("triton", False, "fp16",
           "the Triton engine's kernels take int8 activations only",
           bias_correction=CLIPPING_METHODS),
)}

# calibration.quantize's default: the signed layout, the one every engine can run
DEFAULT_TARGET = "tensorrt"


def get_target(name: str) -> Target:
    """The :class:`Target` called ``name``, or an error listing the valid names."""
    target = TARGETS.get(name)
    if target is None:
        raise CalibrationArgumentError(
            f"unknown target engine {name!r}; choose one of {', '.join(TARGETS)}")
    return target


def resolve_target(target: Optional[str], unsigned_relu: Optional[bool]) -> Target:
    """The target of a ``quantize`` call; ``unsigned_relu`` is the deprecated way to say it.

    ``unsigned_relu=True`` means ``target="openvino"`` and ``False`` means ``"tensorrt"``;
    given together with a ``target`` of the other layout it is an error.
    """
    if unsigned_relu is None:
        return get_target(target or DEFAULT_TARGET)
    warnings.warn("unsigned_relu is deprecated: pass target='openvino' (uint8 after ReLU) or "
                  "target='tensorrt' (signed int8) instead", DeprecationWarning, stacklevel=3)
    if target is None:
        return get_target("openvino" if unsigned_relu else "tensorrt")
    chosen = get_target(target)
    if chosen.unsigned_relu != bool(unsigned_relu):
        raise CalibrationArgumentError(
            f"unsigned_relu={unsigned_relu} contradicts target={target!r} (whose layout is "
            f"{'uint8' if chosen.unsigned_relu else 'int8'} after ReLU); pass only target")
    return chosen


def quantizes_head(target: Target, quantize_gemm: Optional[bool]) -> bool:
    """Whether the file's head (global pool, Flatten, classifier) is int8: ``quantize_gemm``
    when given, else the target's default (:attr:`Target.quantize_head`)."""
    return target.quantize_head if quantize_gemm is None else bool(quantize_gemm)


def wants_bias_correction(target: Target, method: str) -> bool:
    """Whether ``quantize`` corrects biases by default for this target and method."""
    return method in target.bias_correction


def file_target(calibration_record: Optional[dict]) -> Optional[str]:
    """The target engine a Q/DQ file was written for (None: unknown, e.g. an older file)."""
    if not isinstance(calibration_record, dict):
        return None
    name = calibration_record.get(TARGET_FIELD)
    return name if name in TARGETS else None


def mismatch(made_for: Optional[str], backend: str) -> Optional[str]:
    """A warning text when a file written for ``made_for`` runs on ``backend`` with another
    layout (None when the layouts agree, or either side is not a target)."""
    if made_for not in TARGETS or backend not in TARGETS:
        return None
    have, want = TARGETS[made_for], TARGETS[backend]
    if have.unsigned_relu == want.unsigned_relu:
        return None
    layout = "uint8 after ReLU" if have.unsigned_relu else "signed int8 everywhere"
    return (f"this Q/DQ file was written for {made_for} ({layout}) and runs on {backend}, which "
            f"runs another layout faster ({want.reason}); write one for it from the same "
            f"statistics: calibration.quantize(..., target={backend!r}) or "
            f"`inception-engine quantize --target {backend}`")
