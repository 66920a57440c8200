"""Kernels against their references.

Without CUDA the kernels run in Triton's interpreter on CPU (slow: shapes are reduced);
with CUDA the same tests run the compiled kernels. The layer classes are those of the
three networks (checked by ``test_cases_cover_every_layer_class``), at odd batch and odd
spatial sizes, with inputs and outputs that are channel slices of larger buffers.
"""
import os

import numpy as np
import pytest
import torch

from kernels.env import cuda_usable

if not cuda_usable():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import kernels as K  # noqa: E402
from engine.models.layers import ConvBNReLU  # noqa: E402

DEV = torch.device("cuda" if cuda_usable() else "cpu")

# (atol, rtol) against the fp32 reference rounded to the output dtype
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 2e-2)}

# Layer classes: (kh, kw, stride, pad_h, pad_w) of every conv in v4, IR-v1 and IR-v2.
CLASSES = [
    (1, 1, 1, 0, 0),
    (3, 3, 1, 0, 0),     # stem VALID
    (3, 3, 1, 1, 1),     # SAME
    (3, 3, 2, 0, 0),     # reductions, stem's first conv
    (5, 5, 1, 2, 2),     # mixed_5b
    (1, 7, 1, 0, 3),
    (7, 1, 1, 3, 0),
    (1, 3, 1, 0, 1),
    (3, 1, 1, 1, 0),
]


def assert_close(got, want, dtype, what=""):
    atol, rtol = TOL[dtype]
    got, want = got.float().cpu(), want.float().cpu()
    bad = ~torch.isclose(got, want, atol=atol, rtol=rtol)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements differ beyond atol={atol} rtol={rtol}; "
            f"max abs err {(got - want).abs().max().item():.3g}; first at {idx}: "
            f"{got[tuple(idx)].item()} vs {want[tuple(idx)].item()}; NaNs: {int(got.isnan().sum())}")


def rand_weight(cin, cout, kh, kw, dtype, gen):
    w = torch.randn(cout, cin, kh, kw, generator=gen) / (cin * kh * kw) ** 0.5
    return K.pack_weight(w, dtype).to(DEV)


def sliced(shape, dtype, lo, hi_pad, gen, fill=None):
    """A channel slice [lo, lo + C) of a wider NHWC buffer; returns (view, buffer)."""
    b, h, w, c = shape
    if fill is None:
        buf = torch.randn(b, h, w, lo + c + hi_pad, generator=gen).to(dtype).to(DEV)
    else:
        buf = torch.full((b, h, w, lo + c + hi_pad), fill, dtype=dtype, device=DEV)
    return buf[..., lo:lo + c], buf


def _rand_int8(shape, gen):
    return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8).to(DEV)


