"""Calibration errors. Each is also one of ``engine``'s error types, so the CLI reports it."""
from __future__ import annotations

from engine.errors import ArtifactError, EngineError, InputError


class CalibrationError(EngineError):
    """Calibration cannot go on: bad arguments, a model it cannot quantize, no statistics."""


class CalibrationArgumentError(CalibrationError, InputError):
    """An argument of calibration out of its range (a percentile outside (0, 100], ...)."""


class CalibrationDataError(CalibrationError, InputError):
    """A calibration source that is empty, unreadable or of the wrong shape for the model."""


class AlreadyQuantizedError(CalibrationError, ArtifactError):
    """The input model already holds quantization nodes (Q/DQ or integer ops)."""


class CacheError(CalibrationError, ArtifactError):
    """A TensorRT calibration cache that is missing, corrupt or of an unknown format."""
