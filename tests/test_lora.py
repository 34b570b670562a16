"""LoRA and QLoRA recovery (peft) on a tiny Llama: what trains, what is reported, the merge check,
and which base each suffix accepts. The fine-tune is the SmolLM2 workload's own training loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.workloads.causal_lm import next_token_loss
from benchmarks.workloads.training import train
from compress import Context, Unsupported, get
from compress.lowrank import lora as lora_module
from compress.quant.bnb import unpack_cpu_4bit

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

DATA = torch.randint(256, (8, 32), generator=torch.Generator().manual_seed(3))


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


def finetune(model: nn.Module) -> None:
    train(model, lambda m, idx: next_token_loss(m, DATA[idx]), len(DATA), epochs=3,
          batch_size=4, lr=1e-2, seed=0, desc="test", weight_decay=0.0)


def perplexity(model: nn.Module, _dtype: torch.dtype = torch.float32) -> float:
    with torch.inference_mode():
        return math.exp(next_token_loss(model, DATA).item())


def context(**overrides) -> Context:
    settings = {"example_input": DATA[:2], "finetune": finetune, "evaluate": perplexity}
    return Context(**{**settings, **overrides})


def test_lora_trains_only_the_adapter_and_reports_it():
    model = tiny_llama()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    out = get("lora").apply(model, context())
    adapted = out.model
    state = adapted.state_dict()
    lora_keys = [k for k in state if "lora_" in k]
    assert lora_keys and out.execution == "real"
    # The base weights are frozen (peft renames them base_layer.weight) ...
    for key, value in state.items():
        if "lora_" not in key:
            original = key.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(value, base[original]), key
    # ... and the adapter learned: B starts at zero, so a trained B is not.
    assert any(state[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)
    assert perplexity(adapted) < perplexity(model)
    trainable = sum(state[k].numel() for k in lora_keys)
    total = sum(p.numel() for p in adapted.parameters())
    assert out.extras["trainable_pct"] == pytest.approx(100 * trainable / total)
    # Saved adapter: its float32 weights plus a small config and header.
    assert 4 * trainable < out.extras["adapter_bytes"] < 4 * trainable + 20_000
    assert out.extras["merge_rel_diff"] <= lora_module.MERGE_TOLERANCE["float"]


def test_qlora_recovers_a_4bit_model_and_reports_the_metric_before():
    pytest.importorskip("bitsandbytes")
    model = tiny_llama()
    out = get("bnb_nf4+qlora").apply(model, context())
    assert out.extras["before_recovery"] == pytest.approx(
        perplexity(get("bnb_nf4").apply(model).model))
    assert perplexity(out.model) < out.extras["before_recovery"]
    assert any(type(m).__name__ == "Linear4bit" for m in out.model.modules())
    assert out.extras["merge_rel_diff"] <= lora_module.MERGE_TOLERANCE["quantized"]


def test_a_merge_that_changes_the_model_fails_the_cell(monkeypatch):
    model = tiny_llama()
    peft = pytest.importorskip("peft")
    real = peft.LoraModel.merge_and_unload

    def lossy(self, *args, **kwargs):
        merged = real(self, *args, **kwargs)
        with torch.no_grad():
            merged.model.layers[0].mlp.down_proj.weight.mul_(1.5)
        return merged

    monkeypatch.setattr(peft.LoraModel, "merge_and_unload", lossy)
    with pytest.raises(AssertionError, match="merge_and_unload moved the logits"):
        get("lora").apply(model, context())


def test_each_suffix_refuses_the_other_kind_of_base():
    pytest.importorskip("bitsandbytes")
    with pytest.raises(Unsupported, match=r"\+qlora"):
        get("bnb_nf4+lora").apply(tiny_llama(), context())
    with pytest.raises(Unsupported, match="on a quantized model"):
        get("prune_l1@0.5+qlora").apply(tiny_llama(), context())
    calibrated = context(calibration=list(DATA[:4].split(2)))
    with pytest.raises(Unsupported, match=r"\+qlora"):
        get("gptq@32+lora").apply(tiny_llama(), calibrated)


def test_qlora_recovers_a_gptq_model_and_serves_it_on_the_int4_kernel():
    model = tiny_llama()
    out = get("gptq@32+qlora").apply(model, context(calibration=list(DATA[:4].split(2))))
    assert perplexity(out.model) < out.extras["before_recovery"]
    # The adapter was trained beside float copies; the base it is served beside is int4 again.
    bases = [m.base_layer.weight for m in out.model.modules() if hasattr(m, "lora_A")]
    assert bases and all(type(w).__name__ == "Int4OpaqueTensor" for w in bases)
    assert out.extras["merge_rel_diff"] <= lora_module.MERGE_TOLERANCE["quantized"]


def test_lora_without_a_finetune_is_unsupported():
    with pytest.raises(Unsupported, match=r"Context\.finetune"):
        get("lora").apply(tiny_llama(), context(finetune=None))
    with pytest.raises(Unsupported, match=r"Context\.finetune"):
        get("prune_l1@0.5+lora").apply(tiny_llama(), context(finetune=None))


def test_a_4bit_model_scored_first_still_passes_gradients_through_its_layers():
    """bitsandbytes repacks 4-bit weights at the first eval-mode call on AVX512-BF16 CPUs, into a
    layout whose kernel has no backward; QLoRA trains through the common layout again."""
    bnb = pytest.importorskip("bitsandbytes")
    model = get("bnb_nf4").apply(tiny_llama()).model
    with torch.inference_mode():
        model(DATA[:2])  # scoring: repacks where the CPU has AVX512-BF16
    unpack_cpu_4bit(model)
    layer = model.model.layers[0].mlp.down_proj.train()
    x = torch.randn(3, 128, requires_grad=True)
    layer(x).sum().backward()
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    torch.testing.assert_close(x.grad, weight.sum(0).expand_as(x), atol=1e-4, rtol=1e-4)
