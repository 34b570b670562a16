"""The LLM methods beyond rounding and magnitude: each keeps the property it is named for, and
beats the naive method on the error it minimises, on the calibration data it was given.

The inputs have features of very different scales, as transformer activations do (a few
outlier channels): that is where looking at the activations pays."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress import Context, Unsupported, get, kernels
from compress.base import relative_difference
from compress.quant import gptq
from compress.quant.weight_only import int4_cpu_grid, int4_values

IN, HIDDEN, OUT = 64, 128, 32


def features(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(IN, generator=torch.Generator().manual_seed(0)) * 1.5)
    return torch.randn(n, IN, generator=g) * scales


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Linear(IN, HIDDEN), nn.Linear(HIDDEN, OUT)])

    def forward(self, x):
        return self.blocks[1](torch.relu(self.blocks[0](x)))


def context() -> Context:
    return Context(calibration=list(features(512, 1).split(128)), example_input=features(8, 2))


def output_error(model: nn.Module, reference: nn.Module) -> float:
    x = features(512, 1)  # the calibration data: what each method fits
    with torch.no_grad():
        want = reference(x.to(next(reference.parameters()).dtype)).float()
        got = model(x.to(next(model.parameters()).dtype)).float()
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_wanda_zeros_exactly_its_share_of_every_output_row(sparsity):
    pruned = get(f"wanda@{sparsity}").apply(Mlp(), context()).model
    for layer in pruned.blocks:
        zeros = (layer.weight == 0).sum(dim=1)
        assert (zeros == int(layer.in_features * sparsity)).all()


@pytest.mark.parametrize("name", ["wanda_2of4", "sparsegpt_2of4"])
def test_two_of_four_leaves_two_of_every_four_consecutive_inputs(name):
    pruned = get(name).apply(Mlp(), context()).model
    for layer in pruned.blocks:
        groups = (layer.weight != 0).reshape(layer.out_features, -1, 4).sum(dim=-1)
        assert (groups == 2).all()


def test_sparsegpt_zeros_half_the_weights():
    pruned = get("sparsegpt@0.5").apply(Mlp(), context()).model
    for layer in pruned.blocks:
        assert abs(float((layer.weight == 0).float().mean()) - 0.5) < 0.01


@pytest.mark.parametrize("name", ["wanda@0.5", "sparsegpt@0.5"])
def test_activation_aware_pruning_beats_magnitude_on_the_calibration_data(name):
    reference = Mlp().eval()
    ours = get(name).apply(reference, context()).model
    magnitude = get("prune_l1@0.5").apply(reference, context()).model
    assert output_error(ours, reference) < output_error(magnitude, reference)


def test_sparsegpt_beats_wanda_by_updating_the_weights_it_keeps():
    reference = Mlp().eval()
    sparsegpt = get("sparsegpt@0.5").apply(reference, context()).model
    wanda = get("wanda@0.5").apply(reference, context()).model
    assert output_error(sparsegpt, reference) < output_error(wanda, reference)


def test_a_tied_lm_head_is_not_pruned(small_llama):
    ctx = Context(calibration=[torch.randint(0, 49152, (2, 16), generator=torch.Generator()
                                             .manual_seed(3))])
    pruned = get("wanda@0.5").apply(small_llama, ctx).model
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert not (pruned.lm_head.weight == 0).any()
    assert (pruned.model.layers[0].mlp.up_proj.weight == 0).float().mean() == 0.5


def test_pruning_without_calibration_data_is_unsupported_with_the_reason():
    with pytest.raises(Unsupported, match="calibrat"):
        get("wanda@0.5").apply(Mlp(), Context())


def test_awq_beats_rounding_to_nearest_and_runs_the_int4_kernel():
    reference = Mlp().eval()
    out = get("awq@32").apply(reference, context())
    rtn = get("int4_bf16@32").apply(reference, context()).model
    assert out.execution == "real" and out.input_dtype == torch.bfloat16
    assert output_error(out.model, reference) < output_error(rtn, reference)
    ran = kernels.operators(out.model, context().example_input.bfloat16())
    assert kernels.proof(get("awq@32").kernel, ran)


def test_gptq_beats_rounding_to_nearest_on_the_calibration_data_and_runs_the_int4_kernel():
    reference = Mlp().eval()
    out = get("gptq@32").apply(reference, context())
    rtn = get("int4_bf16@32").apply(reference, context()).model
    assert out.execution == "real" and out.extras == {"calibration_tokens": 512}
    assert output_error(out.model, reference) < output_error(rtn, reference)
    ran = kernels.operators(out.model, context().example_input.bfloat16())
    assert kernels.proof(get("gptq@32").kernel, ran)


def test_gptq_packs_exactly_the_levels_it_chose():
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    x = features(256, 6)
    levels, scale, zero = gptq.quantize(weight, x.T @ x / len(x), 32)
    assert levels.min() >= 0 and levels.max() <= 15 and torch.equal(levels, levels.round())
    layer = nn.Linear(64, 16, bias=False).bfloat16()
    layer.weight = nn.Parameter(gptq._int4_cpu_tensor(levels, scale, zero, 32),
                                requires_grad=False)
    eye = torch.eye(64, dtype=torch.bfloat16)
    want = int4_values(levels, scale, zero)
    assert torch.allclose(layer(eye).float().T, want, atol=0.02 * float(want.abs().max()))
    # ... and reading the packed weight back gives those very levels (gguf_q4_1 relies on it).
    assert torch.equal(int4_cpu_grid(layer.weight).levels.float(), levels)


def test_hqq_rounds_the_weights_closer_than_min_max():
    reference = Mlp().eval()
    hqq = get("hqq_bf16@32").apply(reference, context()).model
    rtn = get("int4_bf16@32").apply(reference, context()).model
    eye = torch.eye(IN, dtype=torch.bfloat16)  # the first layer's weights, as it sees them

    def weight_error(model):
        with torch.no_grad():
            got = model.blocks[0](eye).float() - model.blocks[0].bias.float()
        return float((got.T - reference.blocks[0].weight).norm())

    assert weight_error(hqq) < weight_error(rtn)


def test_w8a8_quantizes_each_token_and_runs_int8_matmuls():
    reference = Mlp().eval()
    out = get("w8a8").apply(reference, context())
    x = context().example_input
    ran = kernels.operators(out.model, x)
    assert out.execution == "real" and kernels.proof(get("w8a8").kernel, ran)
    with torch.no_grad():
        assert relative_difference(out.model(x), reference(x)) < 0.05


def test_smoothquant_beats_plain_w8a8_when_activations_have_outliers():
    reference = Mlp().eval()
    smooth = get("smoothquant@0.5").apply(reference, context()).model
    plain = get("w8a8").apply(reference, context()).model
    assert output_error(smooth, reference) < output_error(plain, reference)


@pytest.mark.parametrize("name", ["smoothquant@1.5", "awq@48", "hqq_bf16@16", "wanda@1.0"])
def test_out_of_range_parameters_are_refused_when_named(name):
    with pytest.raises(KeyError):
        get(name)
