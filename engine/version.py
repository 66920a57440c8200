"""The package version, in one place (the distribution, ONNX producer, plan sidecars)."""
__version__ = "0.1.0"
