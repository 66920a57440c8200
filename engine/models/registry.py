"""Registry of model variants and their typed configs.

The model files register their variants on import (``@register(config)``); the package
``engine.models`` imports them, so the registry never imports a model file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from ..errors import InputError, UnknownModelError
from ..runtime import count_option


@dataclass(frozen=True)
class ModelConfig:
    """Everything a runtime needs to feed and read a variant, independent of the weights."""

    name: str
    arch: str                                   # inception_v4 | inception_resnet_v1 | inception_resnet_v2
    input_size: Tuple[int, int, int] = (3, 299, 299)
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    num_classes: int = 1000
    label_offset: int = 0                       # 1 for TF-slim's 1001-class checkpoints (background)
    labels: str = "imagenet"                    # name of the shipped label set, "" when none
    first_conv: str = "conv2d_1a.conv"
    classifier: str = "classif"
    min_input_size: int = 75
    width: float = 1.0
    output: str = "logits"                      # "logits" | "embedding" (L2-normalised)
    description: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("input_size", "mean", "std"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def with_(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class _Entry:
    config: ModelConfig
    builder: Callable


_REGISTRY: Dict[str, _Entry] = {}


def register(config: ModelConfig):
    """Decorator: register ``builder(config, **kw) -> nn.Module`` under ``config.name``."""
    def deco(builder):
        _REGISTRY[config.name] = _Entry(config, builder)
        return builder
    return deco


def list_models():
    """Names of all registered variants, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names are: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_config(name: str) -> ModelConfig:
    """The typed config of a registered variant (see :class:`ModelConfig`)."""
    return _entry(name).config


def create_model(name: str, weights=None, width: float = 1.0, num_classes: Optional[int] = None,
                 seed: Optional[int] = None, allow_non_finite: bool = False, **kwargs):
    """Build a variant in eval mode.

    weights: ``None`` (random init, say so where it matters), ``"timm"`` (timm's pretrained
    weights; needs network access) or a path to a local ``.pth``/``.pt``/``.safetensors``.
    seed: seeds the random initialisation, so two processes (an export and a later verify
    without weights) build the same network; ``None`` leaves torch's generator as it is.
    width: channel multiplier; 1.0 is the network of the public weights.
    num_classes: override the classifier size (``0`` removes the classifier).
    allow_non_finite: load a checkpoint holding NaN/Inf (refused by default).
    """
    entry = _entry(name)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width <= 4):
        raise InputError(f"width must be in (0, 4], got {width!r}; 1.0 is the network of the "
                         "public weights, smaller values give narrower variants")
    num_classes = count_option("num_classes", num_classes, minimum=0)
    seed = count_option("seed", seed, minimum=0)
    cfg = entry.config
    changes = {}
    if width != 1.0:
        changes["width"] = float(width)
    if num_classes is not None and num_classes != cfg.num_classes:
        changes["num_classes"] = int(num_classes)
        changes["labels"] = ""
    if changes:
        cfg = cfg.with_(**changes)
    if seed is not None:
        import torch
        torch.manual_seed(seed)
    model = entry.builder(cfg, **kwargs)
    model.config = cfg
    model.eval()
    if weights is not None:
        from ..weights import load_weights
        load_weights(model, weights, allow_non_finite=allow_non_finite)
    return model
