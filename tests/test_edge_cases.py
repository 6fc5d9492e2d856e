"""Reliability edge cases of norm_gated::fwd (issue 6): shapes, strides, dtypes, values, devices, bad input.

Every case runs on the native path (the op on CPU), on the Triton kernels themselves (on the GPU, or on CPU
tensors under Triton's interpreter) and, with a GPU, through the op on CUDA. Tests marked ``cuda`` need a GPU
(conftest skips them without one). Backward parts run only once ``norm_gated::bwd`` exists.
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import TRITON_DEVICE
from test_registration import _bad_inputs
from utils import (
    OUT_TOL,
    STAT_TOL,
    assert_matches_reference,
    make_problem,
    poison_cuda_allocator,
    record_launches,
    reference64,
    saturated_gate,
)

import custom_norm
import custom_norm.kernels.forward as triton_forward
from custom_norm import norm_gated_reference
from custom_norm.testing import warm_up_on_side_stream

HAS_CUDA = torch.cuda.is_available()
HAS_BWD = hasattr(torch.ops.norm_gated, "bwd")
try:
    import custom_norm.kernels.backward as triton_backward
except ImportError:  # the backward kernels are not there yet
    triton_backward = None
HAS_TRITON_BWD = HAS_BWD and triton_backward is not None and hasattr(triton_backward, "norm_gated_bwd_triton")

# "native": the op on CPU; "triton": the Triton launcher called directly on TRITON_DEVICE; "cuda": the op on CUDA.
IMPLS = ["native", "triton"] + (["cuda"] if HAS_CUDA else [])
DEVICE = {"native": "cpu", "triton": TRITON_DEVICE, "cuda": "cuda"}
# Triton's interpreter runs programs one after another, at a few ms each: keep the program count small there.
INTERPRETED = TRITON_DEVICE == "cpu"


def sized_for(impl, shape, gs):
    """``shape`` with at most 2 rows and 17 groups (odd group counts stay odd) under the interpreter."""
    n = shape[-1]
    g = gs or n
    if impl != "triton" or not INTERPRETED or n // g <= 17:
        return shape
    return (min(shape[0], 2), *shape[1:-1], g * (17 if (n // g) % 2 else 16))


def run(impl, x, w, b, z, eps=1e-6, gs=None, nbg=True, rms=False, act="silu"):
    if impl == "triton":
        return triton_forward.norm_gated_fwd_triton(x, w, b, z, eps, gs, nbg, rms, act)
    return torch.ops.norm_gated.fwd(x, w, b, z, eps, gs, nbg, rms, act)


def _clones(*tensors):
    return [None if t is None else (t.clone(), t.stride(), t.data_ptr()) for t in tensors]


def _assert_untouched(before, *tensors):
    for saved, t in zip(before, tensors, strict=True):
        if saved is None:
            continue
        value, stride, ptr = saved
        assert t.stride() == stride and t.data_ptr() == ptr
        assert torch.equal(value.isnan(), t.isnan()) and torch.equal(value.nan_to_num(), t.nan_to_num()), \
            "an input was modified"


def assert_close_to_reference(result, x, w, b, z, eps, gs, nbg, rms, act, out_tol=None, slack=8.0):
    """``assert_matches_reference`` with error bounds that follow the problem's conditioning.

    Computing ``x - mean`` in the math dtype (unit roundoff u) costs up to about u * (|h| + |mean|) per element
    (h: the norm's input, x or x * gate), which the norm multiplies by rstd: for a group of nearly equal values
    (tiny variance, rstd up to 1/sqrt(eps)) or a large offset, that exceeds a fixed tolerance although every
    float32 implementation makes it. So ``out`` may be off by the fixed tolerance plus
    ``slack * u * (|h| + |mean|) * rstd * |weight| * |gate after|``, ``mean`` by ``slack * u * max |h|`` more,
    and LayerNorm's rstd, whose variance comes from ``h - mean`` with h itself rounded (x * gate), by a
    relative ``slack * u * max |h| * sqrt(var) / (var + eps)`` more. RMSNorm has no subtraction and gets the
    fixed tolerances only.
    """
    out, mean, rstd = result
    ref_out, ref_mean, ref_rstd = reference64(x, w, b, z, eps, gs, nbg, rms, act)
    stat_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous() and out.device == x.device
    assert rstd.dtype == stat_dtype and rstd.shape == ref_rstd.shape and rstd.device == x.device
    assert mean.dtype == stat_dtype and mean.shape == ref_mean.shape and mean.device == x.device
    u = torch.finfo(stat_dtype).eps / 2
    n = x.shape[-1]
    g = gs or n
    h = x.detach().cpu().double().reshape(-1, n)
    gate = None
    if z is not None:
        zz = z.detach().cpu().double().reshape(-1, n)
        gate = torch.sigmoid(zz) if act == "sigmoid" else torch.nn.functional.silu(zz)
        if not nbg:
            h = h * gate
    m = h.shape[0]
    hg = h.reshape(m, n // g, g)
    rstd_rows = ref_rstd.T.reshape(m, n // g, 1)
    spread = hg.abs() if rms else hg.abs() + ref_mean.T.reshape(m, n // g, 1).abs()
    extra = (spread * rstd_rows).reshape(m, n)
    if w is not None:
        extra = extra * w.detach().cpu().double().abs()
    if gate is not None and nbg:
        extra = extra * gate.abs()
    extra = 0.0 if rms else slack * u * extra
    rtol, atol = out_tol or OUT_TOL[x.dtype]
    got = out.detach().cpu().double().reshape(m, n)
    want = ref_out.reshape(m, n)
    bound = atol + rtol * want.abs() + extra
    err = (got - want).abs()
    bad = ~(err <= bound) & ~(got.isnan() & want.isnan()) & ~(got == want)
    assert not bad.any(), (
        f"out: {int(bad.sum())} of {bad.numel()} elements off, first at {bad.nonzero()[0].tolist()}: "
        f"got {got[bad][0].item()!r}, expected {want[bad][0].item()!r}, allowed error {bound[bad][0].item():.3g}")
    srtol, satol = STAT_TOL[stat_dtype]
    rstd_bound = satol + srtol * ref_rstd.abs()
    hmax = hg.abs().amax(-1).T if hg.numel() else torch.zeros_like(ref_rstd)
    if not rms:  # var from h - mean, h rounded to u * |h|: relative error u * |h| * sqrt(var) / (var + eps)
        var = (ref_rstd.pow(-2) - eps).clamp_min(0)
        rstd_bound = rstd_bound + slack * u * hmax * var.sqrt() * ref_rstd.pow(3)
    rstd_err = (rstd.detach().cpu().double() - ref_rstd).abs()
    bad = ~(rstd_err <= rstd_bound) & ~(rstd.detach().cpu().double() == ref_rstd)
    assert not bad.any(), (
        f"rstd: {int(bad.sum())} of {bad.numel()} off, first at (group, row) {bad.nonzero()[0].tolist()}: got "
        f"{rstd.detach().cpu().double()[bad][0].item()!r}, expected {ref_rstd[bad][0].item()!r}")
    if not rms:
        mean_bound = satol * 10 + srtol * ref_mean.abs() + slack * u * hmax
        mean_err = (mean.detach().cpu().double() - ref_mean).abs()
        assert (mean_err <= mean_bound).all(), f"mean off by up to {mean_err.max().item():.3g}"


def check(impl, x, w, b, z, eps=1e-6, gs=None, nbg=True, rms=False, act="silu", out_tol=None):
    """Run ``impl``; assert the result matches the float64 reference and the inputs are untouched."""
    saved = _clones(x, w, b, z)
    poison_cuda_allocator()
    result = run(impl, x, w, b, z, eps, gs, nbg, rms, act)
    assert_close_to_reference(result, x, w, b, z, eps, gs, nbg, rms, act, out_tol=out_tol)
    _assert_untouched(saved, x, w, b, z)
    return result


@pytest.fixture
def small_wide_blocks(monkeypatch):
    """Make the wide-group kernels trigger on groups over 32 columns: the forward's split kernel in parts of 16
    (its looped kernel, should a config choose it, in chunks of 16), the backward's looped one in chunks of 16."""
    monkeypatch.setattr(triton_forward, "MAX_FUSED_BLOCK", 32)
    monkeypatch.setattr(triton_forward, "WIDE_BLOCK", 16)
    monkeypatch.setattr(triton_forward, "SPLIT_BLOCK", 16)
    if triton_backward is not None:
        for name, value in (("MAX_FUSED_BLOCK", 32), ("WIDE_BLOCK", 16)):
            if hasattr(triton_backward, name):
                monkeypatch.setattr(triton_backward, name, value)


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,gs", [((0, 32), None), ((0, 32), 8), ((3, 0, 32), 4), ((0, 0, 8), None),
                                      ((0, 1), None), ((0, 7), 7)], ids=str)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_empty(impl, shape, gs, rms):
    x, w, b, z = make_problem(shape, torch.float32, DEVICE[impl])
    out, mean, rstd = check(impl, x, w, b, z, gs=gs, rms=rms)
    ngroups = shape[-1] // (gs or shape[-1])
    assert out.shape == shape and rstd.shape == (ngroups, 0)
    assert mean.shape == ((0,) if rms else (ngroups, 0))


