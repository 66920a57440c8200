"""The trained test subjects (Inception-v4, Inception-ResNet-v1 and -v2 at width 0.25 on
Fashion-MNIST) and their shipped data.

Reference first: the preprocessing written out by hand, step by step, so engine.datasets'
fused multiply-add is checked against the plain formula.
"""
from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine
from engine import datasets
from engine.datasets import DatasetError
from engine.fileio import sha256_file
from engine.study import subjects

MODEL = "inception_resnet_v2_fmnist"
SLICE = 500                  # the first 500 shipped test images
MIN_SLICE_TOP1 = 85.0        # "really trained": far above chance (10%) and above an untrained net
SLICE_TOLERANCE = 3.0        # points; ~2.3 standard errors of a 500-image slice at 90%
TARGET_TOP1 = 90.0           # what a subject should reach on the full test set


def reference_input(images_u8, size, mean, std):
    """Plain reference: resize each image bilinearly, then (x / 255 - mean) / std per channel."""
    x = torch.from_numpy(np.asarray(images_u8, dtype=np.float32))[:, None]
    if x.shape[-2:] != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    chans = [(x / 255.0 - m) / s for m, s in zip(mean, std)]
    return torch.cat(chans, dim=1)


@pytest.fixture(scope="module")
def test_set():
    return datasets.fashion_mnist("test")


@pytest.fixture(scope="module")
def calib_set():
    return datasets.fashion_mnist("calib")


# ---------------------------------------------------------------- shipped data

def test_test_set_shapes_and_labels(test_set):
    images, labels = test_set
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert len(datasets.CLASSES) == 10 == engine.get_config(MODEL).num_classes


def test_calib_split_from_train_only(calib_set, test_set):
    images, labels = calib_set
    assert images.shape == (datasets.CALIB_SIZE, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (datasets.CALIB_SIZE,) and labels.max() < 10
    assert np.bincount(labels, minlength=10).min() > 100          # every class present

    def digests(a):
        return {hashlib.sha256(img.tobytes()).digest() for img in a}
    calib = digests(images)
    assert len(calib) == len(images)
    assert not calib & digests(test_set[0]), "a calibration image is also a test image"
    with np.load(datasets.DATA_DIR / datasets.CALIB_FILE) as z:
        index = z["train_index"]
    assert index.shape == (len(images),) and np.all(np.diff(index) > 0) and index.max() < 60000


def test_val_split_from_train_disjoint_from_calib_and_test(calib_set, test_set):
    images, labels = datasets.fashion_mnist("val")
    assert images.shape == (datasets.VAL_SIZE, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (datasets.VAL_SIZE,) and np.bincount(labels, minlength=10).min() > 50
    with np.load(datasets.DATA_DIR / datasets.CALIB_FILE) as z:
        calib_index = z["train_index"]
    with np.load(datasets.DATA_DIR / datasets.VAL_FILE) as z:
        val_index = z["train_index"]
    assert not set(val_index.tolist()) & set(calib_index.tolist())
    assert np.all(np.diff(val_index) > 0) and val_index.max() < 60000

    def digests(a):
        return {hashlib.sha256(img.tobytes()).digest() for img in a}
    assert not digests(images) & digests(test_set[0]), "a validation image is a test image"
    # the draw is the documented one, so the file can be rebuilt from the train set
    np.testing.assert_array_equal(val_index, datasets.validation_index(60000, calib_index))


def test_limit_is_a_fixed_slice(test_set):
    images, labels = datasets.fashion_mnist("test", limit=7)
    np.testing.assert_array_equal(images, test_set[0][:7])
    np.testing.assert_array_equal(labels, test_set[1][:7])


# ---------------------------------------------------------------- preprocessing

def test_to_model_input_matches_hand_computation():
    cfg = engine.get_config(MODEL)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    images[0, 0, :4] = [0, 255, 128, 1]
    x = datasets.to_model_input(images, cfg)
    assert x.shape == (3, *cfg.input_size) and x.dtype == torch.float32 and x.is_contiguous()
    ref = reference_input(images, cfg.input_size[1:], cfg.mean, cfg.std)
    torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x.min() >= -1.0 and x.max() <= 1.0                     # mean = std = 0.5


def test_to_model_input_tiny_array_without_resize():
    # the config's own size, so no resize: every value is the formula on one pixel
    cfg = engine.get_config(MODEL).with_(input_size=(3, 2, 2), mean=(0.5, 0.25, 0.0),
                                        std=(0.5, 0.25, 1.0))
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = datasets.to_model_input(images, cfg)
    px = np.array([[0, 255], [51, 102]], dtype=np.float64) / 255
    expect = np.stack([(px - 0.5) / 0.5, (px - 0.25) / 0.25, px])[None]
    np.testing.assert_allclose(x.numpy(), expect, atol=1e-6)
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 1] == 1.0


def test_to_model_input_rejects_bad_images():
    cfg = engine.get_config(MODEL)
    with pytest.raises(engine.InputError, match="uint8"):
        datasets.to_model_input(np.zeros((2, 28, 28), np.float32), cfg)
    with pytest.raises(engine.InputError, match=r"\(N, H, W\)"):
        datasets.to_model_input(np.zeros((2, 1, 28, 28), np.uint8), cfg)


def test_to_model_input_colour_and_grayscale_agree():
    cfg = engine.get_config(MODEL)
    gray = np.random.default_rng(2).integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    expect = datasets.to_model_input(gray, cfg)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((2, 28, 28, 1), 7, np.uint8)], axis=-1)
    for images in (gray[..., None], rgb, rgba):
        x = datasets.to_model_input(images, cfg)
        assert x.is_contiguous()
        torch.testing.assert_close(x, expect, atol=0, rtol=0)


