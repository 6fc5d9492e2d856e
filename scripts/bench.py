#!/usr/bin/env python3
"""GPU benchmark of ``norm_gated::fwd`` against its peers (issue 5).

For every case (M rows x N columns, see ``CASES``) and every provider (ours, flash-linear-attention's original
gated norm and its fused_norm_gate, Liger-Kernel, torch.nn.functional, torch.compile of the plain PyTorch
reference, the plain reference eager) this script

- checks the provider's result against ``custom_norm.norm_gated_reference`` evaluated in float64 on the same
  inputs (relative L2 error, threshold by dtype; failures are reported, never hidden);
- times it with CUDA graphs (N calls captured in one graph, median replay time / N: kernel time) and eagerly
  (the fastest of 10 loops of calls between two synchronizations, per call: wall time including launch
  overhead);
- reports microseconds, GB/s and % of the device-to-device copy bandwidth measured first.

Outputs under ``--out``: bench.json, bench.md (Markdown, ready for BENCHMARKS.md), bench_sweep.png (GB/s vs
N, M*N fixed) and bench_cases.png (% of copy bandwidth per case). The Markdown summary is printed last.

Run on a GPU machine from the repository root (peers installed from wheels on PYTHONPATH):
    python3 scripts/bench.py --out bench_out [--quick] [--cases a,b] [--providers ours,compiled] [--no-sweep]
Without a GPU: ``--list`` prints the cases, ``--selftest`` checks the pure-Python parts and the providers
that run on CPU (writing only to a temporary directory).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# --------------------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------------------

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# Relative L2 error vs the float64 reference above which a result FAILS.
TOLERANCE = {"bfloat16": 1e-2, "float16": 2e-3, "float32": 1e-4}
STAT_BYTES = 4  # mean/rstd are float32 for every input dtype benchmarked here


@dataclass(frozen=True)
class Case:
    """One benchmark problem: x and z are (M, N); statistics per group of ``group_size`` columns."""

    name: str
    what: str
    M: int
    N: int
    dtype: str = "bfloat16"
    rms: bool = True
    gate: bool = True
    norm_before_gate: bool = True
    group_size: int | None = None  # None: one group of N columns
    bias: bool = False
    backward: bool = False  # forward+backward instead of forward only
    eps: float = 1e-5
    activation: str = "silu"

    @property
    def group(self) -> int:
        return self.group_size or self.N

    @property
    def ngroups(self) -> int:
        return self.N // self.group

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def elem(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def small(self) -> bool:
        """Decode-sized: latency matters more than bandwidth, and the data stays in L2."""
        return self.M * self.N <= 1 << 20

    def bytes_moved(self) -> int:
        """Bytes the op must move at the least; the same count is used for every provider.

        Forward: x, z (gated), out: M*N elements each; weight, bias: N elements each; rstd (and mean for
        LayerNorm): ngroups*M float32 each. Forward+backward (issue 5's floor): 8*M*N elements gated (x, z, out
        forward; x, z, dy, dx, dz backward), 5*M*N ungated; weight, dweight and statistics left out.
        """
        mn = self.M * self.N
        if self.backward:
            return (8 if self.gate else 5) * mn * self.elem
        tensors = 2 + self.gate  # x, out, z
        affine = 1 + self.bias  # weight, bias
        stats = 1 + (not self.rms)  # rstd, mean
        return tensors * mn * self.elem + affine * self.N * self.elem + stats * self.ngroups * self.M * STAT_BYTES

    def describe(self) -> str:
        parts = ["RMSNorm" if self.rms else "LayerNorm"]
        if self.gate:
            parts.append(f"{self.activation} gate " + ("after norm" if self.norm_before_gate else "before norm"))
        else:
            parts.append("no gate")
        if self.group_size and self.group_size != self.N:
            parts.append(f"group {self.group_size}")
        if self.bias:
            parts.append("bias")
        parts.append("fwd+bwd" if self.backward else "fwd")
        return ", ".join(parts)


def _gated(name, what, M, N, nbg, **kw) -> Case:
    return Case(name, what, M, N, norm_before_gate=nbg, **kw)


CASES: list[Case] = [
    _gated("qwen3next_decode", "Qwen3-Next decode", 32, 128, True),
    _gated("qwen3next_prefill", "Qwen3-Next prefill", 524288, 128, True),
    _gated("mamba2_decode", "Mamba2 decode", 1, 5120, False),
    _gated("mamba2_batch", "Mamba2 batched decode", 64, 5120, False),
    # not one of issue 5's cases: a decode shape with several groups (8 programs for 8 groups of one row)
    _gated("nemotronh_decode", "Nemotron-H decode, 8 groups", 1, 8192, False, group_size=1024),
    _gated("mamba2_prefill", "Mamba2 prefill", 16384, 5120, False),
    _gated("mamba2_prefill_fp32", "Mamba2 prefill, float32", 16384, 5120, False, dtype="float32"),
    _gated("nemotronh_prefill", "Nemotron-H prefill, 8 groups", 16384, 8192, False, group_size=1024),
    Case("layernorm_bias", "LayerNorm + bias, no gate", 16384, 4096, rms=False, gate=False, bias=True),
    Case("rms_nogate", "RMSNorm, no gate", 16384, 8192, gate=False),
    _gated("wide_32768", "wide group (= N)", 2048, 32768, True),
    _gated("wide_65536", "wide group (= N)", 1024, 65536, True),
    # not issue 5's: wide groups where the rule splits each group over programs (session 11): a gate before the
    # norm, and decode-sized rows
    _gated("wide_65536_gate_first", "wide group (= N), gate before the norm", 1024, 65536, False),
    _gated("wide_65536_decode", "wide group (= N), decode", 32, 65536, True),
    _gated("mamba2_prefill_bwd", "Mamba2 prefill", 16384, 5120, False, backward=True),
    _gated("qwen3next_prefill_bwd", "Qwen3-Next prefill", 524288, 128, True, backward=True),
    _gated("nemotronh_prefill_bwd", "Nemotron-H prefill, 8 groups", 16384, 8192, False, group_size=1024,
           backward=True),
]

# --suite models: the gated norm of each model below, as its public configuration sets it up, at decode and
# prefill token counts (rows = tokens x heads where the norm runs per head), forward; and forward+backward at a
# training length. Not tuned on: a check that the rules hold on shapes they were not chosen on.


@dataclass(frozen=True)
class ModelNorm:
    model: str
    width: int  # columns of a row: the SSM inner width, or the head dimension
    group_size: int | None = None
    heads: int = 1  # rows per token
    norm_before_gate: bool = False  # Mamba2's RMSNormGated gates before the norm
    activation: str = "silu"
    eps: float = 1e-5


MODELS: list[ModelNorm] = [
    ModelNorm("mamba2-130m", 1536),
    ModelNorm("mamba2-1.3b", 4096),
    ModelNorm("mamba2-2.7b", 5120),
    ModelNorm("bamba-9b", 8192),  # one group of the 8192-wide SSM
    ModelNorm("nemotron-h-4b", 7168, group_size=896),  # 112 heads x 64, 8 groups
    ModelNorm("nemotron-h-8b", 8192, group_size=1024),  # 128 heads x 64, 8 groups (Codestral Mamba's too)
    ModelNorm("nemotron-h-56b", 16384, group_size=2048),  # 256 heads x 64, 8 groups
    ModelNorm("qwen3-next", 128, heads=32, norm_before_gate=True, eps=1e-6),  # 32 value heads of 128
    ModelNorm("kimi-linear", 128, heads=32, norm_before_gate=True, activation="sigmoid", eps=1e-6),
]
MODEL_TOKENS = (1, 64, 512, 4096, 16384)
MODEL_TRAIN_TOKENS = 8192


def model_case(m: ModelNorm, tokens: int, backward: bool = False) -> Case:
    stage = "training" if backward else "decode" if tokens <= 64 else "prefill"
    return Case(f"{m.model}_t{tokens}" + ("_bwd" if backward else ""), f"{m.model} {stage}, {tokens} tokens",
                tokens * m.heads, m.width, norm_before_gate=m.norm_before_gate, group_size=m.group_size,
                backward=backward, eps=m.eps, activation=m.activation)


MODEL_CASES: list[Case] = ([model_case(m, t) for m in MODELS for t in MODEL_TOKENS]
                           + [model_case(m, MODEL_TRAIN_TOKENS, backward=True) for m in MODELS])
SUITES = {"issue": CASES, "models": MODEL_CASES}

# Bandwidth-vs-N sweep (Triton perf_report style): RMS, SiLU gate after the norm, one group, bf16, M*N = 2^26.
SWEEP_ELEMENTS = 1 << 26
SWEEP_N = [128, 512, 2048, 8192, 32768, 65536]  # --sweep-n 128,256,...,65536 for every power of two
SWEEP_N_QUICK = [128, 2048, 32768]
SWEEP_PROVIDERS = ["ours", "fla_orig", "fla_fused", "compiled"]


def sweep_case(n: int) -> Case:
    return Case(f"sweep_{n}", "sweep", SWEEP_ELEMENTS // n, n, norm_before_gate=True)


# --------------------------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------------------------

Fn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class Unavailable(Exception):
    """The provider's package is not installed."""


