"""Calibration data sources: one iterator of float32 NCHW batches checked against the model.

Accepted sources (:func:`batches`):

- a folder of image files (searched recursively, sorted by path): each image goes through
  ``engine.preprocess`` with the model config read from the ONNX metadata (resize, crop,
  normalise), so the model sees exactly what inference will feed it;
- a ``.npy`` or ``.npz`` file: float arrays are taken as ready NCHW input; uint8 arrays are
  images, ``(N, H, W)`` grayscale or ``(N, H, W, C)``, turned into model input per the config
  by ``engine.datasets.to_model_input``, the same function that prepares the study's test and
  calibration arrays, so one array gives one model input whichever way it comes in.
  In an ``.npz`` the array named ``images``, ``input``, ``x`` or ``data`` is used (or the only
  array);
- a numpy array or torch tensor (the same rules as a file);
- any iterable of batches: arrays or tensors ``(N, C, H, W)``, or ``(images, labels)`` pairs.

Every batch is checked against the model's input (channels, height, width); an empty source,
a wrong channel count or a wrong size is a :class:`~calibration.errors.CalibrationDataError`
that says what was expected.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from engine.errors import InputError
from engine.fileio import load_npy, load_npz
from engine.runtime import count_option

from .errors import CalibrationArgumentError, CalibrationDataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
NPZ_KEYS = ("images", "input", "x", "data")
_MAX_LISTED = 5


def describe_source(source) -> str:
    """A short description of a source for metadata and messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if hasattr(source, "shape") and hasattr(source, "dtype"):
        return f"array {str(source.dtype).replace('torch.', '')}{list(source.shape)}"
    return f"<{type(source).__name__}>"


def model_input(model) -> Tuple[Optional[Tuple], Optional[object]]:
    """``((C, H, W) with None for dynamic dims, config or None)`` of an ONNX path or proto."""
    if model is None:
        return None, None
    from engine.onnxmeta import load_onnx, read_metadata
    proto = model if hasattr(model, "graph") else load_onnx(model, load_weights=False)
    inits = {i.name for i in proto.graph.initializer}
    inp = [i for i in proto.graph.input if i.name not in inits][0]
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inp.type.tensor_type.shape.dim]
    shape = tuple(dims[1:]) if len(dims) == 4 else None
    try:
        cfg = read_metadata(proto)["config"]
    except Exception:   # a foreign file with odd metadata still calibrates from arrays
        cfg = None
    return shape, cfg


def _image_files(folder: Path):
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationDataError(
            f"calibration folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
            "point --calib at a folder of images or an .npy/.npz array")
    return files


