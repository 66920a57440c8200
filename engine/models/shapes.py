"""The layer shapes of the real networks, read from the PyTorch models by forward hooks
(no hand-written tables): every conv, as the :class:`kernels.launches.ConvLaunch` it
becomes (geometry, input size, whether it is a residual up-projection), every pool, and the
groups of 1x1 convs that read the same tensor (the candidates for horizontal fusion). Runs
on the meta device, so no arithmetic is done.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

from kernels.launches import ConvLaunch


@dataclass(frozen=True)
class PoolShape:
    kind: str                 # "max" (3x3/2 VALID) | "avg" (3x3/1/1, count_include_pad=False)
    c: int
    h: int
    w: int

    @property
    def label(self) -> str:
        return f"{self.kind}pool 3x3 {self.c} @{self.h}x{self.w}"


@dataclass
class NetworkShapes:
    convs: Dict[ConvLaunch, List[str]] = field(default_factory=dict)   # distinct shape -> module names
    pools: Dict[PoolShape, List[str]] = field(default_factory=dict)
    fusion_groups: List[List[str]] = field(default_factory=list)      # 1x1 convs sharing an input (>= 2)
    conv_of: Dict[str, ConvLaunch] = field(default_factory=dict)        # module name -> shape
    linears: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # module name -> (in, out) features


@functools.lru_cache(maxsize=None)
def network_shapes(model_name: str, size: int = 0, width: float = 1.0) -> NetworkShapes:
    """Trace ``engine.create_model(model_name)`` at ``size`` (default: its config's input size)."""
    from .layers import ConvBNReLU
    from .registry import create_model, get_config

    model = create_model(model_name, width=width).eval()
    if not size:
        size = get_config(model_name).input_size[-1]
    result = NetworkShapes()
    keep_alive = []            # hold inputs so tensor ids stay unique during the trace
    readers: Dict[int, List[str]] = {}
    residual_convs = set()
    for name, mod in model.named_modules():
        if hasattr(mod, "scale") and isinstance(getattr(mod, "conv2d", None), nn.Conv2d):
            residual_convs.add(name + ".conv2d" if name else "conv2d")

    def conv_hook(name, conv):
        def hook(_mod, inputs, _out):
            x = inputs[0]
            keep_alive.append(x)
            shape = ConvLaunch(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.kernel_size[1],
                              conv.stride[0], conv.padding[0], conv.padding[1], x.shape[2], x.shape[3],
                              residual=name in residual_convs)
            result.convs.setdefault(shape, []).append(name)
            result.conv_of[name] = shape
            if shape.kh == shape.kw == 1 and shape.stride == 1 and not shape.residual:
                readers.setdefault(id(x), []).append(name)
        return hook

    def pool_hook(name, kind):
        def hook(_mod, inputs, _out):
            x = inputs[0]
            shape = PoolShape(kind, x.shape[1], x.shape[2], x.shape[3])
            result.pools.setdefault(shape, []).append(name)
        return hook

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, ConvBNReLU):
            handles.append(mod.conv.register_forward_hook(conv_hook(name, mod.conv)))
        elif isinstance(mod, nn.Conv2d) and name in residual_convs:
            handles.append(mod.register_forward_hook(conv_hook(name, mod)))
        elif isinstance(mod, nn.MaxPool2d):
            handles.append(mod.register_forward_hook(pool_hook(name, "max")))
        elif isinstance(mod, nn.AvgPool2d):
            handles.append(mod.register_forward_hook(pool_hook(name, "avg")))
        elif isinstance(mod, nn.Linear):
            result.linears[name] = (mod.in_features, mod.out_features)
    model = model.to("meta")
    try:
        with torch.no_grad():
            model(torch.empty(1, model.in_chans if hasattr(model, "in_chans") else 3, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    result.fusion_groups = [names for names in readers.values() if len(names) > 1]
    return result
