"""fmnist-vae: a small convolutional VAE trained here on Fashion-MNIST; its decoder is compressed.

The model under test is the VAE's decoder, the generator: latents in, images out, as it is
deployed to generate. The encoder is the reference's, fp32 and never compressed: it gives the
approximate posterior q(z|x) that scores a decoder, and the ELBO is a lower bound on a
decoder's log-likelihood for any q, so a compressed decoder's ELBO under the reference's
encoder is a valid bound too. (Compressing the whole VAE would leave the decoder callable only
through the VAE's forward once FX graph mode has quantized it, and generating needs it alone.)

Likelihood: 8-bit pixels under a discretized logistic (PixelCNN++'s, one component per pixel,
location and log-scale from the decoder), a probability over the 256 grey levels, so the
negative ELBO is in nats per image (divide by 784 ln 2 for bits per pixel). Metric: the
negative ELBO on the 10k test images, one posterior sample per image drawn once from a seeded
generator, KL to the N(0, I) prior in closed form; the same latents score every model, so the
comparison is paired. Beside it: the reconstruction MSE (decoder's location at the posterior
mean, pixels in [0, 1]) and `fd_fmnist_cnn`, the Frechet distance between 10k generated images
and the test images in the feature space of the fmnist-cnn classifier (its 128 penultimate
activations). It is FID's formula on another network: Inception weights are not available
offline, so its values are not comparable with published FIDs; the workload's notes give the
distance of real training images to the test images for scale. The report's picture: the
images generated from the first 32 of those prior latents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads import fashion_mnist, fmnist_cnn
from benchmarks.workloads.base import NEG_ELBO, Floor, Score, Workload, evaluation
from benchmarks.workloads.cache import cached_state_dict, state_sha256
from benchmarks.workloads.device import batched_outputs, model_device
from benchmarks.workloads.training import train

NAME = "fmnist-vae"
FAMILY = "generative"
# PR tier: three cheap cells with a real effect to guard.
CELLS = {
    "int8_dynamic": "full",
    "int8_static": "pr",
    "int8_pt2e": "full",  # FX's successor: PT2E, X86InductorQuantizer, torch.compile
    "fp16": "full",
    "bf16": "full",
    "prune_l1@0.5": "full",
    "prune_l1@0.5+ft": "full",
    "prune_global@0.5": "pr",
    "prune_global@0.5+ft": "full",
    "prune_channels@0.5": "full",
    "prune_channels@0.5+ft": "full",
    "svd@0.9": "pr",
    "openvino": "full",
    "openvino_int8": "full",
    "kmeans@16": "full",
}


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained reference VAE; its hash keys the cache."""

    arch: str
    latent: int
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0


# 4 epochs: 2 min 43 s on the 2 threads of a 2-core AMD EPYC.
RECIPE = Recipe(arch="vae-conv32-64-fc256-z16-dlogistic", latent=16, epochs=4, batch_size=128,
                lr=2e-3)
# The recovery fine-tune of `+ft` cells: a few hundred steps of the same ELBO training.
FINETUNE_STEPS, FINETUNE_LR = 200, 5e-4
EVAL_BATCH = 500
TIMING_BATCH = 32
CALIBRATION_BATCHES, CALIBRATION_BATCH = 8, 64
N_GENERATED = 10_000
# The report's picture: the images of the first 32 prior latents, 8 per row.
PICTURE_IMAGES, PICTURE_PER_ROW = 32, 8
NOISE_SEED = 1234  # the posterior samples and prior latents every model is scored on
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on a pixel's log-scale
BIN = 1 / 255  # half a grey level on the [-1, 1] scale