def _peer(module: str, dist: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{dist} not installed ({e.__class__.__name__}: {e})") from e


def _ours(c: Case) -> Fn:
    import custom_norm

    def f(x, z, w, b):
        return custom_norm.layernorm_fn(x, w, b, z, c.eps, c.group_size, c.norm_before_gate, c.rms, c.activation)
    return f


def _fla_orig_supports(c: Case) -> str | None:
    if c.activation not in ("silu", "swish"):
        return "SiLU gate only"
    return None


def _fla_orig(c: Case) -> Fn:
    m = _peer("fla.modules.norm.layernorm_gated", "fla-core")

    def f(x, z, w, b):
        return m.layernorm_fn(x, w, b, z, c.eps, c.group_size, c.norm_before_gate, c.rms)
    return f


def _fla_fused_supports(c: Case) -> str | None:
    if not c.gate:
        return "needs a gate"
    if not c.norm_before_gate:
        return "gates after the norm only (norm_before_gate=True)"
    if c.group != c.N:
        return "no groups"
    return None


def _fla_fused(c: Case) -> Fn:
    m = _peer("fla.modules.norm.fused_norm_gate", "fla-core")
    fn = m.rms_norm_gated if c.rms else m.layer_norm_gated
    act = "sigmoid" if c.activation == "sigmoid" else "swish"

    def f(x, z, w, b):
        return fn(x, z, w, b, activation=act, eps=c.eps)
    return f


def _ungated_supports(c: Case) -> str | None:
    if c.gate:
        return "no gate"
    if c.group != c.N:
        return "no groups"
    return None


def _liger_supports(c: Case) -> str | None:
    reason = _ungated_supports(c)
    if reason is None and not c.rms and not c.bias:
        return "LayerNorm needs a bias"
    return reason


def _liger(c: Case) -> Fn:
    if c.rms:
        fn = _peer("liger_kernel.ops.rms_norm", "liger-kernel").LigerRMSNormFunction

        def f(x, z, w, b):
            return fn.apply(x, w, c.eps)  # offset 0, casting_mode 'llama' (Liger's defaults)
    else:
        fn = _peer("liger_kernel.ops.layer_norm", "liger-kernel").LigerLayerNormFunction

        def f(x, z, w, b):
            return fn.apply(x, w, b, c.eps)
    return f


def _torch_f(c: Case) -> Fn:
    F = torch.nn.functional
    if c.rms:
        return lambda x, z, w, b: F.rms_norm(x, (c.N,), w, c.eps)
    return lambda x, z, w, b: F.layer_norm(x, (c.N,), w, b, c.eps)


def _plain(c: Case) -> Fn:
    from custom_norm import norm_gated_reference

    def plain(x, z, w, b):
        return norm_gated_reference(x, w, b, z, c.eps, c.group_size, c.norm_before_gate, c.rms, c.activation)[0]
    return plain


def _compiled(c: Case) -> Fn:
    # Compiled afresh for every case, after torch._dynamo.reset() (run_case): dynamo keys its cache on the code
    # object, which every closure made here shares, so without the reset the cases would pile up entries on one
    # code object, hit the recompile limit and silently fall back to eager (run_provider checks for that).
    return torch.compile(_plain(c), dynamic=False)


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    build: Callable[[Case], Fn]
    supports: Callable[[Case], str | None] = lambda c: None
    peer: bool = True  # counts for "ours vs best peer"
    about: str = ""


PROVIDERS: list[Provider] = [
    Provider("ours", "ours", _ours, peer=False,
             about="custom_norm.layernorm_fn -> torch.ops.norm_gated.fwd (Triton on CUDA); fwd+bwd through its "
                   "registered autograd"),
    Provider("fla_orig", "fla orig", _fla_orig, _fla_orig_supports,
             about="fla.modules.norm.layernorm_gated.layernorm_fn: the original Mamba2 gated-norm kernel; any "
                   "group, gate before or after the norm, SiLU only; refuses groups over 64 KB"),
    Provider("fla_fused", "fla fused", _fla_fused, _fla_fused_supports,
             about="fla.modules.norm.fused_norm_gate.rms_norm_gated / layer_norm_gated: norm(x)*w(+b)*act(z), "
                   "gate after the norm only, one group per row; used only where those semantics match; refuses "
                   "rows over 64 KB"),
    Provider("liger", "Liger", _liger, _liger_supports,
             about="liger_kernel LigerRMSNormFunction (casting_mode 'llama') / LigerLayerNormFunction; ungated, "
                   "one group"),
    Provider("torch_F", "F.norm", _torch_f, _ungated_supports,
             about="torch.nn.functional.rms_norm / layer_norm; ungated, one group"),
    Provider("compiled", "compiled", _compiled,
             about="torch.compile(norm_gated_reference), fresh per case (dynamo reset + new function), "
                   "dynamic=False, default mode; only out is used"),
    Provider("eager", "eager", _plain,
             about="norm_gated_reference eager (plain PyTorch, float32 math)"),
]
PROVIDER_BY_NAME = {p.name: p for p in PROVIDERS}


# --------------------------------------------------------------------------------------------------------------
# Inputs, reference, errors
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    x: torch.Tensor
    z: torch.Tensor | None
    w: torch.Tensor
    b: torch.Tensor | None
    dy: torch.Tensor | None  # forward+backward cases only

    def leaves(self) -> list[torch.Tensor]:
        return [t for t in (self.x, self.z, self.w, self.b) if t is not None]


def make_inputs(c: Case, device: str, seed: int) -> Inputs:
    """Random inputs (never zeros): x, z ~ N(0, 1), weight ~ 1 + 0.1 N(0, 1), bias ~ 0.1 N(0, 1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dt = c.torch_dtype

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale + shift).to(dt)

    inp = Inputs(
        x=randn(c.M, c.N),
        z=randn(c.M, c.N) if c.gate else None,
        w=randn(c.N, scale=0.1, shift=1.0),
        b=randn(c.N, scale=0.1) if c.bias else None,
        dy=randn(c.M, c.N) if c.backward else None,
    )
    if c.backward:
        for t in inp.leaves():
            t.requires_grad_(True)
    return inp


def _rows_per_chunk(c: Case, chunk_elements: int) -> int:
    return max(1, chunk_elements // c.N)


def reference(c: Case, inp: Inputs, chunk_elements: int = 1 << 24) -> dict[str, torch.Tensor]:
    """norm_gated_reference in float64, row chunk by row chunk (bounded memory), stored as float32.

    Returns ``out`` and, for forward+backward cases, ``dx``, ``dz``, ``dw``, ``db`` (autograd in float64).
    """
    from custom_norm import norm_gated_reference

    rows = _rows_per_chunk(c, chunk_elements)
    dev = inp.x.device
    ref = {"out": torch.empty(c.M, c.N, device=dev, dtype=torch.float32)}
    if c.backward:
        ref["dx"] = torch.empty_like(ref["out"])
        if c.gate:
            ref["dz"] = torch.empty_like(ref["out"])
        dw = torch.zeros(c.N, device=dev, dtype=torch.float64)
        db = torch.zeros(c.N, device=dev, dtype=torch.float64)
    w64 = inp.w.detach().double()
    b64 = inp.b.detach().double() if inp.b is not None else None
    args = (c.eps, c.group_size, c.norm_before_gate, c.rms, c.activation)
    for s in range(0, c.M, rows):
        sl = slice(s, min(s + rows, c.M))
        x64 = inp.x[sl].detach().double()
        z64 = inp.z[sl].detach().double() if inp.z is not None else None
        if not c.backward:
            with torch.no_grad():
                ref["out"][sl] = norm_gated_reference(x64, w64, b64, z64, *args)[0]
            continue
        with torch.enable_grad():
            named = {k: t.clone().requires_grad_(True) for k, t in (("x", x64), ("z", z64), ("w", w64), ("b", b64))
                     if t is not None}
            out = norm_gated_reference(named["x"], named["w"], named.get("b"), named.get("z"), *args)[0]
            grads = dict(zip(named, torch.autograd.grad(out, list(named.values()), inp.dy[sl].double()), strict=True))
        ref["out"][sl] = out.detach()
        ref["dx"][sl] = grads["x"]
        if c.gate:
            ref["dz"][sl] = grads["z"]
        dw += grads["w"]
        if c.bias:
            db += grads["b"]
        del out, grads, named
    if c.backward:
        ref["dw"] = dw.float()
        if c.bias:
            ref["db"] = db.float()
    return ref


def _names(inp: Inputs) -> list[str]:
    return [n for n, t in (("x", inp.x), ("z", inp.z), ("w", inp.w), ("b", inp.b)) if t is not None]


def rel_err(a: torch.Tensor, ref: torch.Tensor, chunk_elements: int = 1 << 24) -> float:
    """||a - ref|| / ||ref|| in float64, chunk by chunk; inf on a shape mismatch, nan if a has NaN/inf."""
    if tuple(a.shape) != tuple(ref.shape):
        return math.inf
    a2 = a.detach().reshape(-1)
    r2 = ref.reshape(-1)
    num = den = 0.0
    for s in range(0, a2.numel(), chunk_elements):
        d = a2[s:s + chunk_elements].double() - r2[s:s + chunk_elements].double()
        num += d.square().sum().item()
        den += r2[s:s + chunk_elements].double().square().sum().item()
    if not math.isfinite(num):
        return math.nan
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


# --------------------------------------------------------------------------------------------------------------
# Timing (CUDA)
# --------------------------------------------------------------------------------------------------------------


def _sync() -> None:
    torch.cuda.synchronize()


def _calls_per_sample(fn: Callable[[], object], budget_s: float, repeats: int, cap: int) -> int:
    """Calls per timed sample so that ``repeats`` samples fill about ``budget_s`` (after one warm call)."""
    fn()
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    est = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(cap, int(budget_s / repeats / est)))


def time_eager(fn: Callable[[], object], budget_s: float, repeats: int = 10) -> tuple[float, int]:
    """Wall time per call of a loop of calls between two synchronizations (launch overhead included).

    The fastest of ``repeats`` loops, not their median: on a shared machine the host is often slowed by others
    (the median of 5 short loops moved 2x between cases with the same host work), and the fastest loop is
    what the call itself costs.
    """
    n = _calls_per_sample(fn, budget_s, repeats, cap=20000)
    samples = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync()
        samples.append((time.perf_counter() - t0) / n)
    return min(samples), n * repeats


def time_events(fn: Callable[[], object], budget_s: float, repeats: int = 10) -> tuple[float, int]:
    """Device time per call between CUDA events around a loop of eager calls (fallback when no graph)."""
    n = _calls_per_sample(fn, budget_s, repeats, cap=10000)
    pairs = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(n):
            fn()
        e.record()
        pairs.append((s, e))
    _sync()
    return statistics.median(s.elapsed_time(e) for s, e in pairs) * 1e-3 / n, n * repeats


def time_graph(fn: Callable[[], object], n_calls: int, budget_s: float) -> tuple[float, int]:
    """Kernel time per call: n_calls captured in one CUDA graph, median replay time (CUDA events) / n_calls.

    Warm-up runs on a side stream before capture, as the PyTorch CUDA-graph docs require.
    """
    from custom_norm.testing import warm_up_on_side_stream

    warm_up_on_side_stream(fn)
    _sync()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(n_calls):
                fn()
        graph.replay()
        _sync()
        t0 = time.perf_counter()
        graph.replay()
        _sync()
        est = max(time.perf_counter() - t0, 1e-6)
        reps = max(5, min(2000, int(budget_s / est)))
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for s, e in pairs:
            s.record()
            graph.replay()
            e.record()
        _sync()
        per_replay = statistics.median(s.elapsed_time(e) for s, e in pairs) * 1e-3
    finally:
        graph.reset()
        del graph
    return per_replay / n_calls, reps


def measure_copy_bandwidth(nbytes: int = 1 << 30, reps: int = 30) -> dict:
    """Device-to-device ``dst.copy_(src)`` of nbytes; GB/s counts bytes read + written (2 * nbytes)."""
    src = torch.randn(nbytes // 4, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    for _ in range(5):
        dst.copy_(src)
    _sync()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in pairs:
        s.record()
        dst.copy_(src)
        e.record()
    _sync()
    times = sorted(s.elapsed_time(e) * 1e-3 for s, e in pairs)
    del src, dst
    torch.cuda.empty_cache()
    med = statistics.median(times)
    return {"bytes_copied": nbytes, "reps": reps, "median_s": med, "min_s": times[0],
            "GBps": 2 * nbytes / med / 1e9, "GBps_best": 2 * nbytes / times[0] / 1e9}


# --------------------------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    provider: str
    status: str  # ok | FAIL | n/a | unsupported | unavailable | skipped
    detail: str = ""
    graph_us: float | None = None
    graph_method: str = ""  # "cuda graph, N calls" or "events (capture failed: ...)"
    eager_us: float | None = None
    gbps: float | None = None
    pct_copy: float | None = None
    err: float | None = None
    errs: dict = field(default_factory=dict)
    transient_mb: float | None = None


@dataclass
class Settings:
    device: str = "cuda"
    timing: bool = True
    graph_budget_s: float = 0.04
    eager_budget_s: float = 0.05
    graph_replay_s: float = 2e-3  # aim for replays this long: n_calls per graph from the byte estimate
    max_graph_calls: int = 200
    graph_mem_cap: int = 8 << 30  # bound n_calls so that n_calls * transient memory stays under this
    chunk_elements: int = 1 << 24
    eager_timing: bool = True
    copy_GBps: float | None = None


def short_error(e: BaseException, limit: int = 110) -> str:
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0] if msg else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dynamo_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _graph_calls(c: Case, transient: int, s: Settings) -> int:
    est = max(c.bytes_moved() / 2.5e12, 3e-6)  # a rough kernel time, only to size the graph
    n = max(2, min(s.max_graph_calls, math.ceil(s.graph_replay_s / est)))
    if transient > 0:
        n = max(1, min(n, s.graph_mem_cap // transient))
    return n


def run_provider(p: Provider, c: Case, inp: Inputs, ref: dict, s: Settings) -> Result:
    reason = p.supports(c)
    if reason is not None:
        return Result(p.name, "n/a", reason)
    try:
        f = p.build(c)
    except Unavailable as e:
        return Result(p.name, "unavailable", str(e))
    x, z, w, b = inp.x, inp.z, inp.w, inp.b

    if c.backward:
        leaves = inp.leaves()
        names = _names(inp)
        dy = inp.dy

        def call():
            return torch.autograd.grad(f(x, z, w, b), leaves, dy)
    else:
        def call():
            return f(x, z, w, b)

    # Correctness (this first call also compiles, autotunes and warms up).
    on_cuda = s.device == "cuda"
    graphs0, breaks0 = _dynamo_counts()
    transient = 0
    try:
        if on_cuda:
            _sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        if c.backward:
            out = f(x, z, w, b)
            grads = dict(zip(names, torch.autograd.grad(out, leaves, dy), strict=True))
            got = {"out": out.detach(), "dx": grads["x"], "dz": grads.get("z"), "dw": grads["w"],
                   "db": grads.get("b")}
            # Drop this call's autograd graph before timing: kept alive, it keeps the leaves' AccumulateGrad
            # nodes, made on the default stream, and the CUDA-graph capture below (on a side stream) then
            # syncs with the default stream and fails (PyTorch warns of the stream mismatch).
            del out, grads
        else:
            got = {"out": call()}
        if on_cuda:
            _sync()
            transient = torch.cuda.max_memory_allocated() - base
    except Exception as e:  # any refusal is a result
        if on_cuda:
            _sync()
        return Result(p.name, "unsupported", short_error(e))
    notes = []
    if p.name == "compiled":  # a compile that silently fell back to eager would time the eager reference
        graphs, breaks = _dynamo_counts()
        if graphs == graphs0:
            notes.append("dynamo captured no graph: ran eager")
        if breaks > breaks0:
            notes.append(f"{breaks - breaks0} graph break(s)")
    errs = {k: rel_err(got[k], ref[k], s.chunk_elements) for k in ref if got.get(k) is not None}
    missing = [k for k in ref if got.get(k) is None]
    del got
    err = max(errs.values()) if errs else math.nan
    tol = TOLERANCE[c.dtype]
    ok = err <= tol and not missing
    res = Result(p.name, "ok" if ok else "FAIL", errs={k: v for k, v in errs.items()}, err=err)
    if not ok:
        notes.insert(0, f"rel. err {err:.2e} > {tol:.0e}" + (f"; missing {missing}" if missing else ""))
    res.detail = "; ".join(notes)
    if not s.timing:
        return res

    res.transient_mb = transient / 2**20
    if s.eager_timing:
        try:
            t, _ = time_eager(call, s.eager_budget_s)
            res.eager_us = t * 1e6
        except Exception as e:
            _sync()
            res.detail = (res.detail + "; " if res.detail else "") + "eager timing: " + short_error(e)
    n_calls = _graph_calls(c, transient, s)
    try:
        t, reps = time_graph(call, n_calls, s.graph_budget_s)
        res.graph_method = f"cuda graph, {n_calls} calls x {reps} replays"
    except Exception as e:
        _sync()
        try:
            t, _ = time_events(call, s.graph_budget_s)
            res.graph_method = f"events, eager loop (graph capture failed: {short_error(e, 80)})"
        except Exception as e2:
            _sync()
            res.detail = (res.detail + "; " if res.detail else "") + "timing: " + short_error(e2)
            return res
    res.graph_us = t * 1e6
    res.gbps = c.bytes_moved() / t / 1e9
    if s.copy_GBps:
        res.pct_copy = 100 * res.gbps / s.copy_GBps
    return res


def run_case(c: Case, providers: list[Provider], s: Settings, seed: int = 0) -> dict:
    torch._dynamo.reset()
    gc.collect()
    if s.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    inp = make_inputs(c, s.device, seed)
    ref = reference(c, inp, s.chunk_elements)
    results = []
    peak = torch.cuda.max_memory_allocated() if s.device == "cuda" else 0
    grad_mode = torch.enable_grad() if c.backward else torch.no_grad()
    with grad_mode:
        for p in providers:
            if p.name == "compiled":
                torch._dynamo.reset()
            results.append(run_provider(p, c, inp, ref, s))
            gc.collect()
            if s.device == "cuda":  # run_provider resets the peak statistics: keep the case's maximum
                peak = max(peak, torch.cuda.max_memory_allocated())
    entry = {
        "case": asdict(c), "name": c.name, "describe": c.describe(), "bytes": c.bytes_moved(),
        "floor_us": c.bytes_moved() / (s.copy_GBps * 1e9) * 1e6 if s.copy_GBps else None,
        "tolerance": TOLERANCE[c.dtype], "seconds": None, "peak_mem_gb": None,
        "results": [asdict(r) for r in results],
    }
    del inp, ref
    gc.collect()
    if s.device == "cuda":
        entry["peak_mem_gb"] = peak / 2**30
        torch.cuda.empty_cache()
    entry["seconds"] = time.perf_counter() - t0
    return entry


# --------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------


def _fmt_us(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _cell(r: dict, key: str, pct: bool) -> str:
    st = r["status"]
    if st == "n/a":
        return "n/a"
    if st in ("unsupported", "unavailable", "skipped"):
        return st[:6] + "."
    v = r.get(key)
    text = _fmt_us(v)
    if pct and r.get("pct_copy") is not None and v is not None:
        text += f" ({r['pct_copy']:.0f}%)"
    if st == "FAIL":
        text += " FAIL"
    return text


def _best(results: list[dict], key: str, peers_only: bool) -> dict | None:
    ok = [r for r in results if r["status"] == "ok" and r.get(key) is not None
          and (not peers_only or PROVIDER_BY_NAME.get(r["provider"], Provider("", "", _plain)).peer)]
    return min(ok, key=lambda r: r[key]) if ok else None


def _vs_peer(results: list[dict], key: str) -> str:
    ours = next((r for r in results if r["provider"] == "ours"), None)
    best = _best(results, key, peers_only=True)
    if not ours or ours["status"] != "ok" or ours.get(key) is None or best is None:
        return "–"
    return f"{best[key] / ours[key]:.2f}x ({PROVIDER_BY_NAME[best['provider']].label})"


def pivot_table(report: dict, key: str, pct: bool, only_small: bool = False) -> str:
    names = [p["name"] for p in report["providers"]]
    labels = [p["label"] for p in report["providers"]]
    head = ["case", "M x N", "dtype", "what"] + (["floor µs"] if pct else []) + labels + ["best peer / ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in report["cases"]:
        c = e["case"]
        if only_small and c["M"] * c["N"] > 1 << 20:
            continue
        by = {r["provider"]: r for r in e["results"]}
        best = _best(e["results"], key, peers_only=False)
        cells = []
        for n in names:
            r = by.get(n)
            cell = _cell(r, key, pct) if r else "–"
            if r is not None and best is not None and r is best:
                cell = f"**{cell}**"
            cells.append(cell)
        row = [e["name"], f"{c['M']}x{c['N']}", SHORT_DTYPE[c["dtype"]], e["describe"]]
        if pct:
            row.append(_fmt_us(e.get("floor_us")))
        lines.append("| " + " | ".join(row + cells + [_vs_peer(e["results"], key)]) + " |")
    return "\n".join(lines)


def detail_table(report: dict) -> str:
    head = ["case", "provider", "graph µs", "eager µs", "GB/s", "% copy", "rel. err", "status", "timing"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in report["cases"]:
        for r in e["results"]:
            status = r["status"] + (f": {r['detail']}" if r["detail"] else "")
            status = status.replace("|", "/")
            lines.append("| " + " | ".join([
                e["name"], PROVIDER_BY_NAME[r["provider"]].label, _fmt_us(r["graph_us"]), _fmt_us(r["eager_us"]),
                f"{r['gbps']:.0f}" if r["gbps"] is not None else "–",
                f"{r['pct_copy']:.0f}" if r["pct_copy"] is not None else "–",
                f"{r['err']:.1e}" if r["err"] is not None else "–",
                status, r["graph_method"].replace("|", "/"),
            ]) + " |")
    return "\n".join(lines)


def sweep_table(report: dict) -> str:
    sweep = report.get("sweep") or []
    if not sweep:
        return ""
    provs = [p for p in SWEEP_PROVIDERS if any(r["provider"] == p for r in sweep)]
    ns = sorted({r["N"] for r in sweep})
    head = ["N", "M"] + [PROVIDER_BY_NAME[p].label + " GB/s" for p in provs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in ns:
        row = [str(n), str(SWEEP_ELEMENTS // n)]
        for p in provs:
            r = next((r for r in sweep if r["N"] == n and r["provider"] == p), None)
            if r is None or r["gbps"] is None:
                row.append(r["status"][:6] if r else "–")
            else:
                row.append(f"{r['gbps']:.0f}" + ("" if r["status"] == "ok" else " FAIL"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def header(report: dict) -> str:
    m = report["meta"]
    cp = m.get("copy") or {}
    return (
        f"Device: {m['device']} | torch {m['torch']} | Triton {m['triton']} | fla-core {m['fla_core']} | "
        f"liger-kernel {m['liger_kernel']} | Python {m['python']} | {m['date']}\n\n"
        f"Copy bandwidth: {cp.get('GBps', float('nan')):.0f} GB/s (device-to-device `copy_` of "
        f"{cp.get('bytes_copied', 0) / 2**30:.0f} GiB, bytes read + written, median of {cp.get('reps', 0)})"
    )


NOTES = """\
Notes:
- Kernel time: N calls captured in one CUDA graph (warm-up on a side stream first), median replay time over
  the replays (CUDA events) / N. Eager: wall time per call of the fastest of 10 loops of calls between two
  synchronizations, launch overhead included. Cells: µs (% of copy bandwidth); **bold**: fastest; best
  peer / ours > 1 means ours is faster.
- Bytes, forward: x, z (gated), out (M·N elements each), weight and bias (N each, when present), rstd and,
  for LayerNorm, mean (ngroups·M float32 each): what the op must read or write once; the same count for every
  provider. Forward+backward: issue 5's floor, 8·M·N elements gated (x, z, out forward; x, z, dy, dx, dz
  backward), weight/dweight/statistics left out. GB/s = bytes / kernel time; floor µs = bytes / copy GB/s.
