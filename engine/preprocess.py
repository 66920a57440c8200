"""Image preprocessing per a model config, and label sets for top-k output.

``preprocess`` follows timm's eval transform: resize the shorter side to
``floor(size / crop_pct)`` with the config's interpolation, center-crop to ``size``, scale to
[0, 1], normalise with the config's mean and std. Grayscale images are replicated to RGB.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .errors import InputError
from .runtime import count_option

DATA_DIR = Path(__file__).resolve().parent / "data"
_INTERP = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST", "lanczos": "LANCZOS"}


class ImageNotFoundError(InputError, FileNotFoundError):
    """An image path that does not exist."""


def _open(image):
    from PIL import Image, UnidentifiedImageError
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(f"a numpy image must be uint8 HxW or HxWxC, got {image.dtype} "
                             f"{image.shape}")
        return Image.fromarray(image)
    path = Path(image)
    if not path.exists():
        raise ImageNotFoundError(f"image {path} does not exist; check the path")
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path} is not a readable image ({e}); pass a JPEG/PNG/BMP file") from e


def resize_crop(img, size: int, crop_pct: float, interpolation: str):
    """Resize the shorter side to floor(size / crop_pct) and center-crop to size x size."""
    from PIL import Image
    if interpolation not in _INTERP:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(_INTERP)}")
    scale = math.floor(size / crop_pct)
    w, h = img.size
    if w <= h:
        nw, nh = scale, int(round(h * scale / w))
    else:
        nw, nh = int(round(w * scale / h)), scale
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), getattr(Image.Resampling, _INTERP[interpolation]))
    left = int(round((nw - size) / 2.0))
    top = int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess(image, config, dtype="float32"):
    """One image (path, PIL image or uint8 array) -> 1x3xHxW float32 torch tensor."""
    import torch
    img = _open(image).convert("RGB")
    _, h, w = config.input_size
    if h != w:
        raise ValueError(f"non-square input sizes are not supported ({h}x{w})")
    img = resize_crop(img, h, config.crop_pct, config.interpolation)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].to(getattr(torch, dtype))


def labels_for(config) -> Optional[List[str]]:
    """Class names for the config's label set, or None."""
    if config.labels == "imagenet":
        names = (DATA_DIR / "imagenet_classes.txt").read_text().splitlines()
    elif config.labels == "fashion_mnist":
        from .datasets import CLASSES
        names = list(CLASSES)
    else:
        return None
    return names if len(names) == config.num_classes else None


def topk(logits, k: int = 5, labels: Optional[Sequence[str]] = None, label_offset: int = 0):
    """Softmax top-k per row: list of lists of (class index, label, probability)."""
    k = count_option("k", k, 1, allow_none=False)
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=1, keepdims=True)
    out = []
    for row in p:
        idx = np.argsort(-row)[:k]
        out.append([(int(i) - label_offset, labels[i] if labels else str(int(i) - label_offset),
                     float(row[i])) for i in idx])
    return out
