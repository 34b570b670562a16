"""llama.cpp: a causal LM written to GGUF, quantized by llama.cpp's own quantizer, run by it.

`gguf_q8_0`, `gguf_q4_0`, `gguf_q4_1`, `gguf_q4_k_m` write the model's own weights (not the file
it came from) to an fp32 GGUF with the `gguf` package, keeping the source GGUF's tokenizer and
metadata, check that llama.cpp runs that file as the model, then quantize it with
`llama_model_quantize` (llama-quantize's code) and run the result through llama-cpp-python. The
artifact is that file.

A model whose weights are already on an int4 grid in groups of 32 (`gptq@32+gguf_q4_1`, or
hqq_bf16, int4_bf16) is written as it is instead: Q4_1 blocks hold an asymmetric grid of 32
weights (w = d * q + m), so each block takes the grid the technique chose, where llama-quantize
would round the dequantized weights once more onto min/max grids of its own.

llama.cpp picks its own type per tensor: a tensor whose rows do not divide into a K-quant's
256-weight super-blocks falls back to a legacy type (SmolLM2's 576-wide layers: Q4_K -> Q5_0),
and the token embedding of a tied model is kept at 8 bits. The cell reports the types the file
really holds (`operators`), which are the kernels that run: ggml computes a quantized tensor only
with its type's dot product, never by expanding it to float.
"""

from __future__ import annotations

import ctypes
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.base import Compressed, Context, StoredTensor, Unsupported, relative_difference
from compress.quant.weight_only import Int4Grid, int4_cpu_grid
from compress.registry import register

# The quantization types offered, by llama-quantize's names (its ftype constants).
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
          "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
# How far a Q4_1 file's weights may be from the int4 grid it carries, relative to the largest:
# its offset m = zero - 8 * scale is rounded to fp16 (2^-11 of |m|, well below 1e-3 of the row).
GRID_RTOL = 1e-3
Q4_1_BLOCK = 32
# What llama.cpp computes the fp32 file with differs from torch's fp32 by summation order only.
F32_RTOL = 1e-3
# A quantized ggml type: the kernel that proves a llama.cpp cell runs low-bit.
KERNEL = r"^(Q\d|IQ\d|TQ\d)"

# Hugging Face Llama names -> GGUF names (llama.cpp's gguf-py TENSOR_NAMES for LLaMA).
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf(ftype: str) -> Callable[[nn.Module, Context], Compressed]:
    def transform(model: nn.Module, ctx: Context) -> Compressed:
        llama_cpp, gguf_py = _libraries(ftype)
        source = ctx.source_file
        if source is None or Path(source).suffix != ".gguf":
            raise Unsupported(f"gguf_{ftype} writes the model with the tokenizer and metadata of "
                              "the GGUF file it was loaded from (Context.source_file), and this "
                              "model came from no GGUF file: convert it with llama.cpp's "
                              "convert_hf_to_gguf.py")
        folder = tempfile.TemporaryDirectory(prefix=f"compress-gguf-{ftype}-")
        f32, quantized = Path(folder.name) / "f32.gguf", Path(folder.name) / f"{ftype}.gguf"
        grids = {name: grid for name, weight in model.named_parameters()
                 if (grid := int4_cpu_grid(weight)) is not None}
        if grids:
            write_grids(model, grids, ftype, Path(source), quantized, llama_cpp, gguf_py)
            return Compressed(LlamaCpp(quantized, folder), "real")
        if ctx.example_input is None:
            raise Unsupported(f"gguf_{ftype} checks the fp32 file on Context.example_input")
        write_gguf(model, model.state_dict(), Path(source), f32, gguf_py, file_type=0)
        _check_same(model, LlamaCpp(f32, None), ctx.example_input)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, FTYPES[ftype])
        params.nthread = torch.get_num_threads()
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(quantized).encode(),
                                          ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp failed to quantize {f32} to {ftype}")
        f32.unlink()
        return Compressed(LlamaCpp(quantized, folder), "real")

    transform.__doc__ = (f"llama.cpp {ftype.upper()}: the weights in GGUF, quantized by "
                         "llama.cpp's quantizer, run by llama.cpp (llama-cpp-python).")
    return transform


