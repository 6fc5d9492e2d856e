"""Helpers shared by the tests: random problems, the float64 reference, tolerances."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from custom_norm import norm_gated_reference


class OpLog(TorchDispatchMode):
    """Records the ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


# (rtol, atol) of an output in each dtype against the float64 reference: a few units in the last place.
OUT_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
STAT_TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 1e-6)}

# Flag combinations: (has_z, norm_before_gate, activation); without z the other two do not matter.
GATES = [(False, True, "silu"), (True, True, "silu"), (True, True, "sigmoid"), (True, False, "silu"),
         (True, False, "sigmoid")]
GATE_IDS = ["nogate", "before-silu", "before-sigmoid", "after-silu", "after-sigmoid"]


def make_problem(shape, dtype, device="cpu", *, has_z=True, has_weight=True, has_bias=True,
                 weight_dtype=None, scale=1.0, offset=0.0):
    n = shape[-1]
    x = (torch.randn(shape, dtype=torch.float64) * scale + offset).to(dtype=dtype, device=device)
    z = torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device) if has_z else None
    wdt = weight_dtype or dtype
    weight = (1 + 0.5 * torch.randn(n, dtype=torch.float64)).to(wdt).to(device) if has_weight else None
    bias = (0.5 * torch.randn(n, dtype=torch.float64)).to(wdt).to(device) if has_bias else None
    return x, weight, bias, z


def saturated_gate(shape, device, dtype=torch.float32):
    """z from -120 to 120 in random order: both tails of the sigmoid, and below z = -87, where the compiled
    kernels' flush-to-zero sigmoid gives 0 instead of a subnormal number (forward._sigmoid)."""
    values = torch.linspace(-120.0, 120.0, shape[-1], dtype=torch.float64)
    rows = [values[torch.randperm(shape[-1])] for _ in range(int(torch.tensor(shape[:-1]).prod()))]
    return torch.stack(rows).reshape(shape).to(dtype=dtype, device=device)


def reference64(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation):
    """The reference evaluated in float64 on the CPU (out kept in float64, not rounded to x's dtype)."""
    def up(t):
        return None if t is None else t.detach().cpu().double()

    out, mean, rstd = norm_gated_reference(up(x), up(weight), up(bias), up(z), eps, group_size,
                                           norm_before_gate, is_rms_norm, activation)
    return out, mean, rstd


def assert_matches_reference(result, x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm,
                             activation, out_tol=None):
    out, mean, rstd = result
    ref_out, ref_mean, ref_rstd = reference64(x, weight, bias, z, eps, group_size, norm_before_gate,
                                              is_rms_norm, activation)
    stat_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    assert out.device == x.device
    rtol, atol = out_tol or OUT_TOL[x.dtype]
    torch.testing.assert_close(out.cpu().double(), ref_out, rtol=rtol, atol=atol)
    srtol, satol = STAT_TOL[stat_dtype]
    assert rstd.dtype == stat_dtype and rstd.shape == ref_rstd.shape
    torch.testing.assert_close(rstd.cpu().double(), ref_rstd, rtol=srtol, atol=satol)
    if is_rms_norm:
        assert mean.shape == (0,) and mean.dtype == stat_dtype
    else:
        assert mean.dtype == stat_dtype and mean.shape == ref_mean.shape
        # mean is compared relative to the group's spread, the scale its error comes in
        torch.testing.assert_close(mean.cpu().double(), ref_mean, rtol=srtol, atol=satol * 10)


def poison_cuda_allocator(nbytes: int = 1 << 26) -> None:
    """Fill free blocks of the CUDA caching allocator with NaN so that an unwritten output shows."""
    if torch.cuda.is_available():
        torch.empty(nbytes // 4, device="cuda").fill_(float("nan"))
        torch.cuda.synchronize()


def record_launches(monkeypatch, module, names: tuple[str, ...]) -> list[str]:
    """Wrap the ``CachedKernel``s named ``names`` in ``module`` so that each launch appends its name to the
    returned list (and still runs)."""
    launched = []
    for name in names:
        kernel = getattr(module, name)
        monkeypatch.setattr(kernel, "launch", lambda *a, _name=name, _launch=kernel.launch: (
            launched.append(_name), _launch(*a))[1])
    return launched


def record_grids(monkeypatch, kernel, option: str) -> list[tuple]:
    """Wrap ``CachedKernel`` ``kernel`` so that each launch appends ``(grid, value of option)`` to the returned
    list (and still runs)."""
    calls = []
    real_launch = kernel.launch
    monkeypatch.setattr(kernel, "launch", lambda device, grid, args, options: (
        calls.append((grid, dict(options)[option])), real_launch(device, grid, args, options))[1])
    return calls
