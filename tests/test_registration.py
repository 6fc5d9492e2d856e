"""The op's schema, opcheck over sample inputs per device, validation errors, and the public API."""

import pytest
import torch
from conftest import DEVICES
from expecttest import assert_expected_inline
from utils import make_problem

import custom_norm


def test_schema():
    assert_expected_inline(
        str(torch.ops.norm_gated.fwd.default._schema),
        """norm_gated::fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? z, float eps=9.9999999999999995e-07, SymInt? group_size=None, bool norm_before_gate=True, bool is_rms_norm=False, str activation="silu") -> (Tensor, Tensor, Tensor)""",  # noqa: E501
    )


def sample_inputs(device, requires_grad=False):
    """(args, kwargs) samples covering the flag matrix, for opcheck."""
    samples = []
    for dtype in (torch.float32, torch.bfloat16):
        for has_z, nbg, act in ((True, True, "silu"), (True, False, "sigmoid"), (False, True, "silu")):
            for rms in (False, True):
                x, w, b, z = make_problem((4, 3, 32), dtype, device, has_z=has_z, has_bias=not rms)
                tensors = [x, w, b, z]
                if requires_grad:
                    for t in tensors:
                        if t is not None:
                            t.requires_grad_(True)
                samples.append((tuple(tensors), dict(eps=1e-5, group_size=8, norm_before_gate=nbg,
                                                     is_rms_norm=rms, activation=act)))
    x, w, b, z = make_problem((0, 16), torch.float32, device)
    samples.append(((x, w, b, z), {}))
    x, w, b, z = make_problem((5, 24), torch.float64, device)
    samples.append(((x, None, None, z), dict(group_size=12)))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args, kwargs in sample_inputs(device):
        torch.library.opcheck(torch.ops.norm_gated.fwd.default, args, kwargs)


def _bad_inputs():
    x = torch.randn(4, 32)
    w = torch.randn(32)
    z = torch.randn(4, 32)
    return [
        # (args, kwargs, exception, words the message must contain)
        ((x, w, None, torch.randn(4, 16)), {}, ValueError, "z"),
        ((x, torch.randn(16), None, z), {}, ValueError, "weight"),
        ((x, torch.randn(4, 32), None, z), {}, ValueError, "weight"),
        ((x, w, torch.randn(31), z), {}, ValueError, "bias"),
        ((x, w, None, z), dict(group_size=0), ValueError, "group_size"),
        ((x, w, None, z), dict(group_size=-8), ValueError, "group_size"),
        ((x, w, None, z), dict(group_size=5), ValueError, "group_size"),
        ((x.to(torch.int32), w, None, None), {}, TypeError, "x"),
        ((x.bool(), w, None, None), {}, TypeError, "x"),
        ((x, w.to(torch.int64), None, None), {}, TypeError, "weight"),
        ((x, w, None, z.to(torch.int8)), {}, TypeError, "z"),
        ((torch.tensor(1.0), None, None, None), {}, ValueError, "x"),
        ((x, w, None, z), dict(activation="relu"), ValueError, "activation"),
        ((x, w, None, z), dict(eps=-1.0), ValueError, "eps"),
        ((x, w.to("meta"), None, None), {}, ValueError, "weight"),
        ((x, None, None, z.to("meta")), {}, ValueError, "z"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_eager(case):
    args, kwargs, exc, word = _bad_inputs()[case]
    with pytest.raises(exc, match=word):
        torch.ops.norm_gated.fwd(*args, **kwargs)


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_fake(case):
    """The fake kernel raises the same errors (what torch.compile and torch.export see)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args, kwargs, exc, word = _bad_inputs()[case]
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) and a.device.type != "meta" else a
                     for a in args]
        with pytest.raises(exc, match=word):
            torch.ops.norm_gated.fwd(*fake_args, **kwargs)


def test_bad_input_compiled():
    def f(x, w, z):
        return custom_norm.rmsnorm_fn(x, w, None, z, group_size=5)

    with pytest.raises(Exception, match="group_size"):
        torch.compile(f, backend="eager", fullgraph=True)(torch.randn(4, 32), torch.randn(32), torch.randn(4, 32))


def test_functional_api_matches_op():
    x, w, b, z = make_problem((6, 32), torch.float32)
    out, _, _ = torch.ops.norm_gated.fwd(x, w, b, z, 1e-6, 8, False, False, "sigmoid")
    torch.testing.assert_close(custom_norm.layernorm_fn(x, w, b, z, 1e-6, 8, False, False, "sigmoid"), out)
    out, _, _ = torch.ops.norm_gated.fwd(x, w, None, z, 1e-6, 8, True, True, "silu")
    torch.testing.assert_close(custom_norm.rmsnorm_fn(x, w, None, z, 1e-6, 8, True, "silu"), out)
    swish, _, _ = torch.ops.norm_gated.fwd(x, w, None, z, 1e-6, 8, True, True, "swish")
    torch.testing.assert_close(swish, out, rtol=0, atol=0)


@pytest.mark.parametrize("cls,has_bias", [(custom_norm.LayerNormGated, True), (custom_norm.RMSNormGated, False)])
def test_modules(cls, has_bias):
    m = cls(64, eps=1e-5, group_size=16, norm_before_gate=False, dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and torch.equal(m.weight, torch.ones(64, dtype=torch.float64))
    assert (m.bias is not None) == has_bias
    assert set(m.state_dict()) == ({"weight", "bias"} if has_bias else {"weight"})
    with torch.no_grad():
        m.weight.normal_()
        if has_bias:
            m.bias.normal_()
    x, _, _, z = make_problem((3, 5, 64), torch.float64)
    expected = custom_norm.norm_gated_reference(x, m.weight, m.bias, z, 1e-5, 16, False, not has_bias)[0]
    torch.testing.assert_close(m(x, z), expected)
    ungated = custom_norm.norm_gated_reference(x, m.weight, m.bias, None, 1e-5, 16, False, not has_bias)[0]
    torch.testing.assert_close(m(x), ungated)
    clone = cls(64, group_size=16, norm_before_gate=False, dtype=torch.float64)
    clone.load_state_dict(m.state_dict())
    torch.testing.assert_close(clone(x, z), m(x, z))