for _ftype in FTYPES:
    register(f"gguf_{_ftype}", family="quantization", real_on=("cpu",), keeps={"grid"},
             kernel=KERNEL)(gguf(_ftype))


def _libraries(ftype: str):
    try:
        import gguf as gguf_py
        import llama_cpp
    except ImportError as err:
        raise Unsupported(f"gguf_{ftype} needs llama-cpp-python and gguf: pip install "
                          "llama-cpp-python gguf") from err
    _quiet(llama_cpp)
    return llama_cpp, gguf_py


@contextmanager
def _without_amx():
    """Where llama.cpp was built with AMX kernels (a pip build on a CPU that has AMX), load
    models without its extra weight buffers: its AMX matmul segfaults intermittently
    (ggml-org/llama.cpp#20824, seen here on a Xeon with AMX). Llama() offers no switch for
    `use_extra_bufts`, so its default model parameters are patched while it loads. This also
    turns off llama.cpp's weight repacking on those CPUs; elsewhere nothing changes."""
    from llama_cpp import llama_cpp as library

    if b"AMX_INT8 = 1" not in library.llama_print_system_info():
        yield
        return
    default = library.llama_model_default_params

    def params():
        out = default()
        out.use_extra_bufts = False
        return out

    library.llama_model_default_params = params
    try:
        yield
    finally:
        library.llama_model_default_params = default


_ERROR, _CONTINUED = 4, 5  # ggml's log levels (ggml.h); the quantizer logs each tensor below


def _quiet(llama_cpp) -> None:
    """llama.cpp writes its errors only (its quantizer logs a line per tensor otherwise)."""
    if getattr(_quiet, "callback", None) is None:
        last = [0]

        def log(level, text, _user):
            last[0] = last[0] if level == _CONTINUED else level
            if last[0] == _ERROR:
                print(text.decode(errors="replace"), end="", file=sys.stderr)

        _quiet.callback = llama_cpp.llama_log_callback(log)  # kept: C holds a pointer to it
        llama_cpp.llama_log_set(_quiet.callback, ctypes.c_void_p(0))


def write_grids(model: nn.Module, grids: dict[str, Int4Grid], ftype: str, source: Path,
                path: Path, llama_cpp, gguf_py) -> None:
    """A model already on torchao's int4 grid as a GGUF whose Q4_1 blocks hold that grid; every
    other tensor keeps its values (bf16 matrices as BF16, vectors as F32)."""
    group = next(iter(grids.values())).group
    if ftype != "q4_1":
        raise Unsupported(f"gguf_{ftype}: the model's weights are already int4 (asymmetric, "
                          f"groups of {group}); gguf_q4_1 writes that grid as it is, where "
                          f"{ftype.upper()} would round it once more onto a grid of its own")
    for name, grid in grids.items():
        if grid.act_pre_scale is not None:
            raise Unsupported(f"gguf_q4_1: {name} multiplies its inputs by AWQ's activation "
                              "scale first, which a Q4_1 block cannot hold")
        if grid.group != Q4_1_BLOCK:
            raise Unsupported(f"gguf_q4_1: {name} is quantized in groups of {grid.group} inputs "
                              f"and a Q4_1 block holds {Q4_1_BLOCK}: quantize with groups of "
                              f"{Q4_1_BLOCK} (e.g. gptq@{Q4_1_BLOCK}+gguf_q4_1)")
    state = {}
    for name, tensor in model.state_dict().items():
        grid = grids.get(name)
        state[name] = tensor if grid is None else _q4_1_blocks(name, grid, gguf_py)
    write_gguf(model, state, source, path, gguf_py,
               file_type=int(getattr(llama_cpp, FTYPES[ftype])))