class Encoder(nn.Module):
    """28x28 image in [-1, 1] -> the mean and log-variance of q(z|x)."""

    def __init__(self, latent: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(),
        )
        # Two heads rather than one split in two: a dependency graph cannot follow a chunk.
        self.mean = nn.Linear(256, latent)
        self.log_var = nn.Linear(256, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.log_var(h)


def build_decoder(latent: int) -> nn.Sequential:
    """z -> (N, 2, 28, 28): each pixel's logistic location (channel 0) and log-scale (1).

    Upsampling then Conv2d rather than ConvTranspose2d: the techniques (SVD, pruning, the output
    layers that channel pruning keeps whole) know Conv2d and Linear layers.
    """
    return nn.Sequential(
        nn.Linear(latent, 256), nn.ReLU(),
        nn.Linear(256, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
        nn.Upsample(scale_factor=2), nn.Conv2d(64, 32, 3, padding=1), nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(32, 2, 3, padding=1),
    )


class VAE(nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.encoder = Encoder(latent)
        self.decoder = build_decoder(latent)


def as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [-1, 1], the likelihood's scale."""
    return (images.float() / 127.5 - 1).unsqueeze(1)


def log_likelihood(params: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """log p(x|z) in nats of each uint8 image under the decoder's discretized logistics.

    Grey level v owns [v - 0.5, v + 0.5] on the 0..255 scale, levels 0 and 255 the tails
    below and above. log(sigmoid(a) - sigmoid(b)) is written as log sigmoid(a) + log
    sigmoid(-b) + log(1 - e^(b - a)), which stays exact where both sigmoids are near 0 or 1.
    In float64: in float32 the edges two neighbouring levels share differ by a rounding, which
    the narrowest logistics magnify a thousandfold (the probabilities summed to 1 - 1.6e-5).
    """
    x = (images.double() / 127.5 - 1).to(params.device)
    location = params[:, 0].double()
    log_scale = params[:, 1].double().clamp_min(MIN_LOG_SCALE)
    inv_scale = torch.exp(-log_scale)
    upper, lower = inv_scale * (x - location + BIN), inv_scale * (x - location - BIN)
    inner = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
    levels = images.to(params.device)
    log_p = torch.where(levels == 0, F.logsigmoid(upper),
                        torch.where(levels == 255, F.logsigmoid(-lower), inner))
    return log_p.flatten(1).sum(1)


def kl_to_prior(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) in nats, per row."""
    return 0.5 * (mean.square() + log_var.exp() - 1 - log_var).double().sum(1)


def neg_elbo(decoder: nn.Module, mean: torch.Tensor, log_var: torch.Tensor,
             images: torch.Tensor) -> torch.Tensor:
    """-ELBO of each image with one reparameterized sample of q(z|x) (noise from torch's global
    generator, which train() seeds)."""
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    return kl_to_prior(mean, log_var) - log_likelihood(decoder(z), images)


def decode(decoder: nn.Module, z: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    """The decoder's (N, 2, 28, 28) outputs for latents z, in float32 on the CPU."""
    return batched_outputs(decoder, z, EVAL_BATCH, input_dtype)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (N, D), in float64."""
    return frechet_from_stats(*gaussian(a), *gaussian(b))


def gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_from_stats(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor,
                       cov_b: torch.Tensor) -> float:
    """|m_a - m_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

    Tr((C_a C_b)^(1/2)) is computed as Tr((S C_b S)^(1/2)) with S = C_a^(1/2): the same
    eigenvalues, but of a symmetric matrix, so eigh applies and no complex square root of a
    non-symmetric product leaves an imaginary residue to discard.
    """
    mean_a, cov_a, mean_b, cov_b = (t.double() for t in (mean_a, cov_a, mean_b, cov_b))
    sqrt_a = psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a positive semi-definite matrix (rounding below 0 clipped)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def evaluator(encoder: nn.Module, features: Callable[[torch.Tensor], torch.Tensor],
              images: torch.Tensor, real_features: torch.Tensor, z_prior: torch.Tensor,
              seed: int = NOISE_SEED) -> Callable[[nn.Module, torch.dtype], Score]:
    """evaluate(decoder, input_dtype) -> the decoder's -ELBO on `images`, with extras.

    Everything that does not depend on the decoder is computed once here: the encoder's
    posteriors, one seeded sample of each, and their KL. `features` maps uint8 images
    (N, 28, 28) to (N, D), `real_features` are those of `images`; `z_prior` are the latents to
    generate from for the Frechet distance.
    """
    mean, log_var = posterior(encoder, images)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    z_posterior = mean + torch.exp(0.5 * log_var) * noise
    kl = kl_to_prior(mean, log_var)

    def evaluate(decoder: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        per_image = kl - log_likelihood(decode(decoder, z_posterior, input_dtype), images)
        reconstruction = (decode(decoder, mean, input_dtype)[:, 0].clamp(-1, 1) + 1) / 2
        generated = location_images(decode(decoder, z_prior, input_dtype))
        return Score(per_image.mean().item(), per_image, extras={
            "recon_mse": (reconstruction - images.float() / 255).square().mean().item(),
            "fd_fmnist_cnn": frechet_distance(features(generated), real_features),
        })

    return evaluate


def posterior(encoder: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and log-variance of q(z|x) for uint8 images (N, 28, 28)."""
    with torch.no_grad():
        parts = [encoder(as_input(b)) for b in images.split(EVAL_BATCH)]
    return torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts])


def independent_pixels_nats(train_images: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """-log p(x) in nats of each image under its pixels' own histograms of the training images
    (add-one smoothed): at least as good as any decoder that ignores its latent."""
    pixels = train_images.flatten(1).long().T  # (784, N)
    counts = torch.zeros(len(pixels), 256, dtype=torch.float64)
    counts.scatter_add_(1, pixels, torch.ones_like(pixels, dtype=torch.float64))
    log_p = (counts + 1).log() - (counts.sum(1, keepdim=True) + 256).log()
    return -log_p.gather(1, images.flatten(1).long().T).sum(0)


def location_images(params: torch.Tensor) -> torch.Tensor:
    """The decoder's per-pixel locations as uint8 images (N, 28, 28), like the real ones."""
    return ((params[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def picture_grid(decoder: nn.Module, z: torch.Tensor, input_dtype: torch.dtype,
                 per_row: int = PICTURE_PER_ROW, zoom: int = 2) -> np.ndarray:
    """The images a decoder generates from latents z, tiled per_row wide, as (H, W, 3) uint8."""
    images = location_images(decode(decoder, z, input_dtype))
    rows = images.reshape(-1, per_row, 28, 28).permute(0, 2, 1, 3).reshape(-1, per_row * 28)
    big = rows.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
    return big[..., None].expand(-1, -1, 3).contiguous().numpy()


def classifier_features() -> Callable[[torch.Tensor], torch.Tensor]:
    """fmnist-cnn's reference (trained by its own workload, cached) up to its penultimate ReLU:
    uint8 images -> 128 features each."""
    body = fmnist_cnn.load().model[:-2]  # without the dropout and the output layer

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([body(fashion_mnist.normalize(b)) for b in images.split(EVAL_BATCH)])

    return features


def load() -> Workload:
    data = fashion_mnist.load()

    def batch_loss(vae: VAE, idx: torch.Tensor) -> torch.Tensor:
        images = data.train_images[idx]
        return neg_elbo(vae.decoder, *vae.encoder(as_input(images)), images).mean()

    def fit() -> nn.Module:
        return train(VAE(RECIPE.latent), batch_loss, len(data.train_labels),
                     epochs=RECIPE.epochs, batch_size=RECIPE.batch_size, lr=RECIPE.lr,
                     seed=RECIPE.seed, desc=f"train {NAME}")

    state, path = cached_state_dict(NAME, RECIPE, fit)
    vae = VAE(RECIPE.latent)
    vae.load_state_dict(state)
    vae.eval()
    encoder = vae.encoder
    z_prior = torch.randn(N_GENERATED, RECIPE.latent,
                          generator=torch.Generator().manual_seed(NOISE_SEED + 1))
    features = classifier_features()
    test_features = features(data.test_images)
    evaluate = evaluator(encoder, features, data.test_images, test_features, z_prior)
    # What fd_fmnist_cnn is for real images: 10k training images against the test images.
    real_idx = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(3))
    fd_real = frechet_distance(features(data.train_images[real_idx[:N_GENERATED]]),
                               test_features)

    def finetune(decoder: nn.Module, steps: int | None = None) -> None:
        def decoder_loss(candidate: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            images = data.train_images[idx]
            with torch.no_grad():  # the encoder is the reference's, never trained here
                mean, log_var = encoder(as_input(images))
            device = model_device(candidate)
            return neg_elbo(candidate, mean.to(device), log_var.to(device), images).mean()

        train(decoder, decoder_loss, len(data.train_labels), batch_size=RECIPE.batch_size,
              lr=FINETUNE_LR, seed=RECIPE.seed + 1, max_steps=steps or FINETUNE_STEPS,
              desc=f"fine-tune {NAME}")

    # Calibration: posterior samples of training images, the latents the decoder was trained
    # on, never of the test images it is scored on.
    gen = torch.Generator().manual_seed(7)
    idx = torch.randperm(len(data.train_labels), generator=gen)[
        :CALIBRATION_BATCHES * CALIBRATION_BATCH]
    with torch.no_grad():
        mean, log_var = encoder(as_input(data.train_images[idx]))
    calibration = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=gen)
    return Workload(
        name=NAME,
        metric=NEG_ELBO,
        model=vae.decoder,
        evaluate=evaluate,
        calibration=list(calibration.split(CALIBRATION_BATCH)),
        example_input=z_prior[:TIMING_BATCH],  # generating 32 images
        finetune=finetune,
        checkpoint_sha256=state_sha256(state),
        evaluation=evaluation(f"Fashion-MNIST t10k: all 10,000 test images, one posterior "
                              f"sample each (seed {NOISE_SEED})", len(data.test_images),
                              data.test_images, NOISE_SEED),
        # A decoder that ignores its latent still pays the encoder's KL.
        floor=Floor(kl_to_prior(*posterior(encoder, data.test_images)).mean().item()
                    + independent_pixels_nats(data.train_images, data.test_images).mean().item(),
                    "a decoder that ignores its latent: each pixel's histogram, plus the KL"),
        notes={"checkpoint": str(path), "recipe": RECIPE.__dict__,
               "fd_fmnist_cnn_real_train_vs_test": round(fd_real, 3)},
        timed_items=("generate", TIMING_BATCH, "img"),
        picture=lambda decoder, input_dtype: picture_grid(
            decoder, z_prior[:PICTURE_IMAGES], input_dtype),
    )
