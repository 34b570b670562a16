"""The ncnn reader: it reads every byte of the Real-ESRGAN files, each layer type computes what
ncnn's does, a damaged .bin fails loudly, and the generators super-resolve a real photo."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.workloads.ncnn import (
    FP16_TAG,
    FP32_TAG,
    PACKAGE,
    REALESRGAN,
    load_realesrgan,
    read_ncnn,
)

# Counted here; ASSETS.md rounds them to 16.7 M, 4.5 M and 0.62 M.
PARAMS = {"realesrgan-x4plus": 16_697_987, "realesrgan-x4plus-anime": 4_467_779,
          "realesr-animevideov3-x4": 621_424, "realesr-animevideov3-x3": 621_424,
          "realesr-animevideov3-x2": 621_424}

# Every layer type the Real-ESRGAN files use, and the params and storages they use: a
# float16 weight with bias and fused leaky ReLU, an odd-sized float16 weight (padded to 4
# bytes), a float32 weight, the nearest and bicubic Interp, and Split.
TINY = """7767517
13 16
Input        in     0 1 data
Split        split  1 3 data a b c
Convolution  conv1  1 1 a d 0=12 1=3 4=1 5=1 6=324 9=2 -23310=1,1.000000e-01
PReLU        prelu  1 1 d e 0=12
PixelShuffle shuf   1 1 e f 0=2
Convolution  conv2  1 1 b g 0=3 1=1 6=9
Interp       near   1 1 g h 0=1 1=2.000000e+00 2=2.000000e+00
Eltwise      sum    2 1 f h i 0=1 -23301=2,5.000000e-01,2.000000e+00
Interp       cubic  1 1 c j 0=3 1=2.000000e+00 2=2.000000e+00
Split        split2 1 2 j j0 j1
Concat       cat    2 1 i j0 k
Convolution  conv3  1 1 k l 0=3 1=1 5=1 6=18
BinaryOp     add    2 1 l j1 out
"""


def tiny_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"conv1.weight": (12, 3, 3, 3), "conv1.bias": (12,), "prelu.weight": (12,),
              "conv2.weight": (3, 3, 1, 1), "conv3.weight": (3, 6, 1, 1), "conv3.bias": (3,)}
    w = {key: torch.randn(shape, generator=g) for key, shape in shapes.items()}
    for key in ("conv1.weight", "conv2.weight"):  # stored as float16: exact values only
        w[key] = w[key].half().float()
    return w


def write_tiny(folder: Path, param: str = TINY, tail: bytes = b"") -> tuple[Path, Path]:
    """The tiny model's .param and .bin, the .bin written by hand in ncnn's layout."""
    w = tiny_weights()

    def tagged(tensor, tag, dtype):
        data = tag.to_bytes(4, "little") + tensor.numpy().astype(dtype).tobytes()
        return data + bytes(-len(data) % 4)  # ncnn pads each weight to 4 bytes

    def raw(tensor):
        return tensor.numpy().astype("<f4").tobytes()

    blob = (tagged(w["conv1.weight"], FP16_TAG, "<f2") + raw(w["conv1.bias"])
            + raw(w["prelu.weight"])
            + tagged(w["conv2.weight"], FP16_TAG, "<f2")  # 9 values: 18 bytes + 2 of padding
            + tagged(w["conv3.weight"], FP32_TAG, "<f4") + raw(w["conv3.bias"]))
    (folder / "tiny.param").write_text(param)
    (folder / "tiny.bin").write_bytes(blob + tail)
    return folder / "tiny.param", folder / "tiny.bin"


def tiny_expected(x: torch.Tensor) -> torch.Tensor:
    """The tiny model, written with plain torch ops from ncnn's documented semantics."""
    w = tiny_weights()
    d = F.leaky_relu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"], padding=1), 0.1)
    e = torch.where(d < 0, d * w["prelu.weight"].view(1, -1, 1, 1), d)
    f = F.pixel_shuffle(e, 2)
    h = F.conv2d(x, w["conv2.weight"]).repeat_interleave(2, 2).repeat_interleave(2, 3)
    i = 0.5 * f + 2.0 * h
    j = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    return F.conv2d(torch.cat([i, j], 1), w["conv3.weight"], w["conv3.bias"]) + j


@pytest.mark.parametrize("name", REALESRGAN)
def test_every_generator_reads_every_byte(name):
    model = load_realesrgan(name)  # raises unless the .bin is read to its last byte
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.storage_dtypes.keys() == model.state_dict().keys()
    # Conv weights are float16 in these files; biases and PReLU slopes bare float32.
    for key, dtype in model.storage_dtypes.items():
        is_conv_weight = key.startswith("Conv_") and key.endswith(".weight")
        assert dtype == (torch.float16 if is_conv_weight else torch.float32), key


