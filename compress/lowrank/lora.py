"""LoRA and QLoRA with peft: a low-rank adapter trained beside every Linear of a frozen model.

`lora` on its own adapts the reference (the control: what the same short fine-tune does without
compression); `X+lora` recovers a pruned or factorized model, `X+qlora` a quantized one (QLoRA):
bitsandbytes 4- or 8-bit, or torchao's int4 CPU layout (gptq, awq, hqq_bf16, int4_bf16), whose
kernel has no backward, so the adapter trains beside the same weights in float and is served
beside the int4 ones. The training is the workload's fine-tune (Context.finetune), which
updates only what requires grad: here the adapter.

The cell serves the adapter beside its base, as peft loads it: merging into a 4-bit base would
round the adapter into the 4-bit grid. The artifact therefore holds base and adapter, and the
adapter costs its own matmuls. Reported beside the metric: the adapter's bytes as
`save_pretrained` writes them, the trainable share of the parameters, and how far
`merge_and_unload` moves the logits (checked against MERGE_TOLERANCE; a bitsandbytes base is
dequantized before merging, as QLoRA adapters are merged for shipping: merged into the 4-bit
weights themselves, the adapter's small updates round away).
"""

from __future__ import annotations

import copy
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported, relative_difference
from compress.quant.bnb import bnb_format, unpack_cpu_4bit
from compress.quant.weight_only import dequantize_int4_cpu, is_int4_cpu
from compress.registry import register

RANK, ALPHA = 16, 32  # alpha / rank = 2, as the LoRA and QLoRA papers' recipes use
ADAPTER_SEED = 0
# The largest change merge_and_unload may make to any logit, relative to the largest logit.
# A float base only adds B @ A to its weights: float rounding, no more. A bitsandbytes base is
# dequantized and then merged (fp32); its unmerged forward ran bitsandbytes' kernels, which
# round more (bf16 arithmetic in the CPU 4-bit kernel, int8 activations in LLM.int8): measured
# 0.014 on SmolLM2-135M with nf4, 0.002-0.006 on a tiny Llama. A torchao int4 base's unmerged
# forward runs in bf16: 0.031 measured on SmolLM2 with gptq@64.
MERGE_TOLERANCE = {"float": 1e-4, "quantized": 0.05}


@register("lora", family="low-rank", real_on=("cpu", "cuda"))
def lora(model: nn.Module, ctx: Context, keeps: frozenset = frozenset()) -> Compressed:
    """A rank-16 LoRA adapter on every Linear (peft), trained by the workload's fine-tune."""
    # (As a recovery it keeps whatever the technique made: the base weights stay frozen.)
    if _quantized(model):
        raise Unsupported("the model's weights are quantized (bitsandbytes or torchao int4): "
                          "train its adapter with +qlora, which trains beside a frozen "
                          "quantized model")
    return _adapt(model, ctx)


def qlora(model: nn.Module, ctx: Context, keeps: frozenset = frozenset()) -> Compressed:
    """QLoRA: a rank-16 LoRA adapter trained on top of a frozen 4- or 8-bit model."""
    if not _quantized(model):
        raise Unsupported("+qlora trains an adapter on a quantized model: put it after "
                          "bnb_nf4, bnb_fp4, bnb_int8 or a torchao int4 technique (gptq, awq, "
                          "hqq_bf16, int4_bf16), and use +lora on any other model")
    if bnb_format(model) == "float":  # torchao int4: the adapter trains beside float copies
        return _adapt(model, ctx)
    peft = _peft()
    # Freezes the base and keeps norms in fp32; no gradient checkpointing (memory is not short
    # at this size, and it would only slow the fine-tune).
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    unpack_cpu_4bit(model)
    return _adapt(model, ctx)


def _adapt(model: nn.Module, ctx: Context) -> Compressed:
    peft = _peft()
    if ctx.finetune is None:
        raise Unsupported("LoRA trains on the workload's fine-tune data, and this workload "
                          "has none (Context.finetune)")
    if ctx.example_input is None:
        raise Unsupported("LoRA's merge check needs an example input (Context.example_input)")
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                             target_modules="all-linear")
    try:
        with torch.random.fork_rng():  # the adapter's initial A: the same on every run
            torch.manual_seed(ADAPTER_SEED)
            adapted = peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. no Linear layer peft can target
        raise Unsupported(f"peft cannot put a LoRA adapter on this model: {err}") from err
    trainable, total = adapted.get_nb_trainable_parameters()
    with _trainable(adapted):
        ctx.finetune(adapted)
    adapted.eval()
    extras = {"adapter_bytes": float(_adapter_bytes(adapted)),
              "trainable_pct": 100.0 * trainable / total,
              "merge_rel_diff": _merge_check(adapted, ctx.example_input)}
    return Compressed(adapted, "real", extras=extras)


def _quantized(model: nn.Module) -> bool:
    return bnb_format(model) != "float" or any(
        is_int4_cpu(m.weight) for m in model.modules() if isinstance(m, nn.Linear))


@contextmanager
def _trainable(model: nn.Module):
    """While the adapter trains, torchao int4 layers hold their values in float (their kernel
    has no backward); the packed weights are put back for serving."""
    packed = dequantize_int4_cpu(model)
    try:
        yield
    finally:
        for layer, weight in packed.items():
            layer.weight = weight


def _merge_check(adapted: nn.Module, example: torch.Tensor) -> float:
    """How far merge_and_unload moves the logits on `example`; fails past MERGE_TOLERANCE.

    A quantized base is dequantized first, the way a QLoRA adapter is merged for shipping:
    peft's merge into the 4-bit weights would quantize the adapter's small updates away.
    """
    peft = _peft()
    quantized = _quantized(adapted)
    tolerance = MERGE_TOLERANCE["quantized" if quantized else "float"]
    with torch.inference_mode():
        unmerged = _logits(adapted(example))
    base = copy.deepcopy(adapted)
    unpack_cpu_4bit(base)
    base = base.unload()  # the base model without the adapter layers
    if bnb_format(base) != "float":
        base = base.dequantize()
    dequantize_int4_cpu(base)
    fresh = peft.get_peft_model(base, adapted.peft_config["default"])
    peft.set_peft_model_state_dict(fresh, peft.get_peft_model_state_dict(adapted))
    merged = fresh.merge_and_unload().eval()
    with torch.inference_mode():
        relative = relative_difference(_logits(merged(example)), unmerged)
    if not relative <= tolerance:
        raise AssertionError(
            f"merge_and_unload moved the logits by {relative:.3g} of their largest value, over "
            f"the {tolerance:g} allowed: the merged model is not the adapted model that was "
            "scored")
    return relative


def _logits(output) -> torch.Tensor:
    return getattr(output, "logits", output)


def _adapter_bytes(adapted: nn.Module) -> int:
    """Bytes of what peft's save_pretrained writes for the adapter (weights and config)."""
    with tempfile.TemporaryDirectory() as folder:
        adapted.save_pretrained(folder)
        return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _peft():
    try:
        import peft
    except ImportError as err:
        raise Unsupported("LoRA needs peft: pip install peft") from err
    return peft
