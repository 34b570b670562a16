"""Property tests of each technique on tiny models: what it promises, checked numerically."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn
from torch.nn.utils import parametrize

from compress import Context, Unsupported, get
from compress.kernels import operators
from compress.lowrank.svd import factorize_conv, factorize_linear, rank_for_energy
from compress.prune.channels import output_layers
from compress.quant.cast import bf16_real_on

FAST = settings(max_examples=20, deadline=None, database=None)
SLOW = settings(max_examples=15, deadline=None, database=None)

seeds = st.integers(0, 2**31 - 1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()


class SmallCNN(nn.Module):
    """conv-bn-relu x2, then a linear head: about 1,600 parameters."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


# --- int8_dynamic -----------------------------------------------------------------------------


@FAST
@given(
    weight=hnp.arrays(
        "float32",
        st.tuples(st.integers(1, 6), st.integers(1, 8)),
        elements=st.floats(-4, 4, width=32, allow_subnormal=False),
    ),
    bias=st.booleans(),
)
def test_int8_dynamic_weight_error_is_at_most_half_a_step(weight, bias):
    w = torch.from_numpy(weight)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(w)
    out = get("int8_dynamic").apply(nn.Sequential(layer))
    assert out.execution == "real"
    quantized = out.model[0]
    assert isinstance(quantized, torch.ao.nn.quantized.dynamic.Linear)
    qw = quantized.weight()
    assert qw.dtype == torch.qint8
    # torch's default dynamic qconfig observes weights per tensor, symmetric (zero point 0);
    # handle a per-channel scheme too, should a torch release change that default.
    if qw.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scale = torch.full((w.shape[0], 1), qw.q_scale())
        assert qw.q_zero_point() == 0
    else:
        assert qw.q_per_channel_axis() == 0
        scale = qw.q_per_channel_scales().float()[:, None]
        assert bool((qw.q_per_channel_zero_points() == 0).all())
    err = (qw.dequantize() - w).abs()
    assert bool((err <= scale / 2 + 1e-6).all()), (err - scale / 2).max()
    # The step is no coarser than the int8 grid over the weight range needs to be.
    assert bool((scale <= w.abs().max() / 127 + 1e-6).all())
    ints = qw.int_repr()
    assert int(ints.min()) >= -128 and int(ints.max()) <= 127
    if bias:
        assert torch.equal(quantized.bias(), layer.bias.detach())


# --- int8_static ------------------------------------------------------------------------------


class ConvReluLinear(nn.Module):
    def __init__(self, channels: int, hw: int, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels * hw * hw, classes)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


@SLOW
@given(seed=seeds, channels=st.sampled_from([2, 4, 8]), hw=st.sampled_from([4, 6]),
       classes=st.integers(2, 6))
def test_int8_static_is_close_to_fp32_and_stores_int8(seed, channels, hw, classes):
    torch.manual_seed(seed)
    model = ConvReluLinear(channels, hw, classes).eval()
    calibration = [torch.randn(16, 3, hw, hw) for _ in range(4)]
    out = get("int8_static").apply(model, Context(calibration=calibration))
    assert out.execution == "real"

    # Error bound, on inputs inside the calibrated ranges (the calibration set itself, so no
    # activation is clipped): x86 static int8 quantizes the input, the fused conv+relu output and
    # the linear output to 7 bits (reduce_range) over their calibrated ranges, each off by at
    # most half a step (range/254, ~0.4%), and the weights per channel to 8 bits (half a step
    # is ~0.4% of each channel's range). Summed over three rounding points plus the weight error
    # propagated through two layers this is ~1-2% of the output range in practice; 5% leaves
    # headroom yet fails a 4-bit quantizer (half a step of range/15 is 3% per rounding point).
    x = torch.cat(calibration)
    with torch.no_grad():
        want = model(x)
        got = out.model(x)
    assert got.shape == want.shape
    span = (want.max() - want.min()).item()
    assert (got - want).abs().max().item() < 0.05 * span

    state = out.model.state_dict()
    assert state["conv.weight"].dtype == torch.qint8
    fc_weight, fc_bias = state["fc._packed_params._packed_params"]
    assert fc_weight.dtype == torch.qint8
    assert fc_weight.shape == model.fc.weight.shape
    # No float32 copy of a weight is left behind.
    float_weights = [k for k, v in state.items()
                     if k.endswith("weight") and torch.is_tensor(v) and v.is_floating_point()]
    assert float_weights == []
    # Per-channel weight scales (the x86 default), each step within int8's needs.
    conv_w = state["conv.weight"]
    assert conv_w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    err = (conv_w.dequantize() - model.conv.weight.detach()).abs()
    scales = conv_w.q_per_channel_scales().float().reshape(-1, 1, 1, 1)
    assert bool((err <= scales / 2 + 1e-6).all())