# ----------------------------------------------------------------------------------------
# conv: every layer class, every float dtype, sliced input and output
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c[0]}x{c[1]}s{c[2]}p{c[3]}{c[4]}")
def test_conv_layer_classes(cls, dtype):
    kh, kw, stride, ph, pw = cls
    gen = torch.Generator().manual_seed(hash(cls) % 1000)
    cin, cout = 19, 24
    x, _ = sliced((3, 9, 11, cin), dtype, 5, 3, gen)                # input inside a wider buffer
    w = rand_weight(cin, cout, kh, kw, dtype, gen)
    b = torch.randn(cout, generator=gen).to(DEV)
    oh, ow = K.conv.out_size(9, 11, kh, kw, stride, (ph, pw))
    out, buf = sliced((3, oh, ow, cout), dtype, 7, 9, gen, fill=-7.0)  # write into a concat slice
    K.conv2d(x, w, b, stride=stride, padding=(ph, pw), out=out)
    want = K.conv2d_reference(x, w, b, stride=stride, padding=(ph, pw))
    assert_close(out, want, dtype, f"conv {cls} {dtype}")
    assert (buf[..., :7] == -7).all() and (buf[..., 7 + cout:] == -7).all(), "wrote outside its slice"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_conv_stem_three_channels(dtype):
    """The stem's C_in = 3, padded by the mask to the dot's minimum K; stride 2 VALID."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 15, 13, 3, generator=gen).to(dtype).to(DEV)
    w = rand_weight(3, 8, 3, 3, dtype, gen)
    b = torch.randn(8, generator=gen).to(DEV)
    y = K.conv2d(x, w, b, stride=2)
    assert y.shape == (1, 7, 6, 8)
    assert_close(y, K.conv2d_reference(x, w, b, stride=2), dtype, "stem")


def test_conv_no_relu_no_bias_and_explicit_config():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 7, 33, generator=gen).to(DEV)
    w = rand_weight(33, 70, 1, 1, torch.float32, gen)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}
    y = K.conv2d(x, w, relu=False, config=cfg)                      # several tiles along M, N and K
    assert (y < 0).any()
    assert_close(y, K.conv2d_reference(x, w, relu=False), torch.float32, "no relu")


# ----------------------------------------------------------------------------------------
# fused epilogues against the unfused PyTorch sequence
# ----------------------------------------------------------------------------------------

def _random_unit(cin, cout, k, gen, padding=0):
    unit = ConvBNReLU(cin, cout, k, padding=padding).eval()
    with torch.no_grad():
        unit.conv.weight.copy_(torch.randn(unit.conv.weight.shape, generator=gen) / (cin * 1.0) ** 0.5)
        unit.bn.weight.copy_(torch.rand(cout, generator=gen) + 0.5)
        unit.bn.bias.copy_(torch.randn(cout, generator=gen) * 0.1)
        unit.bn.running_mean.copy_(torch.randn(cout, generator=gen) * 0.1)
        unit.bn.running_var.copy_(torch.rand(cout, generator=gen) + 0.5)
    return unit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_horizontal_fusion_concat_vs_unfused(dtype):
    """Three 1x1 heads over one input -> one GEMM; branch 0 lands in its concat slice,
    the others in scratch buffers. Reference: conv -> BN -> ReLU per head, then cat."""
    gen = torch.Generator().manual_seed(3)
    heads = [_random_unit(21, c, 1, gen) for c in (12, 10, 14)]
    x_nchw = torch.randn(3, 21, 7, 5, generator=gen)
    folded = [K.fold_bn(u.conv.weight, u.bn) for u in heads]
    w = torch.cat([K.pack_weight(fw, dtype) for fw, _ in folded], dim=3).contiguous().to(DEV)
    b = torch.cat([fb for _, fb in folded]).to(DEV)
    x = x_nchw.permute(0, 2, 3, 1).contiguous().to(dtype).to(DEV)
    concat = torch.full((3, 7, 5, 40), -3.0, dtype=dtype, device=DEV)     # block output buffer
    scratch1 = torch.empty(3, 7, 5, 10, dtype=dtype, device=DEV)
    scratch2 = torch.empty(3, 7, 5, 14, dtype=dtype, device=DEV)
    K.conv2d(x, w, b, out=[concat[..., 0:12], scratch1, scratch2])
    with torch.no_grad():
        xs = x.float().cpu().permute(0, 3, 1, 2)
        want = [u(xs).permute(0, 2, 3, 1) for u in heads]
    assert_close(concat[..., :12], want[0], dtype, "head 0 (concat slice)")
    assert_close(scratch1, want[1], dtype, "head 1 (scratch)")
    assert_close(scratch2, want[2], dtype, "head 2 (scratch)")
    assert (concat[..., 12:] == -3).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_branches_fill_concat_vs_cat(dtype):
    """Four branches (1x1, 3x3 SAME, 1x7, avg pool) each write their slice; = torch.cat."""
    gen = torch.Generator().manual_seed(4)
    units = [_random_unit(16, 8, 1, gen), _random_unit(16, 6, 3, gen, 1), _random_unit(16, 10, (1, 7), gen, (0, 3))]
    x_nchw = torch.randn(3, 16, 9, 7, generator=gen)
    x = x_nchw.permute(0, 2, 3, 1).contiguous().to(dtype).to(DEV)
    cat = torch.empty(3, 9, 7, 8 + 6 + 10 + 16, dtype=dtype, device=DEV)
    off = 0
    for u in units:
        fw, fb = K.fold_bn(u.conv.weight, u.bn)
        c = u.conv.out_channels
        K.conv2d(x, K.pack_weight(fw, dtype).to(DEV), fb.to(DEV), padding=u.conv.padding, out=cat[..., off:off + c])
        off += c
    K.avg_pool(x, out=cat[..., off:])
    with torch.no_grad():
        xs = x.float().cpu().permute(0, 3, 1, 2)
        pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        want = torch.cat([u(xs) for u in units] + [pool(xs)], 1).permute(0, 2, 3, 1)
    assert_close(cat, want, dtype, "concat")


@pytest.mark.parametrize("relu", [True, False], ids=["block", "final_block8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_residual_in_place_vs_unfused(dtype, relu):
    """x <- relu?(x + s * (W cat + b)) in place on the trunk, s folded into W and b."""
    gen = torch.Generator().manual_seed(5)
    s = 0.17
    up = torch.nn.Conv2d(24, 40, 1, bias=True)
    with torch.no_grad():
        up.weight.copy_(torch.randn(up.weight.shape, generator=gen) / 24 ** 0.5)
        up.bias.copy_(torch.randn(40, generator=gen))
    trunk_nchw = torch.randn(3, 40, 5, 9, generator=gen)
    cat_nchw = torch.relu(torch.randn(3, 24, 5, 9, generator=gen))
    w, b = K.fold_scale(up.weight.detach().float(), up.bias.detach().float(), s)
    trunk = trunk_nchw.permute(0, 2, 3, 1).to(dtype).to(DEV).contiguous()
    cat = cat_nchw.permute(0, 2, 3, 1).contiguous().to(dtype).to(DEV)
    with torch.no_grad():
        xs, cs = trunk.float().cpu().permute(0, 3, 1, 2), cat.float().cpu().permute(0, 3, 1, 2)
        want = xs + s * up(cs)
        want = (torch.relu(want) if relu else want).permute(0, 2, 3, 1)
    K.conv2d(cat, K.pack_weight(w, dtype).to(DEV), b.to(DEV), relu=relu, residual=trunk, out=trunk)
    assert_close(trunk, want, dtype, "residual")


# ----------------------------------------------------------------------------------------
# INT8: bit-exact against the integer reference
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [CLASSES[0], CLASSES[3], CLASSES[5], CLASSES[8]],
                         ids=lambda c: f"{c[0]}x{c[1]}s{c[2]}")
@pytest.mark.parametrize("out_kind", ["int8", "fp16", "fp32"])
def test_int8_conv_bit_exact(cls, out_kind):
    kh, kw, stride, ph, pw = cls
    gen = torch.Generator().manual_seed(6)
    cin, cout = 37, 20
    xq = _rand_int8((3, 9, 7, cin + 4), gen)[..., 4:]                 # channel slice of a buffer
    wq, w_scale = K.quantize_weight(torch.randn(cout, cin, kh, kw, generator=gen))
    scale = K.dequant_scale(w_scale, 0.02).to(DEV)
    bias = torch.randn(cout, generator=gen).to(DEV)
    wq = K.pack_weight(wq).to(DEV)
    out_dtype = {"int8": torch.int8, "fp16": torch.float16, "fp32": torch.float32}[out_kind]
    out_scale = 0.05 if out_kind == "int8" else None
    y = K.conv2d(xq, wq, bias, stride=stride, padding=(ph, pw), scale=scale, out_scale=out_scale, out_dtype=out_dtype)
    want = K.conv2d_reference(xq, wq, bias, stride=stride, padding=(ph, pw), scale=scale, out_scale=out_scale,
                              out_dtype=out_dtype)
    assert y.dtype == out_dtype
    if out_kind == "int8":
        assert len(torch.unique(y.cpu())) > 20, "requantised output is degenerate"
    mismatch = (y.cpu() != want.cpu())
    assert not mismatch.any(), f"{int(mismatch.sum())} of {mismatch.numel()} differ"


def test_int8_residual_requant_bit_exact():
    """Up-projection with an int8 shortcut (Q/DQ on the shortcut input), requantised out."""
    gen = torch.Generator().manual_seed(7)
    xq = _rand_int8((3, 5, 7, 40), gen)
    wq, w_scale = K.quantize_weight(torch.randn(24, 40, 1, 1, generator=gen) * 0.1)
    scale = K.dequant_scale(w_scale, 0.03).to(DEV)
    bias = torch.randn(24, generator=gen).to(DEV)
    shortcut = _rand_int8((3, 5, 7, 24), gen)
    wq = K.pack_weight(wq).to(DEV)
    kw = dict(scale=scale, residual=shortcut, res_scale=0.04, out_scale=0.06)
    y = K.conv2d(xq, wq, bias, **kw)
    want = K.conv2d_reference(xq, wq, bias, **kw)
    assert torch.equal(y.cpu(), want.cpu())


def test_float_conv_requantised_int8_output():
    """A conv kept in fp16 (mixed precision) feeding an int8 layer: requantise in the epilogue.
    Float sums differ in order from the reference, so allow one step at rounding ties."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(3, 7, 5, 24, generator=gen).half().to(DEV)
    w = rand_weight(24, 16, 3, 3, torch.float16, gen)
    b = torch.randn(16, generator=gen).to(DEV)
    y = K.conv2d(x, w, b, padding=1, out_dtype=torch.int8, out_scale=0.02)
    want = K.conv2d_reference(x, w, b, padding=1, out_dtype=torch.int8, out_scale=0.02)
    diff = (y.int() - want.int()).abs()
    assert y.dtype == torch.int8 and diff.max().item() <= 1 and (diff > 0).float().mean().item() < 0.01


