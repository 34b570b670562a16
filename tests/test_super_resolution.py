"""The super-resolution workloads' data and metrics (Real-ESRGAN on skimage photos)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.workloads import super_resolution as sr
from benchmarks.workloads.ncnn import load_realesrgan


def test_tiles_cover_each_photo_in_whole_tiles_and_downscale_by_four():
    truth = sr.tiles("astronaut")  # 512 x 512: 16 tiles
    assert truth.shape == (16, 3, sr.TILE, sr.TILE)
    assert truth.min() >= 0.0 and truth.max() <= 1.0
    assert torch.equal(truth[1], sr.photo("astronaut")[:, :sr.TILE, sr.TILE:2 * sr.TILE])
    low = sr.downscale(truth)
    assert low.shape == (16, 3, sr.TILE // sr.SCALE, sr.TILE // sr.SCALE)


def test_psnr_and_ssim_of_known_pairs():
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert sr.psnr(a, a).tolist() == pytest.approx([100.0, 100.0])  # identical: capped
    noisy = (a + 0.1).clamp(0, 1)
    mse = (noisy - a).pow(2).flatten(1).mean(1)
    assert sr.psnr(noisy, a).tolist() == pytest.approx([-10 * math.log10(m) for m in mse])
    assert sr.ssim(a, a).tolist() == pytest.approx([1.0, 1.0])
    assert (sr.ssim(noisy, a) < 1.0).all()


def test_the_generator_weights_are_float16_in_the_file_so_an_fp16_copy_loses_none():
    model = load_realesrgan("realesr-animevideov3-x4")
    convs = [k for k, dtype in model.storage_dtypes.items() if k.endswith(".weight")
             and dtype == torch.float16]
    assert convs, "expected float16 convolution weights in the ncnn file"
    state = model.state_dict()
    for key in convs:
        assert torch.equal(state[key].half().float(), state[key])


def test_the_reference_scores_the_same_twice_and_faithfully_to_itself():
    workload = sr.super_resolution("tiny-sr", load_realesrgan("realesr-animevideov3-x4"),
                                   timing_batch=2)
    first, second = workload.evaluate(workload.model), workload.evaluate(workload.model)
    assert torch.equal(first.per_sample, second.per_sample)
    assert first.value == pytest.approx(first.per_sample.mean().item())
    assert first.extras["psnr_to_reference_db"] == pytest.approx(100.0)
    # a GAN generator gives up PSNR for sharpness, but it is a real x4 upscaler of these photos
    assert 24.0 < first.value < 35.0
