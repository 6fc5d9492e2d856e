"""custom_norm.swap_gated_norms on tiny random-initialised transformers models of every gated-norm family.

Each family's model is built locally from a small config (2 layers, hidden size 64, vocabulary 100; hybrids
put a gated-norm layer first), its gated-norm weights randomised, then swapped. Checked: the logits in
float32 (eager, ``torch.compile(fullgraph=True)``, ``torch.export``), the state-dict keys, the weight
Parameters, each module against its original in float32 and bfloat16, and that a wrong swap would show.
"""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import custom_norm  # noqa: E402
from custom_norm.integrations.transformers import GATED_NORM_CLASSES, TransformersRMSNormGated  # noqa: E402

VERSION = transformers.__version__
H, VOCAB = 64, 100
OP = torch.ops.norm_gated.fwd.default

_COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               initializer_range=0.2)
_ATTN = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
# Mamba2 mixers: 8 heads of 16 (intermediate 128) in 2 groups, so the group size (64) matters.
_MAMBA = dict(mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=4)
_LINEAR = dict(head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
               linear_num_value_heads=4)
_MOE = dict(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
_HYBRID = dict(layer_types=["linear_attention", "full_attention"])
_MLA = dict(num_attention_heads=4, num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=32,
            num_experts_per_tok=2, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)

# family (transformers.models.<family>) -> (config class, model class, config arguments)
FAMILIES = {
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(_COMMON, num_heads=8, head_dim=16, state_size=8, n_groups=2, chunk_size=4)),
    "bamba": ("BambaConfig", "BambaForCausalLM", dict(_COMMON, **_ATTN, **_MAMBA, attn_layer_indices=[1])),
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM",
                   dict(_COMMON, **_ATTN, head_dim=16, layers_block_type=["linear_attention", "full_attention"],
                        mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=8, chunk_size=4)),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM",
                  dict(_COMMON, **_ATTN, **_MAMBA, mamba_d_ssm=128, mamba_rms_norm=True)),
    "zamba2": ("Zamba2Config", "Zamba2ForCausalLM",
               dict(_COMMON, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                    layers_block_type=["mamba", "hybrid"], n_mamba_heads=8, mamba_ngroups=2, mamba_d_state=8,
                    chunk_size=4, adapter_rank=4)),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM",
                         dict(_COMMON, **_ATTN, **_MAMBA, layer_types=["mamba", "attention"], num_local_experts=4,
                              num_experts_per_tok=2, shared_intermediate_size=32)),
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", dict(_COMMON, **_ATTN, **_LINEAR, **_MOE, **_HYBRID)),
    "qwen3_5": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", dict(_COMMON, **_ATTN, **_LINEAR, **_HYBRID)),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM",
                    dict(_COMMON, **_ATTN, **_LINEAR, **_MOE, **_HYBRID)),
    "kimi_linear": ("KimiLinearConfig", "KimiLinearForCausalLM",
                    dict(_COMMON, **_MLA, num_local_experts=4, linear_head_dim=16, linear_num_heads=4, **_HYBRID)),
    "olmo_hybrid": ("OlmoHybridConfig", "OlmoHybridForCausalLM",
                    dict(_COMMON, **_ATTN, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                         linear_value_head_dim=16, **_HYBRID)),
    # Families beyond the ones named in the issue that have the same kind of gated norm.
    "lara_mini": ("LaraMiniConfig", "LaraMiniForCausalLM", dict(_COMMON, **_ATTN, **_LINEAR, **_MOE)),
    "bailing_hybrid": ("BailingHybridConfig", "BailingHybridForCausalLM",
                       dict(_COMMON, **_MLA, num_local_experts=4, n_group=1, topk_group=1, head_dim=16,
                            first_k_dense_replace=1, num_mtp_layers=0, **_HYBRID)),
    "glm5_next": ("Glm5NextTextConfig", "Glm5NextTextModel",
                  dict(_COMMON, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                       moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, kv_lora_rank=16,
                       q_lora_rank=16, qk_rope_head_dim=0, qk_nope_head_dim=16, v_head_dim=16, linear_head_dim=16,
                       linear_num_heads=4, index_topk=8, index_head_dim=16, index_n_heads=2, hc_mult=2,
                       hc_sinkhorn_iters=2, index_kpool=2, **_HYBRID)),
    # Qwen4-Exp with linear-attention layers only: its indexed attention selects tokens with torch.nonzero in a
    # Python loop, which neither compiles with fullgraph=True nor exports (unrelated to the gated norm).
    "qwen4_exp": ("Qwen4ExpTextConfig", "Qwen4ExpForCausalLM",
                  dict(_COMMON, **_ATTN, **_LINEAR, **_MOE, layer_types=["linear_attention"] * 2, hc_count=2,
                       hc_lowrank=8, ngram_size=2, heads_per_ngram=2, ngram_vocab_size_base=64,
                       make_ngram_vocab_size_divisible_by=8, split_ngram_parts=2)),
}