- rel. err = ‖result − ref‖₂ / ‖ref‖₂, ref = custom_norm.norm_gated_reference in float64 on the same inputs
  (fwd+bwd: the largest over out, dx, dz, dweight, dbias); FAIL above 1e-2 (bf16), 2e-3 (fp16), 1e-4 (fp32).
- Decode-sized cases (M·N ≤ 2^20) run on L2-resident data: their GB/s is not a bandwidth figure.
- n/a: the provider does not implement these semantics; unsupp.: it raised (see the detail table)."""


def baseline_table(report: dict) -> str:
    """Every provider's kernel and eager time now against an earlier bench.json (--baseline)."""
    base = report.get("baseline")
    if not base:
        return ""
    then = {(e["name"], r["provider"]): r for e in base["cases"] for r in e["results"]}
    m = base["meta"]
    lines = [f"### Against the baseline: {m.get('device')}, {m.get('date')} (graph µs then -> now, now/then)", "",
             "| case | provider | graph µs then | graph µs now | now / then | eager µs then | eager µs now |",
             "|---|---|---|---|---|---|---|"]
    for e in report["cases"]:
        for r in e["results"]:
            old = then.get((e["name"], r["provider"]))
            if old is None or (old.get("graph_us") is None and r.get("graph_us") is None):
                continue
            ratio = (f"{r['graph_us'] / old['graph_us']:.2f}" if r.get("graph_us") and old.get("graph_us")
                     else "–")
            lines.append("| " + " | ".join([
                e["name"], PROVIDER_BY_NAME[r["provider"]].label, _fmt_us(old.get("graph_us")),
                _fmt_us(r.get("graph_us")), ratio, _fmt_us(old.get("eager_us")), _fmt_us(r.get("eager_us"))]) + " |")
    return "\n".join(lines)


