"""Image preprocessing per a model config, and label sets for top-k output.

``preprocess`` follows timm's eval transform: resize the shorter side to
``floor(size / crop_pct)`` with the config's interpolation, center-crop to ``size``, scale to
[0, 1], normalise with the config's mean and std.

Reading an image (a file, or encoded bytes with :func:`decode_image`, which the served
``--input encoded`` model uses) is one path, so a file run by ``inception-engine run`` and the
same bytes sent to the server give the same input: the header is read first and an image over
``max_pixels`` is refused before its pixels are decoded; the EXIF orientation is applied; and
every mode becomes RGB the same way (grayscale replicated, alpha dropped, CMYK and palettes
converted by Pillow).
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .errors import InputError
from .runtime import count_option

DATA_DIR = Path(__file__).resolve().parent / "data"
_INTERP = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST", "lanczos": "LANCZOS"}
# limits on one image: its encoded size (the served model's; the bundled server has no request
# size cap of its own) and its pixel count, checked from the header before decoding
MAX_IMAGE_BYTES = 32 * 2 ** 20
MAX_IMAGE_PIXELS = 40_000_000
ENCODED_FORMATS = ("JPEG", "PNG")   # what decode_image takes by default


class ImageNotFoundError(InputError, FileNotFoundError):
    """An image path that does not exist."""


def to_rgb(img):
    """A PIL image upright (its EXIF orientation applied) and in RGB."""
    from PIL import ImageOps
    img = ImageOps.exif_transpose(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _quiet_pillow_size_warning() -> None:
    """Pillow warns of images from 89 MP up; the size here is checked against ``max_pixels``
    instead. A process-wide filter for that warning alone (adding the same filter again
    only moves it to the front): a ``warnings.catch_warnings`` block per image would swap the
    process's filters under other threads decoding at the same time."""
    from PIL import Image
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _read(source, what: str, max_pixels: int, formats):
    """Open ``source`` (a path or a binary file), check its size from the header, decode."""
    from PIL import Image, UnidentifiedImageError
    kinds = "/".join(formats) if formats else "JPEG/PNG/BMP"
    _quiet_pillow_size_warning()
    try:
        img = Image.open(source, formats=formats)       # reads the header only
        w, h = img.size
    except Image.DecompressionBombError as e:   # Pillow's own cap, above ours
        raise InputError(f"{what}: {e}; the limit is {max_pixels:,} pixels") from e
    except UnidentifiedImageError as e:
        raise InputError(f"{what} is not a readable image (not a {kinds} file); pass a {kinds} "
                         "file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{what} is not a readable image ({e}); pass a {kinds} file") from e
    if w * h > max_pixels:
        raise InputError(f"{what} is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                         f"{max_pixels / 1e6:g} megapixels; downscale it first")
    try:
        img.load()
        return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{what} is a corrupt or truncated {img.format} image ({e})") from e


def decode_image(data, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS,
                 formats=ENCODED_FORMATS):
    """Encoded image bytes (JPEG or PNG by default) -> an upright RGB PIL image.

    Refused with an :class:`InputError` saying why: anything but bytes, zero bytes, more than
    ``max_bytes``, an unreadable or corrupt image, more than ``max_pixels`` pixels (from the
    header, before the pixels are decoded).
    """
    max_bytes = count_option("max_bytes", max_bytes, allow_none=False)
    max_pixels = count_option("max_pixels", max_pixels, allow_none=False)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"an encoded image must be bytes, got {type(data).__name__}")
    size = memoryview(data).nbytes
    if size == 0:
        raise InputError("the image is empty (0 bytes); send the bytes of a JPEG or PNG file")
    if size > max_bytes:
        raise InputError(f"the image is {size:,} bytes, over the limit of {max_bytes:,} bytes")
    return _read(io.BytesIO(data), "the image", max_pixels, formats)


def _open(image):
    from PIL import Image
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(f"a numpy image must be uint8 HxW or HxWxC, got {image.dtype} "
                             f"{image.shape}")
        return Image.fromarray(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image)
    path = Path(image)
    if not path.exists():
        raise ImageNotFoundError(f"image {path} does not exist; check the path")
    return _read(path, str(path), MAX_IMAGE_PIXELS, None)


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
    # the input's cap does not bound the resized image: a 1-pixel-wide strip grows by the
    # whole scale along its length
    if nw * nh > MAX_IMAGE_PIXELS:
        raise InputError(f"the image's aspect ratio is too extreme ({w}x{h}): resizing its "
                         f"shorter side to {scale} makes it {nw}x{nh} = {nw * nh / 1e6:.1f} "
                         f"megapixels, over the limit of {MAX_IMAGE_PIXELS / 1e6:g} megapixels; "
                         "crop it nearer to square first")
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), getattr(Image.Resampling, _INTERP[interpolation]))
    left = int(round((nw - size) / 2.0))
    top = int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess(image, config, dtype="float32"):
    """One image (path, encoded bytes, PIL image or uint8 array) -> 1x3xHxW float32 torch
    tensor."""
    import torch
    img = to_rgb(_open(image))
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
