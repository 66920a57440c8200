"""Launch-time helpers shared by the kernel launchers: config choice, the checks on NHWC
tensors and channel slices, and the prepared launch every ``prepare_*`` returns.

Nothing here touches a GPU; it is imported by every kernel file.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import triton

from .env import interpreting

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ALL_DTYPES = FLOAT_DTYPES + (torch.int8,)


def bound_launch(launches: Sequence[Callable[[], object]], out) -> Callable[[], object]:
    """One zero-argument callable for a launcher's prepared kernel launches (each a
    ``functools.partial(kernel[grid], *args, **meta)``), run in order; it returns ``out``.

    The launches are Triton's own ``kernel[grid]`` objects with every argument bound, so a
    call does no check, no config choice and no argument packing: the ``prepare_*``
    launchers did those once. Nothing of Triton's is replaced to get there.
    """
    launches = tuple(launches)
    if not launches:
        raise ValueError("a prepared launch needs at least one kernel launch")
    if len(launches) == 1:
        only = launches[0]

        def launch():
            only()
            return out
        return launch

    def launch_all():
        for step in launches:
            step()
        return out
    return launch_all


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    """Smallest power of two >= n, clamped to [lo, hi]."""
    return max(lo, min(hi, next_pow2(n)))


def config_kwargs(config) -> dict:
    """Turn an explicit config (``triton.Config`` or dict) into launch keyword arguments."""
    if isinstance(config, triton.Config):
        kw = dict(config.kwargs)
        kw["num_warps"] = config.num_warps
        kw["num_stages"] = config.num_stages
        return kw
    if isinstance(config, dict):
        return dict(config)
    raise TypeError(f"config must be a triton.Config or a dict of meta-parameters, got {type(config).__name__}")


def check_runnable(x: torch.Tensor):
    """CPU tensors only run under the interpreter; say so instead of failing deep in Triton."""
    if x.device.type == "cpu" and not interpreting():
        raise RuntimeError("Triton kernels need a CUDA tensor; on a CPU-only machine set "
                           "TRITON_INTERPRET=1 in the environment before importing kernels "
                           "(the interpreter runs them with numpy, slowly)")
    if x.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"Triton kernels run on CUDA tensors, got a tensor on {x.device}")


def check_input(x: torch.Tensor):
    """The checks every launcher makes on its input ``x``: an NHWC view with channel stride
    1, on a device the kernels run on, in a dtype they take."""
    check_nhwc(x, "x")
    check_runnable(x)
    check_dtype(x, "x", ALL_DTYPES)


def check_dtype(t: torch.Tensor, name: str, allowed: Sequence[torch.dtype]):
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of: {names}")


def check_nhwc(t: torch.Tensor, name: str, channels: Optional[int] = None,
               shape: Optional[Sequence[int]] = None, device: Optional[torch.device] = None):
    """Check ``t`` is a 4-D NHWC tensor whose channel stride is 1.

    Views that are a channel slice of a larger NHWC buffer (``buf[..., off:off + c]``) are
    accepted: the kernel addresses them by their base pointer and their N/H/W strides.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be NHWC with 4 dims, got shape {tuple(t.shape)}")
    if t.shape[3] > 1 and t.stride(3) != 1:
        raise ValueError(
            f"{name} must have channel stride 1 (NHWC, or a channel slice of an NHWC buffer); "
            f"got strides {tuple(t.stride())} for shape {tuple(t.shape)}. An NCHW tensor x can be "
            f"passed as x.permute(0, 2, 3, 1).contiguous()")
    if channels is not None and t.shape[3] != channels:
        raise ValueError(f"{name} has {t.shape[3]} channels, expected {channels} (shape {tuple(t.shape)})")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} like the input")


def check_vector(t: Optional[torch.Tensor], name: str, n: int, device: torch.device):
    """A per-output-channel fp32 vector of length n (bias, scales)."""
    if t is None:
        return
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D tensor of {n} values, got shape {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32 (it is applied in the fp32 epilogue), got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} like the input")


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of two tensors overlap (conservative: by byte range)."""
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t):
        lo = t.data_ptr()
        hi = lo + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) * t.element_size() + t.element_size()
        return lo, hi

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1