def provider_notes(report: dict) -> str:
    return "\n".join(f"- {p['label']}: {p['about']}" for p in report["providers"])


def render_markdown(report: dict) -> tuple[str, str]:
    """Returns (summary, details): the summary is printed last."""
    parts = [
        "### Forward and forward+backward: kernel time (CUDA graph), µs (% of copy bandwidth)",
        pivot_table(report, "graph_us", pct=True),
        "### Eager per-call wall time, µs (decode-sized cases)",
        pivot_table(report, "eager_us", pct=False, only_small=True),
    ]
    if report.get("skipped"):
        parts.append(f"Not run (time limit): {', '.join(report['skipped'])}")
    summary = header(report) + "\n\n" + "\n\n".join(parts)
    details = ["### All results", detail_table(report)]
    st = sweep_table(report)
    if st:
        details += [f"### Sweep: GB/s vs N, M·N = 2^{int(math.log2(SWEEP_ELEMENTS))}, bf16 RMSNorm, SiLU gate after "
                    "the norm, one group", st]
    details += ["### Eager per-call wall time, µs (all cases)", pivot_table(report, "eager_us", pct=False)]
    bt = baseline_table(report)
    if bt:
        details.append(bt)
    details += ["Providers:\n" + provider_notes(report), NOTES]
    return summary, "\n\n".join(details)


