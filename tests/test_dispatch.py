"""The eager fast path (custom_norm/dispatch.py) and the cached Triton launcher (custom_norm/kernels/launch.py).

The fast path must be indistinguishable from calling the op: bitwise the same outputs and gradients, the same
saved tensors, and the op itself wherever something watches the dispatcher (modes, tracing, the profiler).
"""

from __future__ import annotations

import types

import pytest
import torch
import triton
from utils import OpLog, make_problem, poison_cuda_allocator

import custom_norm
from custom_norm import dispatch
from custom_norm.kernels import launch
from custom_norm.native import norm_gated_fwd_native
from custom_norm.testing import warm_up_on_side_stream

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (shape, group_size, norm_before_gate, is_rms_norm, activation, has_z, has_bias)
CASES = [
    ((4, 64), None, True, True, "silu", True, False),
    ((2, 3, 48), 16, False, False, "sigmoid", True, True),
    ((1, 5120), None, False, True, "silu", True, False),
    ((7, 33), None, True, False, "silu", False, True),
]


def _call(x, w, b, z, case):
    _, gs, nbg, rms, act, _, _ = case
    return custom_norm.layer_norm_fwd(x, w, b, 1e-5, z=z, group_size=gs, norm_before_gate=nbg, is_rms_norm=rms,
                                      activation=act)


def _via_op(x, w, b, z, case):
    _, gs, nbg, rms, act, _, _ = case
    return torch.ops.norm_gated.fwd(x, w, b, z, 1e-5, gs, nbg, rms, act)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_direct_path_is_bitwise_the_op(device, case, dtype):
    shape, _, _, _, _, has_z, has_bias = case
    x, w, b, z = make_problem(shape, dtype, device, has_z=has_z, has_bias=has_bias)
    assert dispatch.direct_call_ok(x, w, b, z)
    for got, want in zip(_call(x, w, b, z, case), _via_op(x, w, b, z, case), strict=True):
        assert torch.equal(got, want)

    leaves = [t.clone().requires_grad_() for t in (x, w, b, z) if t is not None]
    dy = torch.randn(shape, dtype=dtype, device=device)
    grads = []
    for fn in (_call, _via_op):
        it = iter(leaves)
        args = [next(it) if t is not None else None for t in (x, w, b, z)]
        out, mean, rstd = fn(*args, case)
        assert not mean.requires_grad and not rstd.requires_grad
        grads.append(torch.autograd.grad(out, leaves, dy))
    for got, want in zip(*grads, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_direct_path_saves_what_the_op_saves_and_computes_only_needed_grads(device):
    case = CASES[1]
    x, w, b, z = make_problem(case[0], torch.float32, device)
    x.requires_grad_()  # only x: dz, dweight, dbias are not needed
    saved = {}
    for name, fn in (("direct", _call), ("op", _via_op)):
        saved[name] = packed = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, log=packed: log.append(t) or t,
                                                      lambda t: t):
            out, _, _ = fn(x, w, b, z, case)
        assert out.grad_fn is not None
    assert len(saved["direct"]) == len(saved["op"]) == 6
    for a, c in zip(saved["direct"], saved["op"], strict=True):
        assert a.shape == c.shape and torch.equal(a, c)

    log = OpLog()
    out, _, _ = _call(x, w, b, z, case)
    with log:  # a mode during backward: the backward goes through the op too
        out.sum().backward()
    bwd_calls = [op for op in log.ops if op._schema.name == "norm_gated::bwd"]
    assert len(bwd_calls) == 1
    assert x.grad is not None and w.grad is None and z.grad is None


