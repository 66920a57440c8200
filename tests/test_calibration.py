"""Calibration methods, streaming histograms, the TensorRT cache and data sources.

The references at the top are the plain, loop-by-loop versions the fast code is checked
against (the entropy one follows TensorRT's EntropyCalibration2 as pytorch-quantization
implements it).
"""
from __future__ import annotations

import numpy as np
import pytest

from calibration import CacheError, CalibrationDataError, CalibrationError
from calibration.cache import CalibrationCache, hex_to_scale, read_cache, scale_to_hex, write_cache
from calibration.data import batches
from calibration.methods import (amax_entropy, amax_minmax, amax_mse, amax_percentile,
                                 compute_amax, entropy_divergences, weight_amax)
from calibration.stats import Histogram


# --------------------------------------------------------------------------- references
def ref_entropy_divergences(bins, num_quant_bins=128):
    """KL(P||Q) per candidate threshold, one candidate at a time (pytorch-quantization)."""
    bins = np.asarray(bins, dtype=np.float64)
    out = []
    for i in range(num_quant_bins, len(bins) + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        chunk = (np.arange(i) * num_quant_bins) // i          # digitize(range(i), linspace(0, i, 129)) - 1
        chunk[bins[:i] == 0] = -1
        used = chunk >= 0                                     # each chunk's mass, spread evenly
        mass = np.bincount(chunk[used], weights=bins[:i][used], minlength=num_quant_bins)
        count = np.bincount(chunk[used], minlength=num_quant_bins)
        dens = mass / np.maximum(count, 1)
        q = np.where(chunk >= 0, dens[np.maximum(chunk, 0)], 0.0)
        p, q = p / p.sum(), q / q.sum()
        nz = p > 0
        with np.errstate(divide="ignore"):
            out.append(np.sum(p[nz] * np.log(p[nz] / q[nz])))
    return np.array(out)


def ref_entropy_amax(hist):
    counts = hist.counts.astype(np.float64)
    counts = counts[: np.flatnonzero(counts)[-1] + 1].copy()
    counts[0] = counts[1]
    kl = ref_entropy_divergences(counts)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return hist.edges[128 + best]


def hist_of(x, bins=2048, batch=None):
    h = Histogram("t", bins)
    x = np.asarray(x, np.float32)
    for chunk in (np.array_split(x, batch) if batch else [x]):
        h.update(chunk)
    return h


def heavy_tail(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, 200_000), rng.uniform(30, 60, 40)]).astype(np.float32)


# --------------------------------------------------------------------------- methods
def test_minmax_is_max_abs():
    x = np.array([0.5, -3.25, 2.0, 0.0], np.float32)
    h = hist_of(x)
    assert amax_minmax(h) == 3.25
    assert compute_amax(h, "minmax") == 3.25


def test_percentile_on_uniform():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 400_000).astype(np.float32)
    h = hist_of(x, batch=7)
    for p in (50.0, 99.0, 99.99):
        got = amax_percentile(h, p)
        want = np.percentile(np.abs(x), p)
        assert abs(got - want) < 2 / 2048, (p, got, want)
        assert abs(got - p / 100) < 0.005
    assert amax_percentile(h, 100.0) == pytest.approx(np.abs(x).max())
    with pytest.raises(CalibrationError, match="percentile"):
        amax_percentile(h, 0)


