"""Shipped evaluation and calibration data for the trained test subject (Fashion-MNIST).

Fashion-MNIST (Zalando SE, MIT licence; 60k train / 10k test, 28x28 grayscale, 10 classes)
is what ``inception_resnet_v2_fmnist`` was trained on (``benchmarks/train_subject.py``). The
package ships, under ``engine/data/fashion_mnist/``:

- ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``: the 10k test set, as published;
- ``calib.npz``: 2,000 images drawn with a fixed seed from the *train* set (``images`` uint8
  Nx28x28, ``labels`` uint8, ``train_index`` int32), for INT8 calibration. Calibration never
  sees a test image.
- ``val.npz``: 5,000 other train images (same layout), disjoint from ``calib.npz`` and from the
  test set, and held out of the subjects' training (``benchmarks/train_subject.py`` trains on
  the other 55,000): the validation split on which an accuracy budget (``--max-drop``) is
  chosen, so the test set only reports the result.

Only numpy is needed to read the data. :func:`to_model_input` is the one path from uint8 image
arrays to model input (the study's sets, ``--data``/``--calib`` arrays, and
``calibration.batches``); it uses torch for the resize, so the batch is the one the model was
trained on. Nothing here downloads anything.
"""
from __future__ import annotations

import gzip
import math
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError

DATA_DIR = Path(__file__).resolve().parent / "data" / "fashion_mnist"

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
CALIB_FILE = "calib.npz"
CALIB_SIZE = 2000
CALIB_SEED = 20240              # seed of the draw of the calibration split from the train set
VAL_FILE = "val.npz"
VAL_SIZE = 5000
VAL_SEED = 20241                # seed of the draw of the validation split from the rest

# IDX: magic (0, 0, dtype 0x08 = uint8, ndim), then ndim big-endian uint32 sizes, then the data.
_IDX_UBYTE = 0x08


class DatasetError(InputError):
    """A data file that is missing, truncated or not in the expected format."""


def _missing(path: Path, what: str) -> DatasetError:
    return DatasetError(
        f"{what} not found: {path}. The package ships it under engine/data/fashion_mnist/; "
        f"reinstall the package, or regenerate the files with "
        f"`python benchmarks/train_subject.py --prepare-data` (needs the Debian package "
        f"dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist/).")


