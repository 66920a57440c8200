"""The PyTorch side of layer-wise parity: which modules to compare, and their outputs.

``engine.parity`` matches these module paths to ONNX tensors (by the exporter's node names);
the torch runtime returns them as its intermediates.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .layers import ConvBNReLU


def compared_modules(model) -> List[str]:
    """Module paths of the units worth comparing: conv-BN-ReLU units, residual blocks, branch
    concats, other model blocks and pools (not the pieces folded away in export: a unit's conv
    and BN, a residual's up-projection, and not the head)."""
    from torch import nn
    names = []
    skip_under: List[str] = []
    for name, m in model.named_modules():
        if not name:
            continue
        if any(name.startswith(p + ".") for p in skip_under):
            continue
        if isinstance(m, ConvBNReLU):
            names.append(name)
            skip_under.append(name)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            names.append(name)
        elif type(m).__module__.startswith("engine.models"):
            names.append(name)  # Residual, Branches, InceptionC and the other blocks
    return names


def capture_modules(model, x, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """Run ``model(x)`` and return the outputs of the modules at ``names`` (forward hooks)."""
    import torch
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise KeyError(f"modules not in the model: {', '.join(missing[:5])}")
    acts: Dict[str, np.ndarray] = {}
    handles = []

    def hook(name):
        def fn(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                acts[name] = out.detach().float().cpu().numpy().copy()
        return fn
    try:
        for n in names:
            handles.append(mods[n].register_forward_hook(hook(n)))
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return acts