def _q4_1_blocks(name: str, grid: Int4Grid, gguf_py) -> torch.Tensor:
    """ggml's block_q4_1 of each 32 weights of a row (fp16 d, fp16 m, 16 bytes of levels: the
    first 16 in the low nibbles, the last 16 in the high), checked by gguf's own dequantizer."""
    rows, columns = grid.levels.shape
    blocks = columns // Q4_1_BLOCK
    levels = grid.levels.reshape(rows, blocks, 2, Q4_1_BLOCK // 2)
    nibbles = levels[:, :, 0] | (levels[:, :, 1] << 4)
    d = grid.scale.half().reshape(rows, blocks, 1).view(torch.uint8)
    m = (grid.zero - 8 * grid.scale).half().reshape(rows, blocks, 1).view(torch.uint8)
    out = torch.cat([d, m, nibbles], dim=-1).reshape(rows, -1)
    want = grid.values()
    got = torch.from_numpy(gguf_py.quants.dequantize(out.numpy(), gguf_py.GGMLQuantizationType
                                                     .Q4_1).reshape(rows, columns))
    worst = relative_difference(got, want)
    if not worst <= GRID_RTOL:
        raise AssertionError(f"gguf_q4_1: the Q4_1 blocks of {name} hold weights {worst:.3g} of "
                             f"the largest away from its int4 grid (allowed {GRID_RTOL:g})")
    return out


def write_gguf(model: nn.Module, state: dict[str, torch.Tensor], source: Path, path: Path,
               gguf_py, file_type: int) -> None:
    """`state` (the model's weights by their transformers names) as a GGUF, with the model's own
    shape and every other key of `source` (tokenizer, chat template, names). Float tensors are
    written in fp32, bf16 matrices as BF16, uint8 ones as the Q4_1 blocks they hold."""
    reader = gguf_py.GGUFReader(str(source))
    arch = reader.get_field("general.architecture").contents()
    if arch != "llama":
        raise Unsupported(f"gguf: the source file holds a {arch!r} model; only Llama-family "
                          "models are mapped here")
    writer = gguf_py.GGUFWriter(str(path), arch=arch, endianess=reader.endianess)
    shape = hyperparameters(model.config)
    for field in reader.fields.values():
        if field.name in shape or field.name == "general.architecture" \
                or field.name.startswith("GGUF."):
            continue  # the model's own shape, below; the writer writes the others itself
        value = file_type if field.name == "general.file_type" else field.contents()
        array = field.types[0] == gguf_py.GGUFValueType.ARRAY
        writer.add_key_value(field.name, value, field.types[0],
                             sub_type=field.types[-1] if array else None)
    for name, value in shape.items():
        kind = gguf_py.GGUFValueType.FLOAT32 if isinstance(value, float) \
            else gguf_py.GGUFValueType.UINT32
        writer.add_key_value(name, value, kind)
    kinds = gguf_py.GGMLQuantizationType
    for name, tensor in gguf_tensors(model, state).items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.uint8:
            writer.add_tensor(name, tensor.numpy(), raw_dtype=kinds.Q4_1)
        elif tensor.dtype == torch.bfloat16 and tensor.dim() > 1:
            writer.add_tensor(name, tensor.view(torch.uint8).numpy(), raw_dtype=kinds.BF16)
        else:
            writer.add_tensor(name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def hyperparameters(config) -> dict[str, int | float]:
    """The GGUF keys of a transformers Llama config's shape (a pruned model has its own,
    whatever the source file says)."""
    rope = getattr(config, "rope_parameters", None) or {}
    return {
        "llama.block_count": config.num_hidden_layers,
        "llama.context_length": config.max_position_embeddings,
        "llama.embedding_length": config.hidden_size,
        "llama.feed_forward_length": config.intermediate_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
        "llama.attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        "llama.rope.freq_base": float(rope.get("rope_theta",
                                               getattr(config, "rope_theta", 10000.0))),
        "llama.rope.dimension_count": config.head_dim,
        "llama.vocab_size": config.vocab_size,
    }