def test_entropy_clips_heavy_tail_and_matches_reference():
    h = hist_of(heavy_tail(), batch=5)
    got = amax_entropy(h)
    assert 2.0 < got < 20.0, got                     # far below the 60 of the tail
    assert got == pytest.approx(ref_entropy_amax(h), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_divergences_match_loop_reference(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, 400).astype(np.float64)
    counts[rng.random(400) < 0.3] = 0                  # empty bins, as sparse tails have
    counts[0] = counts[1] = 7
    counts[-1] = 3
    _, fast = entropy_divergences(counts)
    ref = ref_entropy_divergences(counts)
    finite = np.isfinite(ref)
    assert (np.isfinite(fast) == finite).all()
    np.testing.assert_allclose(fast[finite], ref[finite], rtol=1e-7, atol=1e-10)


def test_mse_minimises_quantization_error():
    rng = np.random.default_rng(3)
    x = rng.laplace(0, 1, 300_000).astype(np.float32)
    h = hist_of(x)
    a = amax_mse(h)

    def err(amax):
        s = amax / 127
        return np.mean((x - np.clip(np.round(x / s), -127, 127) * s) ** 2)
    assert a < np.abs(x).max()
    for other in (amax_minmax(h), amax_percentile(h, 99.99), a * 0.5, a * 2):
        assert err(a) <= err(other) * 1.02, (a, other)


def test_unknown_method_and_empty_histogram():
    h = hist_of([1.0])
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        compute_amax(h, "kl")
    with pytest.raises(CalibrationError, match="no values"):
        compute_amax(Histogram("empty"), "minmax")


def test_histogram_grows_exactly():
    rng = np.random.default_rng(4)
    parts = [rng.uniform(-s, s, 5000).astype(np.float32) for s in (0.3, 1.0, 7.0, 2.0)]
    h = Histogram("t", 2048)
    for p in parts:
        h.update(p)
    allx = np.abs(np.concatenate(parts))
    assert h.total == allx.size
    assert h.amax == pytest.approx(allx.max())
    assert h.range_ >= allx.max() and h.range_ < 2 * allx.max()
    want = np.minimum((allx * (2048 / h.range_)).astype(np.int64), 2047)
    want = np.bincount(want, minlength=2048)
    assert np.abs(h.counts - want).sum() <= 4         # only float rounding at bin edges differs
    with pytest.raises(CalibrationDataError, match="NaN"):
        h.update(np.array([np.nan], np.float32))


def test_histogram_grows_by_a_large_factor():
    h = Histogram("t", 2048)
    h.update(np.array([1e-6, -2e-6], np.float32))
    h.update(np.array([0.0, 0.0], np.float32))
    h.update(np.array([10.0], np.float32))
    assert h.total == 5 and h.counts[0] == 4 and h.counts.sum() == 5
    assert h.amax == 10.0 and 10.0 <= h.range_ < 20.0


def test_weight_amax_per_output_channel():
    w = np.zeros((3, 2, 3, 3), np.float32)
    w[0, 1, 2, 2] = -4.0
    w[1, 0, 0, 0] = 0.5
    np.testing.assert_array_equal(weight_amax(w), [4.0, 0.5, 0.0])


# --------------------------------------------------------------------------- cache
def test_cache_hex_round_trip():
    assert hex_to_scale("3c008912") == pytest.approx(0.0078452, rel=1e-5)
    assert scale_to_hex(hex_to_scale("3c008912")) == "3c008912"
    assert scale_to_hex(1.0) == "3f800000"


def test_cache_file_round_trip(tmp_path):
    scales = {"input": 0.0078452, "/mixed_5b/Concat_output_0": 0.05, "odd:name": 1e-3}
    p = write_cache(tmp_path / "c.cache", scales)
    text = p.read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    c = read_cache(p)
    assert c.version == "8601" and c.algorithm == "EntropyCalibration2"
    assert list(c.scales) == list(scales)
    for k, v in scales.items():
        assert c.scales[k] == pytest.approx(v, rel=1e-7)
    assert c.amax()["input"] == pytest.approx(0.0078452 * 127, rel=1e-6)
    assert CalibrationCache.from_text(c.to_text()).scales == c.scales


def test_cache_corrupt_header_and_hex(tmp_path):
    p = tmp_path / "bad.cache"
    p.write_text("TensorRT calibration\ninput: 3c008912\n")
    with pytest.raises(CacheError, match="first line"):
        read_cache(p)
    p.write_text("TRT-8601-EntropyCalibration2\ninput: 3c0089zz\n")
    with pytest.raises(CacheError, match="line 2.*not 8 hex digits"):
        read_cache(p)
    p.write_text("TRT-8601-EntropyCalibration2\ninput 3c008912\n")
    with pytest.raises(CacheError, match="line 2"):
        read_cache(p)
    with pytest.raises(CacheError, match="no such"):
        read_cache(tmp_path / "missing.cache")


# --------------------------------------------------------------------------- data sources
SHAPE = (3, 75, 75)


def _take(source, **kw):
    return list(batches(source, input_shape=SHAPE, **kw))


def test_batches_from_array_iterable_and_limit():
    x = np.zeros((10, *SHAPE), np.float32)
    got = _take(x, batch_size=4)
    assert [len(b) for b in got] == [4, 4, 2]
    assert sum(len(b) for b in _take(x, batch_size=4, limit=5)) == 5
    pairs = [(x[:3], np.zeros(3)), (x[3:5], np.zeros(2))]
    assert [len(b) for b in _take(pairs)] == [3, 2]


def test_batches_from_npz_and_npy(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, *SHAPE)).astype(np.float32)
    np.savez(tmp_path / "c.npz", images=x)
    np.save(tmp_path / "c.npy", x)
    for f in ("c.npz", "c.npy"):
        np.testing.assert_array_equal(np.concatenate(_take(tmp_path / f)), x)


