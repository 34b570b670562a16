"""A transformers causal LM as ONNX Runtime runs it when deployed: exported with its KV cache by
ONNX Runtime GenAI's model builder, decoded token by token by ONNX Runtime.

The builder writes the graph ONNX Runtime's own LLM runtime loads (fused GroupQueryAttention
and rotary nodes, a key/value cache in and out of every step) and quantizes its weights to
int4 with MatMulNBits; a tied embedding and LM head stay one tensor, quantized once
(GatherBlockQuantized for the lookup, MatMulNBits for the head). `torch.onnx.export` of a
transformers model gives a graph without a cache, which recomputes the whole prompt for
every new token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported, relative_difference


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers model that generates text (what the builder exports with a cache)."""
    config = getattr(model, "config", None)
    return config is not None and hasattr(model, "generate") \
        and bool(getattr(config, "architectures", None) or getattr(config, "model_type", None)) \
        and type(model).__name__.endswith("ForCausalLM")


def build_int4(model: nn.Module, ctx: Context, block: int, accuracy_level: int) -> Compressed:
    """The model in int4 (symmetric, a scale per `block` inputs) through the GenAI builder."""
    try:
        import onnxruntime  # noqa: F401
        import onnxruntime_genai  # noqa: F401
    except ImportError as err:
        raise Unsupported("onnx_int4 exports causal LMs with ONNX Runtime GenAI's model "
                          "builder: pip install onnxruntime onnxruntime-genai") from err
    if ctx.device != "cpu":
        raise Unsupported("onnx_int4 runs here on ONNX Runtime's CPU execution provider only")
    if ctx.example_input is None:
        raise Unsupported("onnx_int4 checks the exported causal LM on Context.example_input")
    folder = tempfile.TemporaryDirectory(prefix="compress-onnx-int4-lm-")
    root = Path(folder.name)
    source = root / "source"
    model.save_pretrained(source, safe_serialization=True)
    _tokenizer(model, ctx).save_pretrained(source)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache_shape = (config.num_key_value_heads, head_dim)
    # The float export first: it must be the model before its weights are rounded.
    fp32 = OrtCausalLM(_build(source, root / "fp32", "fp32", {}), cache_shape, None)
    _check_same(model, fp32, ctx.example_input)
    options = {"block_size": block, "accuracy_level": accuracy_level, "is_symmetric": "true"}
    if getattr(config, "tie_word_embeddings", False):
        options |= {"shared_embeddings": "true", "op_types_to_quantize": "MatMul/Gather"}
    int4 = _build(source, root / "int4", "int4", options)
    for path in (source, root / "fp32"):
        _remove(path)
    return Compressed(OrtCausalLM(int4, cache_shape, folder), "real",
                      extras={"accuracy_level": accuracy_level})


