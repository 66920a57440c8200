"""Error types. Every message says what is wrong and what to do about it."""


class EngineError(Exception):
    """Base class of this package's errors."""


class UnknownModelError(EngineError, KeyError):
    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class WeightsError(EngineError):
    """A checkpoint that cannot be loaded into the model (missing file, keys, shapes)."""


class ArtifactError(EngineError):
    """A model file (ONNX, plan, cache) that is missing, truncated or not what it claims."""


class BackendUnavailableError(EngineError):
    """An engine whose library is not installed, or that cannot run on this machine."""


class InputError(EngineError, ValueError):
    """A bad value from the caller: input of the wrong rank, shape or dtype, input holding
    NaN/Inf, or an argument or command-line option out of its range."""


class UnsupportedGraphError(EngineError):
    """An ONNX node that an engine cannot run."""


class UnsupportedPrecisionError(ArtifactError, ValueError):
    """A precision the file or the engine cannot give (INT8 from an FP32 graph, FP16 from a
    Q/DQ graph, BF16 on an engine without it, an unknown name)."""


class InvalidGraphError(ArtifactError):
    """An ONNX graph that fails the checks made before any engine parses it (the ONNX checker,
    strict shape inference, the opset, the op types the engine supports). The message names
    the file and the node."""
