"""Ahead-of-time compile of the kernels for sm_80 and sm_90 on a CPU-only machine, and the
static report read from the compiled code.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` needs no GPU. The
gate (kernels.aot.check): no spills in fp16/int8 convs, tensor-core instructions in every
fp16/bf16/int8 conv, both MMA operands loaded asynchronously in the main loop (read off the
TTGIR), no byte permutes (a register transpose) in an int8 wgmma loop. The default run
compiles a few specializations; every specialization the networks launch, and every tile of
the tuning table, are slow-marked. The full report: ``python -m benchmarks.aot_report --report``.
"""
import json
import os

import pytest
import torch

from kernels.env import cuda_usable

# Like every kernel test module: without CUDA, kernels are imported for the interpreter
# (whichever module pytest imports first decides for the session); the AOT compiles then
# run in a child process without TRITON_INTERPRET (aot.compile_many).
if not cuda_usable():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import aot, tuning  # noqa: E402
from benchmarks.aot_report import network_layers, network_specs  # noqa: E402

try:
    aot.tool("ptxas")
    aot.tool("cuobjdump")
    HAVE_TOOLS = True
except FileNotFoundError:
    HAVE_TOOLS = False

needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="no ptxas/cuobjdump (triton's bundled ones are missing)")

ARCHS = [80, 90]
FP16, I8 = torch.float16, torch.int8

# Main-loop instructions per MMA on sm_90a of the conv kernel before the constexpr-geometry
# rewrite (commit 0880822), 128x128x64 tile, 8 warps, 3 stages, from
# ``python -m benchmarks.aot_report --classes --arch 90 --kernel-rev 0880822``: 201 and 224
# instructions per K-step for 4 wgmma.
BEFORE_PER_MMA = {(1, 1): 201 / 4, (3, 3): 224 / 4}


@pytest.fixture(scope="module")
def representative():
    """fp16 1x1 (the GEMM path) and 3x3 on the big tile, int8 1x1 and 3x3 (K-contiguous
    weights), the unaligned stem, a split-K small-M tile and its reduction, on both archs."""
    big, big8 = aot.BIG_TILES[FP16], aot.BIG_TILES[I8]
    small = tuning.choose(64, 192, 2080, 1, 1, 1, FP16, 90)
    specs = [aot.conv_spec(1, 1, 1, FP16, FP16, c=320, config=big),
             aot.conv_spec(3, 3, 1, FP16, FP16, c=256, config=big),
             aot.conv_spec(1, 1, 1, I8, I8, c=256, config=big8),
             aot.conv_spec(3, 3, 1, I8, I8, dests=1, c=256, config=big8),
             aot.conv_spec(3, 3, 2, I8, I8, aligned=False, c=3),
             aot.conv_spec(1, 1, 1, FP16, FP16, c=2080, config=small.meta()),
             aot.splitk_reduce_spec(FP16, FP16, small.split_k)]
    assert small.split_k > 1, "the 8x8 map at batch 1 should split K"
    return aot.compile_many(specs, ARCHS)   # in a child process if this one interprets


@needs_tools
def test_representative_specs_pass_the_gate(representative):
    print("\n" + aot.format_table(representative))
    problems = aot.check(representative)
    assert not problems, "\n".join(problems)
    for r in representative:
        assert r.registers > 0, f"no register count parsed for {r.spec.name}:\n{r.ptxas_log}"
        if r.spec.kernel != "conv":
            continue
        assert r.loop is not None and r.loop.mma > 0, f"no MMA loop found in the SASS of {r.spec.name}"
        if r.arch >= 90 and r.spec.constexprs and dict(r.spec.constexprs)["BLOCK_M"] >= 64:
            assert r.ptx_target == "sm_90a" and r.wgmma, r.spec.name


@needs_tools
def test_int8_operands_are_both_asynchronous_without_transpose(representative):
    for r in representative:
        if r.spec.tensor_core_dtype == "int8" and r.spec.aligned and r.arch == 90:
            assert r.operands == ("async", "async"), (r.spec.name, r.operands)
            assert r.loop.prmt == 0 and r.loop.sts == 0 and r.spills == 0, (r.spec.name, r.loop)


@needs_tools
def test_fp16_main_loop_at_least_30_percent_leaner_per_mma(representative):
    for r in representative:
        if r.arch != 90 or r.spec.dtypes[0] != FP16 or r.spec.kernel != "conv":
            continue
        geo = (dict(r.spec.constexprs)["KH"], dict(r.spec.constexprs)["KW"])
        if geo in BEFORE_PER_MMA and r.spec.num_warps == 8:
            assert r.loop.per_mma <= 0.7 * BEFORE_PER_MMA[geo], (r.spec.name, r.loop)