def test_int8_pt2e_runs_onednn_int8_kernels_close_to_fp32_and_stores_int8():
    """PT2E, compiled: the quantized convolution and linear run as oneDNN int8 kernels, the
    output stays within a few steps of fp32, and what ships holds int8 weights and no float
    copy of them. One example (compiling takes seconds)."""
    torch.manual_seed(0)
    model = ConvReluLinear(8, 6, 4).eval()
    calibration = [torch.randn(16, 3, 6, 6) for _ in range(4)]
    out = get("int8_pt2e").apply(model, Context(calibration=calibration,
                                                example_input=calibration[0]))
    assert out.execution == "real"
    x = torch.cat(calibration)  # another batch size than the example's: compiled again
    with torch.inference_mode():
        want, got = model(x), out.model(x)
        ran = operators(out.model, x)
    assert (got - want).abs().max().item() < 0.05 * (want.max() - want.min()).item()
    assert ran["onednn::qconv_pointwise"] == 1 and ran["onednn::qlinear_pointwise"] == 1
    stored = out.model.state_dict().values()
    assert sorted(t.numel() for t in stored if t.dtype == torch.int8) == [8 * 3 * 9, 4 * 288]
    assert not [t for t in stored if t.is_floating_point() and t.numel() >= 8 * 3 * 9]


class BatchAsConstant(nn.Module):
    """Adds a per-sample offset for exactly four samples: export must fix the batch at 4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) + torch.arange(4.0).view(4, 1, 1, 1)


def test_int8_pt2e_refuses_a_model_that_fixes_its_batch_size():
    """A graph exported for one batch size would fail on the evaluation's other batches."""
    calibration = [torch.randn(4, 3, 6, 6)]
    with pytest.raises(Unsupported, match="fixed the batch size at 4"):
        get("int8_pt2e").apply(BatchAsConstant().eval(),
                               Context(calibration=calibration, example_input=calibration[0]))


# --- prune_l1 / prune_global -----------------------------------------------------------------


def prunable_model(seed: int, conv1d: tuple[int, int, int], conv2d: tuple[int, int, int],
                   linear: tuple[int, int]) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(conv1d[1], conv1d[0], conv1d[2]),
        nn.Conv2d(conv2d[1], conv2d[0], conv2d[2]),
        nn.BatchNorm2d(conv2d[0]),
        nn.Linear(linear[1], linear[0]),
    )


model_shapes = dict(
    seed=seeds,
    conv1d=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    conv2d=st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 3)),
    linear=st.tuples(st.integers(1, 8), st.integers(1, 8)),
)
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().clone() for name, m in model.named_modules()
            if isinstance(m, PRUNABLE)}


def no_ties_or_zeros(weights) -> bool:
    flat = torch.cat([w.flatten() for w in weights]).abs()
    return bool((flat > 0).all()) and flat.unique().numel() == flat.numel()


@FAST
@given(sparsity=st.floats(0.0, 0.95), **model_shapes)
def test_prune_l1_zeros_round_s_n_smallest_weights_per_layer(sparsity, seed, conv1d, conv2d,
                                                            linear):
    model = prunable_model(seed, conv1d, conv2d, linear)
    before = weights_of(model)
    assume(all(no_ties_or_zeros([w]) for w in before.values()))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    out = get(f"prune_l1@{sparsity!r}").apply(model)
    assert out.execution == "simulated"
    after = dict(out.model.named_modules())
    for name, w in before.items():
        pruned = after[name].weight.detach()
        assert isinstance(after[name].weight, nn.Parameter)
        assert pruned.shape == w.shape
        zero = pruned == 0
        assert int(zero.sum()) == round(sparsity * w.numel())
        # Kept weights are untouched; the pruned ones were the smallest of this layer.
        assert torch.equal(pruned[~zero], w[~zero])
        if zero.any() and (~zero).any():
            assert w[zero].abs().max() < w[~zero].abs().min()
    for key, value in out.model.state_dict().items():
        if not key.endswith(".weight") or not isinstance(after[key.rsplit(".", 1)[0]], PRUNABLE):
            assert torch.equal(value, state[key]), key  # biases and BatchNorm untouched


