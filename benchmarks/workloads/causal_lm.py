"""A causal LM as a workload, from a model id, a folder or a GGUF file: `causal_lm(...)`.

The model is held in fp32 and scored by its perplexity on corpora in fixed windows, each
window one paired sample; beside it, how far each next-token distribution moved from the
reference's (KL divergence, top-1 agreement, as llama.cpp judges its quantizations). Timed:
prefill of a prompt (the timing batch) and greedy decoding (the `decode` probe).
SmolLM2 (smollm2_135m.py) is one; a user's own LM is a few lines (README, "Bring your own
model").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads.base import KLD, PERPLEXITY, Floor, Probe, Score, Workload, evaluation
from benchmarks.workloads.cache import state_sha256
from benchmarks.workloads.console import progress, say, say_loaded
from benchmarks.workloads.device import model_device
from benchmarks.workloads.text import britannica, pydoc_topics
from benchmarks.workloads.training import train

EVAL_BATCH = 4  # windows per forward pass (a 49k vocabulary: 4 x 256 x 49152 x 4 B = 200 MB)
# The recovery fine-tune: two passes over the held-out windows, at most `finetune_steps`.
FINETUNE_BATCH, FINETUNE_SEED = 4, 0


def load_pretrained(name: str, source: str | Path, gguf_file: str | None = None):
    """(model in fp32, tokenizer) from a model-hub id or folder, or a GGUF file in a folder
    (dequantized by transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    say(name, f"loading {source} {gguf_file or ''} (in fp32)")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs).eval()
    if gguf_file:
        # The GGUF tensors are dequantized into plain fp32 weights, but transformers still
        # marks the model as GGUF-quantized and refuses to save it (save_pretrained is how the
        # bitsandbytes cells quantize): unmark it.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        model.config.quantization_config = None
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    say_loaded(name, model, start)
    return model, tokenizer


def scored_logits(model: nn.Module, windows: torch.Tensor, desc: str):
    """(batch of windows, their next-token logits in fp32 on the CPU), EVAL_BATCH at a time,
    each window scored on its own."""
    device = model_device(model)
    with torch.inference_mode():
        for batch in progress(windows.split(EVAL_BATCH), desc=desc, unit="batch"):
            yield batch, model(batch.to(device), use_cache=False).logits[:, :-1].float().cpu()


def window_losses(batch: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss (nats) of each window."""
    return F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").mean(dim=1)


@dataclass(frozen=True)
class Distributions:
    """A model's next-token distributions on a batch of windows, what fidelity is judged by:
    log-probabilities (the reference's are kept for every cell: 800 MB a corpus, in fp32 so
    that rounding them adds nothing to a small divergence), top tokens, each window's loss."""

    log_probs: torch.Tensor
    top: torch.Tensor
    losses: torch.Tensor

    @classmethod
    def of(cls, batch: torch.Tensor, logits: torch.Tensor) -> Distributions:
        return cls(F.log_softmax(logits, dim=-1), logits.argmax(dim=-1),
                   window_losses(batch, logits))


def fidelity(reference: Distributions, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window: the mean KL divergence (nats) of the model's next-token distribution from the
    reference's, and the % of positions where both put the same token first (llama.cpp's
    perplexity --kl-divergence reports both)."""
    log_p = reference.log_probs
    kld = (log_p.exp() * (log_p - F.log_softmax(logits, dim=-1))).sum(dim=-1).mean(dim=1)
    same_top = (logits.argmax(dim=-1) == reference.top).double().mean(dim=1) * 100
    return kld.clamp_min(0.0).double(), same_top


def unigram_perplexity(windows: torch.Tensor) -> Floor:
    """The perplexity of the best context-free model of the scored tokens: each token's own
    frequency among them. A language model above it makes no use of context at all."""
    targets = windows[:, 1:].flatten()  # the predicted tokens, as window_losses scores them
    counts = torch.bincount(targets).double()
    log_p = (counts[targets] / len(targets)).log()
    return Floor(float((-log_p.mean()).exp()), "unigram: each token's frequency in the windows")


def next_token_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over a batch of windows (a training loss)."""
    logits = model(input_ids=windows, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), windows[:, 1:].flatten())