def write_json_md(report: dict, out: Path) -> tuple[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    summary, details = render_markdown(report)
    (out / "bench.md").write_text(summary + "\n\n" + details + "\n")
    return summary, details


def write_plots(report: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plots skipped: {e}")
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    m = report["meta"]
    copy_bw = (m.get("copy") or {}).get("GBps")
    sweep = report.get("sweep") or []
    if sweep:
        fig, ax = plt.subplots(figsize=(8, 5))
        for p in SWEEP_PROVIDERS:
            pts = sorted((r["N"], r["gbps"]) for r in sweep if r["provider"] == p and r["gbps"] is not None
                         and r["status"] == "ok")
            if pts:
                ax.plot([n for n, _ in pts], [g for _, g in pts], marker="o", label=PROVIDER_BY_NAME[p].label)
        if copy_bw:
            ax.axhline(copy_bw, color="gray", linestyle="--", label=f"copy {copy_bw:.0f} GB/s")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("N (group = N)")
        ax.set_ylabel("GB/s (CUDA-graph kernel time)")
        ax.set_title(f"gated RMSNorm fwd, bf16, M·N = 2^26 — {m['device']}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "bench_sweep.png", dpi=110)
        plt.close(fig)
        written.append("bench_sweep.png")
    cases = [e for e in report["cases"] if e["case"]["M"] * e["case"]["N"] > 1 << 20]
    provs = [p["name"] for p in report["providers"]]
    if cases:
        fig, ax = plt.subplots(figsize=(10, 0.5 + 0.55 * len(cases) * max(1, len(provs)) / 4))
        height = 0.8 / max(1, len(provs))
        for i, pname in enumerate(provs):
            ys, xs = [], []
            for j, e in enumerate(cases):
                r = next((r for r in e["results"] if r["provider"] == pname), None)
                if r and r["status"] == "ok" and r["pct_copy"] is not None:
                    ys.append(j + i * height)
                    xs.append(r["pct_copy"])
            if xs:
                ax.barh(ys, xs, height=height, label=PROVIDER_BY_NAME[pname].label)
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(cases))])
        ax.set_yticklabels([e["name"] for e in cases], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(100, color="gray", linestyle="--")
        ax.set_xlabel("% of copy bandwidth (fwd+bwd: % of the 8·M·N floor)")
        ax.set_title(f"kernel time as % of copy bandwidth — {m['device']}", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "bench_cases.png", dpi=110)
        plt.close(fig)
        written.append("bench_cases.png")
    return written


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_meta(device: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "CPU",
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
        "fla_core": _version("fla-core"), "liger_kernel": _version("liger-kernel"),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": sys.argv[1:],
    }
    if device == "cuda":
        prop = torch.cuda.get_device_properties(0)
        meta.update(sm_count=prop.multi_processor_count, memory_gb=prop.total_memory / 2**30,
                    capability=f"{prop.major}.{prop.minor}")
    return meta


def select(items, names: str | None, what: str):
    if not names:
        return list(items)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if not any(fnmatch.fnmatchcase(i.name, n) for i in items)]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(i.name for i in items)}")
    return [i for i in items if any(fnmatch.fnmatchcase(i.name, n) for n in wanted)]


