"""The ONNX pieces of one quantized tensor, shared by the Q/DQ writer and the sensitivity model.

Activations get a ``QuantizeLinear -> DequantizeLinear`` pair with a scalar scale and a zero
point of 0 (int8, or uint8 for non-negative tensors); weights are int8 per output channel
(:func:`calibration.methods.quantize_weight`). Every name derives from the quantized tensor's
name through :func:`qdq_names`, so the writer and the sensitivity model name things alike.
"""
from __future__ import annotations

from typing import List, NamedTuple, Tuple

import numpy as np

from .methods import QMAX, UINT8_MAX, amax_to_scale


class QDQNames(NamedTuple):
    quantize: str          # the QuantizeLinear node
    dequantize: str        # the DequantizeLinear node
    quantized: str         # the int8/uint8 tensor
    dequantized: str       # the float tensor readers take instead of the original
    scale: str             # scale initializer
    zero_point: str        # zero point initializer


def qdq_names(tensor: str) -> QDQNames:
    """The names of the nodes and tensors that quantize ``tensor``."""
    return QDQNames(f"{tensor}_QuantizeLinear", f"{tensor}_DequantizeLinear",
                    f"{tensor}_quantized", f"{tensor}_dequantized", f"{tensor}_scale",
                    f"{tensor}_zero_point")


def activation_qdq(tensor: str, amax: float, names: QDQNames,
                   unsigned: bool = False) -> Tuple[list, list]:
    """``(initializers, nodes)`` quantize-dequantizing ``tensor`` with the range ``amax``.

    Symmetric, zero point 0: scale ``amax / 127`` (int8) or ``amax / 255`` (uint8 when
    ``unsigned``, for tensors known to be >= 0). The pair reads ``tensor`` and writes
    ``names.dequantized``.
    """
    from onnx import helper, numpy_helper

    scale = amax_to_scale(amax, UINT8_MAX if unsigned else QMAX).reshape(())
    zero = np.zeros((), np.uint8 if unsigned else np.int8)
    inits: List = [numpy_helper.from_array(scale, names.scale),
                   numpy_helper.from_array(zero, names.zero_point)]
    nodes = [helper.make_node("QuantizeLinear", [tensor, names.scale, names.zero_point],
                              [names.quantized], name=names.quantize),
             helper.make_node("DequantizeLinear", [names.quantized, names.scale,
                                                   names.zero_point],
                              [names.dequantized], name=names.dequantize)]
    return inits, nodes
