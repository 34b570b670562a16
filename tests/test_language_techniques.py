"""Techniques on transformer LMs: weight-only int8/int4 (torchao), bitsandbytes through
transformers, and pruning/SVD around an LM head tied to the token embeddings. Tiny models
built from a config (random weights, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmarks.harness.measure import artifact_size
from compress import Context, Unsupported, get
from compress.kernels import operators
from compress.prune.mlp import mlp_blocks

transformers = pytest.importorskip("transformers")
pytest.importorskip("torchao")

FAST = settings(max_examples=10, deadline=None, database=None)


def tiny_llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


class LMWrapper(nn.Module):
    """A transformers model inside a plain module, as MiniLM sits in its SentenceEncoder."""

    def __init__(self):
        super().__init__()
        self.lm = tiny_llama()

    def forward(self, ids):
        return self.lm(ids, use_cache=False).logits


def tokens(n: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(256, (2, n), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, use_cache=False).logits.float()


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_int8_weight_error_is_at_most_half_a_step_per_channel(seed):
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(64, 32))
    w = layer[0].weight.detach().clone()
    out = get("int8_weight").apply(layer)
    assert out.execution == "simulated"  # eager torchao: float matmul of the expanded weight
    assert "no integer kernel" in out.why_simulated
    x = torch.eye(64)  # the identity recovers the effective (dequantized) weight, transposed
    with torch.inference_mode():
        effective = (out.model(x) - out.model(torch.zeros(1, 64))).T
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((effective - w).abs() <= step / 2 + 1e-5).all()


@FAST
@given(seed=st.integers(0, 2**31 - 1), group=st.sampled_from([16, 32]))
def test_int4_asymmetric_groups_are_lossless_on_weights_already_on_their_grid(seed, group):
    """Weights already on a 16-level grid per group, with an integer zero point, come back
    unchanged from int4 asymmetric rounding with that group (not from a coarser one).

    torchao keeps zero points integer: a grid whose offset is an arbitrary float (GGUF Q4_1's
    `min`) is not reproduced exactly, so SmolLM2's int4_weight@32 is close to, not exactly,
    its reference."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.randint(16, (8, 64), generator=gen).float()
    levels[:, ::group] = 0  # every group spans the full 0..15 range,
    levels[:, 1::group] = 15  # so its scale and zero point are recovered exactly
    groups = levels.shape[1] // group
    scale = (torch.rand(8, groups, 1, generator=gen) + 0.5) / 64
    zero = torch.randint(1, 15, (8, groups, 1), generator=gen).float()  # the range holds 0
    w = (scale * (levels.view(8, groups, group) - zero)).view(8, 64)
    layer = nn.Sequential(nn.Linear(64, 8, bias=False))
    layer[0].weight.data = w.clone()
    out = get(f"int4_weight@{group}").apply(layer)
    with torch.inference_mode():
        effective = out.model(torch.eye(64)).T
    assert torch.allclose(effective, w, atol=1e-5, rtol=0)
    coarser = get(f"int4_weight@{2 * group}").apply(layer)
    with torch.inference_mode():
        assert not torch.allclose(coarser.model(torch.eye(64)).T, w, atol=1e-5, rtol=0)


def test_int4_weight_refuses_a_group_that_does_not_divide_the_inputs():
    with pytest.raises(Unsupported, match="not a multiple of the group size 32"):
        get("int4_weight@32").apply(nn.Sequential(nn.Linear(48, 4)))


def test_weight_only_keeps_an_llm_close_and_shrinks_it():
    model, ids = tiny_llama(), tokens()
    for name, bound in (("int8_weight", 0.02), ("int4_weight@32", 0.2), ("int4_bf16@32", 0.2),
                        ("int8_bf16", 0.05)):
        out = get(name).apply(model)
        assert rel_err(logits(out.model, ids), logits(model, ids)) < bound, name
        assert artifact_size(out.model).size_bytes < artifact_size(model).size_bytes, name