def new_report(meta: dict, providers: list[Provider]) -> dict:
    return {"meta": meta, "providers": [{"name": p.name, "label": p.label, "about": p.about} for p in providers],
            "cases": [], "sweep": []}


def run_sweep(ns: list[int], providers: list[Provider], s: Settings, report: dict, log,
              over_time: Callable[[], bool] = lambda: False) -> None:
    for n in ns:
        if over_time():
            report.setdefault("skipped", []).append(f"sweep N={n}")
            continue
        c = sweep_case(n)
        t0 = time.perf_counter()
        entry = run_case(c, providers, replace(s, eager_timing=False))
        for r in entry["results"]:
            report["sweep"].append({"N": n, "M": c.M, **{k: r[k] for k in (
                "provider", "status", "detail", "graph_us", "gbps", "pct_copy", "err")}})
        log(f"sweep N={n}: " + ", ".join(
            f"{r['provider']} {r['gbps']:.0f} GB/s" if r["gbps"] else f"{r['provider']} {r['status']}"
            for r in entry["results"]) + f"  [{time.perf_counter() - t0:.1f} s]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cases: " + ", ".join(c.name for c in CASES)
                                 + "\nproviders: " + ", ".join(p.name for p in PROVIDERS))
    ap.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    ap.add_argument("--suite", choices=sorted(SUITES), default="issue",
                    help="issue: issue 5's cases and the sweep (default); models: each model's gated norm at "
                         "decode and prefill token counts (MODELS), no sweep")
    ap.add_argument("--cases", help="comma-separated case names of the suite, or shell patterns (mamba2-*) "
                                    "(default: all)")
    ap.add_argument("--providers", help="comma-separated provider names (default: all)")
    ap.add_argument("--quick", action="store_true", help="shorter measurements and a thinner sweep")
    ap.add_argument("--no-sweep", action="store_true", help="skip the bandwidth-vs-N sweep")
    ap.add_argument("--sweep-n", help="comma-separated N values for the sweep")
    ap.add_argument("--baseline", help="an earlier bench.json: adds a then/now table for every case and provider")
    ap.add_argument("--time-limit", type=float, default=480,
                    help="seconds: past this, the remaining cases and sweep points are skipped (and listed), so that "
                         "the tables still get written inside a 10-minute command (default 480; 0: no limit)")
    ap.add_argument("--list", action="store_true", help="print the cases and their byte counts, then exit")
    ap.add_argument("--selftest", action="store_true",
                    help="check the pure-Python parts (writers on made-up numbers, into a temporary directory "
                         "only) and the providers that run on CPU; needs no GPU")
    args = ap.parse_args(argv)

    cases = select(SUITES[args.suite], args.cases, "cases")
    providers = select(PROVIDERS, args.providers, "providers")
    if args.list:
        for c in cases:
            print(f"{c.name:24s} {c.M:>7d} x {c.N:<6d} {SHORT_DTYPE[c.dtype]:5s} {c.describe():55s} "
                  f"{c.bytes_moved() / 1e6:10.1f} MB")
        return 0
    if args.selftest:
        return selftest(cases, providers)
    base = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if not torch.cuda.is_available():
        print("bench.py: no CUDA device here, nothing to measure. It runs on a GPU machine; without one use "
              "--list, --selftest, or scripts/bench_cpu.py for the CPU section.")
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    s = Settings()
    if args.quick:
        s = replace(s, graph_budget_s=0.015, eager_budget_s=0.01, graph_replay_s=1e-3)
    meta = collect_meta("cuda")
    log(f"{meta['device']} | torch {meta['torch']} | triton {meta['triton']} | fla-core {meta['fla_core']} | "
        f"liger-kernel {meta['liger_kernel']}")
    meta["copy"] = measure_copy_bandwidth()
    s.copy_GBps = meta["copy"]["GBps"]
    log(f"copy bandwidth {s.copy_GBps:.0f} GB/s (best {meta['copy']['GBps_best']:.0f})")
    report = new_report(meta, providers)
    report["settings"] = asdict(s)
    if base:
        report["baseline"] = {"meta": base["meta"], "cases": [
            {"name": e["name"], "results": [{k: r.get(k) for k in ("provider", "graph_us", "eager_us")}
                                            for r in e["results"]]} for e in base["cases"]]}

    def over_time() -> bool:
        return bool(args.time_limit) and time.perf_counter() - start > args.time_limit

    report["skipped"] = []
    for i, c in enumerate(cases):
        if over_time():
            report["skipped"].append(c.name)
            continue
        entry = run_case(c, providers, s, seed=i)
        report["cases"].append(entry)
        log(f"{c.name} ({c.M}x{c.N} {SHORT_DTYPE[c.dtype]}, {c.describe()}) [{entry['seconds']:.1f} s, peak "
            f"{entry['peak_mem_gb']:.1f} GB]: " + "; ".join(
                f"{r['provider']} " + (f"{r['graph_us']:.1f} us" if r["graph_us"] is not None else r["status"])
                + ("" if r["status"] in ("ok", "n/a") else f" [{r['status']}: {r['detail']}]")
                for r in entry["results"] if r["status"] != "n/a"))
        write_json_md(report, out)  # partial results survive a timeout

    if not args.no_sweep and args.suite == "issue":
        ns = [int(n) for n in args.sweep_n.split(",")] if args.sweep_n else (SWEEP_N_QUICK if args.quick
                                                                              else SWEEP_N)
        sweep_providers = [p for p in providers if p.name in SWEEP_PROVIDERS]
        run_sweep(ns, sweep_providers, s, report, log, over_time)

    summary, details = write_json_md(report, out)
    try:
        plots = write_plots(report, out)
    except Exception as e:  # the tables matter more than the pictures
        plots = []
        log(f"plots failed: {short_error(e)}")
    log(f"wrote {out}/bench.json, bench.md" + (", " + ", ".join(plots) if plots else ""))
    ours_fail = [e["name"] for e in report["cases"] for r in e["results"]
                 if r["provider"] == "ours" and r["status"] == "FAIL"]
    print("\n" + details + "\n")
    print(summary)
    if report["skipped"]:
        print(f"\nSKIPPED (past --time-limit {args.time_limit:.0f} s): {', '.join(report['skipped'])}")
    if ours_fail:
        print(f"\nours FAILED the correctness check on: {', '.join(ours_fail)}")
        return 1
    return 0