# (shape, group_size): N = 1, odd and prime N, group_size = 1, many small groups.
SMALL_SHAPES = [
    ((5, 1), None),
    ((1, 1), 1),
    ((3, 97), None),
    ((4, 251), None),
    ((2, 3, 251), None),
    ((3, 291), 97),
    ((4, 16), 1),
    ((2, 97), 1),
    ((6, 512), 2),
    ((3, 510), 2),
    ((2, 255), 5),
    ((1, 7, 33), 3),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,gs", SMALL_SHAPES, ids=str)
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, False)], ids=["layer-before", "rms-after"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_small_odd_and_many_groups(impl, shape, gs, rms, nbg, dtype):
    x, w, b, z = make_problem(sized_for(impl, shape, gs), dtype, DEVICE[impl])
    check(impl, x, w, b, z, gs=gs, nbg=nbg, rms=rms, act="sigmoid" if rms else "silu")


@pytest.mark.parametrize("n", [65536, 262144, 1048576])
def test_wide_groups_native_rms(n):
    """N = group_size far over the 64 KB that peer kernels refuse, on the native path: gated RMSNorm."""
    x, w, b, z = make_problem((2, n), torch.float32, "cpu")
    check("native", x, w, b, z, rms=True, nbg=False)


@pytest.mark.parametrize("n", [65536, 262144, 1048576])
def test_wide_groups_native_layer(n):
    x, w, b, z = make_problem((2, n), torch.float32, "cpu", offset=2.0)
    check("native", x, w, b, z, rms=False, nbg=True)


@pytest.mark.parametrize("n", [1048576, 4194304])
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_native_wide_sum_accuracy(n, rms):
    """Float32 can sum 2^22 squares to ~1e-7 relative (pairwise/cascade); rstd must be that close."""
    x = torch.randn(1, n)
    _, _, rstd = torch.ops.norm_gated.fwd(x, None, None, None, 1e-6, None, True, rms, "silu")
    ref = reference64(x, None, None, None, 1e-6, None, True, rms, "silu")[2]
    torch.testing.assert_close(rstd.double(), ref, rtol=2e-6, atol=0)


@pytest.mark.parametrize("n,gs", [(65536, None), (262144, 131072)])
def test_wide_groups_native_bf16(n, gs):
    x, w, b, z = make_problem((3, n), torch.bfloat16, "cpu", weight_dtype=torch.float32)
    check("native", x, w, b, z, gs=gs, rms=True, act="sigmoid")


FWD_MAX = triton_forward.MAX_FUSED_BLOCK  # the fused/wide thresholds (columns), forward and backward
BWD_MAX = getattr(triton_backward, "MAX_FUSED_BLOCK", FWD_MAX) if triton_backward is not None else FWD_MAX


@pytest.mark.cuda
@pytest.mark.parametrize("n,gs", sorted({(FWD_MAX, None), (FWD_MAX + 1, None), (BWD_MAX + 1, None), (12288, None),
                                         (65536, None), (262144, None), (1048576, None), (1048576, 262144),
                                         (3 * 65537, 65537)}, key=lambda c: (c[0], c[1] or 0)), ids=str)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_wide_groups_cuda(n, gs, rms, dtype):
    """The real wide-group kernels on the GPU, around and far over the fused/wide threshold."""
    x, w, b, z = make_problem((3, n), dtype, "cuda", weight_dtype=torch.float32, offset=0.0 if rms else 3.0)
    check("cuda", x, w, b, z, gs=gs, rms=rms, nbg=rms)


# (shape, group_size) for the wide kernels made to trigger on groups over 32 columns (parts or chunks of 16):
# a masked tail in the last part, an exact multiple, a last part of one column, several groups.
WIDE_SMALL = [((3, 97), None), ((2, 64), None), ((2, 33), None), ((2, 250), 125), ((2, 2, 96), 48)]


@pytest.mark.parametrize("shape,gs", WIDE_SMALL, ids=str)
@pytest.mark.parametrize("rms,nbg,act", [(False, True, "silu"), (True, False, "sigmoid"), (False, False, "silu")],
                         ids=["layer-before", "rms-after", "layer-after"])
def test_wide_kernel_interpreter(small_wide_blocks, shape, gs, rms, nbg, act):
    assert triton_forward.forward_config(gs or shape[-1], 4).wide
    x, w, b, z = make_problem(shape, torch.float32, TRITON_DEVICE, offset=0.0 if rms else 4.0)
    check("triton", x, w, b, z, gs=gs, nbg=nbg, rms=rms, act=act)


def test_fused_wide_threshold(small_wide_blocks):
    """Groups of exactly MAX_FUSED_BLOCK use the fused kernel, one column more the split one; both right."""
    assert not triton_forward.forward_config(32, 3).wide
    assert triton_forward.forward_config(33, 3).wide
    for n in (32, 33):
        x, w, b, z = make_problem((3, n), torch.float32, TRITON_DEVICE)
        check("triton", x, w, b, z)


# ---------------------------------------------------------------- more than 2^31 elements (GPU)

@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("n,rms", [(4096, True), (131072, False)], ids=["fused-rms", "wide-layer"])
def test_cuda_over_2_31_elements(n, rms):
    """64-bit offsets: bf16 x of 2^31 + 3 rows' worth of elements; the first and LAST rows are right."""
    m = 2**31 // n + 3
    need = 3 * m * n * 2 + (1 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory")
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    z = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    w = (1 + 0.5 * torch.randn(n, device="cuda")).to(torch.bfloat16)
    b = None if rms else (0.5 * torch.randn(n, device="cuda")).to(torch.bfloat16)
    assert x.numel() > 2**31
    out, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, None, True, rms, "silu")
    torch.cuda.synchronize()
    rows = torch.tensor([0, 1, m // 2, m - 4, m - 3, m - 2, m - 1], device="cuda")
    sub = (out[rows], mean if rms else mean[:, rows], rstd[:, rows])
    assert_matches_reference(sub, x[rows], w, b, z[rows], 1e-6, None, True, rms, "silu")
    del x, z, out
    torch.cuda.empty_cache()


# ---------------------------------------------------------------- strides

STRIDE_KINDS = ["transposed", "row-strided", "column-strided", "z-other-strides", "permuted-3d",
                "expanded-weight-bias", "expanded-rows", "expanded-z-columns", "strided-weight"]


def _strided_problem(kind, device, dtype=torch.float32):
    """(x, w, b, z, group_size) where some input has the given non-contiguous layout."""
    x, w, b, z = make_problem((24, 64), dtype, device)
    if kind == "transposed":
        x = x.T.contiguous().T
        z = z.T.contiguous().T
    elif kind == "row-strided":  # rows of a wider tensor, the last row ending at the allocation's end
        x = torch.randn(24, 100, device=device, dtype=dtype)[:, 36:]
        z = torch.randn(24, 80, device=device, dtype=dtype)[:, 3:67]
    elif kind == "column-strided":
        x = torch.randn(24, 128, device=device, dtype=dtype)[:, ::2]
    elif kind == "z-other-strides":
        z = torch.randn(64, 24, device=device, dtype=dtype).T
    elif kind == "permuted-3d":  # (B, L, N) from a (L, B, N) buffer: rows cannot be flattened into a view
        x = torch.randn(6, 4, 64, device=device, dtype=dtype).transpose(0, 1)
        z = torch.randn(4, 6, 64, device=device, dtype=dtype)
    elif kind == "expanded-weight-bias":
        w = torch.randn(1, device=device, dtype=dtype).expand(64)
        b = torch.randn(1, device=device, dtype=dtype).expand(64)
    elif kind == "expanded-rows":  # every row the same memory (stride 0)
        x = torch.randn(1, 64, device=device, dtype=dtype).expand(24, 64)
    elif kind == "expanded-z-columns":
        z = torch.randn(24, 1, device=device, dtype=dtype).expand(24, 64)
    elif kind == "strided-weight":
        w = torch.randn(128, device=device, dtype=dtype)[1::2]
        b = torch.randn(192, device=device, dtype=dtype)[::3]
    assert not all(t.is_contiguous() for t in (x, w, b, z))
    return x, w, b, z, 16


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", STRIDE_KINDS)
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, False)], ids=["layer-before", "rms-after"])
def test_strides(impl, kind, rms, nbg):
    x, w, b, z, gs = _strided_problem(kind, DEVICE[impl])
    out, _, _ = check(impl, x, w, b, z, gs=gs, nbg=nbg, rms=rms)
    assert out.is_contiguous()