def causal_lm(name: str, source: str | Path, *, gguf_file: str | None = None,
              corpora: dict[str, Callable[[], str]] | None = None,
              tokens_per_corpus: int = 4096, window: int = 256, calibration_windows: int = 8,
              prefill_tokens: int = 128, decode_prompt: int = 32, decode_tokens: int = 32,
              finetune_steps: int = 16, finetune_lr: float = 1e-3) -> Workload:
    """A causal LM (any `AutoModelForCausalLM` id or folder, or a GGUF file in a folder) held in
    fp32, scored by its perplexity on the first `tokens_per_corpus` tokens of each corpus in
    `window`-token windows (default: a Britannica article and CPython's help topics, which ship
    in packages); calibration, prompts and the recovery fine-tune come from the tokens after
    the scored ones. Timed: a `prefill_tokens` prompt, and greedy decoding of `decode_tokens`."""
    if tokens_per_corpus % window or tokens_per_corpus < window:
        raise ValueError(f"{name}: tokens_per_corpus={tokens_per_corpus} must be a whole number "
                         f"of {window}-token windows (window=...)")
    model, tokenizer = load_pretrained(name, source, gguf_file)
    source_file = Path(source) / gguf_file if gguf_file else None
    corpora = corpora or {"britannica": britannica, "pydoc": pydoc_topics}
    ids = {corpus: tokenizer(text(), return_tensors="pt").input_ids[0]
           for corpus, text in corpora.items()}
    for corpus, tokens in ids.items():
        if len(tokens) < 2 * tokens_per_corpus:
            raise ValueError(f"{name}: corpus {corpus!r} has {len(tokens)} tokens, fewer than "
                             f"the {2 * tokens_per_corpus} its scored and held-out parts need "
                             "(2 x tokens_per_corpus): give a longer text or fewer tokens")
    scored = {corpus: t[:tokens_per_corpus].reshape(-1, window) for corpus, t in ids.items()}
    # Everything a technique sees comes after the scored tokens: calibration, prompts.
    held_out = {corpus: t[tokens_per_corpus:2 * tokens_per_corpus] for corpus, t in ids.items()}
    first = next(iter(held_out.values()))

    reference: dict[str, list[Distributions]] = {}  # the reference's, computed once, lazily

    def evaluate(candidate: nn.Module, _input_dtype: torch.dtype = torch.float32) -> Score:
        losses, kld, same_top = {}, [], []
        for corpus, windows in scored.items():
            if corpus not in reference and candidate is not model:
                reference[corpus] = [Distributions.of(batch, logits) for batch, logits in
                                     scored_logits(model, windows, f"reference {corpus}")]
            own = []
            for i, (batch, logits) in enumerate(scored_logits(candidate, windows,
                                                              f"perplexity {corpus}")):
                if candidate is model and len(reference.get(corpus, ())) == i:
                    reference.setdefault(corpus, []).append(Distributions.of(batch, logits))
                own.append(window_losses(batch, logits))
                k, t = fidelity(reference[corpus][i], logits)
                kld.append(k)
                same_top.append(t)
            losses[corpus] = torch.cat(own).double()
        per_window = torch.cat(list(losses.values()))
        reference_loss = torch.cat([d.losses for ds in reference.values() for d in ds]).double()
        extras = {f"ppl_{corpus}": float(loss.mean().exp()) for corpus, loss in losses.items()}
        extras |= {"kld": float(torch.cat(kld).mean()),
                   "top1_agreement_pct": float(torch.cat(same_top).mean()),
                   # llm-compressor's recovery: the reference's perplexity over this one's.
                   "ppl_recovery": float((reference_loss.mean() - per_window.mean()).exp())}
        return Score(float(per_window.mean().exp()), per_window, extras,
                     fidelity={KLD.name: torch.cat(kld)})

    prompt = first[:decode_prompt].unsqueeze(0)

    def decode(candidate: nn.Module):
        x = prompt.to(model_device(candidate))
        mask = torch.ones_like(x)
        return lambda: candidate.generate(
            x, attention_mask=mask, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens,
            do_sample=False, pad_token_id=tokenizer.eos_token_id)

    held_out_windows = torch.cat(list(held_out.values())).reshape(-1, window)
    # Calibration takes its windows from each corpus in turn: fitted to one kind of text only,
    # SparseGPT on SmolLM2 scored 53.6 where the same 8 windows from both corpora give 44.0.
    in_turn = torch.stack([t.reshape(-1, window) for t in held_out.values()], dim=1)
    calibration = list(in_turn.reshape(-1, window)[:calibration_windows].split(2))

    def finetune(candidate: nn.Module, steps: int | None = None) -> None:
        device = model_device(candidate)
        train(candidate, lambda m, idx: next_token_loss(m, held_out_windows[idx].to(device)),
              len(held_out_windows), epochs=None if steps else 2, batch_size=FINETUNE_BATCH,
              lr=finetune_lr, seed=FINETUNE_SEED, max_steps=steps or finetune_steps,
              weight_decay=0.0,
              desc=f"fine-tune {name}")

    windows = torch.cat(list(scored.values()))
    return Workload(
        name=name,
        metric=PERPLEXITY,
        fidelity=(KLD,),
        model=model,
        evaluate=evaluate,
        calibration=calibration,
        example_input=first[:prefill_tokens].unsqueeze(0),
        finetune=finetune,
        checkpoint_sha256=state_sha256(model.state_dict()),
        evaluation=evaluation(f"the first {tokens_per_corpus} tokens of each corpus "
                              f"({', '.join(scored)}) in {window}-token windows",
                              len(windows), windows),
        floor=unigram_perplexity(windows),
        notes={"source": str(source), "tokens_per_corpus": tokens_per_corpus,
               "window": window},
        timed_items=("prefill", prefill_tokens, "tok"),
        probes={"decode": Probe(decode, decode_tokens, "tok", streams_weights=True)},
        source_file=source_file,
    )
