"""onnx_int4 on a causal LM: exported with its KV cache by ONNX Runtime GenAI's builder, every
weight matrix packed to 4 bits (the tied embedding once, for the lookup and the head), run by
ONNX Runtime's MatMulNBits, and decoded greedily with the cache as it scores without one."""

from __future__ import annotations

import copy

import pytest
import torch

from compress import get, kernels
from compress.base import relative_difference
from tests.conftest import small_llama_context

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def int4(small_llama):
    return get("onnx_int4@32").apply(small_llama, small_llama_context())


def test_every_weight_matrix_is_4_bit_and_the_tied_embedding_is_stored_once(small_llama, int4):
    matrices = sum(p.numel() for p in small_llama.parameters() if p.dim() == 2)  # tied: once
    packed = [t for t in int4.model.stored if t.dtype == "int4"]
    assert sum(t.params for t in packed) == matrices
    assert all(t.nbytes == t.params // 2 for t in packed)
    assert int4.extras == {"accuracy_level": 4}


def rounded_to_4_bits(model, block: int):
    """The model with every weight matrix rounded to 4 bits, a symmetric scale per block."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:
                w = p.reshape(p.shape[0], -1, block)
                scale = w.abs().amax(-1, keepdim=True) / 7
                p.copy_(((w / scale).round().clamp(-8, 7) * scale).reshape(p.shape))
    return rounded


def test_the_logits_stay_as_close_as_4_bit_rounding_allows_and_matmulnbits_runs(small_llama,
                                                                                 int4):
    x = small_llama_context().example_input
    with torch.no_grad():
        want = small_llama(x, use_cache=False).logits
        rounding = relative_difference(rounded_to_4_bits(small_llama, 32)(x).logits, want)
    assert relative_difference(int4.model(x).logits, want) <= rounding
    ran = int4.model.operators(x)
    assert kernels.proof(get("onnx_int4@32").kernel, ran)


def test_generate_with_the_cache_follows_the_logits_without_it(int4):
    prompt = small_llama_context().example_input[:, :8]
    generated = int4.model.generate(prompt, max_new_tokens=6)
    assert generated.shape == (1, 14) and torch.equal(generated[:, :8], prompt)
    logits = int4.model(generated[:, :-1]).logits[0]
    assert torch.equal(logits[7:].argmax(-1), generated[0, 8:])