def test_to_model_input_center_crop():
    # crop_pct 0.5 on a 4x4 image for a 2x2 input: the shorter side goes to 4, then the centre
    cfg = engine.get_config(MODEL).with_(input_size=(1, 2, 2), mean=(0.0,), std=(1.0,),
                                        crop_pct=0.5)
    images = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    x = datasets.to_model_input(images, cfg)
    np.testing.assert_allclose(x.numpy()[0, 0], images[0, 1:3, 1:3] / 255.0, atol=1e-6)
    with pytest.raises(engine.InputError, match="'nearest'"):
        datasets.to_model_input(images, cfg.with_(interpolation="nearest"))


# ---------------------------------------------------------------- bad files

def test_missing_files_say_what_and_how(tmp_path):
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz.*--prepare-data"):
        datasets.fashion_mnist("test", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="calib.npz"):
        datasets.fashion_mnist("calib", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="val.npz"):
        datasets.fashion_mnist("val", data_dir=tmp_path)
    with pytest.raises(ValueError, match="'test', 'calib' or 'val'"):
        datasets.fashion_mnist("train")


def test_corrupt_and_truncated_idx(tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="corrupt"):
        datasets.read_idx(bad)
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))   # float IDX
    with pytest.raises(DatasetError, match="unsigned bytes"):
        datasets.read_idx(bad)
    header = b"\x00\x00\x08\x03" + np.array([2, 28, 28], ">u4").tobytes()
    bad.write_bytes(gzip.compress(header + bytes(28 * 28)))             # one image of two
    with pytest.raises(DatasetError, match="truncated"):
        datasets.read_idx(bad)
    bad.write_bytes(gzip.compress(header + bytes(2 * 28 * 28)))
    assert datasets.read_idx(bad).shape == (2, 28, 28)


def test_corrupt_calib_file(tmp_path):
    (tmp_path / datasets.CALIB_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetError, match="calib.npz"):
        datasets.fashion_mnist("calib", data_dir=tmp_path)


# ---------------------------------------------------------------- the checkpoints
# every shipped subject (timm's registry-test style): the list comes from the registry, so a
# subject registered without its checkpoint fails here
SUBJECTS = subjects()


def test_three_networks_have_subjects():
    assert {engine.get_config(n).arch for n in SUBJECTS} == {
        "inception_v4", "inception_resnet_v1", "inception_resnet_v2"}


@pytest.mark.parametrize("name", SUBJECTS)
def test_checkpoint_is_small_and_documented(name):
    checkpoint = datasets.DATA_DIR.parent / f"{name}.safetensors"
    assert checkpoint.is_file(), f"{checkpoint} missing: run benchmarks/train_subject.py"
    assert checkpoint.stat().st_size <= 15_000_000
    report = json.loads(checkpoint.with_suffix(".json").read_text())
    assert report["model"] == name and report["test_images"] == 10000
    assert report["sha256"] == sha256_file(checkpoint)


@pytest.mark.parametrize("name", SUBJECTS)
def test_subject_reaches_the_accuracy_target(name):
    report = json.loads((datasets.DATA_DIR.parent / f"{name}.json").read_text())
    assert report["test_top1"] >= TARGET_TOP1, f"{name}: {report['test_top1']}% on the test set"


@pytest.mark.parametrize("name", SUBJECTS)
def test_checkpoint_loads_strictly(name):
    from safetensors.torch import load_file
    state = load_file(str(datasets.DATA_DIR.parent / f"{name}.safetensors"))
    model = engine.create_model(name)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", SUBJECTS)
def test_subject_accuracy_on_test_slice(name, test_set):
    torch.manual_seed(0)
    model = engine.create_model(name, weights="bundled")
    assert not model.training
    cfg = model.config
    images, labels = test_set[0][:SLICE], test_set[1][:SLICE]
    with torch.inference_mode():
        logits = torch.cat([model(datasets.to_model_input(images[i:i + 250], cfg))
                            for i in range(0, SLICE, 250)])
    assert logits.shape == (SLICE, 10) and torch.isfinite(logits).all()
    top1 = 100.0 * (logits.argmax(1).numpy() == labels).mean()
    recorded = json.loads((datasets.DATA_DIR.parent / f"{name}.json").read_text())["test_top1"]
    assert top1 >= MIN_SLICE_TOP1, f"{name}: top-1 on the first {SLICE} test images: {top1:.1f}%"
    # the checkpoint is the one its record describes: the slice reproduces the full-set figure
    assert abs(top1 - recorded) <= SLICE_TOLERANCE, (name, top1, recorded)


def _index_digest(index) -> str:
    """SHA-256 of a sorted train index as little-endian int32 (how the records name a split)."""
    return hashlib.sha256(np.sort(np.asarray(index)).astype("<i4").tobytes()).hexdigest()


@pytest.mark.parametrize("name", SUBJECTS)
def test_subject_never_saw_the_validation_split(name):
    """Each record names, by hash, the train images its subject was trained on and the
    validation split: the two are the complement of each other in the 60,000 train images, and
    the validation split named is the shipped one."""
    report = json.loads((datasets.DATA_DIR.parent / f"{name}.json").read_text())
    with np.load(datasets.DATA_DIR / datasets.VAL_FILE) as z:
        val_index = z["train_index"]
    assert len(val_index) == datasets.VAL_SIZE >= 5000
    assert report["val_index_sha256"] == _index_digest(val_index)
    assert report["train_index_sha256"] == _index_digest(
        np.setdiff1d(np.arange(60000), val_index))
    assert report["train_images"] == 60000 - len(val_index)
    assert report["val_images"] == len(val_index)
    assert report["val_top1"] >= TARGET_TOP1 - 2
