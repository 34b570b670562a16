"""The fmnist-vae workload's scoring: the likelihood, the ELBO evaluation, the Frechet distance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import compress
from benchmarks.workloads import fmnist_cnn
from benchmarks.workloads import fmnist_vae as vae
from benchmarks.workloads.fashion_mnist import normalize

LATENT = 8


def random_features(n: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen) @ torch.randn(dim, dim, generator=gen)


def test_frechet_distance_of_a_feature_set_to_itself_is_zero():
    a = random_features(500, 16, seed=0)
    assert vae.frechet_distance(a, a) == pytest.approx(0, abs=1e-9 * float(a.var(0).sum()))
    assert vae.frechet_distance(a, a + 1) == pytest.approx(16)  # a shift only adds |dm|^2


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    gen = torch.Generator().manual_seed(1)
    mean_a, mean_b = (torch.randn(10, generator=gen, dtype=torch.float64) for _ in range(2))
    var_a, var_b = (3 * torch.rand(10, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = (mean_a - mean_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum()
    got = vae.frechet_from_stats(mean_a, torch.diag(var_a), mean_b, torch.diag(var_b))
    assert got == pytest.approx(float(expected), rel=1e-9)


def test_frechet_distance_agrees_with_scipy_sqrtm_on_full_covariances():
    a, b = random_features(400, 12, seed=2), random_features(300, 12, seed=3) + 0.5
    mean_a, cov_a = (t.numpy() for t in vae.gaussian(a))
    mean_b, cov_b = (t.numpy() for t in vae.gaussian(b))
    cross = scipy.linalg.sqrtm(cov_a @ cov_b).real  # the usual FID code's way
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * cross)
    assert vae.frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)
    assert vae.frechet_distance(b, a) == pytest.approx(expected, rel=1e-7)


def test_the_discretized_logistic_is_a_distribution_over_the_256_grey_levels():
    # Each parameter pair scores one 1x1 image of every grey level: the probabilities sum to 1,
    # for narrow and wide logistics and locations inside and beyond [-1, 1].
    locations = torch.tensor([-1.5, -1.0, -0.3, 0.0, 0.01, 0.7, 1.0, 1.4])
    log_scales = torch.tensor([-9.0, -7.0, -4.0, -1.0, 0.5, 2.0])
    pairs = torch.cartesian_prod(locations, log_scales)  # (48, 2)
    params = pairs.repeat_interleave(256, 0)[:, :, None, None]  # (48 * 256, 2, 1, 1)
    images = torch.arange(256, dtype=torch.uint8).repeat(len(pairs))[:, None, None]
    log_p = vae.log_likelihood(params, images).reshape(len(pairs), 256)
    assert torch.logsumexp(log_p, dim=1) == pytest.approx(torch.zeros(len(pairs)), abs=1e-9)


def tiny_parts(n_images: int = 48):
    """An untrained VAE, random images, and untrained fmnist-cnn features: no training here."""
    torch.manual_seed(0)
    model = vae.VAE(LATENT).eval()
    body = fmnist_cnn.build().eval()[:-2]

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return body(normalize(images))

    images = torch.randint(0, 256, (n_images, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(5))
    z_prior = torch.randn(n_images, LATENT, generator=torch.Generator().manual_seed(6))
    return model, vae.evaluator(model.encoder, features, images, features(images), z_prior), z_prior


def test_evaluation_is_deterministic_and_its_value_is_the_mean_of_its_samples():
    model, evaluate, _ = tiny_parts()
    first, second = evaluate(model.decoder), evaluate(model.decoder)
    assert torch.equal(first.per_sample, second.per_sample) and first.extras == second.extras
    assert first.per_sample.shape == (48,)
    assert first.value == pytest.approx(first.per_sample.mean().item(), rel=1e-12)
    # KL >= 0 and the log-probability of a discrete image <= 0: -ELBO is never negative.
    assert bool((first.per_sample >= 0).all())
    assert set(first.extras) == {"recon_mse", "fd_fmnist_cnn"}


def test_a_changed_decoder_moves_the_score_on_the_same_latents():
    model, evaluate, _ = tiny_parts()
    before = evaluate(model.decoder)
    with torch.no_grad():
        model.decoder[-1].bias[1] += 1.0  # wider logistics everywhere
    after = evaluate(model.decoder)
    assert not torch.equal(before.per_sample, after.per_sample)
    assert after.extras["recon_mse"] == before.extras["recon_mse"]  # locations did not move


def test_the_timed_forward_is_deterministic():
    model, _, z_prior = tiny_parts()
    with torch.inference_mode():
        a, b = model.decoder(z_prior[:32]), model.decoder(z_prior[:32])
    assert a.shape == (32, 2, 28, 28) and torch.equal(a, b)


def test_every_technique_of_the_scope_runs_on_the_decoder():
    model, evaluate, z_prior = tiny_parts()
    ctx = compress.Context(calibration=list(torch.randn(128, LATENT).split(64)),
                           example_input=z_prior[:32], finetune=lambda _: None)
    for name in sorted({c.removesuffix("+ft") for c in vae.CELLS}):
        out = compress.get(name).apply(model.decoder, ctx)
        with torch.inference_mode():
            y = out.model(z_prior[:32].to(out.input_dtype))
        assert y.shape == (32, 2, 28, 28), name
        assert np.isfinite(evaluate(out.model, out.input_dtype).value), name


def test_the_picture_tiles_the_generated_images_in_order():
    model, _, z_prior = tiny_parts()
    grid = vae.picture_grid(model.decoder, z_prior[:32], torch.float32, per_row=8, zoom=2)
    assert grid.shape == (4 * 56, 8 * 56, 3) and grid.dtype == np.uint8
    images = vae.location_images(vae.decode(model.decoder, z_prior[:32], torch.float32))
    # Image 11 is row 1, column 3; each pixel is a 2x2 block, the same in all three channels.
    tile = grid[56:112, 3 * 56:4 * 56]
    assert np.array_equal(tile[::2, ::2, 0], images[11].numpy())
    assert np.array_equal(tile[1::2, 1::2, 2], images[11].numpy())
