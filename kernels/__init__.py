"""Triton kernels for the Inception networks. Layout: NHWC everywhere.

Every kernel file holds the ``@triton.jit`` kernel, a launcher (checks shapes, dtypes and
strides, allocates when asked, launches) and a plain PyTorch reference with the same
arguments (``*_reference``). On a machine without a GPU set ``TRITON_INTERPRET=1`` before
importing this package; launchers then use one problem-sized config instead of the GPU table.

Tensors
-------
* Activations are 4-D NHWC **views** with channel stride 1. A channel slice of a larger
  buffer, ``buf[..., off:off + c]``, is a valid input or output: kernels address it by its
  base pointer and its N/H/W strides, so writing a branch into its concat slice is free.
* Conv weights are shaped ``[KH, KW, C, N]`` (:func:`pack_weight` from OIHW), in the input's
  dtype: HWIO contiguous for float, and for int8 a K-contiguous view of ``[N, KH, KW, C_pad]``
  (the B layout INT8 tensor-core MMA reads without a transpose). Concatenate packed weights
  along N with ``kernels.conv.concat_packed``; pack on the target device (moving a padded
  int8 view with ``.to(device)`` makes it contiguous HWIO, which works but is slower).
  Bias and scales are fp32 ``[N]`` vectors.
* Linear weights are ``[K, N]`` contiguous (:func:`pack_linear_weight` from ``[N, K]``).
* dtypes: fp16 / bf16 (fp32 accumulation), fp32 (IEEE dot, no TF32; parity), int8 (int32
  accumulation). INT8 is symmetric, zero point 0: weights per output channel, activations
  per tensor. An int8 destination is requantised exactly as ONNX QuantizeLinear does
  (``saturate(round_half_even(v / out_scale))``).

Public launchers
----------------
Every kernel has a ``prepare_*`` launcher: it checks the tensors, chooses the config and
packs the arguments once, and returns a zero-argument callable that only launches (on the
tensors given; their storage, not their values, is fixed) and returns the output. The plain
launcher is ``prepare_*(...)()``. ``config=`` takes a dict or triton.Config of
meta-parameters to bypass the tuning table; ``out=None`` allocates the output once.

prepare_conv2d(x, weight, bias=None, *, stride=1, padding=0, relu=True, residual=None,
               out=None, out_dtype=None, scale=None, res_scale=1.0, out_scale=None, config=None)
    ``relu?(conv(x, W) [* scale] + bias [+ residual])`` into ``out``; ``conv2d`` takes the
    same arguments.
    - padding: int or (ph, pw), symmetric (SAME for an odd k is k // 2; 1x7 -> (0, 3)).
    - out: None | one NHWC view [B, OH, OW, N] | list of up to 3 views whose channel
      counts sum to N: **horizontal fusion** -- concatenate the 1x1 weights of the branches
      that read the same input along N (``torch.cat(dim=3)`` of packed weights) and pass
      each branch's destination (concat slice or scratch) in column order.
    - residual: NHWC view [B, OH, OW, N] added before the ReLU; may be the same view as
      ``out`` (in place on the trunk). Inception-ResNet: fold the block scale into the
      up-projection first, ``w, b = fold_scale(w, b, 0.17)``; the final block8 passes
      ``relu=False``. An int8 residual is dequantised with ``res_scale``.
    - int8 input: ``weight`` int8 (:func:`quantize_weight`), ``scale=dequant_scale(w_scale,
      x_scale)``; destination float (dequantised) or int8 with ``out_scale``. A float conv
      may also write an int8 destination (``out_scale``): mixed precision feeding int8.
    - all destinations of one call share a dtype and, for int8, one ``out_scale``.
prepare_max_pool(x, out=None, *, config=None)  /  max_pool
    3x3 stride 2 VALID max pool into ``out`` (e.g. a concat slice); any dtype, int8 keeps
    its scale.
prepare_avg_pool(x, out=None, *, x_scale=None, out_scale=None, config=None)  /  avg_pool
    3x3 stride 1 pad 1 average, count_include_pad=False, into ``out``. int8 input needs
    ``x_scale``; an int8 destination needs ``out_scale``.
prepare_global_avg_pool(x, out=None, *, x_scale=None, config=None) -> [B, C]  /  global_avg_pool
    Mean over H and W (fp32 sum); int8 input needs ``x_scale``.
prepare_linear(x, weight, bias=None, *, relu=False, out=None, out_dtype=None, scale=None,
               out_scale=None, config=None) -> [B, N]  /  linear
    ``x [B, K] @ weight [K, N] + bias`` on the conv kernel (a 1x1 conv over a 1x1 map).
prepare_quantize(x, scale, out=None, *, x_scale=None) -> int8  /  quantize
prepare_dequantize(q, scale, out=None, *, out_dtype=float16)  /  dequantize
    Elementwise Q / DQ of any 4-D NHWC view (e.g. the network input, or a re-quantisation
    between concat scales).

Each kernel file also lists its jitted kernels in ``JIT_KERNELS`` (name -> kernel), which
is how the ahead-of-time compile (:mod:`kernels.aot`) finds them.

Weight preparation (host, once per model): pack_weight, pack_linear_weight, fold_bn,
fold_scale, quantize_weight, dequant_scale.

References: conv2d_reference, max_pool_reference, avg_pool_reference,
global_avg_pool_reference, linear_reference, quantize_reference, dequantize_reference.

Ahead-of-time compile without a GPU: ``kernels.aot.compile_many(specs, archs)`` compiles
kernel specializations for sm_80/sm_90 and reports registers, spills and tensor-core use;
the launches of the real networks come from ``engine.models.shapes`` (``benchmarks/aot_report.py``).

This package is a leaf: it imports torch and triton, never the engine.

Interpreter note: ``triton.jit`` decides when it decorates a kernel, so ``TRITON_INTERPRET=1``
must be set before the first launcher is imported in a process (``kernels.env`` may be
imported first: the launchers load on first use); launchers refuse CPU tensors otherwise.
Tiles on a GPU come from the table shipped in ``kernels/tuning/conv.json`` (keyed by
architecture, layer class and M bucket) through the wave model of :mod:`kernels.tuning`,
which also splits K for small M; nothing is timed at run time. ``KERNELS_AUTOTUNE=1`` times
the table's candidates once per (layer class, M bucket, sizes) and caches the winner on disk
(``KERNELS_TUNING_CACHE``). ``kernels.conv.describe_choice`` says what a layer gets.
"""
import importlib

# public name -> submodule that defines it, imported on first use (see the interpreter note)
_LAZY = {
    "interpreting": "env", "cuda_usable": "env",
    **{n: "conv" for n in ("conv2d", "prepare_conv2d", "conv2d_reference", "pack_weight", "fold_bn",
                           "fold_scale", "quantize_weight", "quantize_reference", "dequant_scale")},
    **{n: "fully_connected" for n in ("linear", "prepare_linear", "linear_reference", "pack_linear_weight")},
    **{n: "pool" for n in ("max_pool", "prepare_max_pool", "max_pool_reference", "avg_pool",
                           "prepare_avg_pool", "avg_pool_reference", "global_avg_pool",
                           "prepare_global_avg_pool", "global_avg_pool_reference")},
    **{n: "quant" for n in ("quantize", "prepare_quantize", "dequantize", "prepare_dequantize",
                            "dequantize_reference")},
}
__all__ = list(_LAZY)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kernels.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