def _build(source: Path, out: Path, precision: str, options: dict) -> Path:
    """The builder's graph of the saved model, alone in `out`/model (the tokenizer and
    GenAI's configs, which it writes beside it, moved out): the file ONNX Runtime loads."""
    built = out / "built"
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source),
               "-o", str(built), "-p", precision, "-e", "cpu", "-c", str(out / "cache"),
               "--extra_options", "hf_token=false", *(f"{k}={v}" for k, v in options.items())]
    # A child process: the builder loads its own copy of the model and logs every layer.
    run = subprocess.run(command, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    if run.returncode != 0:
        raise RuntimeError(f"onnx_int4: ONNX Runtime GenAI's builder failed "
                           f"({' '.join(command)}):\n{run.stderr[-3000:]}")
    graph = json.loads((built / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    artifact = out / "model"
    artifact.mkdir()
    for path in built.glob(f"{graph}*"):
        path.rename(artifact / path.name)
    _remove(built)
    return artifact / graph


# ONNX Runtime's fp32 kernels differ from torch's by summation order only.
F32_RTOL = 1e-3


def _check_same(model: nn.Module, exported: OrtCausalLM, example: torch.Tensor) -> None:
    with torch.no_grad():
        want = model(example, use_cache=False).logits
    worst = relative_difference(exported(example).logits, want)
    if not worst <= F32_RTOL:
        raise AssertionError(f"onnx_int4: the builder's fp32 graph gives logits that differ "
                             f"from the model's by {worst:.3g} of the largest (allowed "
                             f"{F32_RTOL:g}): the export is not the model")


def _tokenizer(model: nn.Module, ctx: Context):
    """The builder writes the tokenizer beside the graph (GenAI's runtime loads it): the one of
    the GGUF file or folder the model came from, else of its hub id."""
    from transformers import AutoTokenizer

    source = ctx.source_file
    if source is not None and Path(source).suffix == ".gguf":
        return AutoTokenizer.from_pretrained(Path(source).parent, gguf_file=Path(source).name)
    return AutoTokenizer.from_pretrained(source or model.config.name_or_path)


def _remove(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


class OrtCausalLM(nn.Module):
    """An ONNX graph with a KV cache run by ONNX Runtime, called like a transformers causal LM:
    `model(ids).logits` and greedy `model.generate(ids, max_new_tokens=n)`. One session per
    thread count (torch's, when called), as the other ONNX Runtime cells do."""

    def __init__(self, path: Path, cache_shape: tuple[int, int], folder):
        super().__init__()
        import onnx

        from compress.runtime.export import stored_tensors, weights

        self.artifact = path.parent  # the graph and its external weights
        self.path = path
        self.cache_shape = cache_shape  # (key/value heads, head size) of each layer's cache
        self._folder = folder  # keeps the temporary folder (and the files) alive
        self.stored = weights(stored_tensors(onnx.load(str(path)).graph))
        self._sessions = {}

    def session(self, profile: bool = False):
        from compress.runtime.export import ort_session

        n = torch.get_num_threads()
        if profile:
            return ort_session(self.path, n, profile=True)
        if n not in self._sessions:
            self._sessions[n] = ort_session(self.path, n)
        return self._sessions[n]

    def _step(self, session, ids: np.ndarray, past: dict[str, np.ndarray] | None):
        """One call: `ids` after the cached tokens `past` holds. Returns (logits, cache)."""
        inputs = {i.name: i for i in session.get_inputs()}
        cached = 0 if past is None else next(iter(past.values())).shape[2]
        batch, new = ids.shape
        feed = {"input_ids": ids, "attention_mask": np.ones((batch, cached + new), np.int64)}
        if "position_ids" in inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(cached, cached + new),
                                                   (batch, new)).astype(np.int64)
        for name in inputs:
            if name.startswith("past_key_values."):
                feed[name] = past[name] if past is not None \
                    else np.zeros((batch, self.cache_shape[0], 0, self.cache_shape[1]), np.float32)
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, feed), strict=True))
        cache = {"past_key_values." + name.removeprefix("present."): value
                 for name, value in outputs.items() if name.startswith("present.")}
        return outputs["logits"], cache

    def forward(self, input_ids: torch.Tensor, attention_mask=None, use_cache: bool = False,
                **_):
        from transformers.modeling_outputs import CausalLMOutput

        logits, _ = self._step(self.session(), input_ids.cpu().numpy().astype(np.int64), None)
        return CausalLMOutput(logits=torch.from_numpy(logits).float())

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False,
                 **_) -> torch.Tensor:
        """Greedy decoding of exactly `max_new_tokens` (no stop at the end-of-text token, as
        transformers does with min_new_tokens = max_new_tokens), the cache carried along."""
        if do_sample:
            raise ValueError("OrtCausalLM.generate decodes greedily only")
        session = self.session()
        ids = input_ids.cpu().numpy().astype(np.int64)
        logits, cache = self._step(session, ids, None)
        new = [logits[:, -1].argmax(-1)[:, None].astype(np.int64)]
        while len(new) < max_new_tokens:
            logits, cache = self._step(session, new[-1], cache)
            new.append(logits[:, -1].argmax(-1)[:, None].astype(np.int64))
        return torch.from_numpy(np.concatenate([ids, *new], axis=1))

    def operators(self, x: torch.Tensor) -> Counter[str]:
        """The op type of every node ONNX Runtime ran on the prompt `x`, from its profiler."""
        from compress.runtime.export import profiled_nodes

        session = self.session(profile=True)
        self._step(session, x.cpu().numpy().astype(np.int64), None)
        return profiled_nodes(session)