@FAST
@given(seed=st.integers(0, 2**31 - 1), group=st.sampled_from([32, 64]))
def test_int4_bf16_packs_weights_to_a_4_bit_grid_per_group_and_runs_the_int4_kernel(seed, group):
    """Each group's 16 levels span its own range (asymmetric): a packed weight is within half
    a step of the bf16 weight, and the matmul is torchao's int4 CPU kernel."""
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(128, 16, bias=False))
    w = layer[0].weight.detach().to(torch.bfloat16).float()
    out = get(f"int4_bf16@{group}").apply(layer)
    assert out.execution == "real" and out.input_dtype == torch.bfloat16
    with torch.inference_mode():
        effective = out.model(torch.eye(128, dtype=torch.bfloat16)).float().T
    grouped = w.view(16, -1, group)
    step = (grouped.amax(-1, keepdim=True) - grouped.amin(-1, keepdim=True)) / 15
    error = (effective.view(16, -1, group) - grouped).abs()
    # Half a step, plus bf16 rounding of the scale, zero point and output (8 bits of mantissa).
    assert (error <= step / 2 + grouped.abs().amax(-1, keepdim=True) / 64).all()
    ran = operators(out.model, torch.ones(1, 128, dtype=torch.bfloat16))
    assert ran["aten::_weight_int4pack_mm_for_cpu"] == 1


def test_int8_bf16_rounds_each_row_to_its_own_int8_grid_and_runs_the_int8_kernel():
    """255 levels per output channel (symmetric): an int8 weight is within half a step of the
    bf16 weight, and under torch.compile the matmul is Inductor's aten::_weight_int8pack_mm."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 16, bias=False))
    w = layer[0].weight.detach().to(torch.bfloat16).float()
    out = get("int8_bf16").apply(layer)
    assert out.execution == "real" and out.input_dtype == torch.bfloat16
    with torch.inference_mode():
        effective = out.model(torch.eye(64, dtype=torch.bfloat16)).float().T
    largest = w.abs().amax(1, keepdim=True)
    # Half a step, plus bf16 rounding of the scale and of the output (8 bits of mantissa).
    assert ((effective - w).abs() <= largest / 127 / 2 + largest / 64).all()
    ran = operators(out.model, torch.ones(3, 64, dtype=torch.bfloat16))
    assert ran["aten::_weight_int8pack_mm"]


def test_int4_bf16_refuses_a_group_its_kernel_has_no_layout_for():
    with pytest.raises(KeyError, match="groups of 32, 64, 128"):
        get("int4_bf16@16")


@pytest.mark.parametrize(("name", "bound"), [("bnb_int8", 0.05), ("bnb_nf4", 0.3),
                                             ("bnb_fp4", 0.4)])
def test_bitsandbytes_through_transformers(name, bound):
    import bitsandbytes as bnb

    model, ids = tiny_llama(), tokens()
    out = get(name).apply(model)
    assert out.execution == "real"
    layer = bnb.nn.Linear8bitLt if name == "bnb_int8" else bnb.nn.Linear4bit
    quantized = [m for m in out.model.modules() if isinstance(m, layer)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down of each block; not the head
    assert rel_err(logits(out.model, ids), logits(model, ids)) < bound
    assert artifact_size(out.model).size_bytes < artifact_size(model).size_bytes


def test_saving_a_scored_4bit_model_keeps_its_weights():
    """After inference, state_dict() (save_pretrained, torch.save, peft) must not change the
    weights: bitsandbytes' own inverse of its CPU repacking leaves the scales transposed."""
    bnb = pytest.importorskip("bitsandbytes")
    model = get("bnb_nf4").apply(tiny_llama()).model
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    before = [bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state) for m in layers]
    with torch.inference_mode():
        scored = model(tokens()).logits  # repacks where the CPU has AVX512-BF16
    model.state_dict()
    for layer, original in zip(layers, before, strict=True):
        after = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        torch.testing.assert_close(after, original, rtol=2**-8, atol=0)  # scales rounded to bf16
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens()).logits, scored)


