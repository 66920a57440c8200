"""Building blocks shared by the three Inception networks.

Every convolution in these networks (apart from the residual up-projections) is
the same unit: Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU.  It is defined
once here as :class:`ConvBNReLU`; the blocks take the unit as an argument so a
folded or fused unit can be swapped in.

Module names follow the public weights: ``conv``/``bn`` inside the unit,
``branchN`` for parallel branches (a bare unit when a branch is a single conv, an
``nn.Sequential`` otherwise) and ``conv2d`` for the residual up-projection.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import nn

BN_EPS = 1e-3


def scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Channel count for a width multiplier: nearest multiple of ``divisor``, at least ``divisor``.

    At ``width == 1.0`` the count is returned unchanged, so the full networks match the
    public weights exactly (several of their widths, e.g. 1088 or 1792, are multiples of 8
    anyway, but 80 or 3 are not touched either way).
    """
    if width == 1.0:
        return channels
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


def same_padding(kernel_size):
    """SAME padding for a stride-1 conv with odd kernel: ``k // 2`` per axis (1x7 pads (0, 3))."""
    if isinstance(kernel_size, int):
        return kernel_size // 2
    return tuple(k // 2 for k in kernel_size)


class ConvBNReLU(nn.Module):
    """The basic unit: Conv2d(bias=False) -> BatchNorm2d(eps=1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=False)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


ConvUnit = Callable[..., nn.Module]

# A conv spec is (out_channels, kernel_size[, stride[, padding]]); by default stride-1 convs pad
# SAME and stride-2 convs VALID.
# The strings "maxpool" (3x3/2 VALID) and "avgpool" (3x3/1/1, count_include_pad=False) stand
# for pooling layers inside a branch.
Spec = Union[tuple, str]


def make_branch(in_channels: int, specs: Sequence[Spec], conv_block: ConvUnit = ConvBNReLU):
    """Build one branch from specs. Returns ``(module, out_channels)``.

    A single-conv branch is the bare unit (key ``branch0.conv.weight``); longer branches
    are ``nn.Sequential`` (key ``branch1.0.conv.weight``), as in the public weights.
    """
    layers = []
    ch = in_channels
    for spec in specs:
        if spec == "maxpool":
            layers.append(nn.MaxPool2d(3, stride=2))
        elif spec == "avgpool":
            layers.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
        else:
            out, k, *rest = spec
            stride = rest[0] if rest else 1
            pad = rest[1] if len(rest) > 1 else (0 if stride != 1 else same_padding(k))
            layers.append(conv_block(ch, out, kernel_size=k, stride=stride, padding=pad))
            ch = out
    module = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    return module, ch


class Branches(nn.Module):
    """Parallel branches whose outputs are concatenated along channels.

    ``branches`` maps attribute names (``branch0``, ``branch1_1a``...) to spec lists.
    ``concat_groups`` optionally nests outputs (Inception-C concatenates 1x3 and 3x1 heads
    of a branch first); by default the output is the concat of all branches in order.
    """

    def __init__(self, in_channels: int, branches: dict, conv_block: ConvUnit = ConvBNReLU):
        super().__init__()
        self.out_channels = 0
        self._order = list(branches)
        for name, specs in branches.items():
            module, ch = make_branch(in_channels, specs, conv_block)
            setattr(self, name, module)
            self.out_channels += ch

    def forward(self, x):
        return torch.cat([getattr(self, n)(x) for n in self._order], 1)


class Residual(nn.Module):
    """Inception-ResNet block: ``relu(x + scale * conv2d(concat(branches(x))))``.

    ``conv2d`` is a 1x1 conv with bias, no BN and no activation; it projects back to the
    trunk width. The final block8 has ``scale=1.0`` and no ReLU.
    """

    def __init__(self, in_channels: int, branches: dict, scale: float, relu: bool = True,
                 conv_block: ConvUnit = ConvBNReLU):
        super().__init__()
        self.scale = scale
        self._order = list(branches)
        mid = 0
        for name, specs in branches.items():
            module, ch = make_branch(in_channels, specs, conv_block)
            setattr(self, name, module)
            mid += ch
        self.conv2d = nn.Conv2d(mid, in_channels, kernel_size=1, bias=True)
        self.relu = nn.ReLU() if relu else None
        self.out_channels = in_channels

    def forward(self, x):
        out = torch.cat([getattr(self, n)(x) for n in self._order], 1)
        out = self.conv2d(out)
        if self.scale != 1.0:  # 1.0 after export folds the scale into conv2d
            out = out * self.scale
        out = out + x
        return self.relu(out) if self.relu is not None else out


class InceptionC(nn.Module):
    """Inception-v4's 8x8 block: two branches end in a [1x3 ‖ 3x1] pair of heads."""

    def __init__(self, in_channels: int, w: Callable[[int], int], conv_block: ConvUnit = ConvBNReLU):
        super().__init__()
        cb = conv_block
        self.branch0 = cb(in_channels, w(256), 1)
        self.branch1_0 = cb(in_channels, w(384), 1)
        self.branch1_1a = cb(w(384), w(256), (1, 3), padding=(0, 1))
        self.branch1_1b = cb(w(384), w(256), (3, 1), padding=(1, 0))
        self.branch2_0 = cb(in_channels, w(384), 1)
        self.branch2_1 = cb(w(384), w(448), (3, 1), padding=(1, 0))
        self.branch2_2 = cb(w(448), w(512), (1, 3), padding=(0, 1))
        self.branch2_3a = cb(w(512), w(256), (1, 3), padding=(0, 1))
        self.branch2_3b = cb(w(512), w(256), (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), cb(in_channels, w(256), 1))
        self.out_channels = 6 * w(256)

    def forward(self, x):
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([self.branch0(x), self.branch1_1a(x1), self.branch1_1b(x1),
                          self.branch2_3a(x2), self.branch2_3b(x2), self.branch3(x)], 1)


def resnet_stem(in_chans: int, w: Callable[[int], int], conv_block: ConvUnit = ConvBNReLU) -> dict:
    """The stem both Inception-ResNets share, up to ``conv2d_4a`` (147 -> 71x71x192 at 299).

    Returned as ordered ``{name: module}`` so each model sets them under the public weights'
    names and adds its own last stem layer (IR-v1: ``conv2d_4b``; IR-v2: ``maxpool_5a``).
    """
    cb = conv_block
    return {"conv2d_1a": cb(in_chans, w(32), 3, stride=2),
            "conv2d_2a": cb(w(32), w(32), 3),
            "conv2d_2b": cb(w(32), w(64), 3, padding=1),
            "maxpool_3a": nn.MaxPool2d(3, stride=2),
            "conv2d_3b": cb(w(64), w(80), 1),
            "conv2d_4a": cb(w(80), w(192), 3)}


def check_input(x: torch.Tensor, in_chans: int, min_size: int, name: str):
    """Clear errors for the inputs the networks cannot take."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} expects a floating-point tensor (float32/float16/bfloat16), "
                        f"got {x.dtype}; convert with x.float() after normalising")
    if x.dim() != 4:
        raise ValueError(f"{name} expects NCHW input with 4 dims, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name} expects {in_chans} input channels, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)}); grayscale images must be replicated to 3 channels")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f"{name} needs a spatial size of at least {min_size}x{min_size}, "
                         f"got {x.shape[2]}x{x.shape[3]}")