@FAST
@given(sparsity=st.floats(0.0, 0.95), **model_shapes)
def test_prune_global_zeros_round_s_total_smallest_weights_overall(sparsity, seed, conv1d,
                                                                  conv2d, linear):
    model = prunable_model(seed, conv1d, conv2d, linear)
    before = weights_of(model)
    assume(no_ties_or_zeros(before.values()))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    out = get(f"prune_global@{sparsity!r}").apply(model)
    assert out.execution == "simulated"
    after = dict(out.model.named_modules())
    total = sum(w.numel() for w in before.values())
    kept, pruned = [], []
    for name, w in before.items():
        new = after[name].weight.detach()
        zero = new == 0
        assert torch.equal(new[~zero], w[~zero])
        kept.append(w[~zero].abs())
        pruned.append(w[zero].abs())
    kept, pruned = torch.cat(kept), torch.cat(pruned)
    assert pruned.numel() == round(sparsity * total)
    assert kept.numel() + pruned.numel() == total
    if kept.numel() and pruned.numel():
        assert kept.min() >= pruned.max()
    for key, value in out.model.state_dict().items():
        if not key.endswith(".weight") or not isinstance(after[key.rsplit(".", 1)[0]], PRUNABLE):
            assert torch.equal(value, state[key]), key


# --- prune_channels ---------------------------------------------------------------------------


@FAST
@given(sparsity=st.floats(0.0, 0.9), seed=seeds)
def test_prune_channels_keeps_outputs_and_shrinks_small_cnn(sparsity, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN()
    randomize_bn(model, gen)
    model.eval()
    example = torch.randn(2, 3, 8, 8, generator=gen)
    out = get(f"prune_channels@{sparsity!r}").apply(model, Context(example_input=example))
    assert out.execution == "real"
    pruned = out.model
    x = torch.randn(5, 3, 8, 8, generator=gen)  # another batch size and fresh data: it runs
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (5, 10)
        assert torch.isfinite(pruned(x)).all()
    assert n_params(pruned) <= n_params(model)
    # The output layer keeps every output.
    assert pruned.head.out_features == 10
    if sparsity >= 0.3:
        assert n_params(pruned) < n_params(model)
        assert pruned.features[3].out_channels < 16
        # Channels are physically removed, coupled layers kept consistent.
        assert pruned.features[1].num_features == pruned.features[0].out_channels
        assert pruned.features[3].in_channels == pruned.features[0].out_channels
        assert pruned.head.in_features == pruned.features[3].out_channels


def test_prune_channels_on_mobilenet_v2():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    out = get("prune_channels@0.3").apply(model, Context(example_input=example))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = out.model(x)
    assert y.shape == model(x).shape == (2, 10)
    assert torch.isfinite(y).all()
    assert n_params(out.model) < n_params(model)
    assert out.model.classifier[-1].out_features == 10


def test_output_layers_of_classifiers_are_their_last_linear():
    small = SmallCNN().eval()
    assert output_layers(small, torch.randn(1, 3, 8, 8)) == [small.head]
    mobilenet = torchvision.models.mobilenet_v2(num_classes=10).eval()
    assert output_layers(mobilenet, torch.randn(1, 3, 32, 32)) == [mobilenet.classifier[-1]]


class TwoHeads(nn.Module):
    """A trunk, then a box conv decoded by a frozen conv, and a class conv: YOLO's head, small."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.box, self.cls = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 3, 1)
        self.decode = nn.Conv2d(4, 2, 1).requires_grad_(False)

    def forward(self, x):
        features = self.trunk(x)
        return torch.cat([self.decode(self.box(features)), self.cls(features)], 1), features


def test_output_layers_look_through_frozen_layers_and_only_at_the_first_output():
    model = TwoHeads().eval()
    got = output_layers(model, torch.randn(1, 3, 8, 8))
    assert sorted(map(id, got)) == sorted(map(id, [model.decode, model.box, model.cls]))


def test_prune_channels_leaves_frozen_weights_whole():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    model[2].requires_grad_(False)
    example = torch.randn(1, 3, 10, 10)
    pruned = get("prune_channels@0.5").apply(model.eval(), Context(example_input=example)).model
    # The frozen conv keeps its inputs and outputs, so the convs either side of it keep theirs;
    # the last conv is pruned.
    assert torch.equal(pruned[2].weight, model[2].weight)
    assert pruned[0].out_channels == 8 and pruned[4].in_channels == 8
    assert pruned[4].out_channels == 8


# --- svd --------------------------------------------------------------------------------------


@FAST
@given(seed=seeds, n_in=st.integers(1, 12), n_out=st.integers(1, 12), bias=st.booleans())
def test_factorize_linear_at_full_rank_is_exact(seed, n_in, n_out, bias):
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    full = min(n_in, n_out)
    factorized = factorize_linear(layer, full)
    assert factorized[0].out_features == full
    x = torch.randn(7, n_in)
    with torch.no_grad():
        assert rel_err(factorized(x), layer(x)) < 1e-4


@FAST
@given(seed=seeds, c_in=st.integers(1, 4), c_out=st.integers(1, 6), k=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       bias=st.booleans())
def test_factorize_conv_at_full_rank_is_exact(seed, c_in, c_out, k, stride, padding, dilation,
                                             bias):
    torch.manual_seed(seed)
    layer = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation,
                      bias=bias)
    full = min(c_out, c_in * k * k)
    factorized = factorize_conv(layer, full)
    assert factorized[0].out_channels == full
    x = torch.randn(2, c_in, 9, 9)
    with torch.no_grad():
        want = layer(x)
        got = factorized(x)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-4


def low_rank_linear(seed: int, n_in: int, n_out: int, rank: int) -> nn.Linear:
    """A Linear whose weight has exactly `rank` singular values, all in [0.5, 2]."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n_out, rank, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n_in, rank, generator=gen))
    s = torch.rand(rank, generator=gen) * 1.5 + 0.5
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(s) @ v.T)
    return layer


