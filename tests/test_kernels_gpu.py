"""Kernels on a real GPU with the shipped tuning table, at full IR-v2 channel counts.

Marked ``gpu``: skipped without CUDA. The interpreter tests in test_kernels.py also run on
the GPU when one is present; these add what only a GPU exercises: the table's tiles and
split-K choices, full-width tiles, and INT8 bit-exactness with the compiled epilogue (its
hardware-fma requantisation and K-contiguous weights).
"""
import pytest
import torch

from kernels.env import cuda_usable

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_usable(), reason="needs an NVIDIA GPU")]

if cuda_usable():
    import kernels as K
    from engine.models.shapes import network_shapes

DEV = "cuda"


def _irv2_cases():
    if not cuda_usable():
        return []
    shapes = network_shapes("inception_resnet_v2")
    picked = {}
    for s in shapes.convs:   # one per geometry class and epilogue
        picked.setdefault((s.kh, s.kw, s.stride, s.residual), s)
    return list(picked.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autotuned_conv_irv2_shapes(dtype):
    for s in _irv2_cases():
        x = torch.randn(2, s.h, s.w, s.c_in, device=DEV).to(dtype)
        w = K.pack_weight(torch.randn(s.c_out, s.c_in, s.kh, s.kw, device=DEV) / (s.c_in * s.kh * s.kw) ** 0.5, dtype)
        b = torch.randn(s.c_out, device=DEV)
        pad = (s.pad_h, s.pad_w)
        if s.residual:
            trunk = torch.randn(2, *s.out_hw, s.c_out, device=DEV).to(dtype)
            want = K.conv2d_reference(x, w, b, residual=trunk)
            K.conv2d(x, w, b, residual=trunk, out=trunk)        # in place, through the autotuner
            got = trunk
        else:
            got = K.conv2d(x, w, b, stride=s.stride, padding=pad)
            want = K.conv2d_reference(x, w, b, stride=s.stride, padding=pad)
        tol = 2e-2 if dtype == torch.float16 else 8e-2
        err = (got.float() - want.float()).abs().max().item()
        assert err <= tol * max(1.0, want.float().abs().max().item()), f"{s.label}: max err {err}"


def test_autotuned_int8_bit_exact_irv2_shapes():
    for s in _irv2_cases():
        if s.residual:
            continue
        xq = torch.randint(-128, 128, (2, s.h, s.w, s.c_in), dtype=torch.int8, device=DEV)
        wq, ws = K.quantize_weight(torch.randn(s.c_out, s.c_in, s.kh, s.kw))
        wq = K.pack_weight(wq).to(DEV)
        sc = K.dequant_scale(ws, 0.01).to(DEV)
        b = torch.randn(s.c_out, device=DEV)
        kw = dict(stride=s.stride, padding=(s.pad_h, s.pad_w), scale=sc, out_scale=0.5)
        got = K.conv2d(xq, wq, b, **kw)
        want = K.conv2d_reference(xq, wq, b, **kw)
        assert torch.equal(got, want), f"{s.label}: {(got != want).sum().item()} values differ"


def test_fused_heads_into_concat_gpu():
    x = torch.randn(3, 35, 35, 320, device=DEV, dtype=torch.float16)
    ws = [torch.randn(32, 320, 1, 1, device=DEV) / 18 for _ in range(3)]
    w = torch.cat([K.pack_weight(v, torch.float16) for v in ws], dim=3).contiguous()
    b = torch.randn(96, device=DEV)
    cat = torch.zeros(3, 35, 35, 128, device=DEV, dtype=torch.float16)
    s1 = torch.empty(3, 35, 35, 32, device=DEV, dtype=torch.float16)
    s2 = torch.empty_like(s1)
    K.conv2d(x, w, b, out=[cat[..., :32], s1, s2])
    want = K.conv2d_reference(x, w, b, splits=(32, 32, 32))
    for got, ref in zip((cat[..., :32], s1, s2), want):
        assert (got.float() - ref.float()).abs().max().item() < 2e-2 * max(1.0, ref.float().abs().max().item())
    assert (cat[..., 32:] == 0).all()


def test_small_m_split_k_and_prepared_launch_gpu():
    """The 8x8 maps at batch 1 split K by the table; int8 stays bit-exact through the
    reduction, and a prepared launch repeats it."""
    from kernels import conv, tuning
    xq = torch.randint(-128, 128, (1, 8, 8, 2080), dtype=torch.int8, device=DEV)
    wq, ws = K.quantize_weight(torch.randn(192, 2080, 1, 1))
    wq = K.pack_weight(wq.to(DEV))
    sc = K.dequant_scale(ws, 0.01).to(DEV)
    b = torch.randn(192, device=DEV)
    geo = conv._check_inputs(xq, wq, b, sc, 1, 0)
    assert conv.chosen_config(geo, torch.int8, xq.device).split_k > 1 or tuning.autotune_requested()
    out = torch.empty(1, 8, 8, 192, dtype=torch.int8, device=DEV)
    run = K.prepare_conv2d(xq, wq, b, scale=sc, out_scale=0.5, out=out)
    run()
    want = K.conv2d_reference(xq, wq, b, scale=sc, out_scale=0.5)
    assert torch.equal(out, want), f"{(out != want).sum().item()} values differ"
