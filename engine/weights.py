"""Loading weights into the reference models.

Sources:
- ``"timm"``: timm's pretrained ImageNet weights (``inception_v4.tf_in1k``,
  ``inception_resnet_v2.tf_in1k``). Needs timm and network access to the Hugging Face hub;
  offline it fails with a message saying how to load a local copy instead.
- ``"bundled"``: a checkpoint shipped in ``engine/data/<model name>.safetensors`` (the trained
  Fashion-MNIST subject).
- a path: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
  ``torch.load(weights_only=True)`` (never unpickling arbitrary objects). A wrapper dict
  (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped. TF-slim classifiers with 1001 rows
  (row 0 = background) are trimmed to 1000 classes.

A file that holds anything but a state dict (a whole pickled ``nn.Module``, a list, a tensor, a
dict whose values are not tensors) names what it holds, and says how to save a state dict. A
mismatch names the first offending keys and shapes (and a prefix that the checkpoint's keys
carry, when stripping it would match). A checkpoint holding NaN or Inf is
refused, naming the first such tensor, unless the caller passes ``allow_non_finite=True``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

from .errors import WeightsError

DATA_DIR = Path(__file__).resolve().parent / "data"
TIMM_NAMES = {"inception_v4": "inception_v4.tf_in1k",
              "inception_resnet_v2": "inception_resnet_v2.tf_in1k"}
_MAX_LISTED = 5
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
SAVE_HINT = "torch.save(model.state_dict(), path)"


def _listing(keys) -> str:
    keys = list(keys)
    more = f" (and {len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _first_line(error: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))     # torch bolds parts of its messages
    return text.splitlines()[0] if text else ""


def _pickled_global(error: Exception) -> Optional[str]:
    """The class or function a ``weights_only`` load refused (torch names it), or None."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return m.group(1) if m else None


def _kind(v) -> str:
    """A short description of a checkpoint value, for messages."""
    import torch
    if isinstance(v, torch.Tensor):
        return f"tensor {tuple(v.shape)}"
    if isinstance(v, dict):
        n = sum(isinstance(x, torch.Tensor) for x in v.values())
        return (f"dict of {n} tensors" if n == len(v) else
                f"dict of {len(v)} entries, {n} of them tensors")
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__} of {len(v)} items"
    return type(v).__name__