# --------------------------------------------------------------------------------------------------------------
# Self-test (no GPU needed)
# --------------------------------------------------------------------------------------------------------------


def _fake_report(cases: list[Case], providers: list[Provider]) -> dict:
    """Made-up numbers, only to exercise the writers; written to a temporary directory only."""
    import random

    rng = random.Random(0)
    meta = {"device": "SELFTEST (made-up numbers)", "torch": torch.__version__, "triton": "x", "cuda": None,
            "fla_core": "x", "liger_kernel": "x", "python": platform.python_version(), "date": "selftest",
            "copy": {"GBps": 3000.0, "bytes_copied": 1 << 30, "reps": 30}}
    report = new_report(meta, providers)
    for c in cases:
        results = []
        for p in providers:
            reason = p.supports(c)
            if reason:
                results.append(asdict(Result(p.name, "n/a", reason)))
                continue
            t = c.bytes_moved() / (3000e9 * rng.uniform(0.3, 0.95)) * 1e6
            status = rng.choice(["ok"] * 8 + ["FAIL", "unsupported"])
            r = Result(p.name, status, "made up" if status != "ok" else "", graph_us=t, eager_us=t + 50,
                       gbps=c.bytes_moved() / t / 1e3, err=1e-3, graph_method="cuda graph, 10 calls x 50 replays")
            r.pct_copy = r.gbps / 30
            if status == "unsupported":
                r = Result(p.name, status, "RuntimeError: made up | with a pipe")
            results.append(asdict(r))
        report["cases"].append({"case": asdict(c), "name": c.name, "describe": c.describe(),
                                "bytes": c.bytes_moved(), "floor_us": c.bytes_moved() / 3000e3,
                                "results": results})
    for n in SWEEP_N:
        for p in SWEEP_PROVIDERS:
            report["sweep"].append({"N": n, "M": SWEEP_ELEMENTS // n, "provider": p, "status": "ok", "detail": "",
                                    "graph_us": 100.0, "gbps": rng.uniform(1000, 3000), "pct_copy": 50.0,
                                    "err": 1e-3})
    return report


