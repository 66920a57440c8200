"""Preprocessing against hand computations, label sets, bad images."""
import numpy as np
import pytest
from PIL import Image

import engine
from engine.models.registry import ModelConfig
from engine.preprocess import labels_for, preprocess, topk


def cfg(size, crop, interp="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3):
    return ModelConfig(name="t", arch="t", input_size=(3, size, size), crop_pct=crop,
                       interpolation=interp, mean=mean, std=std)


def test_crop_and_normalize_by_hand():
    # 6x8 (HxW) image; crop_pct 1.0 and size 6: shorter side already 6, so no resampling;
    # the center crop takes columns 1..6.
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = preprocess(img, cfg(6, 1.0, mean=mean, std=std)).numpy()
    assert x.shape == (1, 3, 6, 6) and x.dtype == np.float32
    want = (img[:, 1:7, :].astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), want, atol=1e-6)


def test_resize_shorter_side_then_crop():
    # left half black, right half white, 40x80; size 10 at crop 0.5 -> resize to 20x40, crop
    # the center 10x10, which straddles the edge: 5 black columns then 5 white.
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 40:] = 255
    x = preprocess(img, cfg(10, 0.5, interp="nearest"))[0, 0].numpy()
    np.testing.assert_allclose(x[:, :5], -1.0, atol=1e-6)
    np.testing.assert_allclose(x[:, 5:], 1.0, atol=1e-6)


def test_grayscale_and_constant_image():
    img = Image.fromarray(np.full((30, 50), 51, np.uint8))  # 51/255 = 0.2
    x = preprocess(img, engine.get_config("inception_resnet_v2_fmnist"))
    assert x.shape == (1, 3, 75, 75)
    np.testing.assert_allclose(x.numpy(), (0.2 - 0.5) / 0.5, atol=1e-5)


def test_not_an_image(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("not an image")
    with pytest.raises(engine.InputError, match="not a readable image"):
        preprocess(p, engine.get_config("inception_v4"))
    with pytest.raises(FileNotFoundError):
        preprocess(tmp_path / "missing.png", engine.get_config("inception_v4"))


def test_labels_and_topk():
    names = labels_for(engine.get_config("inception_resnet_v2"))
    assert len(names) == 1000 and names[0] == "tench"
    logits = np.zeros((1, 1000), np.float32)
    logits[0, 1] = 10.0
    top = topk(logits, 5, names)[0]
    assert top[0][:2] == (1, "goldfish") and top[0][2] > 0.9
    assert abs(sum(p for *_, p in topk(logits, 1000)[0]) - 1) < 1e-6
    assert labels_for(engine.get_config("inception_resnet_v1_face")) is None
