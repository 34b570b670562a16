"""The registry: `get(name)` / `names()`, malformed names, and the `apply()` contract."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import compress
from compress import Context, Technique, Unsupported, get, names
from compress.base import FAMILIES
from compress.registry import REGISTRY

FAST = settings(max_examples=25, deadline=None, database=None)



def example(base: str) -> str:
    """A valid name of the registered technique `base`, as it registered it."""
    return REGISTRY[base].example


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
    assert names() == sorted(REGISTRY)
    assert len(names()) >= 39  # every technique module was found and imported


@pytest.mark.parametrize("base", names())
def test_every_registered_name_resolves(base):
    name = example(base)
    technique = get(name)
    assert isinstance(technique, Technique)
    assert technique.name == name
    assert technique.family == REGISTRY[base].family
    assert technique.family in FAMILIES
    assert isinstance(technique.real_on, tuple)
    assert set(technique.real_on) <= {"cpu", "cuda"}
    assert callable(technique.transform)
    assert technique.doc.strip(), f"{name} has no description"


@pytest.mark.parametrize("recovery", ["ft", "kd", "lora", "qlora"])
@pytest.mark.parametrize("base", names())
def test_a_recovery_suffix_makes_a_pipeline(base, recovery):
    plain = get(example(base))
    technique = get(f"{example(base)}+{recovery}")
    assert technique.family == "pipeline"
    assert technique.name == f"{plain.name}+{recovery}"
    assert technique.real_on == plain.real_on
    assert technique.keeps == plain.keeps  # what the recovery must keep


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


@pytest.mark.parametrize("base", ["int8_dynamic", "fp16", "bf16"])
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


@pytest.mark.parametrize("name, error", [
    ("prune_l1@", "is malformed: write it as prune_l1@<sparsity>"),
    ("prune_l1@half", "sparsity must be a number, got 'half'"),
    ("svd@0.9@0.9", "energy must be a number, got '0.9@0.9'"),
    ("svd@0,9", "'9' names no parameter of svd (write it as svd@<energy>)"),
    ("svd@0.9,energy=0.8", "'energy=0.8' names no parameter of svd"),  # named twice
])
def test_a_malformed_value_raises_key_error_naming_it(name, error):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert name in message(excinfo)
    assert error in message(excinfo)


@pytest.mark.parametrize("name", ["gptq@32.0", "gptq@thirty", "int4_weight@0x20"])
def test_an_integer_parameter_takes_integers_only(name):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert "group must be an integer" in message(excinfo)


@pytest.mark.parametrize("name, error", [
    ("gptq@48", "takes groups of 32, 64, 128, got 48"),
    ("onnx_int4@24", "block size must be a power of 2 >= 16, got 24"),
    ("openvino_int4_weight@8", "group size must be a power of 2 >= 16, got 8"),
    ("smoothquant@1.5", "alpha is in [0, 1], got 1.5"),
    ("wanda@0", "sparsity must be in (0, 1), got 0.0"),
])
def test_each_technique_checks_its_own_parameters(name, error):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert error in message(excinfo) and name in message(excinfo)


@pytest.mark.parametrize("name", ["int8_static+foo", "prune_l1@0.5+qat", "svd@0.9+",
                                  "prune_l1@0.5+FT", "gptq@32+gguf_q4_1+nope"])
def test_unknown_stage_raises_key_error_naming_it(name):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    stage = name.rpartition("+")[2]
    assert f"unknown stage '+{stage}'" in message(excinfo)
    for known in ("+ft", "+kd", "+lora", "+qlora", *names()):  # what a stage may be
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
    st.builds(lambda b, sep, rest: b + sep + rest, st.sampled_from(names()),
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


# --- typed parameters, registered beside the technique ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Palette:
    clusters: int
    per: Literal["tensor", "channel"] = "tensor"
    scale: float = 1.0

    def __post_init__(self):
        if self.clusters < 2:
            raise ValueError(f"clusters must be at least 2, got {self.clusters}")


@pytest.fixture
def palette(monkeypatch):
    """A technique with several parameters, registered as a module of compress would be."""
    monkeypatch.setattr(compress.registry, "REGISTRY", dict(REGISTRY))
    monkeypatch.setattr(compress, "REGISTRY", compress.registry.REGISTRY)

    @compress.register("palette", Palette, family="sharing", keeps={"shared"}, example="16")
    def make(config: Palette):
        def transform(model, ctx):
            return compress.Compressed(model, "simulated")

        transform.__doc__ = f"{config.clusters} values per {config.per}, scaled {config.scale:g}."
        return transform

    return make


@pytest.mark.parametrize("name, config", [
    ("palette@16", Palette(16)),
    ("palette@16,per=channel", Palette(16, "channel")),
    ("palette@4,scale=0.5,per=channel", Palette(4, "channel", 0.5)),
    ("palette@clusters=8", Palette(8)),
])
def test_several_parameters_are_named_by_key_after_the_first(palette, name, config):
    technique = get(name)
    assert technique.config == config and technique.name == name
    assert technique.family == "sharing" and technique.keeps == {"shared"}
    assert technique.doc == (f"{config.clusters} values per {config.per}, "
                             f"scaled {config.scale:g}.")


@pytest.mark.parametrize("name, error", [
    ("palette@16,per=row", "per is one of tensor, channel, got 'row'"),
    ("palette@1", "clusters must be at least 2, got 1"),
    ("palette@16,size=2", "'size=2' names no parameter of palette (write it as "
                          "palette@<clusters>[,per=<tensor>][,scale=<1.0>])"),
    ("palette@16,clusters=4", "'clusters=4' names no parameter"),  # named twice
    ("palette", "malformed: write it as palette@<clusters>"),
])
def test_a_bad_parameter_is_named_with_the_form_to_write(palette, name, error):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert error in message(excinfo)


@pytest.mark.parametrize("name, one", [
    ("prune_l1@.50+ft", "prune_l1@0.5+ft"),
    ("gptq@032+gguf_q4_1", "gptq@32+gguf_q4_1"),
    ("palette@16,per=tensor", "palette@16"),
    ("palette@16,scale=2,per=channel", "palette@16,per=channel,scale=2.0"),
    ("int8_static", "int8_static"),
    # A parameter with a default is written by key, even when it is the only one.
    ("int8_static@float=0", "int8_static"),
    ("int8_static@2", "int8_static@float=2"),
    ("prune_channels@0.5+ft+int8_static@float=3", "prune_channels@0.5+ft+int8_static@float=3"),
])
def test_canonical_is_the_one_spelling_of_a_name(palette, name, one):
    assert compress.canonical(name) == one
    assert get(one).config == get(name).config


def test_a_technique_whose_parameters_all_have_defaults_is_written_bare_or_by_key():
    assert REGISTRY["int8_static"].form() == "int8_static[@float=<0>]"
    assert REGISTRY["kmeans"].form() == "kmeans@<clusters>[,per=<tensor>]"


def test_a_registration_is_checked_when_its_module_is_imported(palette):
    with pytest.raises(KeyError, match="clusters must be at least 2"):
        compress.register("palette1", Palette, family="sharing", example="1")(palette)
    with pytest.raises(ValueError, match="unknown family 'shrinking'"):
        compress.register("palette2", Palette, family="shrinking", example="4")
    with pytest.raises(ValueError, match="two techniques are registered as 'palette'"):
        compress.register("palette", Palette, family="sharing", example="4")(lambda c: None)


# --- what a recovery keeps -----------------------------------------------------------------


def test_ft_keeps_the_zeros_of_pruning():
    out = get("prune_l1@0.5+ft").apply(SmallCNN(), Context(
        calibration=[torch.randn(4, 3, 8, 8)], finetune=sgd_finetune()))
    assert float((out.model.conv1.weight == 0).float().mean()) >= 0.5


@pytest.mark.parametrize("name", ["int4_weight@32", "int8_weight", "int8_bf16"])
def test_ft_refuses_to_move_weights_off_a_quantization_grid(name):
    with pytest.raises(Unsupported, match="off their grid: recover with \\+lora or \\+qlora"):
        get(f"{name}+ft").apply(nn.Sequential(nn.Linear(32, 4)),
                                Context(finetune=lambda m: None))


def test_every_integer_quantizer_declares_its_grid():
    for base, entry in REGISTRY.items():
        if entry.family == "quantization" and base not in ("fp16", "bf16"):
            assert entry.keeps == {"grid"}, base
        if entry.family in ("pruning", "low-rank"):
            assert not entry.keeps, base  # float weights: +ft trains them (zeros kept)


def test_a_pipeline_keeps_what_each_of_its_stages_keeps(palette):
    assert get("gptq@32+gguf_q4_1").keeps == {"grid"}
    assert get("palette@16+int8_dynamic").keeps == {"shared", "grid"}
    assert get("palette@16+ft").keeps == {"shared"}


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
