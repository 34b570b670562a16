"""A sentence encoder as a workload: `sentence_encoder(...)`, a linear probe's accuracy on its
embeddings of labelled texts, and how close compressed embeddings stay to the reference's.

The probe (logistic regression on the reference's embeddings of the training split) is trained
once and kept fixed: a compressed encoder is scored the way it is deployed, under the head that
was trained on the original. MiniLM (minilm_l6.py) is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads.base import TOP1, Score, Workload, chance_top1, evaluation
from benchmarks.workloads.cache import cached_state_dict, state_sha256
from benchmarks.workloads.console import progress, say, say_loaded
from benchmarks.workloads.device import model_device

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


def load_pretrained(name: str, source: str) -> tuple[SentenceEncoder, object]:
    from transformers import AutoModel, AutoTokenizer

    say(name, f"loading {source}")
    start = time.perf_counter()
    # No pooler: the sentence embedding is the mean of the token states; the pooler is unused.
    encoder = AutoModel.from_pretrained(source, dtype=torch.float32, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = SentenceEncoder(encoder, tokenizer.pad_token_id).eval()
    say_loaded(name, model, start)
    return model, tokenizer


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


def sentence_encoder(name: str, source: str, texts: list[str], labels: list[int],
                     classes: list[str], data: str) -> Workload:
    """A sentence encoder (any transformers `AutoModel` id or folder, mean-pooled and
    normalized) scored by the top-1 of a linear probe on its embeddings of labelled texts
    (`data` names them): the probe is trained once on the reference's embeddings of a seeded
    80 % and kept fixed; the other 20 % is scored, with the cosine of each embedding to the
    reference's beside it."""
    model, tokenizer = load_pretrained(name, source)
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

    state, _ = cached_state_dict(name, recipe, fit)
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
        name=name,
        metric=TOP1,
        model=model,
        evaluate=evaluate,
        calibration=calibration,
        example_input=ids[test][:TIMING_BATCH],
        finetune=None,
        checkpoint_sha256=recipe.encoder_sha256,
        evaluation=evaluation(f"{data}: {n_test} of {len(labels):,} articles "
                              f"(seeded split), first {MAX_TOKENS} tokens each, and labels",
                              n_test, ids[test], labels[test]),
        floor=chance_top1(labels[test]),
        notes={"source": source, "probe": recipe.__dict__, "test_articles": n_test},
        timed_items=("encode", TIMING_BATCH, "doc"),
    )
