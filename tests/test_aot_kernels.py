"""Ahead-of-time compile of the kernels for sm_80 and sm_90 on a CPU-only machine.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` needs no GPU. Each
compiled PTX goes through ``ptxas -v`` for registers and spills. The gate: no spills in
the FP16 path, tensor-core instructions (mma.sync on sm_80, wgmma on sm_90) in every
fp16/bf16/int8 conv. The default run compiles a representative subset; the full sweep of
every IR-v2 specialization (and every autotune tile) is marked slow. The full table:
``python benchmarks/aot.py --out aot.txt``.
"""
import os

import pytest
import torch

from kernels.env import cuda_usable

# Like every kernel test module: without CUDA, kernels are imported for the interpreter
# (whichever module pytest imports first decides for the session); the AOT compiles then
# run in a child process without TRITON_INTERPRET (aot.compile_many).
if not cuda_usable():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import aot, conv  # noqa: E402
from benchmarks.aot import network_specs  # noqa: E402

try:
    aot._ptxas()
    HAVE_PTXAS = True
except FileNotFoundError:
    HAVE_PTXAS = False

pytestmark = pytest.mark.skipif(not HAVE_PTXAS, reason="no ptxas (triton's bundled one is missing)")

ARCHS = [80, 90]


def _compile_all(specs, archs):
    results = aot.compile_many(specs, archs)   # in a child process if this one interprets
    print("\n" + aot.format_table(results))
    return results


def _representative():
    """One of each kind: stem (3 channels, unaligned), 1x7, residual, 3-way fused heads,
    int8 requantised, bf16, and the pools."""
    fp16, bf16, i8 = torch.float16, torch.bfloat16, torch.int8
    return [
        aot.conv_spec(3, 3, 2, fp16, fp16, aligned=False),
        aot.conv_spec(1, 7, 1, fp16, fp16),
        aot.conv_spec(1, 1, 1, fp16, fp16, res_dt=fp16, relu=True),
        aot.conv_spec(1, 1, 1, fp16, fp16, dests=3),
        aot.conv_spec(3, 1, 1, bf16, bf16),
        aot.conv_spec(1, 1, 1, i8, i8, dests=3),
        aot.pool_spec("max", fp16),
    ]


def test_representative_specs_compile_without_spills_and_use_tensor_cores():
    results = _compile_all(_representative(), ARCHS)
    problems = aot.check(results)
    assert not problems, "\n".join(problems)
    for r in results:
        assert r.registers > 0, f"no register count parsed for {r.spec.name}:\n{r.ptxas_log}"
        if r.arch >= 90 and r.spec.tensor_core_dtype:   # the default tile gets Hopper's wgmma
            assert r.ptx_target == "sm_90a" and r.wgmma, r.spec.name


def test_irv2_spec_list_covers_the_network():
    """Every conv geometry and every epilogue IR-v2 needs has a specialization."""
    from engine.models.shapes import network_shapes
    specs = network_specs("inception_resnet_v2", dtypes=(torch.float16,))
    names = [s.name for s in specs]
    shapes = network_shapes("inception_resnet_v2", width=0.25)
    for s in shapes.convs:
        tag = f"conv {s.kh}x{s.kw}/{s.stride} fp16"
        assert any(n.startswith(tag) for n in names), f"no specialization for {s.label}"
    assert any("+res relu" in n for n in names) and any("+res [" in n for n in names)
    assert any("3-dest" in n for n in names) and any("2-dest" in n for n in names)
    assert any(n.startswith("maxpool") for n in names) and any(n.startswith("avgpool") for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_irv2_specialization_compiles(arch):
    specs = network_specs("inception_resnet_v2", dtypes=(torch.float16, torch.bfloat16, torch.int8))
    results = _compile_all(specs, [arch])
    problems = aot.check(results)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_autotune_tile_fp16_has_no_spills(arch):
    fp16 = torch.float16
    specs = []
    for cfg in conv.CONFIGS:
        specs += [aot.conv_spec(kh, kw, 1, fp16, fp16, config=cfg) for kh, kw in ((1, 1), (3, 3), (1, 7))]
        specs.append(aot.conv_spec(1, 1, 1, fp16, fp16, dests=3, config=cfg))
        specs.append(aot.conv_spec(1, 1, 1, fp16, fp16, res_dt=fp16, config=cfg))
    problems = aot.check(_compile_all(specs, [arch]))
    assert not problems, "\n".join(problems)


def test_autotune_tiles_follow_the_register_rule():
    """128x128 on 4 warps spilled with the residual and fused-head epilogues (slow sweep);
    every shipped tile keeps <= 64 accumulator elements per thread, and the pruner drops
    any that does not."""
    assert all(conv.fits_registers(c) for c in conv.CONFIGS)
    x = torch.empty(1, dtype=torch.float16)
    args = {"BATCH": 128, "OH": 35, "OW": 35, "N_TOTAL": 96, "C": 320, "x_ptr": x}
    big = conv._cfg(128, 128, 32, 4, 4)
    assert not conv.fits_registers(big)
    assert big not in conv._prune(conv.CONFIGS + [big], args, NUM_DEST=3)