def test_direct_path_unwraps_dead_functorch_wrappers():
    """A tensor that escaped a torch.func transform (a dead wrapper) gives the op's result and gradients on
    the grad path, which skips autograd.Function.apply's Python wrapper (where PyTorch unwraps them)."""
    leaked = []

    def keep(t):
        leaked.append(t)
        return t.sum()

    x = torch.randn(3, 8)
    torch.func.grad(keep)(x)
    dead = leaked[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(dead)
    w = torch.randn(8, requires_grad=True)
    w_ref = w.detach().requires_grad_()
    out = dispatch.norm_gated_fwd(dead, w, None, None, 1e-6, None, True, True, "silu")[0]
    ref = torch.ops.norm_gated.fwd(x, w_ref, None, None, 1e-6, None, True, True, "silu")[0]
    assert torch.equal(out, ref)
    dy = torch.randn_like(ref)
    out.backward(dy)
    ref.backward(dy)
    assert torch.equal(w.grad, w_ref.grad)


def test_direct_path_backward_without_modes_skips_the_dispatcher(monkeypatch):
    x, w, b, z = make_problem((4, 32), torch.float32, has_bias=False)
    x.requires_grad_()
    calls = []
    monkeypatch.setattr(custom_norm.ops, "bwd", lambda *a: calls.append(a))  # would break if called
    out = custom_norm.rmsnorm_fn(x, w, None, z)
    out.sum().backward()
    assert calls == [] and x.grad is not None


class _Subclass(torch.Tensor):
    pass


# Each of these watches the dispatcher (or the call), so the public functions must go through the op.
WATCHERS = {
    "dispatch mode": OpLog,
    "function mode (device context)": lambda: torch.device("cpu"),
    "profiler": torch.profiler.profile,
}


@pytest.mark.parametrize("reason", list(WATCHERS))
def test_op_is_called_when_something_watches(reason):
    x, w, b, z = make_problem((4, 32), torch.float32)
    with WATCHERS[reason]() as ctx:
        assert not dispatch.direct_call_ok(x, w, b, z)
        out = custom_norm.layernorm_fn(x, w, b, z)
    if reason == "dispatch mode":
        assert torch.ops.norm_gated.fwd.default in ctx.ops
    if reason == "profiler":
        assert any(e.name == "norm_gated::fwd" for e in ctx.events())
    torch.testing.assert_close(out, custom_norm.layernorm_fn(x, w, b, z), rtol=0, atol=0)


def test_op_is_called_for_subclasses_fake_tensors_transforms_and_other_devices():
    x, w, b, z = make_problem((4, 32), torch.float32)
    assert dispatch.direct_call_ok(x, torch.nn.Parameter(w), b, z)
    assert not dispatch.direct_call_ok(x.as_subclass(_Subclass), w, b, z)
    assert not dispatch.direct_call_ok(x, w, b, z.as_subclass(_Subclass))
    assert not dispatch.direct_call_ok(x.to("meta"), w, b, z)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        assert not dispatch.direct_call_ok(fx, None, None, None)
        assert custom_norm.layernorm_fn(fx, None, None, None).shape == x.shape

    seen = []

    def per_row(row):
        seen.append(dispatch.direct_call_ok(row, w, b, None))
        return custom_norm.layernorm_fn(row, w, b, None)

    batched = torch.func.vmap(per_row)(x)  # the op is reached: vmap's fallback loops over it
    assert seen == [False]
    assert torch.equal(batched, custom_norm.layernorm_fn(x, w, b, None))


@pytest.mark.parametrize("device", DEVICES)
def test_out_variant_direct_path_bumps_the_version_and_matches_the_op(device):
    x, w, b, z = make_problem((6, 40), torch.float32, device)
    out = torch.full_like(x, float("nan"))
    version = out._version
    _, mean, rstd = custom_norm.layer_norm_fwd(x, w, b, 1e-6, z=z, out=out)
    assert out._version > version
    want, want_mean, want_rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6)
    assert torch.equal(out, want) and torch.equal(mean, want_mean) and torch.equal(rstd, want_rstd)