def _is_original(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__.startswith("transformers.") and cls.__name__ in GATED_NORM_CLASSES


def _run(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=False)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@dataclass
class Case:
    family: str
    model: nn.Module
    ids: torch.Tensor
    ref: torch.Tensor  # float32 logits before the swap
    keys: list[str]  # state-dict keys before the swap
    originals: dict[str, nn.Module]  # qualified name -> the original module object (now out of the model)
    copies: dict[str, nn.Module]  # qualified name -> a deep copy of it, for module-level comparisons
    count: int  # what swap_gated_norms returned


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request) -> Case:
    family = request.param
    config_name, model_name, kwargs = FAMILIES[family]
    try:
        importlib.import_module(f"transformers.models.{family}")
    except ImportError:
        pytest.skip(f"transformers {VERSION} has no {family} model")
    config_cls, model_cls = getattr(transformers, config_name, None), getattr(transformers, model_name, None)
    if config_cls is None or model_cls is None:
        pytest.skip(f"transformers {VERSION} has no {config_name}/{model_name}")
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs)).eval()
    originals = {name: m for name, m in model.named_modules() if _is_original(m)}
    assert originals, f"the tiny {family} config has no gated-norm layer"
    with torch.no_grad():
        for m in originals.values():  # weights of ones would hide a missing or misplaced weight
            m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape))
    copies = {name: copy.deepcopy(m) for name, m in originals.items()}
    ids = torch.randint(3, VOCAB, (2, 8))
    keys = list(model.state_dict().keys())
    with torch.no_grad():
        ref = _run(model, ids)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="swap_gated_norms")
        count = custom_norm.swap_gated_norms(model)
    return Case(family, model, ids, ref, keys, originals, copies, count)


def test_swap_keeps_logits_keys_and_parameters(case):
    model = case.model
    assert case.count == len(case.originals) > 0
    assert not [name for name, m in model.named_modules() if _is_original(m)]
    assert list(model.state_dict().keys()) == case.keys
    for name, old in case.originals.items():
        new = model.get_submodule(name)
        assert isinstance(new, TransformersRMSNormGated) and isinstance(new, custom_norm.RMSNormGated)
        assert new.weight is old.weight  # the same Parameter: values, dtype, device
        assert new.eps == new.variance_epsilon == old.variance_epsilon
        assert new.bias is None and not new.round_before_weight
        group_size = getattr(old, "group_size", None)
        if hasattr(old, "n_groups"):
            group_size = old.weight.shape[0] // old.n_groups
        assert new.group_size == (None if group_size == old.weight.shape[0] else group_size)
        assert new.activation == getattr(old, "activation", "silu")
        # Falcon-H1 says; otherwise the classes with an `activation` attribute (Qwen3-Next, Kimi styles) gate last
        assert new.norm_before_gate == getattr(old, "norm_before_gate", hasattr(old, "activation"))
    with torch.no_grad():
        out = _run(model, case.ids)
    torch.testing.assert_close(out, case.ref, rtol=1e-5, atol=1e-5)


def test_a_wrong_swap_would_show(case):
    """Negative control: the logits depend on the gated norm enough that a swap with the norm/gate order wrong
    fails the tolerance above by far (activation and group mistakes are caught per module below)."""
    swapped = [case.model.get_submodule(name) for name in case.originals]
    try:
        for m in swapped:
            m.norm_before_gate = not m.norm_before_gate
        with torch.no_grad():
            out = _run(case.model, case.ids)
    finally:
        for m in swapped:
            m.norm_before_gate = not m.norm_before_gate
    assert (out - case.ref).abs().max() > 0.05  # logits of size ~5, compared with atol=1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("exact_rounding", [False, True], ids=["fused", "exact-rounding"])
def test_module_matches_original(case, dtype, exact_rounding):
    """Each swapped module against its original on random (batch, seq, N) and (rows, N) input."""
    gen = torch.Generator().manual_seed(1)
    for name, original in case.copies.items():
        orders = [True, False] if hasattr(original, "norm_before_gate") else [None]  # Falcon-H1: both
        for order in orders:
            old = copy.deepcopy(original).to(dtype)
            if order is not None:
                old.norm_before_gate = order
            holder = nn.ModuleDict({"norm": old})
            assert custom_norm.swap_gated_norms(holder, exact_rounding=exact_rounding) == 1, name
            new = holder["norm"]
            n = old.weight.shape[0]
            for shape in [(2, 5, n), (3, n)]:
                x = torch.randn(shape, generator=gen).to(dtype)
                z = torch.randn(shape, generator=gen).to(dtype)
                with torch.no_grad():
                    want = old(x, z)
                    got, got_kw = new(x, z), new(x, gate=z)
                assert got.dtype == want.dtype and got.shape == want.shape
                assert torch.equal(got, got_kw)
                if dtype == torch.float32:
                    tol = dict(rtol=1e-5, atol=1e-5)
                elif exact_rounding:  # same rounding steps: only float32 summation order may differ
                    tol = dict(rtol=8e-3, atol=1e-5)
                else:  # one rounding fewer than the eager class: within a couple of bfloat16 ulps
                    tol = dict(rtol=1.6e-2, atol=1.6e-2)
                torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f"{name}: {m}")
                if exact_rounding and dtype != torch.float32:  # same rounding steps: nearly all bit-identical
                    assert (got != want).float().mean() < 0.02, name


