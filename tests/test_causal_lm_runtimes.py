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


def rounded(model, bits: int, block: int | None = None):
    """The model with every weight matrix rounded to `bits`, a symmetric scale per block of
    inputs (per row without one)."""
    rounded = copy.deepcopy(model)
    top = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:
                w = p.reshape(p.shape[0], -1, block or p.shape[1])
                scale = w.abs().amax(-1, keepdim=True) / top
                p.copy_(((w / scale).round().clamp(-top - 1, top) * scale).reshape(p.shape))
    return rounded


def test_the_logits_stay_as_close_as_4_bit_rounding_allows_and_matmulnbits_runs(small_llama,
                                                                                 int4):
    x = small_llama_context().example_input
    with torch.no_grad():
        want = small_llama(x, use_cache=False).logits
        rounding = relative_difference(rounded(small_llama, 4, 32)(x).logits, want)
    assert relative_difference(int4.model(x).logits, want) <= rounding
    ran = int4.model.operators(x)
    assert kernels.proof(get("onnx_int4@32").kernel, ran)


def test_generate_with_the_cache_follows_the_logits_without_it(int4):
    prompt = small_llama_context().example_input[:, :8]
    generated = int4.model.generate(prompt, max_new_tokens=6)
    assert generated.shape == (1, 14) and torch.equal(generated[:, :8], prompt)
    logits = int4.model(generated[:, :-1]).logits[0]
    assert torch.equal(logits[7:].argmax(-1), generated[0, 8:])


@pytest.fixture(scope="module")
def ov_int8(small_llama):
    pytest.importorskip("nncf")
    return get("openvino_int8_weight").apply(small_llama, small_llama_context())


def test_openvino_int8_weights_stay_close_to_8_bit_rounding_and_run(small_llama,
                                                                              ov_int8):
    x = small_llama_context().example_input
    with torch.no_grad():
        want = small_llama(x, use_cache=False).logits
        rounding = relative_difference(rounded(small_llama, 8)(x).logits, want)
    # The CPU plugin also rounds activations to 8 bits (in groups, its default for compressed
    # weights): measured about twice the error of the weights alone.
    assert relative_difference(ov_int8.model(x).logits, want) <= 3 * rounding
    ran = ov_int8.model.operators(x)
    assert not [op for op in ran if op.startswith("FullyConnected") and op.endswith("[f32]")]
    assert kernels.proof(get("openvino_int8_weight").kernel, ran)
    prompt = x[:, :8]
    generated = ov_int8.model.generate(prompt, max_new_tokens=6)
    logits = ov_int8.model(generated[:, :-1]).logits[0]
    assert torch.equal(logits[7:].argmax(-1), generated[0, 8:])


def test_openvino_int4_weights_pack_the_projections_and_keep_the_tied_head_8_bit(small_llama):
    pytest.importorskip("nncf")
    out = get("openvino_int4_weight@32").apply(small_llama, small_llama_context())
    ran = out.model.operators(small_llama_context().example_input)
    # Every projection reads 4-bit weights (the plugin fuses some), the head 8-bit ones.
    fully_connected = {op: n for op, n in ran.items() if op.startswith("FullyConnected")}
    assert set(fully_connected) == {"FullyConnected[i4]", "FullyConnected[u8]"}
    assert fully_connected["FullyConnected[u8]"] == 1
    four_bit = [t for t in out.model.stored if t.dtype == "int4"]
    layers = small_llama.model.layers
    assert sum(t.params for t in four_bit) == sum(
        m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    assert all(t.nbytes == t.params // 2 for t in four_bit)