def test_out_variant_direct_path_bumps_the_version_of_raw_writes(monkeypatch):
    """A kernel writes out's memory without touching its version counter (as the Triton kernel does; here a
    stand-in writing through ``.data``): the direct path must bump it itself, as the op's bookkeeping does."""
    def raw_write(*args, out):
        result, mean, rstd = norm_gated_fwd_native(*args)
        out.data.copy_(result)
        return out, mean, rstd

    monkeypatch.setattr(dispatch, "_fwd_impl", lambda device_type: raw_write)
    x, w, b, z = make_problem((6, 40), torch.float32)
    out = torch.full_like(x, float("nan"))
    version = out._version
    custom_norm.layer_norm_fwd(x, w, b, 1e-6, z=z, out=out)
    assert out._version > version
    assert torch.equal(out, torch.ops.norm_gated.fwd(x, w, b, z, 1e-6)[0])


# ----- CachedKernel's bookkeeping, with a stand-in for a Triton kernel (runs without a GPU) -----

class _Param:
    def __init__(self, name, is_constexpr):
        self.name, self.is_constexpr = name, is_constexpr


class _Compiled:
    """A compiled kernel without ``run``: replayed through ``compiled[grid](...)``."""

    function = object()

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args, stream=None: self.log.append(("cached", grid, args))


class _CompiledWithRun(_Compiled):
    """A compiled kernel as Triton 3.6-3.9 build it: ``compiled[grid](...)`` ends in ``run``."""

    packed_metadata = (4, 1, 0)

    def run(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook,
            *args):
        assert (function, packed_metadata) == (self.function, self.packed_metadata)
        self.log.append(("run", (grid_x, grid_y, grid_z), (launch_metadata, enter_hook, exit_hook), args))


class _FakeKernel:
    """Two runtime parameters, then constexprs A and B (in that order in the signature)."""

    params = [_Param("X", False), _Param("n", False), _Param("A", True), _Param("B", True)]

    def __init__(self, compiled_type=_Compiled):
        self.log = []
        self.compiled_type = compiled_type

    def __getitem__(self, grid):
        def run(*args, **options):
            self.log.append(("compile", grid, args, options))
            return self.compiled_type(self.log)
        return run


def test_cached_kernel_replays_only_identical_specializations(monkeypatch):
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
    kernel = _FakeKernel()
    cached = launch.CachedKernel(kernel)
    dev = torch.device("cpu")
    buf = torch.zeros(64)
    opts = (("B", 2), ("A", 1), ("num_warps", 4))
    cached.launch(dev, 3, (buf, 32), opts)
    cached.launch(dev, 5, (buf, 48), opts)  # same specialization: 32 and 48 are multiples of 16, not 1
    assert [e[0] for e in kernel.log] == ["compile", "cached"]
    assert kernel.log[1] == ("cached", (5, 1, 1), (buf, 48, 1, 2))  # constexprs in signature order
    cached.launch(dev, (2, 7), (buf, 48), opts)
    assert kernel.log[2] == ("cached", (2, 7, 1), (buf, 48, 1, 2))
    del kernel.log[2]
    # each of these changes what Triton specializes on, so each compiles (goes through Triton) first
    variants = [(buf[1:], 32), (buf, 1), (buf, 33), (buf, 2**31), (buf.double(), 32), (buf, 32.0)]
    for args in variants:
        cached.launch(dev, 1, args, opts)
    cached.launch(dev, 1, (buf, 32), (("B", 3), ("A", 1), ("num_warps", 4)))
    cached.launch(torch.device("cuda", 1), 1, (buf, 32), opts)
    assert [e[0] for e in kernel.log[2:]] == ["compile"] * (len(variants) + 2)
    for args in variants:  # and replays afterwards
        cached.launch(dev, 1, args, opts)
    assert [e[0] for e in kernel.log[-len(variants):]] == ["cached"] * len(variants)


def test_cached_kernel_calls_run_with_addresses_unless_a_launch_hook_is_set(monkeypatch):
    from triton import knobs

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
    kernel = _FakeKernel(_CompiledWithRun)
    cached = launch.CachedKernel(kernel)
    dev = torch.device("cpu")
    buf = torch.zeros(64)
    opts = (("B", 2), ("A", 1), ("num_warps", 4))
    cached.launch(dev, 3, (buf, 32), opts)
    cached.launch(dev, (2, 5), (buf, 48), opts)
    assert kernel.log[1] == ("run", (2, 5, 1), (None, None, None), (buf.data_ptr(), 48, 1, 2))
    hook_calls = []
    knobs.runtime.launch_enter_hook.add(hook_calls.append)
    try:
        assert launch.launch_hooks_set()
        cached.launch(dev, 4, (buf, 48), opts)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook_calls.append)
    assert kernel.log[2] == ("cached", (4, 1, 1), (buf, 48, 1, 2))  # through compiled[grid], which calls hooks
    assert not launch.launch_hooks_set()


