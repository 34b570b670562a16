"""Mixed precision: per-layer sensitivity to int8, and `int8_static@float=k` keeping the k most
sensitive layers in float."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compress import Context, Unsupported, get
from compress.quant.sensitivity import (
    fake_int8_weight,
    fake_uint8,
    int8_sensitivity,
    most_sensitive,
)

FAST = settings(max_examples=25, deadline=None, database=None)


def mlp(seed: int = 0, outlier: int | None = None) -> nn.Sequential:
    """Three Linear layers whose input feature 0 is always zero (batches() makes the model's,
    each hidden layer's row 0 the next one's). `outlier`: the index of a layer whose column 0
    is 200x its other weights: harmless in float (it meets only zeros), but int8's per-row
    step, set by it, rounds that layer's other weights to almost nothing."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4)).eval()
    with torch.no_grad():
        for hidden in (0, 2):
            model[hidden].weight[0] = 0
            model[hidden].bias[0] = 0
        if outlier is not None:
            model[outlier].weight[:, 0] = 200 * model[outlier].weight.abs().max()
    return model


def batches(seed: int = 0) -> list[torch.Tensor]:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(seed))
    x[:, 0] = 0
    return list(x.split(16))


@FAST
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 8), cols=st.integers(1, 32))
def test_fake_int8_weight_is_within_half_a_step_per_row(seed, rows, cols):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((fake_int8_weight(w) - w).abs() <= step / 2 + 1e-6).all()


@FAST
@given(seed=st.integers(0, 2**16))
def test_fake_uint8_is_within_half_a_step_inside_its_range_and_keeps_zero(seed):
    x = torch.randn(100, generator=torch.Generator().manual_seed(seed))
    low, high = x.min().item(), x.max().item()
    step = (max(high, 0) - min(low, 0)) / 255
    assert ((fake_uint8(x, low, high) - x).abs() <= step / 2 + 1e-6).all()
    assert fake_uint8(torch.zeros(1), low, high).item() == 0.0


def test_a_layer_whose_output_is_discarded_has_no_sensitivity():
    model = mlp()
    with torch.no_grad():
        model[4].weight.zero_()  # the last layer ignores everything before it
    sensitivity = int8_sensitivity(model, batches())
    assert sensitivity["0"] == 0.0 and sensitivity["2"] == 0.0
    assert sensitivity["4"] >= 0.0


@pytest.mark.parametrize("outlier", [0, 2, 4])
def test_the_layer_int8_rounds_worst_is_the_most_sensitive(outlier):
    model = mlp(outlier=outlier)
    assert most_sensitive(model, batches(), 1) == [str(outlier)]


def test_sensitivity_leaves_the_model_as_it_was():
    model = mlp(outlier=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = batches()[0]
    out = model(x)
    int8_sensitivity(model, batches())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), out)
    assert not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_int8_static_keeps_the_most_sensitive_layers_in_float(keep):
    model = mlp(outlier=2)
    calibration = batches()
    kept = set(most_sensitive(model, calibration, keep))
    out = get(f"int8_static@float={keep}").apply(model, Context(calibration=calibration))
    # FX fuses a float Linear with its ReLU: layer "2" becomes "2.0" inside a LinearReLU.
    float_layers = {name.split(".")[0] for name, m in out.model.named_modules()
                    if type(m) is nn.Linear}
    assert float_layers == kept
    assert len(kept) == keep
    assert out.execution == "real"


def test_keeping_the_worst_layer_in_float_brings_the_outputs_back():
    model = mlp(outlier=2)
    calibration = batches()
    x = batches(seed=1)[0]
    with torch.no_grad():
        want = model(x)
        error = {keep: (get(f"int8_static@float={keep}").apply(
            model, Context(calibration=calibration)).model(x) - want).abs().max().item()
            for keep in (0, 1)}
    assert error[1] < error[0] / 3


def test_keeping_every_layer_in_float_is_refused_as_no_quantization():
    with pytest.raises(Unsupported, match=r"float=3: the model has 3 layers int8 could quantize"):
        get("int8_static@float=3").apply(mlp(), Context(calibration=batches()))
