"""A transformers causal LM as the ONNX runtimes deploy one: exported with its KV cache by ONNX
Runtime GenAI's model builder, decoded token by token by ONNX Runtime or OpenVINO.

The builder writes the graph ONNX Runtime's own LLM runtime loads (fused GroupQueryAttention
and rotary nodes, a key/value cache in and out of every step), in fp32 or with its weights
quantized to int4 (MatMulNBits; a tied embedding and LM head stay one tensor, quantized once:
GatherBlockQuantized for the lookup, MatMulNBits for the head). OpenVINO reads that fp32 graph
(its ONNX frontend decomposes GroupQueryAttention). `torch.onnx.export` of a transformers model
gives a graph without a cache, which recomputes the whole prompt for every new token.

Every export is first checked in fp32 against the model on the example input.
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

from compress.base import Compressed, Context, StoredTensor, Unsupported, relative_difference

# The runtimes' fp32 kernels differ from torch's by summation order only.
F32_RTOL = 1e-3


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers model that generates text (what the builder exports with a cache)."""
    return getattr(model, "config", None) is not None and hasattr(model, "generate") \
        and type(model).__name__.endswith("ForCausalLM")


class Export:
    """The builder's fp32 graph of a model, checked against it, in a temporary folder that
    the compressed artifact also lives in."""

    def __init__(self, model: nn.Module, ctx: Context, name: str):
        try:
            import onnxruntime  # noqa: F401
            import onnxruntime_genai  # noqa: F401
        except ImportError as err:
            raise Unsupported(f"{name} exports causal LMs with ONNX Runtime GenAI's model "
                              "builder: pip install onnxruntime onnxruntime-genai") from err
        if ctx.device != "cpu":
            raise Unsupported(f"{name} runs here on the CPU only")
        if ctx.example_input is None:
            raise Unsupported(f"{name} checks the exported causal LM on Context.example_input")
        self.name, self.model, self.example = name, model, ctx.example_input
        self.folder = tempfile.TemporaryDirectory(prefix=f"compress-{name}-lm-")
        self.root = Path(self.folder.name)
        self.source = self.root / "source"
        model.save_pretrained(self.source, safe_serialization=True)
        _tokenizer(model, ctx).save_pretrained(self.source)
        config = model.config
        head_dim = getattr(config, "head_dim", None) \
            or config.hidden_size // config.num_attention_heads
        self.cache_shape = (config.num_key_value_heads, head_dim)
        self.fp32 = self.build("fp32", {})

    def build(self, precision: str, options: dict) -> Path:
        """The builder's graph of the saved model, alone in a folder (the tokenizer and
        GenAI's configs, which it writes beside it, left out): the file the runtime loads."""
        out = self.root / precision
        built = out / "built"
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                   str(self.source), "-o", str(built), "-p", precision, "-e", "cpu", "-c",
                   str(out / "cache"), "--extra_options", "hf_token=false",
                   *(f"{k}={v}" for k, v in options.items())]
        # A child process: the builder loads its own copy of the model and logs every layer.
        run = subprocess.run(command, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        if run.returncode != 0:
            raise RuntimeError(f"{self.name}: ONNX Runtime GenAI's builder failed "
                               f"({' '.join(command)}):\n{run.stderr[-3000:]}")
        graph = json.loads((built / "genai_config.json").read_text())["model"]["decoder"]
        artifact = out / "model"
        artifact.mkdir()
        for path in built.glob(f"{graph['filename']}*"):
            path.rename(artifact / path.name)
        _remove(built)
        return artifact / graph["filename"]

    def check(self, runtime) -> None:
        """The fp32 graph, run by `runtime`, must be the model."""
        with torch.no_grad():
            want = self.model(self.example, use_cache=False).logits
        got = CachedDecoder(runtime, self.cache_shape, [], None)(self.example).logits
        worst = relative_difference(got, want)
        if not worst <= F32_RTOL:
            raise AssertionError(f"{self.name}: the fp32 graph's logits differ from the "
                                 f"model's by {worst:.3g} of the largest (allowed "
                                 f"{F32_RTOL:g}): the export is not the model")

    def done(self, artifact: Path) -> Path:
        """Moves the artifact's folder to `artifact/` in the folder, removes everything else
        (the saved model, the fp32 graph, the builder's cache), and returns the new folder."""
        final = self.root / "artifact"
        artifact.rename(final)
        for path in self.root.iterdir():
            if path != final:
                _remove(path) if path.is_dir() else path.unlink()
        return final


def onnx_int4(model: nn.Module, ctx: Context, block: int, accuracy_level: int) -> Compressed:
    """The model in int4 (symmetric, a scale per `block` inputs) run by ONNX Runtime."""
    from compress.runtime.export import stored_tensors, weights

    export = Export(model, ctx, "onnx_int4")
    export.check(OrtGraph(export.fp32))
    options = {"block_size": block, "accuracy_level": accuracy_level, "is_symmetric": "true"}
    if getattr(model.config, "tie_word_embeddings", False):
        options |= {"shared_embeddings": "true", "op_types_to_quantize": "MatMul/Gather"}
    built = export.build("int4", options)
    folder = export.done(built.parent)
    int4 = folder / built.name
    import onnx

    stored = weights(stored_tensors(onnx.load(str(int4)).graph))
    return Compressed(CachedDecoder(OrtGraph(int4), export.cache_shape, stored, export.folder,
                                    artifact=folder), "real",
                      extras={"accuracy_level": accuracy_level})


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


class OrtGraph:
    """An ONNX file run by ONNX Runtime, one session per thread count (torch's, when run)."""

    def __init__(self, path: Path):
        self.path = path
        self._sessions = {}

    def session(self):
        from compress.runtime.export import ort_session

        n = torch.get_num_threads()
        if n not in self._sessions:
            self._sessions[n] = ort_session(self.path, n)
        return self._sessions[n]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session().get_inputs()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session()
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, feed), strict=True))

    def operators(self, feed: dict[str, np.ndarray]) -> Counter[str]:
        """The op type of every node ONNX Runtime ran, from its profiler."""
        from compress.runtime.export import ort_session, profiled_nodes

        session = ort_session(self.path, torch.get_num_threads(), profile=True)
        session.run(None, feed)
        return profiled_nodes(session)