def gguf_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers Llama's weights under their GGUF names, as llama.cpp lays them out: the
    query and key rows of each head interleaved for its rotary embedding (convert_hf_to_gguf's
    permute), an LM head that is the token embedding stored once as the latter."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and tied:
            continue
        if name in _GLOBAL:
            out[_GLOBAL[name]] = tensor
            continue
        parts = name.split(".")  # model.layers.<i>.<module path>.weight
        key = ".".join(parts[3:-1])
        if parts[:2] != ["model", "layers"] or key not in _LAYER:
            raise Unsupported(f"gguf: no GGUF name for the weight {name}")
        if key == "self_attn.q_proj":
            tensor = _rotary_rows(tensor, heads)
        elif key == "self_attn.k_proj":
            tensor = _rotary_rows(tensor, kv_heads)
        out[f"blk.{parts[2]}.{_LAYER[key]}.{parts[-1]}"] = tensor
    return out


def _rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Transformers' rotary layout (each head's first half, then its second) to llama.cpp's
    (the halves' rows interleaved in pairs)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


class LlamaCpp(nn.Module):
    """A GGUF file run by llama.cpp, called like a transformers causal LM: `model(ids).logits`
    and greedy `model.generate(ids, max_new_tokens=n)`. One llama.cpp context per thread count
    (torch's, when called), as the ONNX Runtime sessions do."""

    def __init__(self, artifact: Path, folder):
        super().__init__()
        import gguf as gguf_py

        self.artifact = artifact  # the file that ships
        self._folder = folder  # keeps the temporary folder (and the file) alive
        tensors = gguf_py.GGUFReader(str(artifact)).tensors
        self.types = Counter(t.tensor_type.name for t in tensors if len(t.shape) > 1)
        self.stored = [StoredTensor(int(t.n_elements), int(t.n_elements), int(t.n_bytes),
                                    t.tensor_type.name) for t in tensors]
        self._contexts = {}

    def _llama(self, tokens: int):
        from llama_cpp import Llama

        n_threads = torch.get_num_threads()
        n_ctx = max(512, 1 << (tokens - 1).bit_length())
        if (n_threads, n_ctx) not in self._contexts:
            with _without_amx():
                self._contexts[n_threads, n_ctx] = Llama(
                    str(self.artifact), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                    n_threads=n_threads, n_threads_batch=n_threads, logits_all=True,
                    verbose=False)
        return self._contexts[n_threads, n_ctx]

    def _logits(self, ids: list[int], tokens: int):
        llm = self._llama(tokens)
        llm.reset()  # llama.cpp then drops the whole KV cache: every call starts clean
        llm.eval(ids)
        return llm

    def forward(self, input_ids: torch.Tensor, attention_mask=None, use_cache: bool = False,
                **_):
        from transformers.modeling_outputs import CausalLMOutput

        rows = []
        for row in input_ids.tolist():
            llm = self._logits(row, len(row))
            rows.append(torch.from_numpy(llm.scores[:len(row)].copy()))
        return CausalLMOutput(logits=torch.stack(rows))

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False,
                 **_) -> torch.Tensor:
        """Greedy decoding of exactly `max_new_tokens` (no stop at the end-of-text token, as
        transformers does with min_new_tokens = max_new_tokens)."""
        if do_sample:
            raise ValueError("LlamaCpp.generate decodes greedily only")
        out = []
        for row in input_ids.tolist():
            llm = self._logits(row, len(row) + max_new_tokens)
            new = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
            while len(new) < max_new_tokens:  # the last token is not fed back, as transformers
                llm.eval(new[-1:])
                new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            out.append(row + new)
        return torch.tensor(out)

    def operators(self, x: torch.Tensor) -> Counter[str]:
        """The ggml type of each weight matrix: the dot-product kernel llama.cpp runs it with."""
        return Counter(self.types)


def _check_same(model: nn.Module, runtime: LlamaCpp, example: torch.Tensor) -> None:
    with torch.no_grad():
        want = model(example, use_cache=False).logits
        got = runtime(example).logits
    worst = relative_difference(got, want)
    if not worst <= F32_RTOL:
        raise AssertionError(f"gguf: llama.cpp's logits of the fp32 file differ from the "
                             f"model's by {worst:.3g} of the largest (allowed {F32_RTOL:g}): "
                             "the conversion is wrong")
