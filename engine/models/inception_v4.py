"""Inception-v4.

Design: Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning" (2016). Weights: TF-slim's ``inception_v4``, as ported by
timm (``inception_v4.tf_in1k``). The trunk is ``features.0`` ... ``features.21`` like timm's,
so its state dict loads strictly. 42,679,816 parameters, 12.28 GMACs at 299.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .layers import Branches, ConvBNReLU, InceptionC, check_input, scaled
from .registry import ModelConfig, register


class Mixed3a(nn.Module):
    """[maxpool 3/2 ‖ 3x3/2 96]: the only block whose pool comes first in the concat."""

    def __init__(self, in_ch, w, cb=ConvBNReLU):
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = cb(in_ch, w(96), 3, stride=2)
        self.out_channels = in_ch + w(96)

    def forward(self, x):
        return torch.cat([self.maxpool(x), self.conv(x)], 1)


class Mixed5a(nn.Module):
    """[3x3/2 192 ‖ maxpool 3/2]."""

    def __init__(self, in_ch, w, cb=ConvBNReLU):
        super().__init__()
        self.conv = cb(in_ch, w(192), 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.out_channels = in_ch + w(192)

    def forward(self, x):
        return torch.cat([self.conv(x), self.maxpool(x)], 1)


def inception_a(ch, w, cb):
    return Branches(ch, {"branch0": [(w(96), 1)],
                         "branch1": [(w(64), 1), (w(96), 3)],
                         "branch2": [(w(64), 1), (w(96), 3), (w(96), 3)],
                         "branch3": ["avgpool", (w(96), 1)]}, cb)


def reduction_a(ch, w, cb):
    m = Branches(ch, {"branch0": [(w(384), 3, 2)],
                      "branch1": [(w(192), 1), (w(224), 3), (w(256), 3, 2)],
                      "branch2": ["maxpool"]}, cb)
    return m


def inception_b(ch, w, cb):
    return Branches(ch, {"branch0": [(w(384), 1)],
                         "branch1": [(w(192), 1), (w(224), (1, 7)), (w(256), (7, 1))],
                         "branch2": [(w(192), 1), (w(192), (7, 1)), (w(224), (1, 7)),
                                     (w(224), (7, 1)), (w(256), (1, 7))],
                         "branch3": ["avgpool", (w(128), 1)]}, cb)


def reduction_b(ch, w, cb):
    m = Branches(ch, {"branch0": [(w(192), 1), (w(192), 3, 2)],
                      "branch1": [(w(256), 1), (w(256), (1, 7)), (w(320), (7, 1)), (w(320), 3, 2)],
                      "branch2": ["maxpool"]}, cb)
    return m


class InceptionV4(nn.Module):
    def __init__(self, num_classes=1000, in_chans=3, width=1.0, drop_rate=0.0, conv_block=ConvBNReLU,
                 repeats=(4, 7, 3)):
        super().__init__()
        w = partial(scaled, width=width)
        cb = conv_block
        self.in_chans = in_chans
        layers = [cb(in_chans, w(32), 3, stride=2), cb(w(32), w(32), 3), cb(w(32), w(64), 3, padding=1)]
        layers.append(Mixed3a(w(64), w, cb))
        ch = layers[-1].out_channels
        layers.append(Branches(ch, {   # Mixed_4a: its 3x3 convs are VALID
            "branch0": [(w(64), 1), (w(96), 3, 1, 0)],
            "branch1": [(w(64), 1), (w(64), (1, 7)), (w(64), (7, 1)), (w(96), 3, 1, 0)]}, cb))
        layers.append(Mixed5a(layers[-1].out_channels, w, cb))
        ch = layers[-1].out_channels
        stages = [(inception_a, repeats[0]), (reduction_a, 1), (inception_b, repeats[1]),
                  (reduction_b, 1), (lambda c, w_, cb_: InceptionC(c, w_, cb_), repeats[2])]
        for make, n in stages:
            for _ in range(n):
                layers.append(make(ch, w, cb))
                ch = layers[-1].out_channels
        self.features = nn.Sequential(*layers)
        self.num_features = ch
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.last_linear = nn.Linear(ch, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        check_input(x, self.in_chans, 75, type(self).__name__)
        return self.features(x)

    def forward_head(self, x):
        return self.last_linear(self.head_drop(torch.flatten(self.global_pool(x), 1)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _build(cfg: ModelConfig, **kw):
    return InceptionV4(num_classes=cfg.num_classes, width=cfg.width, **kw)


register(ModelConfig(name="inception_v4", arch="inception_v4", crop_pct=0.875,
                     first_conv="features.0.conv", classifier="last_linear",
                     description="Inception-v4 as in TF-slim/timm weights (ImageNet-1k, 299)"))(_build)

# Trained test subject, same recipe as inception_resnet_v2_fmnist (benchmarks/train_subject.py).
register(ModelConfig(
    name="inception_v4_fmnist", arch="inception_v4", input_size=(3, 75, 75), crop_pct=1.0,
    interpolation="bilinear", num_classes=10, labels="fashion_mnist",
    first_conv="features.0.conv", classifier="last_linear", width=0.25,
    description="Inception-v4 at width 0.25, 75x75, Fashion-MNIST (10 classes): a study subject"))(_build)
