"""ONNX export: one FP32 graph with dynamic batch, the artifact every engine consumes.

What the exported graph looks like (engines and the Q/DQ writer rely on it):
- BatchNorm is folded into the preceding Conv (eval-mode constant folding), so each basic
  unit is ``Conv -> Relu``;
- the residual scale of every Inception-ResNet block is folded into its up-projection
  ``conv2d`` (weights and bias), so a residual is ``Conv -> Add(shortcut) [-> Relu]`` with no
  ``Mul``; ``fold_residual_scale=False`` keeps the ``Mul`` as timm's graph has it;
- every Conv has its own weight and bias initializers (no shared or ``Identity`` aliases);
- node names carry the PyTorch module path (``/repeat/repeat.0/branch1/branch1.0/conv/Conv``),
  which is how ``engine.verify`` matches layers across engines;
- input ``input`` (N x 3 x H x W, N dynamic), output ``logits`` (or ``embedding``).

``metadata_props`` carry the model config (JSON under ``inception.config``), a SHA-256
fingerprint of the weights, the precision and the format version (keys and readers:
:mod:`engine.onnxmeta`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Optional

from .errors import InputError
from .onnxmeta import (FORMAT_VERSION, META_CONFIG, META_FORMAT, META_PRECISION, META_WEIGHTS,
                       set_metadata)

def module_path(node_name: str) -> str:
    """PyTorch module path of a node name written by the exporter.

    ``/repeat/repeat.0/branch1/branch1.0/conv/Conv`` -> ``repeat.0.branch1.0.conv``: the last
    component is the op; each scope of a child of an ``nn.Sequential`` repeats its parent's
    name (``repeat`` then ``repeat.0``), so it replaces it.
    """
    parts = []
    for comp in node_name.strip("/").split("/")[:-1]:
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts)


def weights_fingerprint(model) -> str:
    """SHA-256 over the state dict (names, shapes, dtypes and bytes), in key order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fold_residual_scales(model):
    from .models.layers import Residual
    import torch
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Residual) and m.scale != 1.0:
                m.conv2d.weight.mul_(m.scale)
                m.conv2d.bias.mul_(m.scale)
                m.scale = 1.0
    return model


def _inline_identities(proto):
    """Replace ``Identity(initializer)`` aliases (the exporter's de-duplication) by copies."""
    from onnx import numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            proto.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            inits[node.output[0]] = proto.graph.initializer[-1]
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    used = {i for n in proto.graph.node for i in n.input}
    unused = [i for i in proto.graph.initializer if i.name not in used]
    for i in unused:
        proto.graph.initializer.remove(i)


def export_onnx(model, path, opset: int = 17, dynamic_batch: bool = True, input_size=None,
                fold_residual_scale: bool = True, check: bool = True) -> Path:
    """Export an eval-mode model from ``engine.create_model`` to FP32 ONNX at ``path``.

    input_size: (C, H, W) traced with; defaults to the model config's input size. The batch
    axis is dynamic unless ``dynamic_batch=False``. The file is written atomically.
    """
    import onnx
    import torch
    from .fileio import atomic_path

    if opset < 17:
        raise InputError(f"opset {opset} is too old; use 17 or newer (needed for full "
                         "per-channel Q/DQ and the engines' parsers)")
    cfg = getattr(model, "config", None)
    if input_size is None:
        if cfg is None:
            raise InputError("the model has no .config; pass input_size=(3, H, W) "
                             "(models from engine.create_model carry one)")
        input_size = cfg.input_size
    fingerprint = weights_fingerprint(model)
    m = copy.deepcopy(model).eval().float().cpu()
    if fold_residual_scale:
        _fold_residual_scales(m)
    out_name = "embedding" if (cfg is not None and cfg.output == "embedding") else "logits"
    x = torch.zeros(2, *input_size)
    dyn = {"input": {0: "batch"}, out_name: {0: "batch"}} if dynamic_batch else None
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=[out_name], dynamic_axes=dyn,
                          do_constant_folding=True)
        proto = onnx.load(str(tmp))
        _inline_identities(proto)
        meta = {META_FORMAT: FORMAT_VERSION, META_PRECISION: "fp32", META_WEIGHTS: fingerprint}
        if cfg is not None:
            if tuple(input_size) != tuple(cfg.input_size):  # the file's size is the truth
                cfg = cfg.with_(input_size=tuple(input_size))
            meta[META_CONFIG] = json.dumps(cfg.to_dict(), sort_keys=True)
        set_metadata(proto, meta)
        proto.producer_name = "inception-infer"
        from .version import __version__
        proto.producer_version = __version__
        if check:
            onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path
