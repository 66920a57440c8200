"""engine.verify: the parity report, and layer-wise localization of a planted fault."""
from __future__ import annotations

import json

import numpy as np
import pytest

import engine
from engine import backends
from engine.intervals import METHOD_PROPORTION
from engine.parity import (LayerDiff, ParityReport, Tolerance, first_divergent, module_outputs,
                           module_path)

onnx = pytest.importorskip("onnx")
SMALL = dict(width=0.25, input_size=(3, 75, 75))
FAULT_NODE = "/repeat/repeat.3/branch1/branch1.1/conv/Conv"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """The reference runs single-threaded (see conftest.one_torch_thread)."""


def _inputs(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 75, 75)).astype(np.float32)


def _cpu_backends():
    return [b for b in ("openvino", "onnxruntime") if backends.is_installed(b)]


@pytest.fixture(scope="module")
def faulty(exported_onnx, tmp_path_factory):
    """The small IR-v2 with one conv's weights perturbed in the exported graph."""
    from onnx import numpy_helper
    path, model = exported_onnx("inception_resnet_v2", **SMALL)
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.name == FAULT_NODE)
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    w = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
    init.CopyFrom(numpy_helper.from_array(w + noise * np.abs(w).max(), init.name))
    out = tmp_path_factory.mktemp("fault") / "faulty.onnx"
    onnx.save(proto, str(out))
    return out, model


def test_module_path_from_node_names():
    assert module_path("/repeat/repeat.0/branch1/branch1.0/conv/Conv") == "repeat.0.branch1.0.conv"
    assert module_path("/repeat/repeat.0/relu/Relu") == "repeat.0.relu"
    assert module_path("/features/features.12/branch3/branch3.1/relu/Relu") == \
        "features.12.branch3.1.relu"
    assert module_path("/Flatten") == ""


def test_module_outputs_are_last_node_of_scope(exported_onnx):
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    outs = module_outputs(onnx.load(str(path), load_external_data=False))
    assert outs["repeat.0"][1] == "/repeat/repeat.0/relu/Relu_output_0"      # residual Add+Relu
    assert outs["repeat.0.branch1.0"][1] == "/repeat/repeat.0/branch1/branch1.0/relu/Relu_output_0"
    assert outs["mixed_5b"][1] == "/mixed_5b/Concat_output_0"
    assert outs["block8"][1] == "/block8/Add_output_0"                      # no ReLU in the last block


@pytest.mark.parametrize("backend", _cpu_backends())
def test_report_passes_fp32(exported_onnx, backend):
    path, model = exported_onnx("inception_resnet_v2", **SMALL)
    with engine.load(path, backend=backend, threads=1) as rt:
        r = engine.verify(rt, model, _inputs(4), localize=True)
    assert isinstance(r, ParityReport) and r.passed, str(r)
    assert r.engine == f"{backend}/fp32" and r.reference == "torch/fp32"
    assert r.n_samples == 4 and r.output_shape == (1000,)
    assert r.range_rel_err <= 1e-4 and r.top1_agreement == 1.0 and r.top5_overlap == 1.0
    assert r.cosine_min > 0.99999
    assert r.smallest_passing["range_rel"] == r.range_rel_err <= r.tolerance["range_rel"]
    assert r.first_divergent is None and r.layers and len(r.layers) > 100
    assert max(l.range_rel for l in r.layers) < 1e-4
    d = json.loads(r.to_json())
    assert d["passed"] is True and d["layers"][0]["module"] == "conv2d_1a"
    text = str(r)
    assert "PASSED" in text and "top-1 agreement" in text and "max abs error / range" in text


@pytest.mark.parametrize("backend", _cpu_backends())
def test_planted_fault_is_localized(faulty, backend):
    path, model = faulty
    with engine.load(path, backend=backend, threads=1) as rt:
        r = engine.verify(rt, model, _inputs(4))
    assert not r.passed and r.failures
    assert r.first_divergent == "repeat.3.branch1.1", str(r)
    assert r.divergent_block == "repeat.3" and r.divergence == "jump"
    before = [l for l in r.layers if l.index < next(
        x.index for x in r.layers if x.module == r.first_divergent)]
    assert before and max(l.range_rel for l in before) < 1e-4
    text = str(r)
    assert "FAILED" in text and "first divergent layer repeat.3.branch1.1" in text


def test_engine_vs_engine_localizes_by_tensor_name(faulty, exported_onnx):
    if len(_cpu_backends()) < 2:
        pytest.skip("needs openvino and onnxruntime")
    good, _ = exported_onnx("inception_resnet_v2", **SMALL)
    with engine.load(faulty[0], backend="openvino", threads=1) as bad, \
            engine.load(good, backend="onnxruntime", threads=1) as ref:
        r = engine.verify(bad, ref, _inputs(2))
    assert not r.passed and r.reference == "onnxruntime/fp32"
    assert r.first_divergent == "repeat.3.branch1.1"