def test_integer_reference_is_exact():
    """The reference's accumulator is the exact integer sum (compared with int64 arithmetic)."""
    gen = torch.Generator().manual_seed(8)
    xq = torch.randint(-128, 128, (2, 4, 4, 64), generator=gen, dtype=torch.int8)
    wq = torch.full((1, 1, 64, 3), -128, dtype=torch.int8)
    one = torch.ones(3)
    got = K.conv2d_reference(xq, wq, scale=one, relu=False)
    want = (xq.long().sum(-1, keepdim=True) * -128).float().expand(-1, -1, -1, 3)
    assert torch.equal(got, want)


def test_weight_quantization_matches_calibration():
    """The kernels quantise weights to exactly the integers and scales calibration writes
    into the Q/DQ file: per output channel, narrow range [-127, 127]."""
    import calibration
    gen = torch.Generator().manual_seed(14)
    w = torch.randn(6, 5, 3, 3, generator=gen) * torch.logspace(-4, 1, 6).view(-1, 1, 1, 1)
    w[1] = -w[1].abs()            # the extreme is negative: -amax quantises to -127
    w[2] = 0.0                    # all zero: scale 1
    w[3] = -1e-44                 # subnormal: the scale underflows to 0, w / scale = -inf,
    #                               which a [-128, 127] clamp would saturate to -128
    q, scale = K.quantize_weight(w)
    with np.errstate(divide="ignore"):
        q_file, scale_file = calibration.quantize_weight(w.numpy(), axis=0)   # OIHW, axis 0
    assert q.dtype == torch.int8 and q_file.dtype == np.int8
    np.testing.assert_array_equal(q.numpy(), q_file)
    np.testing.assert_array_equal(scale.numpy(), scale_file)
    assert int(q.min()) == -127 and q[3].unique().tolist() == [-127] and int(q[1].min()) == -127
    # what the int8 conv reads: the file's integers packed HWIO
    np.testing.assert_array_equal(K.pack_weight(q).numpy(), q_file.transpose(2, 3, 1, 0))


