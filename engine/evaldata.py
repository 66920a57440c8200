"""Labelled image sets for measuring accuracy: a test set, the validation split an accuracy
budget is chosen on, and the shipped calibration images.

``inception-engine study`` and ``inception-engine quantize --max-drop`` read them the same way:
an ``.npz`` of images and labels, a folder of class folders, or (for a Fashion-MNIST subject)
the shipped splits of :mod:`engine.datasets`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def load_eval_data(data, config, limit=None):
    """(x float32 NCHW, labels int64). Default: the shipped Fashion-MNIST test set.

    data: None, an ``.npz`` with ``images`` (uint8 images, made model input by
    :func:`engine.datasets.to_model_input` like ``--calib`` arrays, or float32 NCHW already
    preprocessed) and ``labels``, or a folder with one sub-folder of images per class (sorted
    sub-folder names are the class indices).
    """
    import torch
    from .datasets import fashion_mnist, require_config, to_model_input
    from .preprocess import preprocess
    if data is None:
        images, labels = fashion_mnist("test", limit=limit)
        return to_model_input(images, config).numpy(), labels.astype(np.int64)
    path = Path(data)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; give a .npz file or a folder of "
                         "class folders")
    if path.is_dir():
        require_config(config, f"{path}: the images of a folder")
        classes = sorted(p for p in path.iterdir() if p.is_dir())
        if not classes:
            raise InputError(f"{path}: expected one sub-folder of images per class")
        xs, ys = [], []
        for idx, folder in enumerate(classes):
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    xs.append(preprocess(f, config))
                    ys.append(idx)
        if not xs:
            raise InputError(f"{path}: no images found in the class folders")
        x, y = torch.cat(xs).numpy(), np.asarray(ys, np.int64)
    elif path.suffix == ".npz" and path.is_file():
        from .fileio import load_npz
        z = load_npz(path)
        if "images" not in z or "labels" not in z:
            raise InputError(f"{path}: expected arrays 'images' and 'labels', found {list(z)}")
        images, y = z["images"], z["labels"].astype(np.int64)
        if images.dtype == np.uint8:
            require_config(config, f"{path}: uint8 images")
            x = to_model_input(images, config).numpy()
        elif images.dtype == np.float32 and images.ndim == 4:
            x = images
        else:
            raise InputError(f"{path}: 'images' must be uint8 images (N, H, W) or (N, H, W, C), "
                             f"or float32 NCHW model input, got {images.dtype} {images.shape}")
    else:
        raise InputError(f"{path}: expected a .npz file or a folder of class folders")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) != len(y) or not len(x):
        raise InputError(f"{data}: {len(x)} images and {len(y)} labels")
    return np.ascontiguousarray(x, np.float32), y


def validation_data(data, config, limit=None):
    """(x, labels) of the validation split that chooses an accuracy budget: ``data`` (as
    :func:`engine.evaldata.load_eval_data` reads it), or the shipped one for a Fashion-MNIST subject."""
    from .datasets import fashion_mnist, to_model_input
    if data is not None:
        return load_eval_data(data, config, limit)
    if config is None or config.labels != "fashion_mnist":
        raise InputError("an accuracy budget is chosen on a labelled validation split: pass "
                         "one (--val FILE.npz or a folder of class folders), disjoint from "
                         "the test set")
    images, labels = fashion_mnist("val", limit=limit)
    return to_model_input(images, config).numpy(), labels.astype(np.int64)


def default_calib(config, limit):
    from .datasets import fashion_mnist, to_model_input
    images, _ = fashion_mnist("calib", limit=limit)
    return to_model_input(images, config).numpy()