@FAST
@given(seed=seeds, n_in=st.integers(1, 10), n_out=st.integers(1, 10))
def test_svd_at_full_energy_reproduces_a_linear(seed, n_in, n_out):
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out)
    x = torch.randn(6, n_in)
    for model in (layer, nn.Sequential(layer, nn.ReLU())):
        out = get("svd@1.0").apply(model)
        assert out.execution == "real"
        with torch.no_grad():
            assert rel_err(out.model(x), model(x)) < 1e-4
        assert n_params(out.model) <= n_params(model)


@FAST
@given(seed=seeds, n_in=st.integers(6, 16), n_out=st.integers(6, 16), rank=st.integers(1, 2),
       wrapped=st.booleans())
def test_svd_factorizes_a_low_rank_linear_exactly(seed, n_in, n_out, rank, wrapped):
    layer = low_rank_linear(seed, n_in, n_out, rank)
    model = nn.Sequential(layer) if wrapped else layer
    # All the energy but rounding: the rank is the weight's true rank.
    out = get("svd@0.999999999").apply(model)
    factorized = out.model[0] if wrapped else out.model
    assert isinstance(factorized, nn.Sequential)
    assert factorized[0].out_features == rank
    assert n_params(out.model) < n_params(model)
    x = torch.randn(5, n_in)
    with torch.no_grad():
        assert rel_err(out.model(x), model(x)) < 1e-4


singular_values = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=20).map(
    lambda v: torch.tensor(sorted(v, reverse=True)))
energies = st.floats(0.0, 1.0, exclude_min=True)


@FAST
@given(s=singular_values, e1=energies, e2=energies)
def test_rank_for_energy_is_monotone_and_minimal(s, e1, e2):
    lo, hi = sorted((e1, e2))
    r_lo, r_hi = rank_for_energy(s, lo), rank_for_energy(s, hi)
    assert 1 <= r_lo <= r_hi <= len(s)
    assert rank_for_energy(s, 1.0) == len(s)
    # The smallest rank keeping the energy: r keeps it, r - 1 does not.
    power = s.double().pow(2)
    kept = power.cumsum(0) / power.sum()
    for energy, rank in ((lo, r_lo), (hi, r_hi)):
        assert rank == len(s) or kept[rank - 1] >= energy
        assert rank == 1 or kept[rank - 2] < energy