def test_quantize_round_half_even_and_saturate():
    """QuantizeLinear semantics: halves go to even, out-of-range saturates."""
    vals = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 300.0, -128.5, -129.0, -500.0, 0.25, -0.75])
    x = (vals * 0.5).view(1, 1, -1, 1).to(DEV)                    # scale 0.5: exact halves
    q = K.quantize(x, 0.5)
    expect = torch.tensor([0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128, -128, 0, -1], dtype=torch.int8)
    assert torch.equal(q.view(-1).cpu(), expect)
    assert torch.equal(K.quantize_reference(x, 0.5).view(-1).cpu(), expect)
    d = K.dequantize(q, 0.5, out_dtype=torch.float32)
    assert torch.equal(d.cpu(), K.dequantize_reference(q, 0.5, torch.float32).cpu())


# ----------------------------------------------------------------------------------------
# kernels v2: weight layouts, the 1x1 GEMM path, split-K, the requantise epilogue, prepare
# ----------------------------------------------------------------------------------------

def test_int8_weights_are_k_contiguous_and_layouts_agree():
    """pack_weight gives INT8 the K-contiguous layout (40 channels per tap padded to 64, so
    taps start aligned); the N-contiguous one reads the same integers and gives the same
    result; concat_packed keeps the layout."""
    gen = torch.Generator().manual_seed(20)
    wq, w_scale = K.quantize_weight(torch.randn(12, 40, 3, 3, generator=gen))
    packed = K.pack_weight(wq)
    assert packed.shape == (3, 3, 40, 12) and packed.stride() == (3 * 64, 64, 1, 3 * 3 * 64)
    assert K.conv.weight_is_kmajor(packed) and not K.conv.weight_is_kmajor(packed.contiguous())
    xq = _rand_int8((2, 7, 6, 40), gen)
    scale = K.dequant_scale(w_scale, 0.02).to(DEV)
    kw = dict(padding=1, scale=scale, out_scale=0.07)
    got_k = K.conv2d(xq, packed.to(DEV), **kw)
    got_n = K.conv2d(xq, packed.contiguous().to(DEV), **kw)
    assert torch.equal(got_k.cpu(), got_n.cpu())
    assert torch.equal(got_k.cpu(), K.conv2d_reference(xq, packed.to(DEV), **kw).cpu())
    cat = K.conv.concat_packed([packed, packed[..., :5]])
    assert K.conv.weight_is_kmajor(cat) and torch.equal(cat, torch.cat([packed, packed[..., :5]], dim=3))