def test_bitsandbytes_quantizes_a_transformers_model_inside_a_wrapper():
    import bitsandbytes as bnb

    out = get("bnb_nf4").apply(LMWrapper())
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in out.model.modules())


def test_bitsandbytes_needs_a_transformers_model():
    with pytest.raises(Unsupported, match="no transformers PreTrainedModel"):
        get("bnb_nf4").apply(nn.Sequential(nn.Linear(8, 8)))


def test_pruning_and_svd_leave_a_tied_lm_head_whole_and_tied():
    model = tiny_llama()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    for name in ("prune_l1@0.5", "prune_global@0.5", "svd@0.5"):
        out = get(name).apply(model, Context(example_input=tokens()))
        head, table = out.model.get_output_embeddings(), out.model.get_input_embeddings()
        assert isinstance(head, nn.Linear), name
        assert head.weight is table.weight, name
        assert torch.equal(table.weight, embeddings), name
    pruned = get("prune_l1@0.5").apply(model).model
    q = pruned.model.layers[0].self_attn.q_proj.weight
    assert (q == 0).float().mean().item() == pytest.approx(0.5, abs=1 / q.numel())


def test_a_bitsandbytes_model_inside_a_wrapper_survives_the_harness():
    """nn.Module.to on the wrapper would drop the 4-bit state; the harness must not move a
    model that is already on its device."""
    from benchmarks.harness.cell import on_device

    out = get("bnb_nf4").apply(LMWrapper())
    model = on_device(out.model, "cpu")
    with torch.inference_mode():
        assert model(tokens()).isfinite().all()


def test_bitsandbytes_keeps_an_optional_part_the_model_was_built_without():
    config = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=128)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    out = get("bnb_int8").apply(bert)
    assert out.model.pooler is None
    with torch.inference_mode():
        assert out.model(input_ids=tokens() % 128).last_hidden_state.isfinite().all()


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert])
def test_prune_mlp_at_zero_is_exact_and_removes_round_s_n_channels(build):
    model = build()
    ids = tokens() % 128

    def out(m):
        with torch.inference_mode():
            return m(input_ids=ids).logits if hasattr(m, "lm_head") else \
                m(input_ids=ids).last_hidden_state

    same = get("prune_mlp@0.0").apply(model).model
    assert torch.allclose(out(same), out(model), atol=1e-5)
    for sparsity in (0.25, 0.5):
        pruned = get(f"prune_mlp@{sparsity}").apply(model)
        assert pruned.execution == "real"
        widths = [narrow.in_features for narrow in
                  (getattr(p, n) for _, (p, n) in mlp_blocks(pruned.model))]
        assert widths == [128 - round(sparsity * 128)] * 2
        removed = sum(p.numel() for p in model.parameters()) - \
            sum(p.numel() for p in pruned.model.parameters())
        per_channel = (3 * 64) if build is tiny_llama else (64 + 1 + 64)  # rows, bias, column
        assert removed == 2 * round(sparsity * 128) * per_channel
        assert out(pruned.model).isfinite().all()


def test_prune_mlp_keeps_the_strongest_channels():
    model = tiny_llama()
    mlp = model.model.layers[0].mlp
    mlp.down_proj.weight.data[:, 7] *= 100  # channel 7 dominates
    pruned = get("prune_mlp@0.9").apply(model).model.model.layers[0].mlp
    kept = pruned.down_proj.weight
    assert any(torch.allclose(kept[:, j], mlp.down_proj.weight[:, 7]) for j in
               range(kept.shape[1]))


def test_prune_mlp_needs_a_transformer_mlp():
    with pytest.raises(Unsupported, match="no transformer MLP block"):
        get("prune_mlp@0.5").apply(nn.Sequential(nn.Linear(8, 8)))