def _shrink(c: Case) -> Case:
    return replace(c, M=min(c.M, 4 if c.N >= 4096 else 16))


def selftest(cases: list[Case], providers: list[Provider]) -> int:
    failures = []

    def check(cond: bool, what: str) -> None:
        print(("  ok    " if cond else "  FAIL  ") + what)
        if not cond:
            failures.append(what)

    print("selftest: cases and byte counts")
    check(len({c.name for c in CASES}) == len(CASES), "case names are unique")
    check(len(CASES) == 17, "17 cases (issue 5's 14, nemotron-h decode, two wide ones of the split kernel)")
    by = {c.name: c for c in CASES}
    m2 = by["mamba2_prefill_bwd"]
    check(m2.bytes_moved() == 8 * 16384 * 5120 * 2, "fwd+bwd floor = 8 x M x N x elem (mamba2 prefill)")
    check(abs(m2.bytes_moved() / 4220e9 * 1e6 - 318) < 1, "mamba2 fwd+bwd floor at 4220 GB/s is 318 us (issue 5)")
    check(abs(by["qwen3next_prefill_bwd"].bytes_moved() / 4220e9 * 1e6 - 254) < 1, "qwen3next floor 254 us")
    check(abs(by["nemotronh_prefill_bwd"].bytes_moved() / 4220e9 * 1e6 - 509) < 1, "nemotron-h floor 509 us")
    nem = by["nemotronh_prefill"]
    check(nem.bytes_moved() == 3 * 16384 * 8192 * 2 + 8192 * 2 + 8 * 16384 * 4, "nemotron-h fwd bytes")
    ln = by["layernorm_bias"]
    check(ln.bytes_moved() == 2 * 16384 * 4096 * 2 + 2 * 4096 * 2 + 2 * 16384 * 4, "LayerNorm+bias fwd bytes")
    check(by["mamba2_prefill_fp32"].elem == 4, "fp32 case: 4-byte elements")
    check(sweep_case(128).M * 128 == SWEEP_ELEMENTS, "sweep keeps M*N fixed")
    check(_fla_fused_supports(by["mamba2_prefill"]) is not None, "fla fused n/a for gate before the norm")
    check(_fla_fused_supports(by["nemotronh_prefill"]) is not None, "fla fused n/a for groups")
    check(_fla_fused_supports(by["qwen3next_prefill"]) is None, "fla fused applies to qwen3next")
    check(_liger_supports(by["rms_nogate"]) is None and _liger_supports(by["mamba2_prefill"]) is not None,
          "Liger: ungated only")
    check(_graph_calls(by["qwen3next_decode"], 1 << 10, Settings()) == 200, "decode graphs hold 200 calls")
    check(_graph_calls(by["nemotronh_prefill"], 3 << 30, Settings()) == 2, "graph calls bounded by memory")
    models = {c.name: c for c in MODEL_CASES}
    check(len(models) == len(MODEL_CASES) == len(MODELS) * (len(MODEL_TOKENS) + 1), "model case names are unique")
    q = models["qwen3-next_t16384"]
    check((q.M, q.N, q.norm_before_gate) == (524288, 128, True) and q.bytes_moved() == by["qwen3next_prefill"]
          .bytes_moved(), "qwen3-next at 16384 tokens is issue 5's qwen3next prefill (rows = tokens x heads)")
    nh = models["nemotron-h-4b_t64"]
    check((nh.M, nh.ngroups, nh.norm_before_gate) == (64, 8, False), "nemotron-h-4b: 8 groups of 896")
    kimi = models["kimi-linear_t1"]
    check(_fla_orig_supports(kimi) is not None and _fla_fused_supports(kimi) is None,
          "kimi-linear's sigmoid gate: fla orig n/a, fla fused applies")

    print("selftest: writers (made-up numbers, temporary directory)")
    with tempfile.TemporaryDirectory() as tmp:
        report = _fake_report(CASES, PROVIDERS)
        report["baseline"] = {"meta": report["meta"], "cases": report["cases"]}
        summary, details = write_json_md(report, Path(tmp))
        check("### Against the baseline" in details and " 1.00 |" in details, "baseline table")
        plots = write_plots(report, Path(tmp))
        check(json.loads((Path(tmp) / "bench.json").read_text())["meta"]["device"].startswith("SELFTEST"),
              "bench.json round-trips")
        md = (Path(tmp) / "bench.md").read_text()
        check(all(c.name in md for c in CASES), "bench.md names every case")
        check(md.count("\n| ") > 3 * len(CASES), "bench.md has the tables")
        detail = details.split("### All results\n\n")[1].split("\n\n")[0].splitlines()
        check(len(detail) == 2 + len(CASES) * len(PROVIDERS) and
              all(ln.count("|") == detail[0].count("|") for ln in detail),
              "detail table: a row per case and provider, as many cells as its header (pipes escaped)")
        pivot = summary.split("\n\n")[3].splitlines()
        check(len(pivot) == 2 + len(CASES) and all(ln.count("|") == pivot[0].count("|") for ln in pivot),
              "kernel-time pivot: a row per case, as many cells as its header")
        check("**" in summary and "x (" in summary, "pivot marks the fastest and the best peer ratio")
        if plots:
            check(all((Path(tmp) / p).stat().st_size > 10_000 for p in plots), f"plots written: {plots}")
        else:
            print("  skip  plots (matplotlib not installed here)")
    print("selftest: providers on CPU, tiny shapes, against the float64 reference")
    os.environ.setdefault("TRITON_INTERPRET", "1")  # lets fla's original kernel run on CPU tensors
    s = Settings(device="cpu", timing=False, chunk_elements=1 << 12)
    compile_here = {"qwen3next_decode", "mamba2_prefill_bwd"}
    for c in cases:
        small = _shrink(c)
        provs = [p for p in providers if p.name != "compiled" or c.name in compile_here]
        entry = run_case(small, provs, s, seed=1)
        line = []
        for r in entry["results"]:
            line.append(f"{r['provider']}={r['status']}" + (f"({r['err']:.0e})" if r["err"] is not None else ""))
            if r["provider"] in ("ours", "eager", "compiled", "torch_F") and r["status"] != "n/a":
                check(r["status"] == "ok", f"{c.name} {small.M}x{small.N}: {r['provider']} ok "
                                           f"({r['status']} {r['detail']})")
            if r["provider"] == "fla_orig" and r["status"] not in ("unavailable", "n/a"):
                want = "unsupported" if c.N * c.elem > 65536 else "ok"
                check(r["status"] == want, f"{c.name}: fla_orig {want} under TRITON_INTERPRET "
                                           f"({r['status']} {r['detail']})")
        print(f"        {c.name}: " + ", ".join(line))
    print(f"selftest: {len(failures)} failure(s)" if failures else "selftest: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
