"""norm_gated::fwd_out and layer_norm_fwd(..., out=): writing into a preallocated tensor (issue 7).

Every call writes into an ``out`` poisoned with NaN, so an element left unwritten shows. Non-contiguous
``out`` views are cut from a larger NaN-filled base, and the base's elements outside the view must stay NaN.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, TRITON_DEVICE
from expecttest import assert_expected_inline
from utils import GATE_IDS, GATES, assert_matches_reference, make_problem

import custom_norm
import custom_norm.kernels.forward as triton_forward
from custom_norm import layer_norm_fwd

NAN = float("nan")
BACKENDS = ["eager", "aot_eager", "inductor"]


def test_schema():
    assert_expected_inline(
        str(torch.ops.norm_gated.fwd_out.default._schema),
        """norm_gated::fwd_out(Tensor x, Tensor? weight, Tensor? bias, Tensor? z, Tensor(a4!) out, float eps=9.9999999999999995e-07, SymInt? group_size=None, bool norm_before_gate=True, bool is_rms_norm=False, str activation="silu") -> (Tensor, Tensor)""",  # noqa: E501
    )


def test_exported():
    assert "layer_norm_fwd" in custom_norm.__all__ and custom_norm.layer_norm_fwd is layer_norm_fwd


def _poisoned(x):
    return torch.full_like(x, NAN, memory_format=torch.contiguous_format)


def _run(impl, x, w, b, z, out, gs=None, nbg=True, rms=False, act="silu", eps=1e-6):
    """Write into ``out`` through ``impl``; return ``(out, mean, rstd)`` as the implementation returned them."""
    if impl == "triton":
        return triton_forward.norm_gated_fwd_triton(x, w, b, z, eps, gs, nbg, rms, act, out=out)
    if impl == "op":
        return out, *torch.ops.norm_gated.fwd_out(x, w, b, z, out, eps, gs, nbg, rms, act)
    return layer_norm_fwd(x, w, b, eps, z, out, gs, nbg, rms, act)


def _check(impl, x, w, b, z, gs, nbg, rms, act):
    inputs = [None if t is None else t.clone() for t in (x, w, b, z)]
    out = _poisoned(x)
    result = _run(impl, x, w, b, z, out, gs, nbg, rms, act)
    assert result[0] is out
    assert_matches_reference(result, x, w, b, z, 1e-6, gs, nbg, rms, act)
    for before, after in zip(inputs, (x, w, b, z), strict=True):
        if before is not None:
            assert torch.equal(before, after), "an input was modified"


SHAPES = [((7, 64), 16), ((2, 3, 48), 12), ((0, 32), None), ((5, 1), None), ((6, 33), 11), ((40,), 8)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["op", "api"])
@pytest.mark.parametrize("shape,group_size", SHAPES, ids=str)
@pytest.mark.parametrize("gate", GATES, ids=GATE_IDS)
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_matrix(device, impl, shape, group_size, gate, is_rms_norm, dtype):
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, dtype, device, has_z=has_z, has_bias=not is_rms_norm)
    _check(impl, x, w, b, z, group_size, nbg, is_rms_norm, act)


TRITON_CASES = [((5, 64), None), ((37, 100), None), ((3, 2, 48), 12), ((5, 80), None)]


@pytest.mark.parametrize("shape,group_size", TRITON_CASES, ids=str)
@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[4]], ids=[GATE_IDS[0], GATE_IDS[1], GATE_IDS[4]])
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton(shape, group_size, gate, is_rms_norm, dtype):
    has_z, nbg, act = gate
    x, w, b, z = make_problem(shape, dtype, TRITON_DEVICE, has_z=has_z)
    _check("triton", x, w, b, z, group_size, nbg, is_rms_norm, act)


def test_triton_wide_kernel(monkeypatch):
    monkeypatch.setattr(triton_forward, "MAX_FUSED_BLOCK", 32)
    monkeypatch.setattr(triton_forward, "WIDE_BLOCK", 32)
    monkeypatch.setattr(triton_forward, "SPLIT_BLOCK", 32)
    x, w, b, z = make_problem((3, 200), torch.float32, TRITON_DEVICE)
    _check("triton", x, w, b, z, None, False, False, "sigmoid")


def test_native_many_chunks(monkeypatch):
    import custom_norm.native as native

    monkeypatch.setattr(native, "CPU_CHUNK_ELEMENTS", 3 * 48)  # 3 rows a chunk, 13 rows: a partial last chunk
    x, w, b, z = make_problem((13, 48), torch.float32, "cpu")
    _check("op", x, w, b, z, 16, True, False, "silu")


# Views of shape (4, 6, 32) into a larger base: (base shape, view of it). "unmergeable" has strides that no
# (24, 32) view exists for, so the native path computes into a temporary and copies.
VIEWS = {
    "transposed": ((32, 4, 6), lambda t: t.permute(1, 2, 0)),
    "column-slice": ((4, 6, 50), lambda t: t[..., 5:37]),
    "unmergeable": ((6, 4, 32), lambda t: t.transpose(0, 1)),
    "every-other-row": ((4, 12, 32), lambda t: t[:, ::2]),
}


@pytest.mark.parametrize("impl", ["op", "api", "triton"])
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("is_rms_norm", [False, True], ids=["layer", "rms"])
def test_non_contiguous_out(impl, view, is_rms_norm):
    """Exactly the view's elements are written, with the values of a contiguous out."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    base_shape, cut = VIEWS[view]
    x, w, b, z = make_problem((4, 6, 32), torch.float32, device)
    base = torch.full(base_shape, NAN, device=device)
    out = cut(base)
    assert out.shape == x.shape and not out.is_contiguous()
    outside = torch.ones(base_shape, dtype=torch.bool, device=device)
    cut(outside).fill_(False)
    result = _run(impl, x, w, b, z, out, 8, True, is_rms_norm, "silu")
    assert result[0] is out
    expected = _run(impl, x, w, b, z, _poisoned(x), 8, True, is_rms_norm, "silu")
    torch.testing.assert_close(out, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(result[2], expected[2], rtol=0, atol=0)
    assert base[outside].isnan().all(), "an element outside out was written"


def _bad_outs(device="cpu"):
    x = torch.randn(4, 32, device=device)
    z = torch.randn(4, 32, device=device)
    buf = torch.randn(5, 32, device=device)
    return [
        # (x, z, out, exception, pattern the message must match; None: out is fine)
        (x, z, torch.zeros(4, 16, device=device), ValueError, "out must have x's shape"),
        (x, z, torch.zeros(32, 4, device=device), ValueError, "out must have x's shape"),
        (x, z, torch.zeros(4, 32, dtype=torch.float64, device=device), TypeError, "out must have x's dtype"),
        (x, z, torch.zeros(4, 32, dtype=torch.bfloat16, device=device), TypeError, "out must have x's dtype"),
        (x, z, torch.zeros(4, 32, device="meta"), ValueError, "out is on meta"),
        (x, z, torch.zeros(4, 1, device=device).expand(4, 32), ValueError, "out must not have elements that"),
        (x, z, x, ValueError, "out must not share memory with x"),
        (x, z, z, ValueError, "out must not share memory with z"),
        (buf[:4], None, buf[1:], ValueError, "out must not share memory with x"),
        (buf[1:], None, buf[:4], ValueError, "out must not share memory with x"),
        (x, buf[:4], buf[1:], ValueError, "out must not share memory with z"),
        (x, z, torch.zeros(32, 4, device=device).T, None, None),
        (buf[:2].reshape(4, 16), None, buf[3:].reshape(4, 16), None, None),  # one storage, disjoint rows
    ]


@pytest.mark.parametrize("impl", ["op", "api", "triton"])
@pytest.mark.parametrize("case", range(len(_bad_outs())))
def test_bad_out(impl, case):
    x, z, out, exc, pattern = _bad_outs(TRITON_DEVICE if impl == "triton" else "cpu")[case]
    if exc is None:
        _run(impl, x, None, None, z, out)
        torch.testing.assert_close(out, torch.ops.norm_gated.fwd(x, None, None, z)[0])
        return
    inputs = [None if t is None else t.clone() for t in (x, z, out)]
    with pytest.raises(exc, match=pattern):
        _run(impl, x, None, None, z, out)
    for before, after in zip(inputs, (x, z, out), strict=True):
        assert before is None or after.is_meta or torch.equal(before, after), "written before raising"


def test_out_not_a_tensor():
    """The dispatcher rejects it first, as it does any argument of the wrong type."""
    x = torch.randn(4, 32)
    with pytest.raises(RuntimeError, match="Expected a value of type 'Tensor' for argument 'out'"):
        layer_norm_fwd(x, None, None, 1e-6, out=[0.0] * 32)
    with pytest.raises(TypeError, match="out must be a Tensor"):
        triton_forward.norm_gated_fwd_triton(x.to(TRITON_DEVICE), None, None, None, out=[0.0] * 32)


@pytest.mark.parametrize("case", range(len(_bad_outs())))
def test_bad_out_fake(case):
    """The fake kernel raises the same errors (what torch.compile and torch.export see)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, z, out, exc, pattern = _bad_outs()[case]
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {id(t): mode.from_tensor(t) for t in (x, z, out) if t is not None and not t.is_meta}
        args = [fake.get(id(t), t) for t in (x, z, out)]
        if exc is None:
            torch.ops.norm_gated.fwd_out(args[0], None, None, args[1], args[2])
            return
        with pytest.raises(exc, match=pattern):
            torch.ops.norm_gated.fwd_out(args[0], None, None, args[1], args[2])


def test_bad_out_compiled():
    x, z = torch.randn(4, 32), torch.randn(4, 32)

    def f(x, z, out):
        return layer_norm_fwd(x, None, None, 1e-6, z, out)

    # checked in traced code, the error surfaces as itself; with fullgraph=True dynamo wraps it in Unsupported
    with pytest.raises(ValueError, match="out must have x's shape"):
        torch.compile(f, backend="eager")(x, z, torch.empty(4, 16))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="out must have x's shape"):
        torch.compile(f, backend="eager", fullgraph=True)(x, z, torch.empty(4, 16))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="out must not share memory with z"):
        torch.compile(f, backend="eager", fullgraph=True)(x, z, z)


def _opcheck_samples():
    samples = []
    for dtype in (torch.float32, torch.bfloat16):
        for has_z, nbg, act in ((True, True, "silu"), (True, False, "sigmoid"), (False, True, "silu")):
            for rms in (False, True):
                x, w, b, z = make_problem((4, 3, 32), dtype, has_z=has_z, has_bias=not rms)
                samples.append(((x, w, b, z, _poisoned(x)), dict(eps=1e-5, group_size=8, norm_before_gate=nbg,
                                                                 is_rms_norm=rms, activation=act)))
    x, w, b, z = make_problem((0, 16), torch.float32)
    samples.append(((x, w, b, z, _poisoned(x)), {}))
    x, w, b, z = make_problem((5, 24), torch.float64)
    samples.append(((x, None, None, z, torch.full((24, 5), NAN, dtype=torch.float64).T), dict(group_size=12)))
    return samples


def test_opcheck():
    for args, kwargs in _opcheck_samples():
        torch.library.opcheck(torch.ops.norm_gated.fwd_out.default, args, kwargs)


def _norm_into(x, w, z, out):
    _, _, rstd = layer_norm_fwd(x * 2.0, w, None, 1e-5, z, out, 8, False, True)
    return rstd + 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("view", ["contiguous", "column-slice"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile(backend, view, dynamic):
    x, w, _, z = make_problem((6, 32), torch.float32)
    base = torch.full((6, 32) if view == "contiguous" else (6, 50), NAN)
    out = base if view == "contiguous" else base[:, 5:37]
    expected_out = _poisoned(x)
    expected = _norm_into(x, w, z, expected_out)
    torch._dynamo.reset()
    compiled = torch.compile(_norm_into, backend=backend, fullgraph=True, dynamic=dynamic)
    torch.testing.assert_close(compiled(x, w, z, out), expected)
    torch.testing.assert_close(out, expected_out)
    if view == "column-slice":
        assert base[:, :5].isnan().all() and base[:, 37:].isnan().all()
    x2, w2, _, z2 = make_problem((9, 32), torch.float32)  # new sizes, new values: no stale graph
    out2 = torch.full((9, 32), NAN)
    compiled(x2, w2, z2, out2)
    expected2 = _poisoned(x2)
    _norm_into(x2, w2, z2, expected2)
    torch.testing.assert_close(out2, expected2)


def test_inductor_writes_in_place():
    """Inductor calls the op on the caller's tensor (no copy), as an opaque kernel: fwd_out has no
    decomposition, so its fallback is the implicit one, on CPU and CUDA alike."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    x, w, _, z = make_problem((6, 32), torch.float32)
    out = torch.full((6, 32), NAN)
    _, code = run_and_get_code(torch.compile(_norm_into, fullgraph=True), x, w, z, out)
    code = "\n".join(code)
    assert "torch.ops.norm_gated.fwd_out.default(" in code
    assert "copy_" not in code and not out.isnan().any()


class _IntoBuffer(torch.nn.Module):
    """Normalizes into a registered buffer and returns rstd."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("normed", torch.zeros(6, 32))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        _, _, rstd = layer_norm_fwd(x, None, None, 1e-5, z, out=self.normed, group_size=8)
        return rstd


def _call_targets(ep):
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]


def test_export_into_buffer(tmp_path):
    """export keeps the mutating op; run_decompositions makes it functional, the write a buffer mutation."""
    x, _, _, z = make_problem((6, 32), torch.float32)
    expected, _, expected_rstd = torch.ops.norm_gated.fwd(x, None, None, z, 1e-5, 8)
    with torch.no_grad():
        ep = torch.export.export(_IntoBuffer(), (x, z))
    assert _call_targets(ep).count("norm_gated.fwd_out.default") == 1
    decomposed = ep.run_decompositions()
    assert "auto_functionalized_v2" in _call_targets(decomposed)
    mutations = decomposed.graph_signature.buffers_to_mutate
    assert list(mutations.values()) == ["normed"]
    path = tmp_path / "into_buffer.pt2"
    torch.export.save(ep, path)
    for program in (ep, decomposed, torch.export.load(path)):
        module = program.module()
        torch.testing.assert_close(module(x, z), expected_rstd)
        torch.testing.assert_close(module.normed, expected, rtol=0, atol=0)


@pytest.mark.parametrize("requires_grad", ["x", "weight", "z", "out"])
def test_requires_grad_raises(requires_grad):
    x, w, b, z = make_problem((4, 32), torch.float32)
    out = _poisoned(x)
    {"x": x, "weight": w, "z": z, "out": out}[requires_grad].requires_grad_(True)
    with pytest.raises(RuntimeError, match="out= does not support autograd"):
        layer_norm_fwd(x, w, b, 1e-6, z, out)
    with pytest.raises(RuntimeError, match="out= does not support autograd"):
        torch.compile(layer_norm_fwd, backend="eager", fullgraph=True)(x, w, b, 1e-6, z, out)
    with torch.no_grad():
        layer_norm_fwd(x, w, b, 1e-6, z, out)
    assert not out.isnan().any()


def test_without_out_is_fwd():
    """out=None returns the op's new tensor, differentiable like layernorm_fn's."""
    x, w, b, z = make_problem((4, 32), torch.float32)
    x.requires_grad_(True)
    out, mean, rstd = layer_norm_fwd(x, w, b, 1e-6, z, None, 8, False, False, "sigmoid")
    expected = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, 8, False, False, "sigmoid")
    for got, want in zip((out, mean, rstd), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    out.sum().backward()
    assert x.grad is not None