@pytest.mark.parametrize("kind", ["transposed", "row-strided", "z-other-strides", "expanded-rows"])
def test_strides_wide_kernel(small_wide_blocks, kind):
    x, w, b, z, _ = _strided_problem(kind, TRITON_DEVICE)
    check("triton", x, w, b, z, gs=None, nbg=False, rms=False)


# ---------------------------------------------------------------- dtypes

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("x_dtype,w_dtype,z_dtype", [
    (torch.bfloat16, torch.float32, torch.bfloat16),
    (torch.float16, torch.float32, torch.float16),
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.float16, torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16, torch.float16),
    (torch.float32, torch.bfloat16, torch.float16),
    (torch.float32, torch.float64, torch.float64),
    (torch.float64, torch.float32, torch.bfloat16),
    (torch.float16, torch.float64, torch.float32),
], ids=str)
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, False)], ids=["layer-before", "rms-after"])
def test_mixed_dtypes(impl, x_dtype, w_dtype, z_dtype, rms, nbg):
    x, w, b, _ = make_problem((8, 96), x_dtype, DEVICE[impl], weight_dtype=w_dtype)
    z = torch.randn(8, 96, dtype=torch.float64).to(z_dtype).to(DEVICE[impl])
    out, mean, rstd = check(impl, x, w, b, z, gs=32, nbg=nbg, rms=rms, act="sigmoid")
    assert out.dtype == x_dtype
    assert rstd.dtype == (torch.float64 if x_dtype == torch.float64 else torch.float32)


