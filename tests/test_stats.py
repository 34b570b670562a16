"""The statistics behind the verdicts: paired drop intervals and speedup intervals."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness.stats import median_ratio, paired_drop


def outcomes(n: int, accuracy: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 100.0 * (torch.rand(n, generator=gen) < accuracy).float()


def flip(samples: torch.Tensor, right_to_wrong: int, wrong_to_right: int = 0) -> torch.Tensor:
    out = samples.clone()
    right, wrong = (samples > 0).nonzero().flatten(), (samples == 0).nonzero().flatten()
    out[right[:right_to_wrong]] = 0.0
    out[wrong[:wrong_to_right]] = 100.0
    return out


def test_identical_models_have_zero_drop_and_a_zero_width_interval():
    ref = outcomes(1000, 0.9, 0)
    iv = paired_drop(ref, ref.clone())
    assert iv.estimate == iv.low == iv.high == 0.0


def test_drop_is_the_difference_of_the_metrics_and_inside_its_interval():
    ref = outcomes(2000, 0.9, 1)
    comp = flip(ref, 40, 10)  # 30 net: 1.5 pp
    iv = paired_drop(ref, comp)
    assert iv.estimate == pytest.approx(ref.mean().item() - comp.mean().item()) == \
        pytest.approx(1.5)
    assert iv.low < 1.5 < iv.high and iv.low > 0


def test_pairing_makes_the_interval_much_narrower_than_two_independent_accuracies():
    ref = outcomes(5000, 0.9, 2)
    paired = paired_drop(ref, flip(ref, 50))
    # Two independent 90 % accuracies on 5,000 samples: sd of the difference ~0.6 pp.
    independent = 2 * 1.96 * (2 * 0.9 * 0.1 / 5000) ** 0.5 * 100
    assert paired.high - paired.low < independent / 3


def test_lower_is_better_metrics_flip_the_sign():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0])
    comp = ref + 0.5  # e.g. per-token loss: higher is worse
    assert paired_drop(ref, comp, higher_is_better=False).estimate == \
        pytest.approx(0.5)


def test_interval_covers_the_true_drop_about_95_percent_of_the_time():
    hits = 0
    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        ref = 100.0 * (torch.rand(800, generator=gen) < 0.9).float()
        # The compressed model loses each right answer with probability 0.03: true drop 2.7 pp.
        lose = torch.rand(800, generator=gen) < 0.03
        comp = torch.where(lose, torch.zeros_like(ref), ref)
        hits += 2.7 in paired_drop(ref, comp, resamples=400)
    assert hits >= 51  # >= 85 % of 60; a 95 % interval misses this rarely


@pytest.mark.parametrize("ref,comp", [(torch.zeros(0), torch.zeros(0)),
                                      (torch.zeros(3), torch.zeros(4))])
def test_paired_drop_refuses_empty_or_unpaired_samples(ref, comp):
    with pytest.raises(ValueError, match="paired_drop"):
        paired_drop(ref, comp)


def test_median_ratio_interval_holds_the_median_and_tightens_with_steady_rounds():
    steady = median_ratio([2.0, 2.01, 1.99, 2.0, 2.02, 1.98, 2.0, 2.01, 1.99])
    noisy = median_ratio([2.0, 2.6, 1.5, 2.2, 1.7, 2.4, 1.9, 2.5, 1.6])
    assert steady.low <= 2.0 <= steady.high
    assert steady.high - steady.low < (noisy.high - noisy.low) / 5


def test_median_ratio_refuses_zero_rounds():
    with pytest.raises(ValueError, match="zero timing rounds"):
        median_ratio([])


def test_perplexity_drop_is_exp_of_the_mean_window_loss_and_inside_its_interval():
    gen = torch.Generator().manual_seed(3)
    ref = 3.0 + 0.3 * torch.randn(64, generator=gen)
    comp = ref + 0.05 + 0.02 * torch.randn(64, generator=gen)  # every window a bit worse
    interval = paired_drop(ref, comp, higher_is_better=False, summary=torch.exp)
    want = comp.double().mean().exp() - ref.double().mean().exp()  # perplexity increase
    assert interval.estimate == pytest.approx(float(want))
    assert interval.low <= interval.estimate <= interval.high
    assert interval.low > 0  # a consistent shift is resolved