H200 = types.SimpleNamespace(warp_size=32, regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                             shared_memory_per_multiprocessor=233472)


@pytest.mark.parametrize("n_regs,num_warps,shared,expected", [
    (64, 32, 128, 1),    # 1024 threads x 64 registers: the whole register file
    (32, 32, 0, 2),      # thread-bound: 2048 threads
    (128, 8, 0, 2),      # 256 threads x 128 registers
    (158, 2, 0, 6),      # 158 registers round up to 160: 5120 a warp, 12 warps
    (16, 1, 0, 32),      # the cap of 32 programs
    (32, 4, 100_000, 2),  # shared memory: 2 x (100000 + 1024 reserved) fit in 228 KiB
    (255, 32, 0, 1),     # more than fits still reports 1 (the launch itself would fail)
], ids=str)
def test_programs_per_multiprocessor(n_regs, num_warps, shared, expected):
    assert launch.programs_per_multiprocessor(n_regs, num_warps, shared, H200) == expected


def test_resident_per_sm_asks_the_compiled_kernel_once_per_specialization(monkeypatch):
    kernel = _FakeKernel()
    compiled = []
    kernel.warmup = lambda *args, grid, **options: compiled.append(args) or "compiled"
    monkeypatch.setattr(launch, "resident_programs", lambda c, device: 3 if c == "compiled" else None)
    cached = launch.CachedKernel(kernel)
    dev = torch.device("cpu")
    buf = torch.zeros(64)
    opts = (("A", 1), ("B", 2), ("num_warps", 4))
    assert cached.resident_per_sm(dev, (buf, 32), opts) == 3
    assert cached.resident_per_sm(dev, (buf, 48), opts) == 3  # same specialization: not compiled again
    assert cached.resident_per_sm(dev, (buf, 1), opts) == 3
    assert len(compiled) == 2
    kernel.warmup = lambda *args, grid, **options: None  # the interpreter compiles nothing
    assert launch.CachedKernel(kernel).resident_per_sm(dev, (buf, 32), opts) is None


def test_cached_kernel_never_caches_the_interpreter():
    x, w, b, z = make_problem((4, 32), torch.float32)
    from custom_norm.kernels import forward

    if torch.cuda.is_available():
        pytest.skip("the interpreter runs only without a GPU (conftest)")
    forward.norm_gated_fwd_triton(x, w, b, z)
    forward.norm_gated_fwd_triton(x, w, b, z)
    assert forward._FWD._launchers == {}


# ----- On a GPU: cached launches are the launches Triton would have made -----

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_cached_launches_match_uncached_on_gpu(dtype):
    from custom_norm.kernels import backward, forward

    wide = torch.randn(40, 4096 + 8, dtype=dtype, device="cuda")
    problems = {
        "aligned": make_problem((16, 4096), dtype, "cuda"),
        "one row": make_problem((1, 4096), dtype, "cuda"),
        "odd rows": make_problem((17, 4096), dtype, "cuda"),
        # a view starting 2 or 4 bytes into its storage: pointers not 16-byte aligned, row stride 4104
        "misaligned view": (wide[:, 1:4097], *make_problem((40, 4096), dtype, "cuda")[1:]),
        "wide group": make_problem((3, 65536), dtype, "cuda"),
    }
    for name, (x, w, b, z) in problems.items():
        for rms in (False, True):
            args = (x, w, b, z, 1e-6, None, False, rms, "silu")
            dy = torch.randn_like(x)
            results = []
            for _ in range(3):  # first through Triton, then from the cache
                poison_cuda_allocator()
                out, mean, rstd = forward.norm_gated_fwd_triton(*args)
                grads = backward.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, None, False, rms, "silu",
                                                       [True, True, True, True])
                results.append((out, mean, rstd, *grads))
            for later in results[1:]:
                for got, want in zip(later, results[0], strict=True):
                    assert torch.equal(got, want), name
    assert forward._FWD._launchers and backward._BWD._launchers


