"""k-means weight sharing: at most k values per palette, stored packed for real, and a
recovery that trains the palettes and keeps the sharing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmarks.harness.measure import artifact_size
from compress import Context, Unsupported, get
from compress.sharing.kmeans import Palettized, cluster, pack, unpack

FAST = settings(max_examples=30, deadline=None, database=None)


def palettized(model: nn.Module) -> list[Palettized]:
    return [m for m in model.modules() if isinstance(m, Palettized)]


def distinct_per_group(layer: Palettized) -> list[int]:
    rows = layer.weight.detach().reshape(layer.codebook.shape[0], -1)
    return [len(torch.unique(row)) for row in rows]


@FAST
@given(seed=st.integers(0, 2**16), k=st.sampled_from([2, 3, 16, 17, 256]),
       per=st.sampled_from(["tensor", "channel"]), out=st.integers(1, 9), inp=st.integers(1, 40))
def test_each_palette_holds_at_most_k_values(seed, k, per, out, inp):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(inp, out))
    shared = get(f"kmeans@{k},per={per}").apply(model).model
    [layer] = palettized(shared)
    assert layer.codebook.shape == ((1 if per == "tensor" else out), k)
    assert all(n <= k for n in distinct_per_group(layer))
    x = torch.randn(3, inp)
    assert shared(x).shape == model(x).shape


@FAST
@given(seed=st.integers(0, 2**16), k=st.integers(2, 256), n=st.integers(1, 300))
def test_indices_pack_and_unpack_to_themselves(seed, k, n):
    index = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack(index, k)
    assert packed.dtype == torch.uint8
    assert packed.numel() == ((n + 1) // 2 if k <= 16 else n)
    assert torch.equal(unpack(packed, k, n), index)


def test_a_weight_with_no_more_values_than_the_palette_is_kept_exactly():
    weight = torch.tensor([[0.5, -1.0, 0.5, 2.0], [2.0, 2.0, -1.0, 0.0]])
    palette, index = cluster(weight.reshape(1, -1), 4)
    assert torch.equal(palette[0].gather(0, index[0]).reshape(2, 4), weight)


def test_k_means_errs_less_than_a_uniform_grid_of_as_many_levels():
    weight = torch.randn(1, 20000, generator=torch.Generator().manual_seed(0))
    palette, index = cluster(weight, 16)
    kmeans_error = (palette.gather(1, index) - weight).square().mean()
    low, high = weight.min(), weight.max()
    step = (high - low) / 15
    uniform_error = (((weight - low) / step).round() * step + low - weight).square().mean()
    assert kmeans_error < 0.5 * uniform_error  # Gaussian weights crowd near zero


@pytest.mark.parametrize("k, bits", [(16, 4), (256, 8)])
def test_the_artifact_stores_packed_indices_and_a_palette(k, bits):
    model = nn.Sequential(nn.Linear(512, 512, bias=False))
    reference, shared = artifact_size(model), artifact_size(get(f"kmeans@{k}").apply(model).model)
    assert shared.params == reference.params == 512 * 512  # the palette is no weight
    overhead = 2048 + 4 * k  # torch.save's zip framing, the palette
    assert shared.size_bytes < 512 * 512 * bits / 8 + overhead
    assert reference.size_bytes / shared.size_bytes > 32 / bits * 0.95


def test_ft_trains_the_palettes_and_keeps_the_weights_shared():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4))
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(3)]

    def finetune(m: nn.Module) -> None:
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
        for x in data:
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()

    ctx = Context(calibration=data, finetune=finetune)
    shared = get("kmeans@4,per=channel").apply(model, ctx).model
    recovered = get("kmeans@4,per=channel+ft").apply(model, ctx).model
    for before, after in zip(palettized(shared), palettized(recovered), strict=True):
        assert torch.equal(after.index, before.index)  # which weights share a value: kept
        assert not torch.equal(after.codebook, before.codebook)  # the values themselves trained
        assert all(n <= 4 for n in distinct_per_group(after))


def test_tied_and_frozen_weights_are_left_alone_and_a_model_without_layers_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight.requires_grad_(False)
    shared = get("kmeans@2").apply(model).model
    assert isinstance(shared[0], Palettized) and isinstance(shared[1], nn.Linear)
    with pytest.raises(Unsupported, match="no Linear or Conv2d"):
        get("kmeans@16").apply(nn.Sequential(nn.ReLU()))


@pytest.mark.parametrize("name, error", [
    ("kmeans@1", "clusters must be in [2, 256]"), ("kmeans@512", "clusters must be in [2, 256]"),
    ("kmeans@16,per=row", "per is one of tensor, channel"), ("kmeans", "malformed"),
])
def test_bad_settings_are_named(name, error):
    with pytest.raises(KeyError) as excinfo:
        get(name)
    assert error in excinfo.value.args[0]