# ---------------------------------------------------------------- values

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, True), (True, False), (False, False)],
                         ids=["layer-before", "rms-before", "rms-after", "layer-after"])
def test_fp16_large_magnitude(impl, rms, nbg):
    """fp16 x of magnitude 1e4: x^2 (1e8) and x * gate overflow fp16, never float32 math."""
    x, w, b, z = make_problem((6, 128), torch.float16, DEVICE[impl], scale=1e4)
    x = x.clamp(-6e4, 6e4)
    z = (z.float() * 4).to(torch.float16)  # gates up to ~16: x * gate reaches ~1e5 before the norm
    out, _, rstd = check(impl, x, w, b, z, gs=64, nbg=nbg, rms=rms)
    assert out.isfinite().all() and rstd.isfinite().all() and (rstd > 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_tiny_values(impl, rms):
    """float32 values of 1e-20 (squares of 1e-40 are subnormal): eps dominates, nothing NaN or Inf."""
    x, w, b, z = make_problem((5, 64), torch.float32, DEVICE[impl], scale=1e-20)
    out, _, rstd = check(impl, x, w, b, z, gs=32, rms=rms)
    assert out.isfinite().all()
    torch.testing.assert_close(rstd.cpu(), torch.full_like(rstd.cpu(), 1e3), rtol=1e-5, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e-15), (torch.float64, 1e-100)], ids=str)