class CachedDecoder(nn.Module):
    """A graph with a KV cache run by a runtime (OrtGraph, openvino.OvGraph), called like a
    transformers causal LM: `model(ids).logits` and greedy `model.generate(ids, n)`."""

    def __init__(self, runtime, cache_shape: tuple[int, int], stored: list[StoredTensor],
                 folder, artifact: Path | None = None):
        super().__init__()
        self.runtime = runtime
        self.cache_shape = cache_shape  # (key/value heads, head size) of each layer's cache
        self.stored = stored  # the weights in the artifact
        self.artifact = artifact  # the graph and its weights, what ships
        self._folder = folder  # keeps the temporary folder (and the files) alive

    def _feed(self, ids: np.ndarray, past: dict[str, np.ndarray] | None):
        cached = 0 if past is None else next(iter(past.values())).shape[2]
        batch, new = ids.shape
        feed = {"input_ids": ids, "attention_mask": np.ones((batch, cached + new), np.int64)}
        for name in self.runtime.input_names:
            if name == "position_ids":
                feed[name] = np.broadcast_to(np.arange(cached, cached + new),
                                             (batch, new)).astype(np.int64)
            elif name.startswith("past_key_values."):
                feed[name] = past[name] if past is not None \
                    else np.zeros((batch, self.cache_shape[0], 0, self.cache_shape[1]),
                                  np.float32)
        return feed

    def _step(self, ids: np.ndarray, past: dict[str, np.ndarray] | None):
        """One call: `ids` after the cached tokens `past` holds. Returns (logits, cache)."""
        outputs = self.runtime.run(self._feed(ids, past))
        cache = {"past_key_values." + name.removeprefix("present."): value
                 for name, value in outputs.items() if name.startswith("present.")}
        return outputs["logits"], cache

    def forward(self, input_ids: torch.Tensor, attention_mask=None, use_cache: bool = False,
                **_):
        from transformers.modeling_outputs import CausalLMOutput

        # One sequence at a time, as a deployed decoder serves a prompt (and as the llama.cpp
        # cells do): OpenVINO 2026.4 returned empty logits, or crashed, for this graph at
        # batch 2 and more.
        rows = [self._step(row[None], None)[0][0] for row in
                input_ids.cpu().numpy().astype(np.int64)]
        return CausalLMOutput(logits=torch.from_numpy(np.stack(rows)).float())

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False,
                 **_) -> torch.Tensor:
        """Greedy decoding of exactly `max_new_tokens` (no stop at the end-of-text token, as
        transformers does with min_new_tokens = max_new_tokens), the cache carried along."""
        if do_sample:
            raise ValueError("CachedDecoder.generate decodes greedily only")
        ids = input_ids.cpu().numpy().astype(np.int64)
        logits, cache = self._step(ids, None)
        new = [logits[:, -1].argmax(-1)[:, None].astype(np.int64)]
        while len(new) < max_new_tokens:
            logits, cache = self._step(new[-1], cache)
            new.append(logits[:, -1].argmax(-1)[:, None].astype(np.int64))
        return torch.from_numpy(np.concatenate([ids, *new], axis=1))

    def operators(self, x: torch.Tensor) -> Counter[str]:
        """What the runtime ran on the prompt `x`, in its own words."""
        return self.runtime.operators(self._feed(x.cpu().numpy().astype(np.int64), None))
