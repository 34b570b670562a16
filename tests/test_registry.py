"""The registry: `get(name)` / `names()`, malformed names, and the `apply()` contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import compress
from compress import Context, Technique, Unsupported, get, names
from compress.base import FAMILIES

FAST = settings(max_examples=25, deadline=None, database=None)

# A valid @value for each parametrized technique, None for the plain ones.
PARAM_VALUE = {
    "int8_dynamic": None,
    "int8_static": None,
    "int8_pt2e": None,
    "fp16": None,
    "bf16": None,
    "prune_l1": 0.5,
    "prune_global": 0.5,
    "prune_channels": 0.5,
    "svd": 0.9,
    "int8_weight": None,
    "int4_weight": 32,
    "int4_bf16": 64,
    "int8_bf16": None,
    "prune_mlp": 0.5,
    "bnb_int8": None,
    "bnb_nf4": None,
    "bnb_fp4": None,
    "lora": None,
    "torchscript": None,
    "onnx": None,
    "onnx_int8": None,
    "onnx_int4": 32,
    "openvino": None,
    "openvino_int8": None,
    "gguf_q8_0": None,
    "gguf_q4_0": None,
    "gguf_q4_1": None,
    "gguf_q4_k_m": None,
    "hqq_bf16": 64,
    "awq": 64,
    "gptq": 64,
    "openvino_int8_weight": None,
    "openvino_int4_weight": 32,
    "w8a8": None,
    "smoothquant": 0.5,
    "wanda": 0.5,
    "wanda_2of4": None,
    "sparsegpt": 0.5,
    "sparsegpt_2of4": None,
}
FAMILY = {
    "int8_dynamic": "quantization",
    "int8_static": "quantization",
    "int8_pt2e": "quantization",
    "fp16": "quantization",
    "bf16": "quantization",
    "int8_weight": "quantization",
    "int4_weight": "quantization",
    "int4_bf16": "quantization",
    "int8_bf16": "quantization",
    "bnb_int8": "quantization",
    "bnb_nf4": "quantization",
    "bnb_fp4": "quantization",
    "prune_l1": "pruning",
    "prune_global": "pruning",
    "prune_channels": "pruning",
    "prune_mlp": "pruning",
    "svd": "low-rank",
    "lora": "low-rank",
    "torchscript": "export",
    "onnx": "export",
    "onnx_int8": "export",
    "onnx_int4": "export",
    "openvino": "export",
    "openvino_int8": "export",
    "gguf_q8_0": "quantization",
    "gguf_q4_0": "quantization",
    "gguf_q4_1": "quantization",
    "gguf_q4_k_m": "quantization",
    "hqq_bf16": "quantization",
    "awq": "quantization",
    "gptq": "quantization",
    "openvino_int8_weight": "export",
    "openvino_int4_weight": "export",
    "w8a8": "quantization",
    "smoothquant": "quantization",
    "wanda": "pruning",
    "wanda_2of4": "pruning",
    "sparsegpt": "pruning",
    "sparsegpt_2of4": "pruning",
}


def full_name(base: str) -> str:
    value = PARAM_VALUE[base]
    return base if value is None else f"{base}@{value}"


def message(excinfo: pytest.ExceptionInfo) -> str:
    # str(KeyError) wraps the message in quotes; args[0] is the message itself.
    return excinfo.value.args[0]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def sgd_finetune(steps: int = 3):
    def finetune(model: nn.Module) -> None:
        gen = torch.Generator().manual_seed(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(steps):
            x = torch.randn(4, 3, 8, 8, generator=gen)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    return finetune


# --- names() and get() on well-formed names -------------------------------------------------


def test_names_lists_every_registered_technique_sorted():
    assert names() == sorted(PARAM_VALUE)
    assert names() == sorted(set(names()))


@pytest.mark.parametrize("base", sorted(PARAM_VALUE))
def test_every_registered_name_resolves(base):
    name = full_name(base)
    technique = get(name)
    assert isinstance(technique, Technique)
    assert technique.name == name
    assert technique.family == FAMILY[base]
    assert technique.family in FAMILIES
    assert isinstance(technique.real_on, tuple)
    assert set(technique.real_on) <= {"cpu", "cuda"}
    assert callable(technique.transform)
    assert technique.doc.strip(), f"{name} has no description"


@pytest.mark.parametrize("recovery", ["ft", "lora", "qlora"])
@pytest.mark.parametrize("base", sorted(PARAM_VALUE))
def test_a_recovery_suffix_makes_a_pipeline(base, recovery):
    plain = get(full_name(base))
    technique = get(f"{full_name(base)}+{recovery}")
    assert technique.family == "pipeline"
    assert technique.name == f"{plain.name}+{recovery}"
    assert technique.real_on == plain.real_on


@FAST
@given(sparsity=st.floats(0.0, 1.0, exclude_max=True),
       base=st.sampled_from(["prune_l1", "prune_global", "prune_channels"]))
def test_any_sparsity_in_range_resolves(sparsity, base):
    name = f"{base}@{sparsity!r}"
    technique = get(name)
    assert technique.name == name
    assert f"{sparsity:.0%}" in technique.doc


@FAST
@given(energy=st.floats(0.0, 1.0, exclude_min=True))
def test_any_energy_in_range_resolves(energy):
    assert get(f"svd@{energy!r}").name == f"svd@{energy!r}"


# --- malformed names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope", "prune", "int8", "svd_", "", "PRUNE_L1@0.5"])
def test_unknown_name_raises_key_error_naming_it(name):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    base = name.partition("@")[0]
    assert f"unknown technique {base!r}" in message(excinfo)
    # It lists what is known, so the caller can fix the typo.
    for known in names():
        assert known in message(excinfo)


@pytest.mark.parametrize("base", ["prune_l1", "prune_global", "prune_channels", "svd"])
def test_missing_param_raises_key_error(base):
    with pytest.raises(KeyError) as excinfo:
        get(base)
    msg = message(excinfo)
    assert "malformed" in msg
    param = "energy" if base == "svd" else "sparsity"
    assert f"{base}@<{param}>" in msg


@pytest.mark.parametrize("base", ["int8_dynamic", "int8_static", "fp16", "bf16"])
def test_extra_param_raises_key_error(base):
    with pytest.raises(KeyError) as excinfo:
        get(f"{base}@0.5")
    msg = message(excinfo)
    assert "malformed" in msg
    assert f"write it as {base}" in msg and "@<" not in msg


@pytest.mark.parametrize("name", ["prune_l1@1.0", "prune_l1@1", "prune_l1@-0.1", "prune_l1@nan",
                                  "prune_global@2", "prune_channels@1.0", "prune_l1@inf"])
def test_sparsity_out_of_range_raises_key_error(name):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert "sparsity must be in [0, 1)" in message(excinfo)
    assert name in message(excinfo)


@pytest.mark.parametrize("name", ["svd@0", "svd@0.0", "svd@-0.5", "svd@1.01", "svd@nan"])
def test_energy_out_of_range_raises_key_error(name):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert "energy must be in (0, 1]" in message(excinfo)
    assert name in message(excinfo)


@pytest.mark.parametrize("name", ["prune_l1@", "prune_l1@half", "svd@0.9@0.9", "svd@0,9"])
def test_non_numeric_param_raises_key_error(name):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert name in message(excinfo)
    assert "could not convert" in message(excinfo)


@pytest.mark.parametrize("name", ["int8_static+foo", "prune_l1@0.5+qat", "svd@0.9+",
                                  "prune_l1@0.5+FT", "gptq@32+gguf_q4_1+nope"])
def test_unknown_stage_raises_key_error_naming_it(name):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    stage = name.rpartition("+")[2]
    assert f"unknown stage '+{stage}'" in message(excinfo)
    for known in ("+ft", "+lora", "+qlora", *names()):  # what a stage may be
        assert known in message(excinfo)


def test_a_technique_stage_makes_a_pipeline_that_runs_as_its_last_stage():
    first, last = get("gptq@32"), get("gguf_q4_1")
    technique = get("gptq@32+gguf_q4_1")
    assert technique.name == "gptq@32+gguf_q4_1" and technique.family == "pipeline"
    assert technique.kernel == last.kernel  # the artifact is the last stage's
    assert technique.real_on == tuple(d for d in last.real_on if d in first.real_on)


def test_stages_chain_in_order_each_on_the_last_ones_model():
    technique = get("prune_l1@0.5+ft+int8_dynamic+ft")
    assert technique.name == "prune_l1@0.5+ft+int8_dynamic+ft"
    assert technique.kernel == get("int8_dynamic").kernel


def test_a_malformed_later_stage_is_named():
    with pytest.raises(KeyError) as excinfo:
        get("prune_l1@0.5+gptq")
    assert "'gptq' in 'prune_l1@0.5+gptq' is malformed" in message(excinfo)
    assert "gptq@<group>" in message(excinfo)


@FAST
@given(name=st.one_of(
    st.text(max_size=30),
    st.builds(lambda b, sep, rest: b + sep + rest, st.sampled_from(sorted(PARAM_VALUE)),
              st.sampled_from(["", "@", "+", "@0.5+", "+ft@"]), st.text(max_size=10)),
))
def test_get_either_resolves_or_raises_key_error(name):
    """No name makes get() fail with anything but KeyError (ValueError, TypeError, ...)."""
    try:
        technique = get(name)
    except KeyError as err:
        assert isinstance(err.args[0], str) and err.args[0]
    else:
        assert isinstance(technique, Technique)
        assert technique.name.partition("@")[0].partition("+")[0] in names()


# --- apply(): the caller's model is never modified ---------------------------------------------


def snapshot(model: nn.Module):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, repr(model),
            model.training, [type(m) for m in model.modules()])


def assert_same(model: nn.Module, before) -> None:
    state, text, training, types = before
    after = model.state_dict()
    assert list(after) == list(state)
    for key, value in state.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key
    assert repr(model) == text
    assert model.training == training
    assert [type(m) for m in model.modules()] == types
    for module in model.modules():
        assert not torch.nn.utils.parametrize.is_parametrized(module)
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("name", ["int8_dynamic", "int8_static", "fp16", "bf16", "prune_l1@0.5",
                                  "prune_global@0.7", "prune_channels@0.5", "svd@0.5",
                                  "prune_l1@0.5+ft", "prune_channels@0.5+ft"])
@pytest.mark.parametrize("training", [False, True])
def test_apply_never_modifies_the_callers_model(name, training):
    torch.manual_seed(0)
    model = SmallCNN().train(training)
    # Non-trivial BN statistics, so a cast or a fine-tune in train mode would show.
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 8, 8))
    model.train(training)
    before = snapshot(model)
    ctx = Context(calibration=[torch.randn(4, 3, 8, 8) for _ in range(2)],
                  example_input=torch.randn(2, 3, 8, 8), finetune=sgd_finetune())
    out = get(name).apply(model, ctx)
    assert out.model is not model
    assert not out.model.training
    assert_same(model, before)
    # And the compressed model does differ from the original (the test is not vacuous).
    assert out.model.state_dict().keys() != before[0].keys() or any(
        not torch.equal(v, before[0][k]) for k, v in out.model.state_dict().items())


# --- Unsupported ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prune_l1@0.5+ft", "svd@0.9+ft", "fp16+ft", "int8_dynamic+ft"])
def test_ft_without_finetune_is_unsupported(name):
    model = SmallCNN()
    with pytest.raises(Unsupported, match=r"Context\.finetune"):
        get(name).apply(model, Context(example_input=torch.randn(1, 3, 8, 8)))


def test_ft_on_a_model_left_without_float_weights_is_unsupported():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    ctx = Context(calibration=[torch.randn(8, 4)], finetune=lambda m: None)
    with pytest.raises(Unsupported, match="no float weights"):
        get("int8_static+ft").apply(model, ctx)


@pytest.mark.parametrize("name", ["int8_dynamic", "int8_static", "int8_static+ft"])
def test_int8_on_cuda_is_unsupported(name):
    ctx = Context(device="cuda", calibration=[torch.randn(2, 3, 8, 8)], finetune=lambda m: None)
    with pytest.raises(Unsupported, match="CPU only"):
        get(name).apply(SmallCNN(), ctx)


@pytest.mark.parametrize("calibration", [(), [], iter(())])
def test_int8_static_without_calibration_is_unsupported(calibration):
    with pytest.raises(Unsupported, match="calibration"):
        get("int8_static").apply(SmallCNN(), Context(calibration=calibration))


def test_int8_dynamic_without_linear_is_unsupported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(Unsupported, match="no nn.Linear"):
        get("int8_dynamic").apply(model)


def test_prune_channels_without_example_input_is_unsupported():
    with pytest.raises(Unsupported, match="example_input"):
        get("prune_channels@0.5").apply(SmallCNN(), Context())


def test_unsupported_is_a_runtime_error():
    assert issubclass(Unsupported, RuntimeError)
    assert compress.Unsupported is Unsupported


class DataDependentForward(nn.Module):
    """Control flow FX cannot trace: iterating over a tensor (as ultralytics' Detect head does)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.stack([self.conv(item.unsqueeze(0))[0] for item in x])


def test_int8_static_on_an_untraceable_model_is_unsupported():
    ctx = Context(calibration=[torch.randn(2, 3, 8, 8)])
    with pytest.raises(Unsupported, match="FX graph mode cannot trace"):
        get("int8_static").apply(DataDependentForward(), ctx)


@pytest.mark.parametrize("name", ["prune_l1@0.9", "prune_global@0.9", "svd@0.1"])
def test_pruning_and_svd_leave_frozen_weights_alone(name):
    """A frozen weight is a constant of the architecture (YOLO's DFL conv decodes boxes with
    weights 0..15); zeroing or factorizing it breaks the model rather than compressing it."""
    model = SmallCNN()
    model.conv2.weight.requires_grad_(False)
    frozen = model.conv2.weight.detach().clone()
    out = get(name).apply(model, Context(calibration=[torch.randn(4, 3, 8, 8)]))
    assert isinstance(out.model.conv2, nn.Conv2d)
    assert torch.equal(out.model.conv2.weight, frozen)
    conv1 = out.model.conv1  # the unfrozen layer was compressed (factorized, or zeroed)
    assert not isinstance(conv1, nn.Conv2d) or not torch.equal(conv1.weight, model.conv1.weight)