def test_tiny_values_no_eps(impl, rms, dtype, scale):
    """With eps = 0 the norm is scale invariant: tiny values (squares still normal numbers) give O(1) output."""
    x, w, b, z = make_problem((5, 64), dtype, DEVICE[impl], scale=scale)
    out, _, _ = check(impl, x, w, b, z, eps=0.0, gs=32, rms=rms)
    big = run(impl, x / scale, w, b, z, 0.0, 32, True, rms, "silu")[0]
    torch.testing.assert_close(out, big, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, True), (False, False)],
                         ids=["layer-before", "rms-before", "layer-after"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_zero_row(impl, rms, nbg, dtype):
    """A row of zeros: finite output thanks to eps, equal to the bias (times the gate after the norm)."""
    x, w, b, z = make_problem((4, 48), dtype, DEVICE[impl])
    x[2] = 0
    out, mean, rstd = check(impl, x, w, b, z, gs=16, nbg=nbg, rms=rms)
    assert out.isfinite().all()
    gate = torch.nn.functional.silu(z[2].double()) if nbg else 1.0
    expected = (b.double() * gate).to(dtype)
    torch.testing.assert_close(out[2].cpu(), expected.cpu(), rtol=OUT_TOL[dtype][0], atol=OUT_TOL[dtype][1])
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    torch.testing.assert_close(rstd[:, 2].cpu(), torch.full((3,), 1e-6, dtype=torch.float64).rsqrt().to(stat))
    if not rms:
        assert (mean[:, 2] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ["silu", "sigmoid"])
@pytest.mark.parametrize("nbg", [True, False], ids=["gate-after", "gate-before"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_saturated_gate(impl, act, nbg, dtype):
    x, w, b, _ = make_problem((4, 96), dtype, DEVICE[impl])
    z = saturated_gate(x.shape, x.device, dtype)
    out, _, _ = check(impl, x, w, b, z, gs=32, nbg=nbg, rms=False, act=act)
    assert out.isfinite().all()


POISON = [("x", float("nan")), ("x", float("inf")), ("x", float("-inf")), ("z", float("nan")), ("z", float("inf"))]


def _poison_check(impl, x, w, b, z, gs, nbg, rms, where, value, row, col):
    clean = run(impl, x, w, b, z, 1e-6, gs, nbg, rms, "silu")
    bad_x, bad_z = x.clone(), z.clone()
    (bad_x if where == "x" else bad_z)[row, col] = value
    out, mean, rstd = run(impl, bad_x, w, b, bad_z, 1e-6, gs, nbg, rms, "silu")
    group = col // gs
    keep = torch.ones_like(out, dtype=torch.bool)
    keep[row, group * gs:(group + 1) * gs] = False
    # Everything outside the poisoned row's group is bitwise the clean result.
    assert torch.equal(out[keep], clean[0][keep])
    stat_keep = torch.ones_like(rstd, dtype=torch.bool)
    stat_keep[group, row] = False
    assert torch.equal(rstd[stat_keep], clean[2][stat_keep])
    if not rms:
        assert torch.equal(mean[stat_keep], clean[1][stat_keep])
    # The poisoned group itself is affected (at least the poisoned element is not finite), like the reference.
    assert not out[row, col].isfinite()
    ref = reference64(bad_x, w, b, bad_z, 1e-6, gs, nbg, rms, "silu")[0]
    torch.testing.assert_close(out[row].cpu().double().isfinite(), ref[row].isfinite())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("where,value", POISON, ids=[f"{w}-{v}" for w, v in POISON])
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, True), (False, False), (True, False)],
                         ids=["layer-before", "rms-before", "layer-after", "rms-after"])
def test_nan_inf_stay_in_their_group(impl, where, value, rms, nbg):
    x, w, b, z = make_problem((9, 64), torch.float32, DEVICE[impl])
    _poison_check(impl, x, w, b, z, 16, nbg, rms, where, value, row=4, col=37)


@pytest.mark.parametrize("where,value", POISON[:3], ids=[f"{w}-{v}" for w, v in POISON[:3]])
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_nan_inf_stay_in_their_group_wide_kernel(small_wide_blocks, where, value, rms):
    x, w, b, z = make_problem((3, 144), torch.float32, TRITON_DEVICE)
    _poison_check("triton", x, w, b, z, 48, False, rms, where, value, row=1, col=60)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,gs", [((16, 256), None), ((8, 192), 64)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layernorm_large_offset(impl, shape, gs, dtype):
    """5 + 0.01 * noise: float32 rounding of the mean bounds the error near 1e-4 (see test_forward.py)."""
    x, w, b, z = make_problem(shape, dtype, DEVICE[impl], scale=0.01, offset=5.0)
    tol = (1e-3, 1e-3) if dtype == torch.float32 else None
    check(impl, x, w, b, z, gs=gs, out_tol=tol)


@pytest.mark.parametrize("offset,scale", [(5.0, 0.01), (100.0, 0.1)])
@pytest.mark.parametrize("kernel", ["split", "looped"])
def test_layernorm_large_offset_wide_kernel(monkeypatch, small_wide_blocks, offset, scale, kernel):
    """Chan's merge of part (split kernel) or chunk (looped kernel) statistics keeps the wide kernels as accurate
    as the fused one. Two rows with the gate after the norm take the split kernel; the looped one when no
    problem counts as decode-sized."""
    if kernel == "looped":
        monkeypatch.setattr(triton_forward, "FEW_WIDE_PROGRAMS", 0)
    assert triton_forward.forward_config(200, 2, True, True, False).split == (kernel == "split")
    x, w, b, z = make_problem((2, 400), torch.float32, TRITON_DEVICE, scale=scale, offset=offset)
    check("triton", x, w, b, z, gs=200, out_tol=(1e-3, 1e-3))


@pytest.mark.parametrize("few_programs,kernel", [(12, "_FWD_SPLIT"), (11, "_FWD_WIDE")])
def test_wide_decode_counts_rows_times_groups(monkeypatch, small_wide_blocks, few_programs, kernel):
    """The launcher hands the rule the group count: 3 rows of 4 wide groups with the gate after the norm are
    12 (row, group) programs of the looped kernel, decode-sized (the split kernel) only when FEW_WIDE_PROGRAMS >= 12."""
    monkeypatch.setattr(triton_forward, "FEW_WIDE_PROGRAMS", few_programs)
    launched = record_launches(monkeypatch, triton_forward, ("_FWD_SPLIT", "_FWD_WIDE"))
    x, w, b, z = make_problem((3, 800), torch.float32, TRITON_DEVICE)
    check("triton", x, w, b, z, gs=200, nbg=True)
    assert set(launched) == {kernel}


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,gs", [((37, 100), 20), ((200, 1024), 256), ((3, 4, 96), None)], ids=str)
def test_deterministic(impl, shape, gs):
    if impl == "triton" and TRITON_DEVICE == "cpu" and shape[-1] > 512:
        shape = (20, 1024)  # keep the interpreter quick
    x, w, b, z = make_problem(shape, torch.bfloat16, DEVICE[impl], weight_dtype=torch.float32)
    first = run(impl, x, w, b, z, 1e-6, gs, False, False, "silu")
    for _ in range(2):
        again = run(impl, x, w, b, z, 1e-6, gs, False, False, "silu")
        for a, c in zip(first, again, strict=True):
            assert torch.equal(a, c)