def test_each_layer_type_computes_what_ncnn_documents(tmp_path):
    model = read_ncnn(*write_tiny(tmp_path))
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny_expected(x), rtol=1e-5, atol=1e-5)
    assert model.storage_dtypes == {
        "conv1.weight": torch.float16, "conv1.bias": torch.float32,
        "prelu.weight": torch.float32, "conv2.weight": torch.float16,
        "conv3.weight": torch.float32, "conv3.bias": torch.float32}
    state = model.state_dict()
    assert state.keys() == tiny_weights().keys()
    for key, value in tiny_weights().items():  # float16 read back exactly as float32
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(("tail", "message"), [
    (b"\0" * 6, "6 bytes left after the weights of the last weighted layer (conv3)"),
    (None, "ends 8 bytes early, reading the weights of layer conv3"),
])
def test_a_bin_of_the_wrong_length_fails(tmp_path, tail, message):
    param, bin = write_tiny(tmp_path, tail=tail or b"")
    if tail is None:
        bin.write_bytes(bin.read_bytes()[:-8])  # cut into conv3's bias
    with pytest.raises(ValueError, match=re.escape(message)):
        read_ncnn(param, bin)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("BinaryOp     add", "Sigmoid      add", "type Sigmoid is not supported"),
    ("0=3 1=1 6=9", "0=3 1=1 2=2 6=9", r"Convolution conv2: param \[2\] not supported"),
    ("9=2 -23310=1,1.000000e-01", "9=1", "Convolution conv1: param 9=1 is not supported"),
    ("0=1 -23301", "0=0 -23301", "Eltwise sum: param 0=0 is not supported"),
    ("0=1 1=2.000000e+00", "0=2 1=2.000000e+00", "Interp near: param 0=2 is not supported"),
    ("13 16", "13 17", "header says 13 layers and 17 blobs"),
])
def test_what_the_reader_does_not_implement_fails(tmp_path, old, new, message):
    assert old in TINY
    with pytest.raises(ValueError, match=message):
        read_ncnn(*write_tiny(tmp_path, TINY.replace(old, new, 1)))


def astronaut_x4() -> tuple[torch.Tensor, torch.Tensor]:
    """A real photo (256 x 256 of scikit-image's astronaut), RGB in [0, 1], and its x4
    bicubic downscale with antialiasing."""
    from skimage import data

    hr = torch.from_numpy(data.astronaut()[:256, :256]).permute(2, 0, 1)[None].float() / 255
    return hr, F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


def test_animevideov3_super_resolves_a_real_photo():
    hr, lr = astronaut_x4()
    with torch.no_grad():
        sr = load_realesrgan("realesr-animevideov3-x4")(lr)
    assert sr.shape == hr.shape
    # Measured 25.2 dB (bicubic upscaling 26.7, nearest 24.2: a GAN trades PSNR for
    # sharpness); 0..255 input or a bad layer gives about 10 dB.
    assert psnr_db(sr, hr) > 24.5
    # Downscaled again it must give back its input (30.5 dB): no shift, no colour change.
    assert psnr_db(F.interpolate(sr, scale_factor=0.25, mode="bicubic", antialias=True), lr) > 29


@pytest.mark.parametrize(("name", "size"), [
    ("realesr-animevideov3-x4", 48), ("realesr-animevideov3-x3", 45),
    ("realesr-animevideov3-x2", 47), ("realesrgan-x4plus-anime", 16)])
def test_matches_ncnn_itself(name, size):
    ncnn = pytest.importorskip("ncnn", reason="the ncnn wheel is not installed (the test "
                                              "extra has it): nothing to compare against")
    _, lr = astronaut_x4()
    x = lr[:, :, :size, :size + 3].contiguous()  # odd and non-square sizes on purpose
    folder = Path(next(iter(importlib.util.find_spec(PACKAGE).submodule_search_locations)))
    stem = folder / "models" / REALESRGAN[name]
    net = ncnn.Net()
    net.opt.num_threads = 1
    # ncnn in float32, as the torch module computes (ARM CPUs default to float16 math).
    for option in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_packed",
                   "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    assert net.load_param(str(stem.with_suffix(".param"))) == 0
    assert net.load_model(str(stem.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(x[0].numpy()))
    status, out = extractor.extract("output")
    assert status == 0
    with torch.no_grad():
        ours = load_realesrgan(name)(x)[0]
    # Measured: at most 6.3e-6 over these five sizes; the same float16 weights on both sides.
    torch.testing.assert_close(ours, torch.from_numpy(np.array(out)), rtol=0, atol=5e-5)
