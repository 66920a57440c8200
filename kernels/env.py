"""Where the kernels can run: the one check for "is there a usable CUDA GPU" and the one for
"does Triton run kernels with its CPU interpreter".

Imports nothing heavy at module level, so code that must decide before the kernels are
defined (``triton.jit`` picks the interpreter when it decorates, at import) can ask first.
"""
from __future__ import annotations

import os


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cuda_usable() -> bool:
    """True when torch is installed with CUDA and sees at least one GPU."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