def test_deterministic_wide_kernel(small_wide_blocks):
    x, w, b, z = make_problem((3, 160), torch.float32, TRITON_DEVICE, offset=2.0)
    first = run("triton", x, w, b, z, 1e-6, 80, True, False, "silu")
    again = run("triton", x, w, b, z, 1e-6, 80, True, False, "silu")
    for a, c in zip(first, again, strict=True):
        assert torch.equal(a, c)


# ---------------------------------------------------------------- backward (once norm_gated::bwd exists)

def _grads(impl, x, w, b, z, dy, gs, nbg, rms, act="silu"):
    """(dx, dz, dw, db) of out = fwd(...)[0] against dy, by autograd through the op or the Triton launcher."""
    if impl == "triton":
        out, mean, rstd = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, gs, nbg, rms, act)
        return triton_backward.norm_gated_bwd_triton(dy, x, w, b, z, mean, rstd, gs, nbg, rms, act,
                                                     [True, True, True, True])
    # detach() keeps each input's strides (a clone might not), so the strided layouts reach the op
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in (x, w, b, z)]
    out = torch.ops.norm_gated.fwd(leaves[0], leaves[1], leaves[2], leaves[3], 1e-6, gs, nbg, rms, act)[0]
    out.backward(dy)
    lx, lw, lb, lz = leaves
    return (lx.grad, None if lz is None else lz.grad, None if lw is None else lw.grad,
            None if lb is None else lb.grad)


def _reference_grads(x, w, b, z, dy, gs, nbg, rms, act="silu"):
    leaves = [None if t is None else t.detach().cpu().double().requires_grad_(True) for t in (x, w, b, z)]
    out = norm_gated_reference(*leaves, 1e-6, gs, nbg, rms, act, compute_dtype=torch.float64)[0]
    out.backward(dy.detach().cpu().double())
    lx, lw, lb, lz = leaves
    return (lx.grad, None if lz is None else lz.grad, None if lw is None else lw.grad,
            None if lb is None else lb.grad)


def _assert_grads_close(got, ref, rel):
    for name, g, r in zip(("dx", "dz", "dweight", "dbias"), got, ref, strict=True):
        if r is None:
            continue
        assert g is not None, f"{name} missing"
        g = g.detach().cpu().double()
        scale = max(r.abs().max().item(), 1.0) if r.numel() else 1.0
        torch.testing.assert_close(g, r, rtol=rel, atol=rel * scale, msg=lambda m, n=name: f"{n}: {m}")


BWD_IMPLS = ["native"] + (["triton"] if HAS_TRITON_BWD else []) + (["cuda"] if HAS_CUDA else [])
needs_bwd = pytest.mark.skipif(not HAS_BWD, reason="norm_gated::bwd does not exist yet")


@needs_bwd
@pytest.mark.parametrize("impl", BWD_IMPLS)
@pytest.mark.parametrize("shape,gs", [((0, 32), 8), ((5, 1), None), ((4, 16), 1), ((3, 97), None),
                                      ((6, 512), 2), ((2, 3, 48), 12)], ids=str)
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, False)], ids=["layer-before", "rms-after"])
def test_backward_edge_shapes(impl, shape, gs, rms, nbg):
    shape = sized_for(impl, shape, gs)
    x, w, b, z = make_problem(shape, torch.float64, DEVICE[impl])
    dy = torch.randn(shape, dtype=torch.float64, device=DEVICE[impl])
    saved = _clones(x, w, b, z, dy)
    got = _grads(impl, x, w, b, z, dy, gs, nbg, rms)
    _assert_untouched(saved, x, w, b, z, dy)
    _assert_grads_close(got, _reference_grads(x, w, b, z, dy, gs, nbg, rms), 1e-9)


@needs_bwd
@pytest.mark.parametrize("impl", BWD_IMPLS)
@pytest.mark.parametrize("kind", ["transposed", "row-strided", "z-other-strides", "expanded-weight-bias"])
def test_backward_strides(impl, kind):
    x, w, b, z, gs = _strided_problem(kind, DEVICE[impl], torch.float64)
    dy = torch.randn(x.shape, dtype=torch.float64, device=DEVICE[impl]).T.contiguous().T
    got = _grads(impl, x, w, b, z, dy, gs, False, False)
    _assert_grads_close(got, _reference_grads(x, w, b, z, dy, gs, False, False), 1e-9)


@needs_bwd
@pytest.mark.skipif(not HAS_TRITON_BWD, reason="no Triton backward yet")
@pytest.mark.parametrize("rms,nbg", [(False, True), (True, False)], ids=["layer-before", "rms-after"])
def test_backward_wide_kernel(small_wide_blocks, rms, nbg):
    x, w, b, z = make_problem((3, 160), torch.float64, TRITON_DEVICE, offset=3.0)
    dy = torch.randn(3, 160, dtype=torch.float64, device=TRITON_DEVICE)
    got = _grads("triton", x, w, b, z, dy, 80, nbg, rms)
    _assert_grads_close(got, _reference_grads(x, w, b, z, dy, 80, nbg, rms), 1e-9)