@needs_tools
def test_gate_fails_on_a_synchronous_operand():
    """The N-contiguous INT8 weight (the old layout) makes wgmma's B operand a register
    transpose stored to shared memory each step: the gate must say so."""
    bad = aot.conv_spec(1, 1, 1, I8, I8, c=256, config=aot.BIG_TILES[I8], kmajor=False)
    results = aot.compile_many([bad], [90])
    assert results[0].operands == ("async", "sync")
    problems = aot.check(results)
    assert any("operand B is loaded synchronously" in p for p in problems), problems
    assert any("PRMT" in p for p in problems), problems


def test_operand_reader_on_handwritten_ttgir():
    """The TTGIR reader: a slot of an empty ring filled by cp.async is async; a register
    tensor stored into shared memory inside the loop is sync."""
    ttgir = """
    %a_ring = ttg.local_alloc : () -> !ttg.memdesc<3x64x64xf16>
    %t = ttg.async_copy_global_to_local %ptrs, %a_slot0 mask %m : tensor<64x64x!tt.ptr<f16>> -> <64x64xf16>
    %a_slot0 = ttg.memdesc_index %a_ring[%c0] : !ttg.memdesc<3x64x64xf16> -> !ttg.memdesc<64x64xf16>
    %r:2 = scf.for %i = %lo to %hi step %c1 iter_args(%acc = %z, %a_cur = %a_slot0) -> (tensor<64x64xf32>) {
      %b = tt.load %bp : tensor<64x64x!tt.ptr<f16>>
      %b_s = ttg.local_alloc %b : (tensor<64x64xf16>) -> !ttg.memdesc<64x64xf16>
      %d = ttng.warp_group_dot %a_cur, %b_s, %acc : !ttg.memdesc<64x64xf16> * !ttg.memdesc<64x64xf16>
    }
    """
    assert aot.operand_sources(ttgir) == ("async", "sync")
    assert aot.operand_sources("%x = tt.load %p") == ()


def test_sass_loop_reader():
    sass = "\n".join([
        "        /*0000*/                   MOV R1, R2 ;",
        "        /*0010*/                   IADD3 R3, R3, 0x1, RZ ;",
        "        /*0020*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8], R24 ;",
        "        /*0030*/                   PRMT R5, R6, 0x5410, R7 ;",
        "        /*0040*/               @P0 BRA 0x10 ;",
        "        /*0050*/                   EXIT ;"])
    loop = aot.sass_main_loop(sass)
    assert (loop.instructions, loop.mma, loop.prmt) == (4, 1, 1)
    assert aot.sass_main_loop(sass.replace("HGMMA", "FFMA")) is None


def test_irv2_and_v4_convs_keep_80_percent_of_132_sms_busy():
    """Every conv launch of the IR-v2 and Inception-v4 plans (fused heads and classifier
    included) at batch 1 and 128, fp16 and int8, with the table's tile and split-K."""
    for model in ("inception_resnet_v2", "inception_v4"):
        rows = aot.wave_table(network_layers(model), (FP16, I8), (1, 128))
        low = [r for r in rows if r["wave_efficiency"] < 0.8]
        assert not low, low[:5]
        assert any(r["split_k"] > 1 for r in rows), "no layer uses split-K"


def test_wave_efficiency_counts_partial_waves():
    assert tuning.wave_efficiency(132) == 1.0
    assert tuning.wave_efficiency(133) == pytest.approx(133 / 264)
    with pytest.raises(ValueError):
        tuning.wave_efficiency(0)


def test_table_tiles_follow_the_register_rule():
    """<= 64 accumulators per thread: the rule under which every epilogue compiled without
    spills (slow sweep below)."""
    tiles = tuning.all_tiles(90) + tuning.all_tiles(80)
    assert tiles and all(t.accumulators_per_thread() <= 64 for t in tiles)


def test_autotune_cache_is_keyed_by_m_bucket(tmp_path):
    """Autotuning runs only for a new key; batch sizes in one M bucket share a key; the
    winner is written to disk and read back by a later call without timing anything."""
    path = str(tmp_path / "tune.json")
    timed = []
    options = tuning.options_for(100 * 17 * 17, 192, 1088, 1, 1, 1, FP16)
    assert len(options) >= 2

    def bench(choice):
        timed.append(choice)
        return float(choice.tile.block_m)          # pretend the smallest BLOCK_M is fastest

    key = tuning.cache_key(90, 100 * 17 * 17, 192, 1088, 1, 1, 1, FP16)
    assert key == tuning.cache_key(90, 128 * 17 * 17, 192, 1088, 1, 1, 1, FP16)
    assert key != tuning.cache_key(90, 1 * 17 * 17, 192, 1088, 1, 1, 1, FP16)
    first = tuning.autotune(key, options, bench, path)
    assert len(timed) == len(options) and first.tile.block_m == min(o.tile.block_m for o in options)
    again = tuning.autotune(key, options, bench, path)
    assert len(timed) == len(options) and again.tile == first.tile and again.source == "autotune cache"
    assert json.load(open(path))[key]["split_k"] == first.split_k