def _load_array(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return load_npy(path, mmap_mode="r")
        arrays = load_npz(path)
    except InputError as e:             # an array of Python objects: says how to convert it
        raise CalibrationDataError(f"calibration array {e}") from e
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CalibrationDataError(f"cannot read calibration array {path}: {e}; pass an .npy "
                                   "or .npz file written by np.save / np.savez") from e
    for k in NPZ_KEYS:
        if k in arrays:
            return arrays[k]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise CalibrationDataError(
        f"{path} holds arrays {list(arrays)}; name the images one of {', '.join(NPZ_KEYS)}")


def _need_config(cfg, what):
    from engine.datasets import require_config
    return require_config(cfg, what, CalibrationDataError)


def _preprocess_files(files, cfg, batch_size) -> Iterator[np.ndarray]:
    from engine.preprocess import preprocess
    buf = []
    for path in files:
        x = preprocess(path, cfg)
        buf.append(x.numpy() if hasattr(x, "numpy") else np.asarray(x))
        if len(buf) == batch_size:
            yield np.concatenate(buf).astype(np.float32, copy=False)
            buf = []
    if buf:
        yield np.concatenate(buf).astype(np.float32, copy=False)


def _images_to_input(arr, cfg, batch_size, what) -> Iterator[np.ndarray]:
    """uint8 image arrays through ``engine.datasets.to_model_input``, ``batch_size`` at a time."""
    from engine.datasets import to_model_input
    if len(arr) == 0:
        raise CalibrationDataError(f"{what} is empty (0 images)")
    _need_config(cfg, what)
    for i in range(0, len(arr), batch_size):
        try:
            x = to_model_input(arr[i:i + batch_size], cfg)
        except InputError as e:
            raise CalibrationDataError(f"{what}: {e}") from e
        yield x.numpy()


def _from_array(arr, cfg, batch_size, what) -> Iterator[np.ndarray]:
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if arr.dtype == np.uint8:
        yield from _images_to_input(arr, cfg, batch_size, what)
        return
    if not np.issubdtype(arr.dtype, np.floating):
        how = ("an array of Python objects: stack it into a numeric one with "
               "np.stack(list(arr)).astype(np.float32)" if arr.dtype.hasobject else
               "convert it with arr.astype(np.float32) for NCHW input, or pass uint8 images")
        raise CalibrationDataError(f"{what}: dtype {arr.dtype} is neither float (NCHW input) nor "
                                   f"uint8 (images); {how}")
    if arr.ndim != 4:
        raise CalibrationDataError(f"{what}: float arrays must be NCHW (4 dims), got shape "
                                   f"{arr.shape}")
    for i in range(0, len(arr), batch_size):
        yield np.ascontiguousarray(arr[i:i + batch_size], dtype=np.float32)


def _from_iterable(it) -> Iterator[np.ndarray]:
    for item in it:
        if isinstance(item, (tuple, list)) and item:
            item = item[0]                          # (images, labels)
        elif isinstance(item, dict):
            key = next((k for k in NPZ_KEYS if k in item), None)
            if key is None:
                raise CalibrationDataError(f"a batch dict has keys {list(item)}; name the images "
                                           f"one of {', '.join(NPZ_KEYS)}")
            item = item[key]
        if hasattr(item, "detach"):
            item = item.detach().cpu().numpy()
        x = np.asarray(item)
        if not np.issubdtype(x.dtype, np.floating):
            raise CalibrationDataError(f"a calibration batch has dtype {x.dtype}; iterables must "
                                       "give float32 NCHW batches (use engine.preprocess)")
        if x.ndim == 3:
            x = x[None]
        yield np.ascontiguousarray(x, dtype=np.float32)


def _check(x: np.ndarray, shape, index: int, first: int, what: str):
    """Batch ``index`` (its first image is image ``first`` of the source) against the
    model input ``shape``."""
    if x.ndim != 4:
        raise CalibrationDataError(f"{what}: batch {index} has shape {x.shape}; expected NCHW")
    if shape is None:
        return
    c, h, w = shape
    if c is not None and x.shape[1] != c:
        raise CalibrationDataError(
            f"{what}: batch {index} has {x.shape[1]} channels (shape {x.shape}); the model takes "
            f"{c} (input {tuple(shape)}). Grayscale images must be replicated to {c} channels "
            "(engine.preprocess does this for image files)")
    if (h is not None and x.shape[2] != h) or (w is not None and x.shape[3] != w):
        raise CalibrationDataError(
            f"{what}: batch {index} holds {x.shape[2]}x{x.shape[3]} images; the model takes "
            f"{h}x{w}. Resize them per the model config (engine.preprocess, or pass a folder of "
            "image files or uint8 arrays, which are preprocessed for you)")
    if not np.isfinite(x).all():
        raise CalibrationDataError(_non_finite(x, index, first, what))


def _non_finite(x: np.ndarray, index: int, first: int, what: str) -> str:
    """What is wrong with a batch holding NaN/Inf, and what to do: which images (numbered from
    0 in the source), how many values, where the values come from."""
    bad = ~np.isfinite(x.reshape(len(x), -1))
    images = [first + int(i) for i in np.flatnonzero(bad.any(axis=1))]
    shown = ", ".join(map(str, images[:_MAX_LISTED]))
    if len(images) > _MAX_LISTED:
        shown += f" (and {len(images) - _MAX_LISTED} more)"
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    noun = "image" if len(images) == 1 else "images"
    return (f"{what}: batch {index} (images {first}-{first + len(x) - 1}) holds {n_nan} NaN and "
            f"{n_inf} Inf values, in {noun} {shown}; calibration ranges need finite input: check "
            "the preprocessing that made these images (a zero std, a division by zero, an "
            f"unreadable or blank file), or drop the {noun} from the calibration source")


def check_num_images(value, name: str = "num_images") -> Optional[int]:
    """``value`` as a count of calibration images of at least 1 (None: every image of the
    source); anything else is a :class:`CalibrationArgumentError` that says what to pass."""
    try:
        return count_option(name, value)
    except InputError:
        raise CalibrationArgumentError(
            f"{name} must be an integer >= 1, or None for every image of the source; got "
            f"{value!r}. Calibration needs at least one image: pass {name}=N (a few hundred, "
            f"e.g. {name}=512, give stable ranges), or leave it None") from None


def batches(source, model=None, batch_size: int = 32, limit: Optional[int] = None,
            input_shape=None, config=None) -> Iterator[np.ndarray]:
    """Float32 NCHW batches from ``source``, checked against ``model``'s input.

    model: the ONNX path or proto being calibrated (gives the input shape and the config for
    preprocessing); or pass ``input_shape=(C, H, W)`` and ``config`` directly. limit: stop
    after this many images. Raises CalibrationDataError when the source gives no image.
    """
    shape, cfg = model_input(model)
    shape = tuple(input_shape) if input_shape is not None else shape
    cfg = config if config is not None else cfg
    what = f"calibration source {describe_source(source)}"
    batch_size = count_option("batch_size", batch_size, allow_none=False)
    limit = check_num_images(limit, "limit")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = _image_files(path)
            if limit is not None:
                files = files[:limit]
            gen = _preprocess_files(files, _need_config(cfg, what), batch_size)
        elif path.is_file() and path.suffix in (".npy", ".npz"):
            gen = _from_array(_load_array(path), cfg, batch_size, what)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            gen = _preprocess_files([path], _need_config(cfg, what), batch_size)
        elif not path.exists():
            raise CalibrationDataError(f"calibration source {path} does not exist")
        else:
            raise CalibrationDataError(f"calibration source {path}: expected a folder of images, "
                                       "an .npy/.npz array or an image file")
    elif hasattr(source, "shape") and hasattr(source, "dtype"):
        gen = _from_array(source, cfg, batch_size, what)
    elif hasattr(source, "__iter__"):
        gen = _from_iterable(source)
    else:
        raise CalibrationDataError(f"cannot calibrate from a {type(source).__name__}; pass a "
                                   "folder, an .npy/.npz file, an array or an iterable of batches")
    seen = 0
    for i, x in enumerate(gen):
        if limit is not None and seen + len(x) > limit:
            x = x[: limit - seen]
        if len(x) == 0:
            continue
        _check(x, shape, i, seen, what)
        seen += len(x)
        yield x
        if limit is not None and seen >= limit:
            break
    if seen == 0:
        raise CalibrationDataError(f"{what} is empty: it gave no images; calibration needs at "
                                   "least one (a few hundred give stable ranges)")