def test_bad_weight_layout_is_refused():
    w = torch.randn(3, 3, 8, 4).transpose(0, 1)             # neither packed layout
    with pytest.raises(ValueError, match="pack_weight"):
        K.conv2d(torch.randn(1, 5, 5, 8, device=DEV), w.to(DEV))


@pytest.mark.parametrize("dense", [True, False], ids=["gemm", "strided_rows"])
@pytest.mark.parametrize("cin", [32, 40], ids=["even_c", "ragged_c"])
def test_1x1_gemm_path_and_its_fallback(dense, cin):
    """1x1 stride 1 runs as a plain GEMM when pixel m sits at m * stride(2); a view whose
    rows are not evenly strided (a crop along W) takes the general path. BLOCK_K 16 makes
    32 channels whole K-tiles (no channel mask) and 40 a ragged tail."""
    gen = torch.Generator().manual_seed(21)
    full = torch.randn(3, 6, 9, cin, generator=gen).half().to(DEV)
    x = full if dense else full[:, :, 1:8, :]
    w = rand_weight(cin, 24, 1, 1, torch.float16, gen)
    b = torch.randn(24, generator=gen).to(DEV)
    geo = K.conv._check_inputs(x, w, b, None, 1, 0)
    assert K.conv.gemm_view(x, geo) == dense
    cfg = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}
    y = K.conv2d(x, w, b, config=cfg)
    assert_close(y, K.conv2d_reference(x, w, b), torch.float16, "1x1")


SPLIT_CFG = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "SPLIT_K": 3, "num_warps": 4,
             "num_stages": 1}