@needs_bwd
@pytest.mark.parametrize("impl", BWD_IMPLS)
def test_backward_deterministic(impl):
    shape = (300, 128) if impl != "triton" or TRITON_DEVICE != "cpu" else (40, 128)
    x, w, b, z = make_problem(shape, torch.bfloat16, DEVICE[impl], weight_dtype=torch.float32)
    dy = torch.randn(shape, device=DEVICE[impl]).to(torch.bfloat16)
    first = _grads(impl, x, w, b, z, dy, 32, False, False)
    for _ in range(2):
        again = _grads(impl, x, w, b, z, dy, 32, False, False)
        for a, c in zip(first, again, strict=True):
            assert torch.equal(a, c)


# ---------------------------------------------------------------- CUDA: streams, graphs, threads, devices

@pytest.mark.cuda
@pytest.mark.parametrize("n", [256, 16384], ids=["fused", "wide"])
def test_cuda_non_default_stream(n):
    """The kernel runs on the current (side) stream: it sees a copy queued on that stream behind a long sleep."""
    x, w, b, z = make_problem((64, n), torch.float32, "cuda")
    torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, None, True, False, "silu")  # compile outside the timed part
    new = torch.randn_like(x)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert torch.cuda.current_stream() == s
        torch.cuda._sleep(200_000_000)  # ~0.1 s on s: a kernel on the default stream would read the old x
        x.copy_(new)
        out, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, None, True, False, "silu")
        assert not s.query()  # still sleeping: the op did not synchronize
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    assert_matches_reference((out, mean, rstd), new, w, b, z, 1e-6, None, True, False, "silu")