def test_first_divergent_rule():
    def layers(errs):
        return [LayerDiff(i, f"l{i}", f"t{i}", (1,), e, e, 1.0) for i, e in enumerate(errs)]
    # a jump: 10x the floor and 10x everything before
    assert first_divergent(layers([1e-7, 2e-7, 5e-2, 6e-2]), 1e-4) == ("l2", "jump")
    # an earlier large-ish error raises the bar for later ones
    assert first_divergent(layers([1e-7, 3e-3, 1e-2]), 1e-4) == ("l1", "jump")
    # gradual growth: no jump, the first layer over the floor is named
    assert first_divergent(layers([2e-4, 6e-4, 1.5e-3, 4e-3]), 1e-4) == ("l2", "over tolerance")
    assert first_divergent(layers([1e-6, 1e-5]), 1e-4) == (None, None)


def test_tolerances_and_overrides(exported_onnx):
    path, model = exported_onnx("inception_resnet_v2", **SMALL)
    be = _cpu_backends()[0]
    with engine.load(path, backend=be, threads=1) as rt:
        x = _inputs(2)
        strict = engine.verify(rt, model, x, tolerance={"range_rel": 1e-12}, localize=False)
        assert not strict.passed and "output range" in strict.failures[0]
        assert strict.layers is None  # localize=False
        loose = engine.verify(rt, model, x, precision="bf16", localize=False)
        assert loose.tolerance["cosine"] == 0.99 and loose.tolerance["range_rel"] is None
        custom = engine.verify(rt, model, 3, tolerance=Tolerance(range_rel=1.0), localize=False)
        assert custom.passed and custom.n_samples == 3
        with pytest.raises(TypeError):
            engine.verify(rt, model, x, tolerance=0.1)
        with pytest.raises(engine.InputError, match="shapes differ"):
            engine.verify(rt, lambda a: np.zeros((len(a), 7), np.float32), x)


class _Flipping(engine.Runtime):
    """An engine that agrees with the identity reference except on its first ``flips``
    images, whose logits it rolls by one class (so their arg-max moves)."""

    backend = "flipping"

    def __init__(self, flips):
        super().__init__(precision="fp16")
        self.flips = flips

    def _infer(self, x):
        y = x.reshape(len(x), -1).copy()
        y[:self.flips] = np.roll(y[:self.flips], 1, axis=1)
        return y


def _clopper_pearson_scipy(k, n, confidence=0.95):
    """The exact interval from the beta quantiles (the textbook form, not engine.intervals)."""
    beta = pytest.importorskip("scipy.stats").beta
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else beta.ppf(alpha / 2, k, n - k + 1)
    hi = 1.0 if k == n else beta.ppf(1 - alpha / 2, k + 1, n - k)
    return lo, hi


@pytest.mark.parametrize("n, flips", [(200, 7), (50, 0), (30, 30), (1, 0)])
def test_top1_agreement_interval(n, flips):
    pytest.importorskip("scipy")
    logits = np.random.default_rng(n).standard_normal((n, 10, 1, 1)).astype(np.float32)
    r = engine.verify(_Flipping(flips), lambda a: a.reshape(len(a), -1), logits, localize=False)
    k = n - flips
    assert r.top1_agreement == k / n and r.top1_agreement_images == n
    lo, hi = _clopper_pearson_scipy(k, n)
    assert r.top1_agreement_ci == pytest.approx((lo, hi), abs=1e-9)
    assert r.interval_confidence == 0.95 and r.interval_method == METHOD_PROPORTION
    d = json.loads(r.to_json())
    assert d["top1_agreement_ci"] == pytest.approx([lo, hi], abs=1e-9)
    assert d["top1_agreement_images"] == n and d["interval_method"] == METHOD_PROPORTION
    row = next(line for line in str(r).splitlines() if "top-1 agreement" in line)
    assert f"{k / n * 100:.1f}% (95% CI {lo * 100:.1f}\u2013{hi * 100:.1f})" in row
    # the criterion is still the fraction itself (fp16: >= 98%), not the interval
    assert any(f.startswith("top-1 agreement") for f in r.failures) is (k / n < 0.98)


def test_weights_mismatch_is_noted(exported_onnx):
    import torch
    path, _ = exported_onnx("inception_resnet_v2", **SMALL)
    torch.manual_seed(123)
    other = engine.create_model("inception_resnet_v2", width=0.25)
    with engine.load(path, backend=_cpu_backends()[0], threads=1) as rt:
        r = engine.verify(rt, other, _inputs(2), localize=False)
    assert not r.passed
    assert any("weights_sha256" in n for n in r.notes)


def test_cli_export_and_verify(tmp_path, faulty, capsys):
    from engine.cli import main
    out = tmp_path / "cli.onnx"
    assert main(["export", "--model", "inception_resnet_v2_fmnist", "--out", str(out)]) == 0
    assert out.exists() and not list(tmp_path.glob(".*.tmp"))
    capsys.readouterr()
    assert main(["verify", str(out), "--batch", "2", "--threads", "1"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["verify", str(out), "--batch", "2", "--json", "--backend", "onnxruntime", "--threads", "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["passed"] and d["engine"] == "onnxruntime/fp32"
    # the planted fault: nonzero exit, the layer named
    assert main(["verify", str(faulty[0]), "--model", "inception_resnet_v2", "--width", "0.25",
                 "--batch", "2"]) == 1
    assert "repeat.3.branch1.1" in capsys.readouterr().out