def test_network_spec_list_covers_the_network():
    """Every conv geometry and epilogue IR-v2 needs has a specialization."""
    from engine.models.shapes import network_shapes
    names = [s.name for s in network_specs("inception_resnet_v2", dtypes=(FP16,), batches=(1, 128))]
    for s in network_shapes("inception_resnet_v2", width=0.25).convs:
        assert any(n.startswith(f"conv {s.kh}x{s.kw}/{s.stride}") for n in names), f"no specialization for {s.label}"
    assert any("+res relu" in n for n in names)
    assert any("3-dest" in n for n in names) and any("2-dest" in n for n in names)
    assert any(n.startswith("splitk-reduce") for n in names)
    assert any(n.startswith("maxpool") for n in names) and any(n.startswith("avgpool") for n in names)


@needs_tools
@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_network_specialization_passes_the_gate(arch):
    specs = {}
    for model in ("inception_resnet_v2", "inception_v4"):
        for s in network_specs(model, dtypes=(FP16, I8)):
            specs.setdefault(s.name, s)
    problems = aot.check(aot.compile_many(list(specs.values()), [arch]))
    assert not problems, "\n".join(problems)


@needs_tools
@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_table_tile_compiles_without_spills(arch):
    specs = []
    for t in tuning.all_tiles(arch):
        for dt in (FP16, I8):
            if (dt == I8) != (t.block_k >= 32 and t in _int8_tiles(arch)):
                continue
            specs += [aot.conv_spec(1, 1, 1, dt, dt, config=t.meta(), c=256),
                      aot.conv_spec(3, 3, 1, dt, dt, config=t.meta(), c=256),
                      aot.conv_spec(1, 1, 1, dt, dt, dests=3, config=t.meta(), c=256)]
    problems = aot.check(aot.compile_many(specs, [arch]))
    assert not problems, "\n".join(problems)


def _int8_tiles(arch):
    entry = tuning._arch_entry(arch)
    return {tuning.Tile(*row) for cls, buckets in entry.items() if cls.startswith("int8")
            for rows in buckets.values() for row in rows}


def test_spec_kernels_come_from_the_kernel_modules_own_lists():
    """The AOT tool finds each kernel in the table its module keeps (JIT_KERNELS), for every
    kind a spec builder makes, and an unknown kind says where kernels are listed."""
    import kernels.conv
    import kernels.pool
    import kernels.quant
    found = aot.jit_kernels()
    assert found == {**kernels.conv.JIT_KERNELS, **kernels.pool.JIT_KERNELS, **kernels.quant.JIT_KERNELS}
    specs = aot.class_specs() + [aot.pool_spec("max", FP16), aot.pool_spec("avg", I8), aot.global_avg_spec(FP16),
                                 aot.requant_spec(FP16, I8), aot.requant_spec(I8, FP16)]
    assert {s.kernel for s in specs} == set(found)
    for s in specs:
        assert aot.kernel_fn(s.kernel) is found[s.kernel]
    with pytest.raises(ValueError, match="JIT_KERNELS"):
        aot.kernel_fn("winograd")


def test_network_launches_round_trip_through_the_layers_file(tmp_path):
    """``--layers`` reads what ``layers_to_json`` writes: the network's conv launches, fused
    heads and classifier included, as the one launch description (kernels.launches)."""
    from kernels.launches import ConvLaunch
    launches = network_layers("inception_resnet_v2")
    assert all(isinstance(x, ConvLaunch) for x in launches)
    labels = [x.label for x in launches]
    assert len(set(labels)) == len(labels)
    assert any(x.dests == 3 and x.label.startswith("fused 3x1x1") for x in launches)
    assert labels[-1].startswith("classifier 1536->1000")
    path = tmp_path / "layers.json"
    path.write_text(aot.layers_to_json(launches))
    assert aot.load_layers(str(path)) == launches
    path.write_text('[{"c_in": 3, "kernel": 7}]')
    with pytest.raises(ValueError, match="ConvLaunch"):
        aot.load_layers(str(path))


def test_atomic_writes_from_threads_never_share_a_temporary_file(tmp_path):
    """The one write-then-rename (kernels.atomic, under the tuning cache, the AOT report and
    engine.fileio): threads writing one target each get their own temporary file, so every
    rename finds its file and the target always holds one whole payload."""
    import threading
    from kernels.atomic import atomic_write_text
    target = tmp_path / "report.json"
    payloads = [json.dumps({"writer": i, "pad": "x" * 20000}) for i in range(6)]
    errors = []

    def write(text):
        try:
            for _ in range(25):
                atomic_write_text(target, text)
                assert target.read_text() in payloads
        except Exception as e:            # collected: an assert in a thread would be lost
            errors.append(e)
    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