@pytest.mark.cuda
@pytest.mark.parametrize("n,gs,rms", [(256, 64, True), (16384, None, False)], ids=["fused", "wide"])
def test_cuda_graph_capture(n, gs, rms):
    static_x, w, b, z = make_problem((32, n), torch.bfloat16, "cuda", weight_dtype=torch.float32)
    warm_up_on_side_stream(lambda: torch.ops.norm_gated.fwd(static_x, w, b, z, 1e-6, gs, False, rms, "silu"), 2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = torch.ops.norm_gated.fwd(static_x, w, b, z, 1e-6, gs, False, rms, "silu")
    for _ in range(3):
        new = torch.randn_like(static_x)
        static_x.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        assert_matches_reference(result, new, w, b, z, 1e-6, gs, False, rms, "silu")


@pytest.mark.cuda
def test_cuda_threads():
    """Eight Python threads call the op at once (first calls compile concurrently), each on its own inputs."""
    nthreads, iters = 8, 20
    configs = [((16 + i, 64 * (i + 1)), 32 * (1 + i % 2), bool(i % 2), bool(i % 3), ("silu", "sigmoid")[i % 2])
               for i in range(nthreads)]
    problems = [make_problem(shape, (torch.float32, torch.bfloat16)[i % 2], "cuda")
                for i, (shape, *_rest) in enumerate(configs)]
    results = [[] for _ in range(nthreads)]
    errors = []
    barrier = threading.Barrier(nthreads)

    def worker(i):
        try:
            x, w, b, z = problems[i]
            _, gs, rms, nbg, act = configs[i]
            barrier.wait()
            for _ in range(iters):
                results[i].append(torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, gs, nbg, rms, act))
            torch.cuda.synchronize()
        except Exception as e:  # reported below
            errors.append((i, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(nthreads):
        x, w, b, z = problems[i]
        _, gs, rms, nbg, act = configs[i]
        assert len(results[i]) == iters
        assert_matches_reference(results[i][0], x, w, b, z, 1e-6, gs, nbg, rms, act)
        for r in results[i][1:]:
            assert all(torch.equal(a, c) for a, c in zip(r, results[i][0], strict=True))


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("n", [256, 16384], ids=["fused", "wide"])
def test_cuda_second_device(n):
    """Tensors on cuda:1 while the current device is cuda:0: the kernel launches on cuda:1."""
    x, w, b, z = make_problem((16, n), torch.float32, "cuda:1")
    with torch.cuda.device(0):
        out, mean, rstd = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, None, True, False, "silu")
        assert torch.cuda.current_device() == 0
    torch.cuda.synchronize(1)
    assert out.device == torch.device("cuda:1") and rstd.device == torch.device("cuda:1")
    assert_matches_reference((out, mean, rstd), x, w, b, z, 1e-6, None, True, False, "silu")
    out2 = triton_forward.norm_gated_fwd_triton(x, w, b, z, 1e-6, None, True, False, "silu")[0]
    torch.cuda.synchronize(1)
    assert torch.equal(out, out2)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_second_device_public_api_backward_and_cached_launches():
    """The same problem on cuda:0 and cuda:1, called repeatedly from cuda:0 (the launcher caches compiled
    kernels per device): every call right, forward and backward, on its own device."""
    first = make_problem((64, 5120), torch.bfloat16, "cuda:0", has_bias=False)
    problems = {"cuda:0": first, "cuda:1": tuple(None if t is None else t.to("cuda:1") for t in first)}
    results = {}
    with torch.cuda.device(0):
        for _ in range(3):
            for device, (x, w, _, z) in problems.items():
                leaves = [t.clone().requires_grad_() for t in (x, w, z)]
                out = custom_norm.rmsnorm_fn(leaves[0], leaves[1], None, leaves[2], 1e-6, None, False)
                grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
                assert out.device == torch.device(device) and all(g.device == out.device for g in grads)
                results.setdefault(device, []).append((out.detach(), *grads))
    for device, (x, w, _, z) in problems.items():
        torch.cuda.synchronize(device)
        assert_matches_reference((results[device][0][0], *torch.ops.norm_gated.fwd(x, w, None, z, 1e-6, None, False,
                                                                                   True, "silu")[1:]),
                                 x, w, None, z, 1e-6, None, False, True, "silu")
        for later in results[device][1:]:
            assert all(torch.equal(a, c) for a, c in zip(later, results[device][0], strict=True))
    assert torch.equal(results["cuda:0"][0][0].cpu(), results["cuda:1"][0][0].cpu())


@pytest.mark.cuda
def test_cuda_float64_eps_precision():
    """float64 math must use eps in float64: here var ~ eps, so eps rounded to float32 shows in rstd."""
    x, w, b, z = make_problem((8, 64), torch.float64, "cuda", scale=1e-3)
    x[3] = 0
    check("cuda", x, w, b, z, eps=1e-6)


# ---------------------------------------------------------------- bad input: compile, export, CUDA

def _eager_error(args, kwargs, exc):
    with pytest.raises(exc) as info:
        torch.ops.norm_gated.fwd(*args, **kwargs)
    return info.value


def _saved_inputs(args):
    return [(a, a.clone()) for a in args if isinstance(a, torch.Tensor) and a.device.type != "meta"]


def _assert_inputs_untouched(saved):
    for a, before in saved:
        assert torch.equal(a, before)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_compile_fullgraph(case, dynamic):
    """Under torch.compile(fullgraph=True) the fake kernel's error surfaces, type and message intact.

    Dynamo reports errors raised during fake-tensor propagation as ``torch._dynamo.exc.TorchRuntimeError``
    whose message embeds the original exception's repr (``got ValueError("z must have ...")``).
    """
    args, kwargs, exc, word = _bad_inputs()[case]
    eager = _eager_error(args, kwargs, exc)
    saved = _saved_inputs(args)
    torch._dynamo.reset()

    def f(*tensors):
        return torch.ops.norm_gated.fwd(*tensors, **kwargs)

    with pytest.raises(Exception) as info:
        torch.compile(f, backend="eager", fullgraph=True, dynamic=dynamic)(*args)
    err = info.value
    assert word in str(eager)
    if isinstance(err, exc):
        assert str(err) == str(eager)
    else:
        assert f"{exc.__name__}(" in str(err) and word in str(err), str(err)
        if not dynamic:  # with dynamic shapes sizes print as symbols
            assert repr(eager) in str(err) or repr(exc(str(eager))) in str(err), str(err)
    _assert_inputs_untouched(saved)


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_export(case):
    """torch.export traces with the fake kernel: the same ValueError/TypeError, with the same message."""
    args, kwargs, exc, word = _bad_inputs()[case]
    eager = _eager_error(args, kwargs, exc)
    saved = _saved_inputs(args)

    class M(torch.nn.Module):
        def forward(self, *tensors):
            return torch.ops.norm_gated.fwd(*tensors, **kwargs)

    with pytest.raises(exc) as info:
        torch.export.export(M(), tuple(args))
    assert word in str(info.value)
    assert str(info.value) == str(eager)
    _assert_inputs_untouched(saved)


@pytest.mark.parametrize("api", ["rmsnorm_fn", "module"])
def test_bad_input_compile_public_api_raises_value_error(api):
    import custom_norm

    x, z = torch.randn(4, 32), torch.randn(4, 32)
    if api == "rmsnorm_fn":
        def f(x, z):
            return custom_norm.rmsnorm_fn(x, torch.ones(32), None, z, group_size=5)
    else:
        m = custom_norm.RMSNormGated(32, group_size=5)

        def f(x, z):
            return m(x, z)
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="group_size"):
        torch.compile(f, backend="eager")(x, z)


def _cuda_bad_inputs():
    cases = []
    for args, kwargs, exc, word in _bad_inputs():
        moved = tuple(a.to("cuda") if isinstance(a, torch.Tensor) and a.device.type == "cpu" else a for a in args)
        cases.append((moved, kwargs, exc, word))
    x, w, z = torch.randn(4, 32, device="cuda"), torch.randn(32), torch.randn(4, 32)
    cases += [((x, w, None, None), {}, ValueError, "weight"),
              ((x, None, w, None), {}, ValueError, "bias"),
              ((x, None, None, z), {}, ValueError, "z"),
              ((x.cpu(), w.cuda(), None, None), {}, ValueError, "weight"),
              ((x.cpu(), None, None, z.cuda()), {}, ValueError, "z")]
    return cases


@pytest.mark.cuda
def test_bad_input_cuda():
    """Bad CUDA inputs raise before any launch: no CUDA error afterwards, the user's tensors unchanged."""
    for args, kwargs, exc, word in _cuda_bad_inputs():
        saved = _saved_inputs(args)
        with pytest.raises(exc, match=word):
            torch.ops.norm_gated.fwd(*args, **kwargs)
        if args[0].is_cuda:
            with pytest.raises(exc, match=word):
                triton_forward.norm_gated_fwd_triton(*args, **kwargs)
        torch.cuda.synchronize()
        _assert_inputs_untouched(saved)