@pytest.mark.parametrize("kh", [1, 3])
def test_split_k_float_with_residual_in_place(kh):
    """Three splits over the reduction, summed by the reduce kernel, which also runs the
    epilogue (here: the shortcut, in place)."""
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, 5, 6, 40, generator=gen).to(DEV)
    w = rand_weight(40, 20, kh, kh, torch.float32, gen)
    b = torch.randn(20, generator=gen).to(DEV)
    trunk = torch.randn(2, 5, 6, 20, generator=gen).to(DEV)
    want = K.conv2d_reference(x, w, b, padding=kh // 2, residual=trunk.clone())
    K.conv2d(x, w, b, padding=kh // 2, residual=trunk, out=trunk, config=SPLIT_CFG)
    assert_close(trunk, want, torch.float32, f"split-K {kh}x{kh}")


def test_split_k_int8_bit_exact_into_three_destinations():
    gen = torch.Generator().manual_seed(23)
    xq = _rand_int8((2, 5, 6, 64), gen)
    wq, w_scale = K.quantize_weight(torch.randn(30, 64, 1, 1, generator=gen))
    wq = K.pack_weight(wq).to(DEV)
    scale = K.dequant_scale(w_scale, 0.02).to(DEV)
    bias = torch.randn(30, generator=gen).to(DEV)
    outs = [torch.empty(2, 5, 6, c, dtype=torch.int8, device=DEV) for c in (8, 10, 12)]
    K.conv2d(xq, wq, bias, scale=scale, out_scale=0.05, out=outs, config=dict(SPLIT_CFG, BLOCK_K=32))
    want = K.conv2d_reference(xq, wq, bias, scale=scale, out_scale=0.05, splits=(8, 10, 12))
    for got, ref in zip(outs, want):
        assert torch.equal(got.cpu(), ref.cpu())


def _requant_probe():
    import triton
    import triton.language as tl

    @triton.jit
    def probe(v_ptr, q_ptr, n, y_scale, y_inv, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(v_ptr + offs, mask=offs < n)
        tl.store(q_ptr + offs, K.conv._requantize(v, y_scale, y_inv, False).to(tl.int8), mask=offs < n)

    return probe


@pytest.mark.skipif(cuda_usable(), reason="checks the interpreter's exact-residual path")
def test_requantize_without_division_is_exact_at_ties():
    """The epilogue's multiply-and-correct requantisation equals ONNX QuantizeLinear (an IEEE
    division, then round half to even) on values at, and a few ulps either side of, every
    half-integer quotient, for awkward scales."""
    probe = _requant_probe()
    gen = torch.Generator().manual_seed(24)
    for s in (0.05, 0.0173, 1 / 3, 7.3e-3, 0.1, 3.7, float(torch.rand(1, generator=gen)) * 0.1 + 1e-4):
        s32 = torch.tensor(s, dtype=torch.float32)
        halves = (torch.arange(-131, 131, dtype=torch.float32) + 0.5) * s32
        near = [halves]
        up, down = halves.clone(), halves.clone()
        for _ in range(3):
            up = torch.nextafter(up, torch.tensor(float("inf")))
            down = torch.nextafter(down, torch.tensor(float("-inf")))
            near += [up, down]
        v = torch.cat(near + [torch.randn(4096, generator=gen) * 60 * s32])
        inv = float(torch.tensor(1.0) / s32)
        q = torch.empty(v.shape, dtype=torch.int8)
        probe[(triton_cdiv(v.numel(), 1024),)](v, q, v.numel(), float(s32), inv, BLOCK=1024)
        want = K.quantize_reference(v, float(s32))
        bad = q != want
        assert not bad.any(), f"scale {s}: {int(bad.sum())} differ, e.g. v={v[bad][:3].tolist()}"


def triton_cdiv(a, b):
    return -(-a // b)


def test_prepared_launch_does_no_host_work(monkeypatch):
    """prepare_conv2d checks and chooses once; the returned callable launches on the same
    tensors (new values in place are picked up) without checking or choosing again."""
    gen = torch.Generator().manual_seed(25)
    x = torch.randn(2, 6, 5, 24, generator=gen).to(DEV)
    w = rand_weight(24, 16, 3, 3, torch.float32, gen)
    b = torch.randn(16, generator=gen).to(DEV)
    out = torch.empty(2, 6, 5, 16, device=DEV)
    run = K.conv.prepare_conv2d(x, w, b, padding=1, out=out, config=SPLIT_CFG)
    made = K.conv.prepare_conv2d(x, w, b, padding=1, config=SPLIT_CFG)    # out allocated once, here
    for name in ("_check_inputs", "_destinations", "_check_residual", "chosen_config",
                 "interpreter_config", "_placeholder", "_launches", "_meta"):
        monkeypatch.setattr(K.conv, name, _forbidden(name))
    monkeypatch.setattr(torch, "empty", _forbidden("torch.empty"))
    first = made()
    for _ in range(2):
        x.copy_(torch.randn(x.shape, generator=gen))
        assert run() is out and made() is first
        want = K.conv2d_reference(x, w, b, padding=1)
        assert_close(out, want, torch.float32, "prepared")
        assert_close(first, want, torch.float32, "prepared, allocated at prepare")


def test_every_kernel_has_a_prepared_launcher(monkeypatch):
    """The pools, the head and Q/DQ prepare like the conv: the returned callable launches on
    the tensors given (new values are picked up), returns the output, and checks, chooses
    and allocates nothing."""
    gen = torch.Generator().manual_seed(26)
    x = torch.randn(2, 9, 7, 24, generator=gen).to(DEV)
    w = K.pack_linear_weight(torch.randn(10, 24, generator=gen) / 5).to(DEV)
    b = torch.randn(10, generator=gen).to(DEV)
    pooled = torch.empty(2, 4, 3, 24, device=DEV)
    averaged = torch.empty(2, 9, 7, 24, device=DEV)
    means = torch.empty(2, 24, device=DEV)
    logits = torch.empty(2, 10, device=DEV)
    q = torch.empty(x.shape, dtype=torch.int8, device=DEV)
    dq = torch.empty(x.shape, dtype=torch.float32, device=DEV)
    runs = [
        (K.prepare_max_pool(x, pooled), pooled, lambda: K.max_pool_reference(x)),
        (K.prepare_avg_pool(x, averaged), averaged, lambda: K.avg_pool_reference(x)),
        (K.prepare_global_avg_pool(x, means), means, lambda: K.global_avg_pool_reference(x)),
        (K.prepare_linear(means, w, b, out=logits), logits, lambda: K.linear_reference(means, w, b)),
        (K.prepare_quantize(x, 0.02, q), q, lambda: K.quantize_reference(x, 0.02)),
        (K.prepare_dequantize(q, 0.02, dq, out_dtype=torch.float32), dq,
         lambda: K.dequantize_reference(q, 0.02, out_dtype=torch.float32)),
    ]
    for module in (K.conv, K.pool, K.quant):
        for name in ("check_input", "check_nhwc", "check_dtype", "check_runnable", "config_kwargs", "clamp_pow2"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _forbidden(f"{module.__name__}.{name}"))
    monkeypatch.setattr(K.fully_connected, "_as_map", _forbidden("_as_map"))
    monkeypatch.setattr(torch, "empty", _forbidden("torch.empty"))
    for _ in range(2):
        x.copy_(torch.randn(x.shape, generator=gen))
        for run, out, reference in runs:
            assert run() is out
            want = reference()
            if out.dtype == torch.int8:
                assert torch.equal(out.cpu(), want.cpu())
            else:
                assert_close(out, want, torch.float32, "prepared")


def _forbidden(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called by a prepared launch")
    return fail


# ----------------------------------------------------------------------------------------
# pools, head, quantise
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8], ids=str)
def test_max_pool_into_slice(dtype):
    gen = torch.Generator().manual_seed(9)
    x = _rand_int8((3, 11, 9, 21), gen) if dtype == torch.int8 else torch.randn(3, 11, 9, 21, generator=gen).to(dtype).to(DEV)
    out, buf = sliced((3, 5, 4, 21), dtype, 11, 2, gen, fill=0)
    K.max_pool(x, out)
    assert torch.equal(out.cpu(), K.max_pool_reference(x).cpu())
    assert (buf[..., :11] == 0).all() and (buf[..., 32:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_avg_pool_exclude_pad(dtype):
    gen = torch.Generator().manual_seed(10)
    x, _ = sliced((3, 7, 5, 19), dtype, 3, 1, gen)
    out, _ = sliced((3, 7, 5, 19), dtype, 0, 6, gen)
    K.avg_pool(x, out)
    assert_close(out, K.avg_pool_reference(x), dtype, "avg pool")


def test_avg_pool_int8_bit_exact():
    gen = torch.Generator().manual_seed(11)
    x = _rand_int8((3, 7, 5, 19), gen)
    y = K.avg_pool(x, x_scale=0.02, out_scale=0.03)
    assert torch.equal(y.cpu(), K.avg_pool_reference(x, x_scale=0.02, out_scale=0.03).cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8], ids=str)
def test_global_avg_pool_and_linear(dtype):
    gen = torch.Generator().manual_seed(12)
    if dtype == torch.int8:
        x = _rand_int8((3, 8, 8, 70), gen)
        g = K.global_avg_pool(x, x_scale=0.1)
        assert torch.equal(g.cpu(), K.global_avg_pool_reference(x, x_scale=0.1).cpu())
        return
    x = torch.randn(3, 8, 8, 70, generator=gen).to(dtype).to(DEV)
    g = K.global_avg_pool(x)
    assert_close(g, K.global_avg_pool_reference(x), dtype, "global avg pool")
    w = K.pack_linear_weight(torch.randn(37, 70, generator=gen) / 70 ** 0.5, dtype).to(DEV)
    b = torch.randn(37, generator=gen).to(DEV)
    y = K.linear(g, w, b)
    assert y.shape == (3, 37)
    assert_close(y, K.linear_reference(g, w, b), dtype, "linear")


# ----------------------------------------------------------------------------------------
# coverage and launcher errors
# ----------------------------------------------------------------------------------------

def test_cases_cover_every_layer_class():
    """The classes tested above are exactly those of the three networks (traced on meta)."""
    from engine.models.shapes import network_shapes
    seen, groups = set(), []
    for name in ("inception_v4", "inception_resnet_v1", "inception_resnet_v2"):
        shapes = network_shapes(name, width=0.25)
        seen |= {(s.kh, s.kw, s.stride, s.pad_h, s.pad_w) for s in shapes.convs}
        groups += shapes.fusion_groups
    assert seen == set(CLASSES), f"untested: {seen - set(CLASSES)}; unused: {set(CLASSES) - seen}"
    assert max(len(g) for g in groups) <= K.conv.MAX_DESTINATIONS


def test_launcher_errors_are_clear():
    x = torch.randn(1, 5, 5, 8, device=DEV)
    w = K.pack_weight(torch.randn(4, 8, 3, 3)).to(DEV)
    with pytest.raises(ValueError, match="channel stride 1"):
        K.conv2d(torch.randn(1, 8, 5, 5, device=DEV).permute(0, 2, 3, 1), w)
    with pytest.raises(ValueError, match="weight expects 8"):
        K.conv2d(torch.randn(1, 5, 5, 6, device=DEV), w)
    with pytest.raises(ValueError, match="expected \\[1, 3, 3, channels\\]"):
        K.conv2d(x, w, out=torch.empty(1, 5, 5, 4, device=DEV))
    with pytest.raises(ValueError, match="sum to 5"):
        K.conv2d(x, w, out=[torch.empty(1, 3, 3, 2, device=DEV), torch.empty(1, 3, 3, 3, device=DEV)])
    with pytest.raises(TypeError, match="differs from x dtype"):
        K.conv2d(x.half(), w)
    with pytest.raises(ValueError, match="needs scale"):
        K.conv2d(x.to(torch.int8), w.to(torch.int8))
    with pytest.raises(ValueError, match="needs out_scale"):
        K.conv2d(x, w, out=torch.empty(1, 3, 3, 4, dtype=torch.int8, device=DEV))
    with pytest.raises(ValueError, match="overlaps the input"):
        buf = torch.randn(1, 5, 5, 12, device=DEV)
        K.conv2d(buf[..., :8], K.pack_weight(torch.randn(4, 8, 1, 1)).to(DEV), out=buf[..., 8:])
    with pytest.raises(ValueError, match="pack_weight"):
        K.conv2d(x, torch.randn(4, 8, 3, 3, device=DEV).permute(0, 2, 3, 1))