def _not_a_state_dict(p: Path, obj) -> WeightsError:
    """What ``obj`` (read from ``p``) is instead of a ``{name: tensor}`` dict, and what to do."""
    import torch
    expects = "weights are a state dict, a dict {parameter name: tensor}"
    if not isinstance(obj, dict):
        return WeightsError(f"{p}: holds a {_kind(obj)}, not a state dict; {expects}: save one "
                            f"from the model with {SAVE_HINT}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    listed = _listing(f"{k!r} ({_kind(obj[k])})" for k in bad)
    nested = [k for k in bad if isinstance(obj[k], dict) and obj[k]
              and all(isinstance(v, torch.Tensor) for v in obj[k].values())]
    if nested:
        key = nested[0]
        how = (f"its state dict looks to be under {key!r}: re-save that alone with "
               f"torch.save(torch.load(path)[{key!r}], 'w.pth') and pass 'w.pth' (one under "
               f"{', '.join(repr(k) for k in WRAPPER_KEYS)} is unwrapped for you)")
    else:
        how = f"save one from the model with {SAVE_HINT}"
    entries = f"{len(obj)} entr{'y' if len(obj) == 1 else 'ies'}"
    return WeightsError(f"{p}: holds a dict of {entries}, {len(bad)} of them not tensors: "
                        f"{listed}; {expects}: {how}")


def check_finite(sd, source: str = "checkpoint") -> None:
    """Refuse a state dict holding NaN or Inf, naming the first such tensor."""
    import torch
    for name, tensor in sd.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(
                f"{source}: tensor {name!r} holds {bad} NaN/Inf values of {tensor.numel()}; "
                "the checkpoint is damaged or was saved after training diverged: use another "
                "checkpoint, or pass allow_non_finite=True (--allow-non-finite-weights) to load "
                "it anyway")


def read_state_dict(path) -> Dict[str, "torch.Tensor"]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict, safely."""
    import torch
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"checkpoint {p} does not exist; pass a .pth/.pt/.safetensors path, "
                           "'timm' or 'bundled'")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            return load_file(str(p))
        except Exception as e:
            raise WeightsError(
                f"{p}: not a readable safetensors file ({type(e).__name__}: "
                f"{_first_line(e)}); the file is truncated or not safetensors: copy it again, "
                "or re-save it with safetensors.torch.save_file(model.state_dict(), path)") from e
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        refused = _pickled_global(e)
        if refused is not None:
            raise WeightsError(
                f"{p}: holds a pickled {refused} (a whole model saved with torch.save(model)?), "
                "not a state dict; it is not unpickled, since that can run arbitrary code "
                "(torch.load(weights_only=True)). Expected a dict {parameter name: tensor}: "
                "if you trust the file, re-save its weights with torch.save(torch.load(path, "
                f"weights_only=False).state_dict(), 'w.pth') and pass 'w.pth'") from e
        raise WeightsError(
            f"{p}: cannot be read as a PyTorch checkpoint with weights_only=True ({type(e).__name__}: "
            f"{_first_line(e)}). Only plain tensor state dicts are "
            f"accepted; re-save it with {SAVE_HINT}") from e
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise _not_a_state_dict(p, obj)
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def _trim_background_class(model, sd):
    """TF-slim checkpoints have 1001 classes with background at 0: drop that row."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return sd
    for suffix in ("weight", "bias"):
        key = f"{cfg.classifier}.{suffix}"
        own = model.state_dict().get(key)
        if own is not None and key in sd and sd[key].shape[0] == own.shape[0] + 1:
            sd[key] = sd[key][1:]
    return sd


def load_state_dict_strict(model, sd, source: str = "checkpoint"):
    """Load ``sd`` with strict key and shape checks and a readable error."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        parts = [f"{source} does not match model {name!r}:"]
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {_listing(shapes)}")
        prefix = _key_prefix(sd, own)
        if prefix is not None:
            parts.append(f"the checkpoint's keys carry the prefix {prefix!r}: strip it and "
                         f"re-save, torch.save({{k.removeprefix({prefix!r}): v for k, v in "
                         f"sd.items()}}, 'w.pth'), or save the model itself with {SAVE_HINT}")
        elif len(missing) == len(own):
            parts.append(f"none of the model's keys are in it: it is not a checkpoint of this "
                         f"architecture; pass one saved from {name!r} with {SAVE_HINT}")
        else:
            parts.append("check the model name, width and num_classes the checkpoint was "
                         "trained with")
        raise WeightsError("\n  ".join(parts))
    ref = next(iter(own.values()), None)
    if ref is not None:
        sd = {k: v.to(dtype=own[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    return model


def _key_prefix(sd, own) -> Optional[str]:
    """A prefix (``"backbone."``) that the checkpoint's keys carry where the model's have none:
    the one whose removal makes every model key present, or None."""
    first = next((k for k in sd if k not in own), None)
    if first is None:
        return None
    parts = first.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i]) + "."
        stripped = {k[len(prefix):] for k in sd if k.startswith(prefix)}
        if all(k in stripped for k in own):
            return prefix
    return None


def _timm_state_dict(model):
    cfg = model.config
    if cfg.name not in TIMM_NAMES or cfg.width != 1.0:
        raise WeightsError(f"timm has pretrained weights for {sorted(TIMM_NAMES)} at width 1.0 only, "
                           f"not {cfg.name!r} at width {cfg.width}")
    try:
        import timm
    except ImportError as e:
        raise WeightsError("weights='timm' needs timm: pip install timm") from e
    try:
        ref = timm.create_model(TIMM_NAMES[cfg.name], pretrained=True, num_classes=cfg.num_classes)
    except Exception as e:
        raise WeightsError(
            f"could not fetch timm's pretrained {TIMM_NAMES[cfg.name]} weights "
            f"({type(e).__name__}: {_first_line(e)}). This needs network "
            "access to the Hugging Face hub. Offline: download the checkpoint on another machine "
            "(timm.create_model(..., pretrained=True) then torch.save(m.state_dict(), 'w.pth')) "
            "and pass weights='w.pth'") from e
    return ref.state_dict()


def _bundled_path(model) -> Path:
    name = model.config.name
    path = DATA_DIR / f"{name}.safetensors"
    if not path.exists():
        shipped = sorted(p.stem for p in DATA_DIR.glob("*.safetensors"))
        raise WeightsError(f"no bundled checkpoint for {name!r}; bundled: {shipped or 'none'}. "
                           "Pass a checkpoint path or 'timm' instead")
    return path


def load_weights(model, weights, allow_non_finite: bool = False):
    """Load ``weights`` ("timm", "bundled" or a path) into ``model`` strictly; returns the model.

    allow_non_finite: load a checkpoint holding NaN/Inf (refused by default, naming the tensor).
    """
    if weights == "timm":
        sd, source = _timm_state_dict(model), "timm checkpoint"
    else:
        path = _bundled_path(model) if weights == "bundled" else weights
        sd = _trim_background_class(model, dict(read_state_dict(path)))
        source = f"checkpoint {path}"
    if not allow_non_finite:
        check_finite(sd, source)
    return load_state_dict_strict(model, sd, source)


def set_bn_statistics(model, x):
    """Set every BatchNorm's running mean/var from one batch ``x`` and return the model in eval.

    For random-weight models used in parity tests and benchmarks: at PyTorch's default BN
    statistics a deep Inception's activations shrink to ~1e-9, which makes any comparison
    vacuous; with statistics from real activations they keep unit scale.
    """
    import torch
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()