def read_idx(path) -> np.ndarray:
    """Read a (gzip-compressed or plain) IDX file of unsigned bytes into a uint8 array.

    Images come back as (N, rows, cols), labels as (N,).
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:       # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read {path}: {e}; the file is corrupt or truncated") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes "
                           f"(magic {raw[:4].hex() or 'missing'}, expected 000008xx)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DatasetError(f"{path}: header says shape {shape} ({count} bytes of data), "
                           f"the file holds {len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_pair(images_path: Path, labels_path: Path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{images_path} / {labels_path}: expected (N, H, W) images and (N,) "
                           f"labels, got {images.shape} and {labels.shape}")
    return images, labels


def read_source(directory, split: str = "train"):
    """The original IDX files of a split (``"train"`` or ``"test"``) from ``directory``."""
    names = {"train": TRAIN_FILES, "test": TEST_FILES}.get(split)
    if names is None:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    return _read_pair(directory / names[0], directory / names[1])


def _read_npz(path: Path, what: str):
    """``(images, labels)`` of a shipped split file (calib.npz, val.npz), checked."""
    if not path.is_file():
        raise _missing(path, what)
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read {path}: {e}; expected an .npz with uint8 "
                           f"'images' (N, 28, 28) and 'labels' (N,)") from e
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (len(images),):
        raise DatasetError(f"{path}: expected uint8 images (N, 28, 28) and N labels, got "
                           f"{images.dtype} {images.shape} and {labels.shape}")
    return images, labels


def validation_index(train_size: int, calib_index: np.ndarray) -> np.ndarray:
    """The sorted train indices of the validation split: ``VAL_SIZE`` drawn with ``VAL_SEED``
    from the train images not in the calibration split."""
    rest = np.setdiff1d(np.arange(train_size), calib_index)
    rng = np.random.default_rng(VAL_SEED)
    return np.sort(rng.choice(rest, size=VAL_SIZE, replace=False)).astype(np.int32)


def fashion_mnist(split: str = "test", data_dir=None, limit=None):
    """Shipped Fashion-MNIST data: ``(images uint8 (N, 28, 28), labels uint8 (N,))``.

    split: ``"test"`` (the 10,000 held-out test images), ``"calib"`` (2,000 images from the
    train set, for calibration) or ``"val"`` (5,000 other train images that no subject was
    trained on, for choosing an accuracy budget). ``limit`` keeps the first ``limit`` images (a fixed slice).
    The arrays are read-only views of the file data; copy them to modify.
    """
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    if split == "test":
        images, labels = _read_pair(data_dir / TEST_FILES[0], data_dir / TEST_FILES[1])
    elif split in ("calib", "val"):
        images, labels = _read_npz(data_dir / (CALIB_FILE if split == "calib" else VAL_FILE),
                                   f"{'calibration' if split == 'calib' else 'validation'} split")
    else:
        raise InputError(f"split must be 'test', 'calib' or 'val', got {split!r} "
                         f"(the train set is not shipped; see benchmarks/train_subject.py)")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


_RESIZE_MODES = ("bilinear", "bicubic")     # config interpolations the array path reproduces


def _as_float_nchw(images, channels: int):
    """uint8 images (N, H, W) or (N, H, W, C) -> float32 NCHW with 1 or ``channels`` channels."""
    import torch

    if not isinstance(images, torch.Tensor):
        images = np.asarray(images)
    dtype, shape = images.dtype, tuple(images.shape)
    colour = len(shape) == 4 and shape[-1] in (1, 3, 4)
    if dtype not in (np.uint8, torch.uint8) or not (len(shape) == 3 or colour):
        raise InputError(f"expected uint8 images of shape (N, H, W) (grayscale) or (N, H, W, C) "
                         f"with C in 1/3/4, got {dtype} {shape}")
    # one float32 copy (the shipped arrays are read-only views of the file data)
    if isinstance(images, torch.Tensor):
        x = images.float()
    else:
        x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    if len(shape) == 3:
        return x[:, None]
    x = x[..., :3].permute(0, 3, 1, 2)          # RGBA -> RGB: the alpha channel is dropped
    if x.shape[1] != 1 and x.shape[1] != channels:
        raise InputError(f"got {x.shape[1]}-channel images for a model that takes {channels} "
                         "channels; convert them first")
    return x


def _resize(x, config):
    """Resize float NCHW images to ``config.input_size`` with the config's interpolation.

    ``crop_pct`` 1 resizes the whole frame to the input size; a smaller ``crop_pct`` resizes
    the shorter side to ``floor(size / crop_pct)`` and takes the centre, as ``preprocess`` does.
    """
    import torch.nn.functional as F

    _, h, w = config.input_size
    if (x.shape[-2], x.shape[-1]) == (h, w):
        return x
    if config.interpolation not in _RESIZE_MODES:
        raise InputError(f"to_model_input resizes with {' or '.join(_RESIZE_MODES)}; config "
                         f"{config.name!r} asks for {config.interpolation!r}")
    size = (h, w)
    if config.crop_pct < 1.0:
        if h != w:
            raise InputError(f"config {config.name!r}: crop_pct {config.crop_pct} needs a square "
                             f"input size, got {h}x{w}")
        short = math.floor(h / config.crop_pct)
        ih, iw = x.shape[-2], x.shape[-1]
        size = (short, int(round(iw * short / ih))) if ih <= iw else \
            (int(round(ih * short / iw)), short)
    x = F.interpolate(x, size=size, mode=config.interpolation, align_corners=False,
                      antialias=False)
    if config.interpolation == "bicubic":
        x = x.clamp_(0.0, 255.0)                 # cubic overshoot, clipped like a uint8 image
    top, left = int(round((size[0] - h) / 2.0)), int(round((size[1] - w) / 2.0))
    return x[..., top:top + h, left:left + w] if size != (h, w) else x


def require_config(config, what: str, error=InputError):
    """``config``, or ``error`` saying that ``what`` cannot be preprocessed without one (a
    model file with no ``inception.config`` metadata) and what to pass instead."""
    if config is None:
        raise error(f"{what} must be preprocessed, but the model carries no config "
                    "(inception.config metadata); export it with `inception-engine export`, "
                    "or pass float32 NCHW model input")
    return config


def to_model_input(images, config):
    """uint8 images -> the model's float32 NCHW batch, per ``config``: the one path from image
    arrays to model input (the study's test and calibration sets, ``calibration.batches``).

    images: (N, H, W) grayscale or (N, H, W, C) with C in 1/3/4 (alpha dropped). Resize to
    ``config.input_size`` (bilinear or bicubic per the config, align_corners=False, no
    antialias: the training transform; see :func:`_resize` for ``crop_pct``), replicate
    grayscale to the config's channel count, scale to [0, 1], then ``(x - mean) / std`` per
    channel. Deterministic, independent of how the images are batched; returns a torch tensor
    (contiguous NCHW).
    """
    import torch

    c = config.input_size[0]
    if len(config.mean) != c or len(config.std) != c:
        raise InputError(f"config {config.name!r}: mean/std have {len(config.mean)}/"
                         f"{len(config.std)} entries for {c} channels")
    x = _resize(_as_float_nchw(images, c), config)
    # (x / 255 - mean) / std, in this order, so values match the formula (255 -> exactly 1.0)
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(1, c, 1, 1)
    return (x.div_(255.0).expand(-1, c, -1, -1) - mean).div_(std).contiguous()
