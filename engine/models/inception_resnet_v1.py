"""Inception-ResNet-v1.

Design: Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning" (2016); the paper, David Sandberg's facenet and facenet-pytorch agree
on the trunk. Module names follow facenet-pytorch's ``InceptionResnetV1`` (``conv2d_1a`` ...
``repeat_1``/``repeat_2``/``repeat_3``, ``block8``), so its state dicts (vggface2, casia-webface)
load with ``strict=True`` into the face variant. The trunk through ``block8`` has 22,564,096
parameters.

Two variants:
- ``inception_resnet_v1``: the paper's ImageNet classifier, 299 input, 1000 classes
  (``last_linear`` 1792 -> 1000 with bias). No public weights exist for it.
- ``inception_resnet_v1_face``: facenet-pytorch's face embedder, 160 input, ``last_linear``
  (1792 -> 512, no bias) -> ``last_bn`` -> L2-normalised 512-d embedding; pass
  ``num_classes=N`` to add its ``logits`` head (then the output is logits, as facenet-pytorch
  gives with ``classify=True``).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Branches, ConvBNReLU, Residual, check_input, resnet_stem, scaled
from .registry import ModelConfig, register

SCALES = (0.17, 0.10, 0.20)
REPEATS = (5, 10, 5)


class InceptionResnetV1(nn.Module):
    def __init__(self, num_classes=1000, in_chans=3, width=1.0, drop_rate=0.0, face=False,
                 embedding_size=512, conv_block=ConvBNReLU, scales=SCALES, repeats=REPEATS):
        super().__init__()
        w = partial(scaled, width=width)
        cb = conv_block
        self.in_chans = in_chans
        self.face = face
        for name, module in resnet_stem(in_chans, w, cb).items():
            setattr(self, name, module)
        self.conv2d_4b = cb(w(192), w(256), 3, stride=2)
        ch = w(256)
        self.repeat_1 = nn.Sequential(*[
            Residual(ch, {"branch0": [(w(32), 1)],
                          "branch1": [(w(32), 1), (w(32), 3)],
                          "branch2": [(w(32), 1), (w(32), 3), (w(32), 3)]}, scales[0], conv_block=cb)
            for _ in range(repeats[0])])
        # Reduction-A with (k, l, m, n) = (192, 192, 256, 384)
        self.mixed_6a = Branches(ch, {"branch0": [(w(384), 3, 2)],
                                      "branch1": [(w(192), 1), (w(192), 3), (w(256), 3, 2)],
                                      "branch2": ["maxpool"]}, cb)
        ch = self.mixed_6a.out_channels                  # 896 (maxpool passes ch through)
        self.repeat_2 = nn.Sequential(*[
            Residual(ch, {"branch0": [(w(128), 1)],
                          "branch1": [(w(128), 1), (w(128), (1, 7)), (w(128), (7, 1))]},
                     scales[1], conv_block=cb)
            for _ in range(repeats[1])])
        self.mixed_7a = Branches(ch, {"branch0": [(w(256), 1), (w(384), 3, 2)],
                                      "branch1": [(w(256), 1), (w(256), 3, 2)],
                                      "branch2": [(w(256), 1), (w(256), 3), (w(256), 3, 2)],
                                      "branch3": ["maxpool"]}, cb)
        ch = self.mixed_7a.out_channels                  # 1792 (maxpool passes ch through)

        def b8(scale, relu=True):
            return Residual(ch, {"branch0": [(w(192), 1)],
                                 "branch1": [(w(192), 1), (w(192), (1, 3)), (w(192), (3, 1))]},
                            scale, relu=relu, conv_block=cb)
        self.repeat_3 = nn.Sequential(*[b8(scales[2]) for _ in range(repeats[2])])
        self.block8 = b8(1.0, relu=False)
        self.num_features = ch
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        if face:
            self.last_linear = nn.Linear(ch, embedding_size, bias=False)
            self.last_bn = nn.BatchNorm1d(embedding_size, eps=0.001, momentum=0.1, affine=True)
            self.logits = nn.Linear(embedding_size, num_classes) if num_classes else None
        else:
            self.last_linear = nn.Linear(ch, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        check_input(x, self.in_chans, 75, type(self).__name__)
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a",
                     "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8"):
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x):
        x = self.dropout(torch.flatten(self.avgpool_1a(x), 1))
        if not self.face:
            return self.last_linear(x)
        x = self.last_bn(self.last_linear(x))
        if self.logits is not None:
            return self.logits(x)
        return F.normalize(x, p=2, dim=1)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _build(cfg: ModelConfig, **kw):
    return InceptionResnetV1(num_classes=cfg.num_classes, width=cfg.width, **kw)


def _build_face(cfg: ModelConfig, **kw):
    return InceptionResnetV1(num_classes=cfg.num_classes, width=cfg.width, face=True, **kw)


register(ModelConfig(name="inception_resnet_v1", arch="inception_resnet_v1",
                     classifier="last_linear",
                     description="Inception-ResNet-v1 as in the paper (ImageNet-1k, 299; no public weights)"))(_build)

# Trained test subject, same recipe as inception_resnet_v2_fmnist (benchmarks/train_subject.py).
register(ModelConfig(
    name="inception_resnet_v1_fmnist", arch="inception_resnet_v1", input_size=(3, 75, 75),
    crop_pct=1.0, interpolation="bilinear", num_classes=10, labels="fashion_mnist",
    classifier="last_linear", width=0.25,
    description="IR-v1 at width 0.25, 75x75, Fashion-MNIST (10 classes): a study subject"))(_build)

# facenet-pytorch preprocessing: (x - 127.5) / 128 on 0..255 pixels, 160x160 face crops.
register(ModelConfig(name="inception_resnet_v1_face", arch="inception_resnet_v1",
                     input_size=(3, 160, 160), mean=(127.5 / 255,) * 3, std=(128 / 255,) * 3,
                     crop_pct=1.0, interpolation="bilinear", num_classes=0, labels="",
                     classifier="logits", output="embedding",
                     description="facenet-pytorch face embedder (512-d, L2-normalised; 160)"))(_build_face)
