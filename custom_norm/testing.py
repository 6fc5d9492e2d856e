"""Helpers for tests, fuzzing, soak runs and benchmarks: the same values in other memory layouts (memory
outside each view is NaN, so a kernel that reads past its view shows up in the result), and the warm-up
before a CUDA-graph capture.
"""

from __future__ import annotations

import torch


def with_layout(t: torch.Tensor, layout: str, pad: int = 3) -> torch.Tensor:
    """The values of ``t`` (contiguous) as ``layout``: "transposed", "row-padded" (rows of a wider buffer,
    ``pad`` NaN columns before each), "column-strided" (every other column), "permuted" (a 3-D tensor stored
    with its first two dims swapped: no flat row view); anything else returns ``t``."""
    if layout == "transposed" and t.dim() >= 2:
        return t.mT.contiguous().mT
    if layout == "row-padded":
        buf = torch.full((*t.shape[:-1], t.shape[-1] + pad), float("nan"), dtype=t.dtype, device=t.device)
        buf[..., pad:] = t
        return buf[..., pad:]
    if layout == "column-strided":
        buf = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype, device=t.device)
        buf[..., 1::2] = t
        return buf[..., 1::2]
    if layout == "permuted" and t.dim() == 3:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


def affine_with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A weight or bias ``t`` (1-D) as ``layout``: "strided" (every other element) or "expanded" (stride 0:
    its first value for every column); anything else returns ``t``."""
    if layout == "strided":
        buf = torch.full((2 * t.shape[0],), float("nan"), dtype=t.dtype, device=t.device)
        buf[::2] = t
        return buf[::2]
    if layout == "expanded":
        return t[:1].expand(t.shape[0])
    return t


def warm_up_on_side_stream(fn, times: int = 3) -> None:
    """Run ``fn`` ``times`` times on a side stream that the current stream then waits for: the warm-up the
    PyTorch CUDA-graph docs ask for before ``fn`` is captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(times):
            fn()
    torch.cuda.current_stream().wait_stream(side)