@pytest.mark.parametrize("exact_rounding", [False, True], ids=["fused", "exact-rounding"])
def test_module_gradients_match_original(case, exact_rounding):
    """Training through a swapped module: the gradients of x, the gate and the weight match the original's."""
    gen = torch.Generator().manual_seed(2)
    for name, original in case.copies.items():
        old = copy.deepcopy(original)
        holder = nn.ModuleDict({"norm": copy.deepcopy(original)})
        assert custom_norm.swap_gated_norms(holder, exact_rounding=exact_rounding) == 1, name
        new = holder["norm"]
        shape = (2, 5, old.weight.shape[0])
        x, z, dy = (torch.randn(shape, generator=gen) for _ in range(3))
        grads = []
        for module in (old, new):
            xi, zi = x.clone().requires_grad_(), z.clone().requires_grad_()
            module(xi, zi).backward(dy)
            grads.append((xi.grad, zi.grad, module.weight.grad))
        for got, want, what in zip(grads[1], grads[0], ("x", "gate", "weight"), strict=True):
            label = f"{name} d{what}"
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, label=label: f"{label}: {m}")


def test_compile_fullgraph(case):
    torch.compiler.reset()  # fifteen models through the same transformers helpers would hit the recompile limit
    compiled = torch.compile(case.model, fullgraph=True, backend="eager")
    with torch.no_grad():
        out = _run(compiled, case.ids)
    torch.testing.assert_close(out, case.ref, rtol=1e-5, atol=1e-5)


def test_export_keeps_the_op(case):
    with torch.no_grad():
        ep = torch.export.export(case.model, (), {"input_ids": case.ids, "use_cache": False})
    assert sum(node.target is OP for node in ep.graph.nodes) == case.count
    with torch.no_grad():
        out = _run(ep.module(), case.ids)
    torch.testing.assert_close(out, case.ref, rtol=1e-5, atol=1e-5)


# ---- behaviour of swap_gated_norms itself, on single modules ----------------------------------------------

def _qwen3_next_norm(n: int = 32) -> nn.Module:
    module = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    norm = module.Qwen3NextRMSNormGated(n, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(n))
    return norm


def test_shared_module_stays_shared():
    norm = _qwen3_next_norm()
    holder = nn.ModuleDict({"a": norm, "b": nn.Sequential(norm)})
    assert custom_norm.swap_gated_norms(holder) == 1
    assert holder["a"] is holder["b"][0] and isinstance(holder["a"], TransformersRMSNormGated)


def test_hooked_module_is_left_alone():
    norm = _qwen3_next_norm()
    norm.register_forward_hook(lambda *args: None)
    holder = nn.ModuleDict({"norm": norm})
    with pytest.warns(UserWarning, match="hooks"):
        assert custom_norm.swap_gated_norms(holder) == 0
    assert holder["norm"] is norm


def test_changed_semantics_are_caught_by_verification():
    """A class known by name whose forward does something else is kept, with a warning (unless verify=False)."""

    class Qwen3NextRMSNormGated(nn.Module):  # the known name, but the gate is applied before the norm
        __module__ = "transformers.models.fake.modeling_fake"

        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(1 + 0.5 * torch.randn(n))
            self.variance_epsilon = 1e-6
            self.activation = "silu"

        def forward(self, hidden_states, gate):
            h = hidden_states * nn.functional.silu(gate)
            return self.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    holder = nn.ModuleDict({"norm": Qwen3NextRMSNormGated(32)})
    with pytest.warns(UserWarning, match="outputs differ"):
        assert custom_norm.swap_gated_norms(holder) == 0
    assert isinstance(holder["norm"], Qwen3NextRMSNormGated)
    assert custom_norm.swap_gated_norms(holder, verify=False) == 1


def test_unknown_gated_norm_class_warns():
    class SomeFutureRMSNormGated(nn.Module):
        __module__ = "transformers.models.future.modeling_future"

    holder = nn.ModuleDict({"norm": SomeFutureRMSNormGated()})
    with pytest.warns(UserWarning, match="does not know"):
        assert custom_norm.swap_gated_norms(holder) == 0


def test_unsupported_activation_is_left_alone():
    norm = _qwen3_next_norm()
    norm.activation = "gelu"
    with pytest.warns(UserWarning, match="activation 'gelu'"):
        assert custom_norm.swap_gated_norms(nn.ModuleDict({"norm": norm})) == 0


def test_aliases():
    assert custom_norm.LayerNorm is custom_norm.LayerNormGated
    assert custom_norm.RMSNorm is custom_norm.RMSNormGated
    norm = custom_norm.RMSNormGated(16, eps=1e-5, activation="sigmoid")
    assert norm.activation == "sigmoid" and list(norm.state_dict()) == ["weight"]
    assert list(custom_norm.LayerNorm(16).state_dict()) == ["weight", "bias"]


def test_import_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import torch, custom_norm\n"
            "assert custom_norm.swap_gated_norms(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0\n")
    subprocess.run([sys.executable, "-c", code], check=True)
