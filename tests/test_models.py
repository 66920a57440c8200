"""Reference models: structure, public-weight compatibility, configs and input errors."""
import math

import pytest
import torch

import engine
from engine.models.stats import count_params

torch.manual_seed(0)


def meta_model(name, **kw):
    with torch.device("meta"):
        return engine.create_model(name, **kw)


@pytest.mark.parametrize("name,expected", [
    ("inception_v4", 42_679_816),
    ("inception_resnet_v2", 55_843_464),
])
def test_exact_parameter_counts(name, expected):
    assert count_params(meta_model(name)) == expected


def test_irv1_trunk_parameter_count():
    m = meta_model("inception_resnet_v1_face")
    head = ("last_linear", "last_bn", "logits")
    trunk = sum(p.numel() for n, p in m.named_parameters() if not n.startswith(head))
    assert trunk == 22_564_096
    # the ImageNet variant shares the trunk exactly
    m2 = meta_model("inception_resnet_v1")
    trunk2 = sum(p.numel() for n, p in m2.named_parameters() if not n.startswith("last_linear"))
    assert trunk2 == trunk


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_timm_state_dict_loads_strictly_and_matches(name):
    timm = pytest.importorskip("timm")
    ref = timm.create_model(name, pretrained=False).eval()
    ours = engine.create_model(name)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert a.shape == (2, 1000)
    assert _max_rel(a, b) <= 1e-5


def test_facenet_state_dict_loads_strictly_and_matches():
    fp = pytest.importorskip("facenet_pytorch.models.inception_resnet_v1")
    for classify, num_classes in ((False, None), (True, 8631)):
        ref = fp.InceptionResnetV1(pretrained=None, classify=classify,
                                   num_classes=num_classes).eval()
        ours = engine.create_model("inception_resnet_v1_face", num_classes=num_classes or 0)
        ours.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(2, 3, 160, 160)
        with torch.no_grad():
            a, b = ours(x), ref(x)
        assert a.shape == b.shape == ((2, 8631) if classify else (2, 512))
        assert _max_rel(a, b) <= 1e-5
        if not classify:
            assert torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", engine.list_models())
def test_variant_shapes_config_and_smallest_input(name):
    cfg = engine.get_config(name)
    m = engine.create_model(name)
    assert m.config == cfg
    assert cfg.classifier in dict(m.named_modules()) or cfg.num_classes == 0
    first = dict(m.named_modules())[cfg.first_conv]
    assert first.in_channels == cfg.input_size[0]
    out_dim = cfg.num_classes or 512
    with torch.no_grad():
        if cfg.input_size[1] == 299:
            feats = m.forward_features(torch.randn(1, 3, 299, 299))
            assert feats.shape[-2:] == (8, 8), "final feature map must be 8x8 at 299"
            assert feats.shape[1] == m.num_features
        for size in sorted({cfg.input_size[1], cfg.min_input_size}):
            y = m(torch.randn(2, 3, size, size))
            assert y.shape == (2, out_dim)
            assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match=f"at least {cfg.min_input_size}"):
        m(torch.randn(1, 3, cfg.min_input_size - 1, cfg.min_input_size - 1))


def test_width_multiplier_small_variant():
    full = count_params(meta_model("inception_resnet_v2"))
    small = engine.create_model("inception_resnet_v2", width=0.25)
    ratio = count_params(small) / full
    assert 1 / 20 < ratio < 1 / 12, ratio
    with torch.no_grad():
        y = small(torch.randn(3, 3, 75, 75))
    assert y.shape == (3, 1000) and torch.isfinite(y).all()
    # every conv width is a multiple of 8 and the residual projections return to the trunk width
    for mod in small.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.in_channels != 3:
            assert mod.out_channels % 8 == 0


def test_num_classes_override_and_removal():
    m = engine.create_model("inception_v4", width=0.25, num_classes=7)
    assert m.config.num_classes == 7 and m.last_linear.out_features == 7
    m0 = engine.create_model("inception_v4", width=0.25, num_classes=0)
    with torch.no_grad():
        assert m0(torch.randn(1, 3, 75, 75)).shape == (1, m0.num_features)


def test_unknown_model_lists_valid_names():
    with pytest.raises(engine.UnknownModelError) as e:
        engine.create_model("inception_v5")
    for name in engine.list_models():
        assert name in str(e.value)


def test_input_errors_are_clear():
    m = engine.create_model("inception_resnet_v2_fmnist")
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 1, 75, 75))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, 3, 75, 75, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4 dims"):
        m(torch.randn(3, 75, 75))


def test_stats_count_macs_close_to_published():
    from engine.models.stats import model_stats
    # published: 13.18 GMACs (IR-v2), 12.28 (v4); we count convs and linears only
    assert math.isclose(model_stats("inception_resnet_v2")["gmacs"], 13.18, rel_tol=0.01)
    assert math.isclose(model_stats("inception_v4")["gmacs"], 12.28, rel_tol=0.01)
