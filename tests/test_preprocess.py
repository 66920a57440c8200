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


# --------------------------------------------------------------------------- encoded images
from engine.preprocess import MAX_IMAGE_PIXELS, decode_image  # noqa: E402
from helpers import image_variants, png_bomb, png_header_only  # noqa: E402


def _picture():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((40, 24), Image.Resampling.NEAREST))


def test_encoded_variants_decode_alike():
    """Grayscale is its luma in three channels, alpha is dropped, EXIF orientation is applied
    (losslessly: equal pixels), CMYK comes back near the RGB it was made from, not inverted;
    each decodes to the same pixels every time."""
    pic = _picture()
    v = image_variants(pic)
    arr = {k: np.asarray(decode_image(b)) for k, b in v.items()}
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in arr.values())
    np.testing.assert_array_equal(arr["rgb.png"], pic)
    np.testing.assert_array_equal(arr["rotated.png"], pic)
    np.testing.assert_array_equal(arr["rgba.png"], pic)
    np.testing.assert_array_equal(arr["gray.png"], arr["gray_as_rgb.png"])
    # JPEG loss on this blocky noise is ~10 levels; inverted CMYK would be ~100 off
    assert np.abs(arr["cmyk.jpg"].astype(int) - pic).mean() < 16
    for k, b in v.items():
        np.testing.assert_array_equal(np.asarray(decode_image(b)), arr[k], err_msg=k)


def test_encoded_bytes_and_files_preprocess_alike(tmp_path):
    """The bytes path (the served model) and the file path (``inception-engine run``) give
    the same model input, EXIF rotation included."""
    c = engine.get_config("inception_resnet_v2_fmnist")
    for name, data in image_variants(_picture()).items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(preprocess(data, c).numpy(),
                                      preprocess(tmp_path / name, c).numpy(), err_msg=name)


@pytest.mark.parametrize("data, message", [
    (b"", r"the image is empty \(0 bytes\)"),
    (b"GIF89a not really", r"not a readable image \(not a JPEG/PNG file\)"),
    ("text", "an encoded image must be bytes, got str"),
    (png_header_only(10_000, 10_000), r"10000x10000 = 100\.0 megapixels, over the limit of 40 "
                                      "megapixels"),
])
def test_encoded_refusals(data, message):
    with pytest.raises(engine.InputError, match=message):
        decode_image(data)


def test_encoded_limits_and_truncation():
    png = image_variants(_picture())["rgb.png"]
    with pytest.raises(engine.InputError, match=f"the image is {len(png):,} bytes, over the "
                       f"limit of {len(png) - 1:,} bytes"):
        decode_image(png, max_bytes=len(png) - 1)
    with pytest.raises(engine.InputError, match="corrupt or truncated PNG image"):
        decode_image(png[:len(png) // 2])
    with pytest.raises(engine.InputError, match="over the limit of 0.0009 megapixels"):
        decode_image(png, max_pixels=900)
    assert decode_image(png, max_pixels=40 * 24).size == (40, 24)
    assert MAX_IMAGE_PIXELS == 40_000_000


def test_hundred_megapixel_image_refused_from_its_header():
    """A valid 100-MP PNG (100 MB of pixels in a few hundred KB): refused on its header's size
    (the message is the pixel limit), and Pillow's own bomb cap does not get there first."""
    bomb = png_bomb(10_000, 10_000)
    assert len(bomb) < 1_000_000
    with pytest.raises(engine.InputError, match="100.0 megapixels, over the limit of 40"):
        decode_image(bomb)


def test_mutated_images_raise_only_input_errors():
    """Bytes flipped and files cut short: each either decodes or is an InputError (the served
    model turns that into a 400 for its request alone)."""
    rng = np.random.default_rng(7)
    for name, data in image_variants(_picture()).items():
        base = np.frombuffer(data, np.uint8)
        for trial in range(60):
            b = base.copy()
            where = rng.integers(0, len(b), 4)
            b[where] = rng.integers(0, 256, 4)
            if trial % 3 == 0:
                b = b[:rng.integers(1, len(b))]
            try:
                assert decode_image(b.tobytes()).mode == "RGB"
            except engine.InputError:
                pass


def test_extreme_aspect_ratio_refused_before_resizing(tmp_path):
    """A 1x4617 PNG is far under the input cap but would resize to 341 x ~1.6M pixels: the
    bytes path (the served model) and the file path both refuse it before resizing."""
    import io
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4617, 1, 3), np.uint8)).save(buf, format="PNG")
    c = engine.get_config("inception_v4")
    assert c.input_size[1] == 299 and c.crop_pct == 0.875      # the shorter side goes to 341
    with pytest.raises(engine.InputError, match=r"aspect ratio is too extreme \(1x4617\).*"
                       r"341x1574397 = 536\.9 megapixels, over the limit of 40 megapixels"):
        preprocess(buf.getvalue(), c)
    (tmp_path / "strip.png").write_bytes(buf.getvalue())
    with pytest.raises(engine.InputError, match="aspect ratio is too extreme"):
        preprocess(tmp_path / "strip.png", c)
    # the limit is on the resized size: a moderate strip of the same input size still works
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4617, 40, 3), np.uint8)).save(buf, format="PNG")
    assert preprocess(buf.getvalue(), c).shape == (1, 3, 299, 299)
