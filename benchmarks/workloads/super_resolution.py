"""x4 super-resolution with pretrained Real-ESRGAN generators on real photos.

The photos ship in scikit-image (`skimage.data`). Each is cut into 128 px tiles, the high-
resolution truth; the generator sees each tile downscaled x4 (bicubic, antialiased). Metric:
PSNR in dB of the generator's output (clamped to [0, 1]) against the truth, the mean over
tiles. Beside it: SSIM against the truth, and PSNR and SSIM against the fp32 generator's own
output, which say how faithfully a compressed generator reproduces the reference (identical
outputs score 100 dB). A GAN generator trades PSNR for sharpness, so its PSNR against the
truth sits below plain bicubic upscaling: the drop from the reference is what is judged.

Recovery (`+ft`) is distillation: L1 toward the reference's outputs on tiles of a photo that
is never scored.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads.base import PSNR, Score, Workload, evaluation
from benchmarks.workloads.cache import state_sha256
from benchmarks.workloads.device import batched_outputs, model_device
from benchmarks.workloads.training import train

SCALE, TILE = 4, 128
SCORED = ("astronaut", "coffee", "chelsea", "rocket")
TRAINING = "stereo_motorcycle"  # calibration and recovery only, never scored
EVAL_BATCH = 8
FINETUNE_STEPS, FINETUNE_BATCH, FINETUNE_LR = 100, 8, 1e-4
# The report's picture: the astronaut's face, 256 px, upscaled from 64 px.
PICTURE = ("astronaut", slice(0, 256), slice(128, 384))
MIN_MSE = 1e-10  # identical outputs: 100 dB rather than infinity


def photo(name: str) -> torch.Tensor:
    """A photo from skimage.data as a (3, H, W) float tensor in [0, 1]."""
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def tiles(names: tuple[str, ...] | str) -> torch.Tensor:
    """Every whole TILE x TILE tile of the photos, row by row: (N, 3, TILE, TILE)."""
    names = (names,) if isinstance(names, str) else names
    out = []
    for name in names:
        image = photo(name)
        rows, cols = image.shape[1] // TILE, image.shape[2] // TILE
        out += [image[:, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
                for r in range(rows) for c in range(cols)]
    return torch.stack(out)


def downscale(high: torch.Tensor) -> torch.Tensor:
    return F.interpolate(high, scale_factor=1 / SCALE, mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)


def upscale(model: nn.Module, low: torch.Tensor,
            input_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The generator's outputs, clamped to [0, 1], in float32 on the CPU."""
    return batched_outputs(model, low, EVAL_BATCH, input_dtype).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair (signals in [0, 1])."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1).clamp_min(MIN_MSE)
    return -10 * torch.log10(mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair, scikit-image's (Gaussian window, as Wang et al. 2004)."""
    from skimage.metrics import structural_similarity

    return torch.tensor([structural_similarity(x.numpy(), y.numpy(), channel_axis=0,
                                               data_range=1.0, gaussian_weights=True,
                                               use_sample_covariance=False)
                         for x, y in zip(a, b, strict=True)], dtype=torch.float64)


def super_resolution(name: str, model: nn.Module, timing_batch: int,
                     notes: dict | None = None) -> Workload:
    """A Workload for a pretrained x4 generator `model` (RGB in [0, 1] in and out)."""
    model.eval()
    truth = tiles(SCORED)
    low = downscale(truth)
    reference = upscale(model, low)
    training = tiles(TRAINING)
    training_low = downscale(training)

    def evaluate(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        out = upscale(candidate, low, input_dtype)
        per_tile = psnr(out, truth)
        return Score(per_tile.mean().item(), per_tile, extras={
            "ssim": ssim(out, truth).mean().item(),
            "psnr_to_reference_db": psnr(out, reference).mean().item(),
            "ssim_to_reference": ssim(out, reference).mean().item()})

    targets: list[torch.Tensor] = []  # the reference's outputs on the training tiles, once

    def finetune(candidate: nn.Module, steps: int | None = None) -> None:
        if not targets:
            targets.append(upscale(model, training_low))

        def batch_loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            device = model_device(m)
            return F.l1_loss(m(training_low[idx].to(device)), targets[0][idx].to(device))

        train(candidate, batch_loss, len(training_low), batch_size=FINETUNE_BATCH,
              lr=FINETUNE_LR, seed=1, max_steps=steps or FINETUNE_STEPS, desc=f"fine-tune {name}")

    face = downscale(photo(PICTURE[0])[None, :, PICTURE[1], PICTURE[2]])

    def picture(candidate: nn.Module, input_dtype: torch.dtype) -> np.ndarray:
        out = upscale(candidate, face, input_dtype)[0]
        return (out * 255).round().byte().permute(1, 2, 0).numpy()

    return Workload(
        name=name,
        metric=PSNR,
        model=model,
        evaluate=evaluate,
        calibration=list(training_low[:32].split(EVAL_BATCH)),
        example_input=low[:timing_batch],
        finetune=finetune,
        checkpoint_sha256=state_sha256(model.state_dict()),
        evaluation=evaluation(f"{len(truth)} tiles of {TILE} px of skimage.data's "
                              f"{', '.join(SCORED)}, downscaled x{SCALE} (bicubic)",
                              len(truth), (truth * 255).round().byte()),
        # No floor: a GAN generator gives up PSNR for sharpness, so the plain upsamplers score
        # about as well (animevideov3 27.24 dB, nearest-neighbour 27.12, bicubic 28.69) and
        # PSNR cannot tell a collapsed generator from a working one.
        notes={"scored": f"{len(truth)} tiles of {', '.join(SCORED)}", **(notes or {})},
        timed_items=("images", timing_batch, "img"),
        picture=picture,
    )