@pytest.mark.cuda
def test_cached_launch_follows_stream_and_graph_capture():
    x, w, b, z = make_problem((32, 128), torch.bfloat16, "cuda")
    want = custom_norm.rmsnorm_fn(x, w, None, z)  # fills the cache
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = custom_norm.rmsnorm_fn(x, w, None, z)
    stream.synchronize()
    assert torch.equal(got, want)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = custom_norm.rmsnorm_fn(x, w, None, z)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, custom_norm.rmsnorm_fn(x, w, None, z))


@pytest.mark.cuda
def test_cached_launches_call_triton_launch_hooks_on_gpu():
    """While a Triton launch hook is set (a profiler's), cached launches go through it and compute the same."""
    from triton import knobs

    x, w, _, z = make_problem((8, 1024), torch.bfloat16, "cuda", has_bias=False)
    want = custom_norm.rmsnorm_fn(x, w, None, z)
    want = custom_norm.rmsnorm_fn(x, w, None, z)  # the second call replays the cached kernel
    names = []

    def hook(metadata):
        names.append(metadata.get()["name"])

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        poison_cuda_allocator()
        got = custom_norm.rmsnorm_fn(x, w, None, z)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    torch.cuda.synchronize()
    assert names == ["_fwd_kernel"]
    assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("shape,nbg", [((16384, 5120), False), ((4096, 128), True)], ids=["mamba2", "qwen3next"])
def test_forward_and_backward_captured_in_a_cuda_graph(shape, nbg):
    """A training step captured whole (as bench.py's fwd+bwd timing does): warm-up on a side stream, capture,
    replay on new data, compare with eager."""
    x, w, _, z = make_problem(shape, torch.bfloat16, "cuda", has_bias=False)
    leaves = [t.requires_grad_() for t in (x, w, z)]
    dy = torch.randn_like(x)

    def step():
        out = custom_norm.rmsnorm_fn(x, w, None, z, 1e-6, None, nbg)
        return torch.autograd.grad(out, leaves, dy)

    warm_up_on_side_stream(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        for t in (x, z, dy):
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, step(), strict=True):
        assert torch.equal(got, want)


def test_jit_trace_records_the_op():
    x, w, _, z = make_problem((4, 32), torch.float32, has_bias=False)

    def f(x):
        return custom_norm.rmsnorm_fn(x, w, None, z)

    traced = torch.jit.trace(f, (x,))
    assert "norm_gated::fwd" in [node.kind() for node in traced.graph.nodes()]
    y = torch.randn_like(x)
    assert torch.equal(traced(y), f(y))


def test_forward_mode_ad_raises_instead_of_dropping_tangents():
    import torch.autograd.forward_ad as fwAD

    x, w, _, z = make_problem((4, 32), torch.float32, has_bias=False)
    calls = {
        "public": lambda t: custom_norm.rmsnorm_fn(t, w, None, z),
        "op": lambda t: torch.ops.norm_gated.fwd(t, w, None, z, 1e-6, None, True, True, "silu")[0],
    }
    for call in calls.values():
        with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
            call(fwAD.make_dual(x, torch.randn_like(x)))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            torch.func.jvp(call, (x,), (torch.randn_like(x),))
        torch.testing.assert_close(call(x), calls["public"](x), rtol=0, atol=0)  # and fine outside


def test_next_power_of_2_matches_triton():
    for n in [*range(1, 5000), 32767, 32768, 32769, 65536, (1 << 31) - 1, 1 << 31, (1 << 40) + 1]:
        assert launch.next_power_of_2(n) == triton.next_power_of_2(n), n
