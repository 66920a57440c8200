"""What one launch of the conv kernel computes, as a plain description: geometry, sizes and
epilogue, no tensors. The kernels layer owns it because it is the conv kernel's problem
statement; :mod:`engine.models.shapes` records the networks' convs in it, the tuning table
chooses a tile for it (:func:`kernels.tuning.choose_launch`), and the AOT tool turns it into
the specializations it compiles (:func:`kernels.aot.specs.launch_specs`).

Standard library only, so that describing a network's launches needs neither Triton nor a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

# Destinations one conv launch can write (horizontal fusion of up to three 1x1 heads): the
# kernel takes three destination pointers, and no Inception block has more heads on one input.
MAX_DESTINATIONS = 3


@dataclass(frozen=True)
class ConvLaunch:
    """One conv launch over an NHWC input of ``h x w x c_in`` pixels per image."""

    c_in: int
    c_out: int                # all destinations together
    kh: int
    kw: int
    stride: int
    pad_h: int
    pad_w: int
    h: int
    w: int
    residual: bool = False    # Inception-ResNet up-projection: own bias, + shortcut, no BN
    dests: int = 1            # horizontally fused 1x1 heads: one destination per head
    role: str = ""            # a name instead of the geometry in the label ("classifier")

    @property
    def out_hw(self) -> Tuple[int, int]:
        return ((self.h + 2 * self.pad_h - self.kh) // self.stride + 1,
                (self.w + 2 * self.pad_w - self.kw) // self.stride + 1)

    def rows(self, batch: int) -> int:
        """M of the implicit GEMM: output pixels over the batch."""
        oh, ow = self.out_hw
        return batch * oh * ow

    def flops(self, batch: int) -> int:
        return 2 * self.rows(batch) * self.c_out * self.c_in * self.kh * self.kw

    @property
    def label(self) -> str:
        if self.role:
            return f"{self.role} {self.c_in}->{self.c_out}"
        if self.dests > 1:
            return f"fused {self.dests}x{self.kh}x{self.kw} {self.c_in}->{self.c_out} @{self.h}x{self.w}"
        kind = "up" if self.residual else "conv"
        return f"{kind} {self.kh}x{self.kw}/{self.stride} {self.c_in}->{self.c_out} @{self.h}x{self.w}"
