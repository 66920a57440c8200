"""Checkpoint loading: formats, strictness, clear errors, no unpickling."""
import pickle

import pytest
import torch

import engine
from engine.weights import load_weights

NAME = "inception_resnet_v2_fmnist"


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(1)
    m = engine.create_model(NAME)
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    return m


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pth_and_safetensors_roundtrip(tmp_path, trained):
    from safetensors.torch import save_file
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors")
    for f in ("w.pth", "w.safetensors"):
        m = engine.create_model(NAME, weights=tmp_path / f)
        assert _same(m, trained)
        assert not m.training


def test_missing_and_unexpected_keys_named(tmp_path, trained):
    sd = dict(trained.state_dict())
    sd.pop("classif.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(engine.WeightsError) as e:
        engine.create_model(NAME, weights=tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing keys: classif.weight" in msg and "unexpected keys: extra.weight" in msg


def test_shape_mismatch_named(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "w.pth")
    with pytest.raises(engine.WeightsError, match=r"classif.weight: checkpoint \(10, 384\)"):
        engine.create_model(NAME, weights=tmp_path / "w.pth", num_classes=5)


def test_arbitrary_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(engine.WeightsError, match="weights_only=True"):
        engine.create_model(NAME, weights=tmp_path / "evil.pth")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(engine.WeightsError, match="does not exist"):
        engine.create_model(NAME, weights=tmp_path / "nope.pth")
    (tmp_path / "c.safetensors").write_bytes(b"garbage")
    with pytest.raises(engine.WeightsError, match="not a readable safetensors"):
        engine.create_model(NAME, weights=tmp_path / "c.safetensors")


def test_tf_slim_background_row_is_dropped(tmp_path):
    m = engine.create_model("inception_v4", width=0.25)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    w, b = sd["last_linear.weight"], sd["last_linear.bias"]
    sd["last_linear.weight"] = torch.cat([torch.full_like(w[:1], 7.0), w])
    sd["last_linear.bias"] = torch.cat([torch.full_like(b[:1], 7.0), b])
    torch.save(sd, tmp_path / "slim.pth")
    m2 = engine.create_model("inception_v4", width=0.25, weights=tmp_path / "slim.pth")
    assert torch.equal(m2.last_linear.weight, w) and torch.equal(m2.last_linear.bias, b)


def test_timm_weights_offline_gives_clear_error(monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(engine.WeightsError, match="weights='w.pth'"):
        load_weights(engine.create_model("inception_v4", num_classes=10), "timm")
    with pytest.raises(engine.WeightsError, match="width 1.0 only"):
        engine.create_model("inception_v4", width=0.5, weights="timm")


def test_non_finite_weights_are_refused_unless_allowed(tmp_path, trained):
    sd = {k: v.clone() for k, v in trained.state_dict().items()}
    sd["classif.bias"][2] = float("inf")
    sd["classif.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(engine.WeightsError, match=r"'classif.weight' holds 1 NaN/Inf values") \
            as e:
        engine.create_model(NAME, weights=tmp_path / "nan.pth")
    assert "allow_non_finite=True" in str(e.value)
    m = engine.create_model(NAME, weights=tmp_path / "nan.pth", allow_non_finite=True)
    assert torch.isnan(m.classif.weight[0, 0]) and torch.isinf(m.classif.bias[2])


def test_corrupt_safetensors_says_what_to_do(tmp_path):
    (tmp_path / "c.safetensors").write_bytes(b"garbage")
    with pytest.raises(engine.WeightsError, match=r"copy it again, or re-save it with "
                                                 r"safetensors\.torch\.save_file"):
        engine.create_model(NAME, weights=tmp_path / "c.safetensors")