class LowRankNet(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(4, 12, 3, padding=1)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = low_rank_linear(seed, 48, 24, 3)
        self.fc2 = nn.Linear(24, 10)
        with torch.no_grad():  # a steep spectrum, so some layers factorize at most energies
            w = self.conv.weight.reshape(12, -1)
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            s = s * torch.logspace(0, -3, len(s))
            self.conv.weight.copy_((u @ torch.diag(s) @ vh).reshape_as(self.conv.weight))

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1))))


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (out, -1) weight a layer, or its factorized pair, computes."""
    if isinstance(module, nn.Sequential):
        first, second = module
        return second.weight.reshape(second.weight.shape[0], -1) @ first.weight.reshape(
            first.weight.shape[0], -1)
    return module.weight.reshape(module.weight.shape[0], -1)


@FAST
@given(seed=seeds, energy=energies)
def test_svd_never_grows_keeps_energy_and_skips_depthwise(seed, energy):
    model = LowRankNet(seed).eval()
    original = {n: m for n, m in model.named_children()}
    out = get(f"svd@{energy!r}").apply(model)
    new = dict(out.model.named_children())
    assert n_params(out.model) <= n_params(model)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert out.model(x).shape == model(x).shape
    # A depthwise conv is never factorized.
    assert type(new["depthwise"]) is nn.Conv2d
    assert torch.equal(new["depthwise"].weight, model.depthwise.weight)
    for name in ("conv", "fc1", "fc2"):
        w = dense_weight(original[name]).detach()
        if isinstance(new[name], nn.Sequential):
            # The truncation keeps at least `energy` of the squared Frobenius norm.
            approx = dense_weight(new[name]).detach()
            lost = (w - approx).pow(2).sum() / w.pow(2).sum()
            assert lost.item() <= 1 - energy + 1e-4
            rank = new[name][0].weight.shape[0]
            assert rank * sum(w.shape) < w.numel()
        else:
            assert torch.equal(dense_weight(new[name]), w)
    # fc1 has rank 3 (3 * 72 < 48 * 24): it factorizes at any energy short of 1.0 (at 1.0 the
    # float32 SVD's rounding-level singular values count, and the full rank saves nothing).
    if energy <= 1 - 1e-9:
        assert isinstance(new["fc1"], nn.Sequential)
        assert new["fc1"][0].out_features <= 3


def test_svd_leaves_depthwise_conv_alone_at_any_energy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 3, groups=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for energy in (0.01, 0.5, 1.0):
        out = get(f"svd@{energy}").apply(model)
        assert [type(m) for m in out.model] == [nn.Conv2d, nn.Conv2d]
        for key, value in out.model.state_dict().items():
            assert torch.equal(value, before[key])


# --- fp16 / bf16 ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_casts_every_float_tensor(name, dtype):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    out = get(name).apply(model)
    assert out.input_dtype is dtype
    state = out.model.state_dict()
    assert state.keys() == model.state_dict().keys()
    for key, value in state.items():
        if model.state_dict()[key].is_floating_point():
            assert value.dtype is dtype, key
        else:
            assert value.dtype == model.state_dict()[key].dtype, key  # num_batches_tracked
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
        got = out.model(x.to(out.input_dtype))
    assert got.dtype is dtype
    # fp16 keeps 11 significant bits, bf16 8: ~1e-3 and ~8e-3 relative per rounding.
    assert rel_err(got.float(), want) < (1e-2 if dtype is torch.float16 else 5e-2)


def test_fp16_on_cpu_is_simulated_and_real_on_cuda():
    model = SmallCNN()
    cpu = get("fp16").apply(model, Context(device="cpu"))
    assert cpu.execution == "simulated"
    assert "fp16" in cpu.why_simulated
    assert cpu.input_dtype is torch.float16
    cuda = get("fp16").apply(model, Context(device="cuda"))  # no CUDA needed: it only labels
    assert cuda.execution == "real" and cuda.why_simulated == ""
    assert cuda.input_dtype is torch.float16


def test_bf16_execution_follows_native_support():
    out = get("bf16").apply(SmallCNN(), Context(device="cpu"))
    assert out.input_dtype is torch.bfloat16
    assert out.execution == ("real" if "cpu" in bf16_real_on() else "simulated")
    assert (out.why_simulated == "") == (out.execution == "real")


# --- +ft (compress.recover) -------------------------------------------------------------------


def sgd_finetune(steps: int, seen: list):
    def finetune(model: nn.Module) -> None:
        seen.append(model.training)
        gen = torch.Generator().manual_seed(0)
        dtype = next(model.parameters()).dtype
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(steps):
            x = torch.randn(16, 12, generator=gen).to(dtype)
            target = torch.randn(16, 4, generator=gen).to(dtype)
            opt.zero_grad()
            (model(x) - target).pow(2).mean().backward()
            opt.step()

    return finetune


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))


@SLOW
@given(seed=seeds)
def test_finetune_keeps_the_zeros_and_trains_the_rest(seed):
    model = mlp(seed)
    pruned = get("prune_l1@0.5").apply(model).model
    seen: list = []
    technique = get("prune_l1@0.5+ft")
    assert technique.family == "pipeline" and technique.name == "prune_l1@0.5+ft"
    out = technique.apply(model, Context(finetune=sgd_finetune(5, seen)))
    assert seen == [True]  # it fine-tunes in train mode, once
    assert not out.model.training
    for i in (0, 2):
        before = pruned[i].weight.detach()
        after = out.model[i].weight.detach()
        zero = before == 0
        assert int(zero.sum()) == round(0.5 * before.numel())
        assert torch.equal(after == 0, zero)  # the same zeros, no more, no fewer
        changed = after[~zero] != before[~zero]
        assert changed.float().mean() > 0.9  # the kept weights did train
        assert not torch.equal(out.model[i].bias, pruned[i].bias)
    for module in out.model.modules():
        assert not parametrize.is_parametrized(module)
        assert not hasattr(module, "parametrizations")
    assert all(isinstance(p, nn.Parameter) and p.requires_grad
               for p in (out.model[0].weight, out.model[2].weight))
    assert sorted(out.model.state_dict()) == sorted(model.state_dict())


@pytest.mark.parametrize("name,dtype", [("bf16+ft", torch.bfloat16), ("fp16+ft", torch.float16)])
def test_half_precision_finetune_keeps_existing_zeros(name, dtype):
    """A model that already has zeros (pruned earlier) keeps them through a half-precision
    fine-tune, and stays in that precision."""
    model = get("prune_l1@0.5").apply(mlp(0)).model
    out = get(name).apply(model, Context(finetune=sgd_finetune(3, [])))
    for i in (0, 2):
        weight = out.model[i].weight
        assert weight.dtype is dtype
        assert torch.equal(weight == 0, model[i].weight == 0)
        assert not parametrize.is_parametrized(out.model[i])


# --- BatchNorm re-estimation (part of pruning and svd) ----------------------------------------


@FAST
@given(seed=seeds, n_batches=st.integers(1, 4), batch=st.integers(2, 6))
def test_reestimated_batchnorm_holds_the_exact_statistics_of_the_calibration_data(
        seed, n_batches, batch):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN()
    randomize_bn(model, gen)
    model.eval()
    batches = [torch.randn(batch, 3, 5, 5, generator=gen) for _ in range(n_batches)]
    out = get("prune_global@0.5").apply(model, Context(calibration=batches)).model
    conv, bn = out.features[0], out.features[1]
    with torch.no_grad():
        acts = torch.cat([conv(b) for b in batches])  # what the first BatchNorm sees
    per_channel = acts.transpose(0, 1).flatten(1)
    # momentum=None is a cumulative average of the per-batch statistics (unbiased variance).
    means = torch.stack([conv(b).detach().transpose(0, 1).flatten(1).mean(1) for b in batches])
    vars_ = torch.stack([conv(b).detach().transpose(0, 1).flatten(1).var(1) for b in batches])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, vars_.mean(0), rtol=1e-4, atol=1e-5)
    if n_batches == 1:
        assert torch.allclose(bn.running_mean, per_channel.mean(1), atol=1e-5)
    # Weights are untouched by it, the model is left in eval mode, momentum is restored.
    assert not out.training and not bn.training and bn.momentum == model.features[1].momentum
    assert int((conv.weight == 0).sum()) > 0


def test_without_calibration_batchnorm_statistics_stay_as_they_were():
    gen = torch.Generator().manual_seed(0)
    model = SmallCNN()
    randomize_bn(model, gen)
    out = get("prune_channels@0.0").apply(model.eval(),
                                            Context(example_input=torch.randn(1, 3, 8, 8)))
    assert torch.equal(out.model.features[1].running_mean, model.features[1].running_mean)