def test_batches_preprocess_images(tmp_path):
    import engine
    from PIL import Image
    cfg = engine.get_config("inception_resnet_v2_fmnist")
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    got = list(batches(tmp_path, input_shape=SHAPE, config=cfg, batch_size=2))
    assert [b.shape for b in got] == [(2, *SHAPE), (1, *SHAPE)]
    u8 = np.full((4, 28, 28), 255, np.uint8)           # uint8 grayscale arrays, like calib.npz
    got = list(batches(u8, input_shape=SHAPE, config=cfg))
    assert got[0].shape == (4, *SHAPE) and np.allclose(got[0], 1.0, atol=1e-5)


@pytest.mark.parametrize("source, match", [
    (np.zeros((0, 3, 75, 75), np.float32), "empty"),
    ([], "empty"),
    (np.zeros((2, 1, 75, 75), np.float32), "1 channels.*takes 3"),
    (np.zeros((2, 3, 28, 28), np.float32), "28x28 images; the model takes 75x75"),
    (np.zeros((2, 75, 75), np.float32), "NCHW"),
    (np.zeros((2, 3, 75, 75), np.int32), "dtype int32"),
    ([np.full((1, 3, 75, 75), np.nan, np.float32)], "NaN"),
])
def test_batches_bad_sources(source, match):
    with pytest.raises(CalibrationDataError, match=match):
        _take(source)


def test_batches_bad_paths(tmp_path):
    with pytest.raises(CalibrationDataError, match="no image files"):
        _take(tmp_path)
    with pytest.raises(CalibrationDataError, match="does not exist"):
        _take(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CalibrationDataError, match="expected a folder"):
        _take(tmp_path / "x.txt")
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(CalibrationDataError, match="name the images"):
        _take(tmp_path / "two.npz")
    with pytest.raises(CalibrationDataError, match="preprocessed"):   # uint8 without a config
        _take(np.zeros((2, 28, 28), np.uint8))


def test_uint8_arrays_give_the_study_input(tmp_path):
    """One uint8 array, one model input: the study's loaders and calibration.batches agree."""
    import engine
    from engine.datasets import fashion_mnist
    from engine.study import default_calib, load_eval_data
    cfg = engine.get_config("inception_resnet_v2_fmnist")
    imgs = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(5))
    x_study, _ = load_eval_data(tmp_path / "d.npz", cfg)
    for source in (tmp_path / "d.npz", imgs):
        x_calib = np.concatenate(list(batches(source, input_shape=SHAPE, config=cfg,
                                              batch_size=2)))
        np.testing.assert_array_equal(x_calib, x_study)
    shipped, _ = fashion_mnist("calib", limit=8)
    x_calib = np.concatenate(list(batches(shipped, input_shape=SHAPE, config=cfg, batch_size=3)))
    np.testing.assert_array_equal(x_calib, default_calib(cfg, 8))


def test_batches_bad_uint8_images():
    import engine
    cfg = engine.get_config("inception_resnet_v2_fmnist")
    with pytest.raises(CalibrationDataError, match=r"\(N, H, W\)"):
        _take(np.zeros((2, 5, 28, 28), np.uint8), config=cfg)
    with pytest.raises(CalibrationDataError, match="empty"):
        _take(np.zeros((0, 28, 28), np.uint8), config=cfg)


def test_lazy_names_are_not_submodules():
    """A submodule named like a lazy function would replace it once imported."""
    from pathlib import Path
    import calibration
    here = Path(calibration.__file__).parent
    assert not [n for n in calibration._LAZY if (here / f"{n}.py").exists()]
    assert callable(calibration.sensitivity) and callable(calibration.quantize_weight)
