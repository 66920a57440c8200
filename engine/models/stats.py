"""Parameter and MAC counts, computed on the meta device (no memory, no real compute)."""
from __future__ import annotations

from typing import Optional, Tuple


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model, input_size: Tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convs and linears)."""
    import torch
    from torch import nn
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        dev = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=dev))
    finally:
        for h in hooks:
            h.remove()
    return total


def model_stats(name: str, width: float = 1.0, input_size: Optional[tuple] = None) -> dict:
    """Params and GMACs of a registered variant, built on the meta device."""
    import torch
    from .registry import create_model, get_config
    cfg = get_config(name)
    with torch.device("meta"):
        m = create_model(name, width=width)
    size = input_size or cfg.input_size
    return {"name": name, "params": count_params(m), "gmacs": count_macs(m, size) / 1e9,
            "input_size": tuple(size), "num_classes": m.config.num_classes, "width": m.config.width}
