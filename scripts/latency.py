"""Eager per-call latency at decode shapes, broken down by layer (GPU).

Each row times a loop of calls with a host clock after synchronising: what a user's eager decode step pays.
Layers: the public function (its eager fast path: custom_norm/dispatch.py; autograd when inputs require grad),
the op through the dispatcher, our launcher called directly (validation + allocation + cached Triton launch),
the same launcher replaying the cached kernel through ``compiled[grid](...)`` (as it did before session 7: Triton
builds launch metadata and the C launcher asks the driver about each pointer), the same launcher through
Triton's own launch path (``kernel[grid](...)``, no cache), the public function with a stub for the launcher
(with and without grad: the Python and autograd work around the kernel), parts of the launcher alone
(validation, the three allocations, the cached launch with its arguments built), a bare torch.add, and
the peers timed the same way (bench.py's providers: fla's original kernel with and without grad, torch.compile
of the plain code), so that their per-call times compare with ours on this method (best of 5 loops), which is
steadier on a shared machine than bench.py's median of short samples. A bare torch.add timed before and after
all rows says whether the host's speed held during the run.
Usage: python3 scripts/latency.py
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

import custom_norm
from custom_norm import dispatch
from custom_norm._validation import validate
from custom_norm.kernels import forward, launch
from custom_norm.kernels.forward import norm_gated_fwd_triton


def per_call_us(fn, iters: int = 1000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / iters * 1e6)
    return best


@contextlib.contextmanager
def compiled_getitem_replay():
    """Replay cached kernels through ``compiled[grid](...)``, as while a Triton launch hook is set."""
    saved = launch.launch_hooks_set
    launch.launch_hooks_set = lambda: True
    try:
        yield
    finally:
        launch.launch_hooks_set = saved


@contextlib.contextmanager
def triton_launch_path():
    """Launch through ``kernel[grid](...)`` on every call instead of the cached handle."""
    def launch(self, device, grid, args, options):
        self.kernel[(grid,)](*args, **dict(options))

    saved = forward.CachedKernel.launch
    forward.CachedKernel.launch = launch
    try:
        yield
    finally:
        forward.CachedKernel.launch = saved


@contextlib.contextmanager
def stub_forward(outputs):
    """The public function's implementation replaced by one returning ``outputs`` (made once, outside the
    timing; three detach calls stand in for its allocations): what is left is the Python around it and, with
    grad, autograd's bookkeeping."""
    saved = dispatch._fwd_impl
    dispatch._fwd_impl = lambda device_type: lambda *args: tuple(t.detach() for t in outputs)
    try:
        yield
    finally:
        dispatch._fwd_impl = saved


def captured_launch(fn):
    """The ``CachedKernel.launch`` call that ``fn`` makes, as a function repeating it (same arguments)."""
    calls = []
    saved = launch.CachedKernel.launch

    def record(self, *args):
        calls.append((self, args))
        return saved(self, *args)

    launch.CachedKernel.launch = record
    try:
        fn()
    finally:
        launch.CachedKernel.launch = saved
    (kernel, args), = calls
    return lambda: kernel.launch(*args)


def _peer_rows(case_name: str, x, z, w, xg, zg, wg) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    case = next(c for c in bench.CASES if c.name == case_name)
    rows = {}
    for name, label in (("fla_orig", "fla orig"), ("compiled", "compiled plain")):
        try:
            f = bench.PROVIDER_BY_NAME[name].build(case)
        except bench.Unavailable as e:
            print(f"  ({label}: {e})")
            continue
        rows[f"{label} (no grad)"] = lambda f=f: f(x, z, w, None)
        if name == "fla_orig":
            rows[f"{label} (inputs require grad)"] = lambda f=f: f(xg, zg, wg, None)
    return rows


def time_case(case_name: str, m: int, n: int, nbg: bool) -> None:
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    z = torch.randn_like(x)
    w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    xg, zg, wg = (t.clone().requires_grad_() for t in (x, z, w))
    public_with_grad = lambda: custom_norm.rmsnorm_fn(xg, wg, None, zg, 1e-6, None, nbg)  # noqa: E731
    public_no_grad = lambda: custom_norm.rmsnorm_fn(x, w, None, z, 1e-6, None, nbg)  # noqa: E731
    rows = {
        "rmsnorm_fn (inputs require grad)": public_with_grad,
        "rmsnorm_fn (no grad)": public_no_grad,
        "  stub kernel, inputs require grad": public_with_grad,  # the same calls with the stub (contexts below)
        "  stub kernel, no grad": public_no_grad,
        "torch.ops.norm_gated.fwd": lambda: torch.ops.norm_gated.fwd(x, w, None, z, 1e-6, None, nbg, True),
        "launcher, no dispatch": lambda: norm_gated_fwd_triton(x, w, None, z, 1e-6, None, nbg, True),
        "launcher, compiled[grid] replay": lambda: norm_gated_fwd_triton(x, w, None, z, 1e-6, None, nbg, True),
        "launcher, Triton's launch path": lambda: norm_gated_fwd_triton(x, w, None, z, 1e-6, None, nbg, True),
        "  its validation": lambda: validate(x, w, None, z, 1e-6, None, "silu"),
        "  its three allocations": lambda: (torch.empty_like(x, memory_format=torch.contiguous_format),
                                            torch.empty((1, m), dtype=torch.float32, device=x.device),
                                            torch.empty((0,), dtype=torch.float32, device=x.device)),
        "  its cached launch": captured_launch(
            lambda: norm_gated_fwd_triton(x, w, None, z, 1e-6, None, nbg, True)),
        "torch.add (scale)": lambda: torch.add(x, z),
        **_peer_rows(case_name, x, z, w, xg, zg, wg),
    }
    outputs = norm_gated_fwd_triton(x, w, None, z, 1e-6, None, nbg, True)
    contexts = {"launcher, compiled[grid] replay": compiled_getitem_replay,
                "launcher, Triton's launch path": triton_launch_path,
                "  stub kernel, inputs require grad": lambda: stub_forward(outputs),
                "  stub kernel, no grad": lambda: stub_forward(outputs)}
    for label, fn in rows.items():
        context = contexts.get(label, contextlib.nullcontext)()
        with context:
            print(f"  {label:<36} {per_call_us(fn):7.1f} us", flush=True)


def host_probe_us() -> float:
    """A bare torch.add on a small CUDA tensor: the host's speed, timed before and after the rows."""
    a = torch.randn(32, 128, device="cuda")
    return per_call_us(lambda: torch.add(a, a))


def main() -> None:
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    before = host_probe_us()
    for case_name, (m, n, nbg) in {"qwen3next_decode": (32, 128, True), "mamba2_decode": (1, 5120, False),
                                   "mamba2_batch": (64, 5120, False)}.items():
        print(f"{case_name} {m}x{n}")
        time_case(case_name, m, n, nbg)
    after = host_probe_us()
    # session 10: next to a sweep on another GPU every row ran 1.2-2x slower, and the host's speed moved
    # within a run; a probe that moved says which rows compare
    moved = max(before, after) / min(before, after) > 1.2
    print(f"host probe (torch.add): {before:.1f} us before the rows, {after:.1f} after"
          + ("  THE HOST'S SPEED MOVED: compare rows of one shape only" if moved else ""))


if __name__ == "__main__":
    main()
