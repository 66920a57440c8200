"""Inception-ResNet-v2.

Design: Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning" (2016). Weights: TF-slim's ``inception_resnet_v2``, as
ported by timm (``inception_resnet_v2.tf_in1k``); module names here match timm so its state
dict loads with ``strict=True``.

The public weights differ from the paper's figures, and this file follows the weights:
the stem ends at 35x35x192 (then mixed_5b gives 320 channels, where the paper draws 384),
the blocks repeat 10/20/10 times (the paper says 5/10/5), the up-projections have 320, 1088
and 2080 channels (paper: 384, 1154, 2048), and a 1x1 ``conv2d_7b`` to 1536 channels comes
before the pooling (absent from the paper). 55,843,464 parameters, 13.18 GMACs at 299.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .layers import Branches, ConvBNReLU, Residual, check_input, resnet_stem, scaled
from .registry import ModelConfig, register

SCALES = (0.17, 0.10, 0.20)   # block35, block17, block8 residual scales
REPEATS = (10, 20, 9)         # plus the final block8 (scale 1.0, no ReLU)


def block35(ch, w, scale, cb=ConvBNReLU):
    return Residual(ch, {"branch0": [(w(32), 1)],
                         "branch1": [(w(32), 1), (w(32), 3)],
                         "branch2": [(w(32), 1), (w(48), 3), (w(64), 3)]}, scale, conv_block=cb)


def block17(ch, w, scale, cb=ConvBNReLU):
    return Residual(ch, {"branch0": [(w(192), 1)],
                         "branch1": [(w(128), 1), (w(160), (1, 7)), (w(192), (7, 1))]},
                    scale, conv_block=cb)


def block8(ch, w, scale, relu=True, cb=ConvBNReLU):
    return Residual(ch, {"branch0": [(w(192), 1)],
                         "branch1": [(w(192), 1), (w(224), (1, 3)), (w(256), (3, 1))]},
                    scale, relu=relu, conv_block=cb)


class InceptionResnetV2(nn.Module):
    def __init__(self, num_classes=1000, in_chans=3, width=1.0, drop_rate=0.0,
                 conv_block=ConvBNReLU, scales=SCALES, repeats=REPEATS):
        super().__init__()
        w = partial(scaled, width=width)
        cb = conv_block
        self.in_chans = in_chans
        # Stem: 299 -> 35x35x192
        for name, module in resnet_stem(in_chans, w, cb).items():
            setattr(self, name, module)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Branches(w(192), {
            "branch0": [(w(96), 1)],
            "branch1": [(w(48), 1), (w(64), 5)],
            "branch2": [(w(64), 1), (w(96), 3), (w(96), 3)],
            "branch3": ["avgpool", (w(64), 1)]}, cb)
        ch = self.mixed_5b.out_channels                       # 320
        self.repeat = nn.Sequential(*[block35(ch, w, scales[0], cb) for _ in range(repeats[0])])
        self.mixed_6a = Branches(ch, {
            "branch0": [(w(384), 3, 2)],
            "branch1": [(w(256), 1), (w(256), 3), (w(384), 3, 2)],
            "branch2": ["maxpool"]}, cb)
        ch = self.mixed_6a.out_channels                  # 1088 (maxpool passes ch through)
        self.repeat_1 = nn.Sequential(*[block17(ch, w, scales[1], cb) for _ in range(repeats[1])])
        self.mixed_7a = Branches(ch, {
            "branch0": [(w(256), 1), (w(384), 3, 2)],
            "branch1": [(w(256), 1), (w(288), 3, 2)],
            "branch2": [(w(256), 1), (w(288), 3), (w(320), 3, 2)],
            "branch3": ["maxpool"]}, cb)
        ch = self.mixed_7a.out_channels                  # 2080 (maxpool passes ch through)
        self.repeat_2 = nn.Sequential(*[block8(ch, w, scales[2], cb=cb) for _ in range(repeats[2])])
        self.block8 = block8(ch, w, 1.0, relu=False, cb=cb)
        self.conv2d_7b = cb(ch, w(1536), 1)
        self.num_features = w(1536)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.classif = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        check_input(x, self.in_chans, 75, type(self).__name__)
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b",
                     "conv2d_4a", "maxpool_5a", "mixed_5b", "repeat", "mixed_6a", "repeat_1",
                     "mixed_7a", "repeat_2", "block8", "conv2d_7b"):
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x):
        x = torch.flatten(self.global_pool(x), 1)
        return self.classif(self.head_drop(x))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _build(cfg: ModelConfig, **kw):
    return InceptionResnetV2(num_classes=cfg.num_classes, width=cfg.width, **kw)


register(ModelConfig(
    name="inception_resnet_v2", arch="inception_resnet_v2", crop_pct=0.8975,
    classifier="classif",
    description="Inception-ResNet-v2 as in TF-slim/timm weights (ImageNet-1k, 299)"))(_build)

# The project's trained test subject: the same topology at width 0.25, trained on
# Fashion-MNIST (28x28 grayscale resized to 75x75 and replicated to 3 channels). Its
# checkpoint ships with the package (weights="bundled"); see benchmarks/train_subject.py.
register(ModelConfig(
    name="inception_resnet_v2_fmnist", arch="inception_resnet_v2", input_size=(3, 75, 75),
    crop_pct=1.0, interpolation="bilinear", num_classes=10, labels="fashion_mnist",
    classifier="classif", width=0.25,
    description="IR-v2 at width 0.25, 75x75, Fashion-MNIST (10 classes): the INT8 study subject"))(_build)
