"""Ahead-of-time compilation of kernel specializations for a GPU architecture this machine
need not have, and a static report of the compiled code; split by job:

- :mod:`kernels.aot.compile`: :class:`Spec` (a kernel, its pointer dtypes, its constexprs),
  ``triton.compile`` for ``GPUTarget("cuda", arch, 32)``, ``ptxas -v`` (registers, spills)
  and ``cuobjdump`` (SASS), in a child process when this one runs the interpreter;
- :mod:`kernels.aot.inspect`: reading the compiled code: whether each MMA operand's
  main-loop load is asynchronous (TTGIR: a slot of a multi-buffered shared-memory ring
  written by ``cp.async`` or TMA) and the main loop's instructions per K-step and per MMA
  (SASS);
- :mod:`kernels.aot.specs`: the specializations: one builder per kernel, the layer classes
  (:func:`class_specs`), and every tile the tuning table picks for a list of
  :class:`kernels.launches.ConvLaunch` at each batch, with the grid's wave efficiency;
- :mod:`kernels.aot.gate`: the table, the gate (:func:`check`), the JSON report, the dump,
  and the command:

    python -m kernels.aot --arch 80 90 --report OUT.json --dump DIR [--layers LAYERS.json]

compiles the layer classes of :func:`class_specs` (or, with ``--layers``, every tile the
tuning table picks for those launches at batch 1, 32, 128 and 256) and writes the report;
``--dump`` writes each specialization's ``.ttgir``, ``.ptx`` and ``.sass``. The launches of
the real networks come from ``benchmarks/aot_report.py`` (kernels never import the engine).
The kernels are found through the ``JIT_KERNELS`` table each kernel module keeps.
"""
from .compile import CompileResult, Spec, compile_many, compile_spec, jit_kernels, kernel_fn, tool
from .gate import check, format_table, layers_to_json, load_layers, main, report, write_dump
from .inspect import LoopStats, operand_sources, sass_main_loop
from .specs import (BATCHES, BIG_TILES, class_specs, conv_spec, global_avg_spec, launch_specs, layer_specs,
                    pool_spec, requant_spec, splitk_reduce_spec, wave_table)

__all__ = ["BATCHES", "BIG_TILES", "CompileResult", "LoopStats", "Spec", "check", "class_specs", "compile_many",
           "compile_spec", "conv_spec", "format_table", "global_avg_spec", "jit_kernels", "kernel_fn",
           "launch_specs", "layer_specs", "layers_to_json", "load_layers", "main", "operand_sources",
           "pool_spec", "report", "requant_spec", "sass_main_loop", "splitk_reduce_spec", "tool", "wave_table",
           "write_dump"]
