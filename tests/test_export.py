"""Export formats: the exported file reproduces the model (or, int8, stays close and stores int8
weights), its size is the file's, and ONNX Runtime runs on the thread count torch is set to."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from benchmarks.harness.measure import artifact_size
from benchmarks.threads import threads
from compress import Context, Unsupported, get, kernels
from compress.kernels import operators
from compress.runtime import export

pytest.importorskip("onnxruntime")


class Net(nn.Module):
    """Convolutions and a classifier, returning a dict beside the logits like a detection head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                                      nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        features = self.features(x)
        return self.head(features), {"features": [features]}


def context() -> Context:
    gen = torch.Generator().manual_seed(1)
    return Context(calibration=[torch.randn(8, 3, 16, 16, generator=gen) for _ in range(4)],
                   example_input=torch.randn(4, 3, 16, 16, generator=gen))


@pytest.mark.parametrize("name", ["torchscript", "onnx", "openvino"])
def test_an_export_reproduces_the_model_at_any_batch_size(name):
    model = Net().eval()
    out = get(name).apply(model, context())
    assert out.execution == "real" and out.model.artifact.exists()
    assert not out.model.stored or all(t.dtype == "float32" for t in out.model.stored
                                      if t.params > 1)
    x = torch.randn(7, 3, 16, 16)  # another batch size than the example's
    logits, features = out.model(x)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(logits, want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features, want[1]["features"][0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["torchscript", "onnx", "onnx_int8"])
def test_the_size_of_an_export_is_its_file(name):
    out = get(name).apply(Net().eval(), context())
    size = artifact_size(out.model)
    assert size.size_bytes == out.model.artifact.stat().st_size
    assert size.params >= sum(p.numel() for p in Net().parameters()) - 2 * 16  # BN folded


def test_the_size_of_an_openvino_export_is_its_ir_folder():
    out = get("openvino").apply(Net().eval(), context())
    files = sorted(out.model.artifact.iterdir())
    assert [f.suffix for f in files] == [".bin", ".xml"]  # the graph and its weights
    assert artifact_size(out.model).size_bytes == sum(f.stat().st_size for f in files)


@pytest.mark.parametrize(("name", "float_name"), [("onnx_int8", "onnx"),
                                                  ("openvino_int8", "openvino")])
def test_int8_exports_store_int8_weights_and_stay_close(name, float_name):
    model = Net().eval()
    out = get(name).apply(model, context())
    assert any(t.dtype == "int8" for t in out.model.stored)
    # The weights' bytes (a tiny net's file is mostly its graph: OpenVINO's XML).
    float_weights = artifact_size(get(float_name).apply(model, context()).model).memory_bytes
    assert artifact_size(out.model).memory_bytes < 0.6 * float_weights
    x = context().example_input
    with torch.no_grad():
        want = model(x)[0]
    assert ((out.model(x)[0] - want).norm() / want.norm()).item() < 0.1


def test_onnx_runtime_runs_on_the_thread_count_torch_is_set_to():
    out = get("onnx").apply(Net().eval(), context())
    x = context().example_input
    for n in (1, 2):
        with threads(n):
            out.model(x)
    cached = out.model._run.sessions
    assert sorted(cached) == [1, 2]
    assert [s.get_session_options().intra_op_num_threads for _, s in sorted(cached.items())] \
        == [1, 2]


@pytest.mark.parametrize(("name", "convolution"), [
    ("onnx_int8", r"^QLinearConv$"),
    # u8 or i8 inputs, as the CPU plugin chooses per CPU (a Xeon with AMX runs the second i8)
    ("openvino_int8", r"^Convolution\[(u8|i8)\]$")])
def test_int8_exports_run_int8_kernels_and_their_float_exports_do_not(name, convolution):
    """What the runtime ran, in its own words (ONNX Runtime's profiler, OpenVINO's
    executed graph): the int8 convolutions for the int8 file, none for the float one."""
    x = context().example_input
    int8 = get(name).apply(Net().eval(), context())
    ran = operators(int8.model, x)
    assert sum(n for op, n in ran.items() if re.match(convolution, op)) == 2
    assert kernels.proof(get(name).kernel, operators(int8.model, x))
    fp32 = get(name.removesuffix("_int8")).apply(Net().eval(), context())
    assert not kernels.proof(get(name).kernel, operators(fp32.model, x))


def test_openvino_runs_on_the_thread_count_torch_is_set_to():
    out = get("openvino").apply(Net().eval(), context())
    for n in (1, 2):
        with threads(n):
            out.model(context().example_input)
    compiled = out.model._run.compiled
    assert {n: c.get_property("INFERENCE_NUM_THREADS") for n, (c, _) in compiled.items()} \
        == {1: 1, 2: 2}


def test_an_export_that_is_not_the_model_fails(monkeypatch):
    """The fault: a runtime that computes something slightly else (1 % off)."""
    real = export.OnnxRuntime.__call__
    monkeypatch.setattr(export.OnnxRuntime, "__call__",
                        lambda self, x: tuple(t * 1.01 for t in real(self, x)))
    with pytest.raises(AssertionError, match="the export is not the model"):
        get("onnx").apply(Net().eval(), context())


@pytest.mark.parametrize("name", ["torchscript", "onnx", "onnx_int8", "openvino",
                                  "openvino_int8"])
def test_exports_need_an_example_input(name):
    with pytest.raises(Unsupported, match="example_input"):
        get(name).apply(Net().eval(), Context(calibration=context().calibration))


@pytest.mark.parametrize("name", ["onnx_int8", "openvino_int8"])
def test_int8_exports_need_calibration(name):
    with pytest.raises(Unsupported, match="calibration"):
        get(name).apply(Net().eval(), Context(example_input=context().example_input))


class Tokens(nn.Module):
    """A sentence encoder's shape: an embedding of token ids, Linear layers on (batch, tokens,
    features), which export as MatMul (on 2-D inputs they export as Gemm), and a normalized
    output (ReduceL2, whose form changed in the opsets int4 needs)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(256, 64)
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))

    def forward(self, ids):
        return nn.functional.normalize(self.mlp(self.embed(ids)), dim=-1)


def test_onnx_int4_packs_matmul_weights_to_4_bits_and_runs_matmulnbits():
    model = Tokens().eval()
    ids = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(2))
    out = get("onnx_int4@32").apply(model, Context(example_input=ids))
    assert out.extras == {"accuracy_level": 4}
    packed = [t for t in out.model.stored if t.dtype == "int4"]
    # Both MatMul weights and the embedding table, two weights a byte.
    assert sorted(t.params for t in packed) == [128 * 16, 64 * 128, 256 * 64]
    assert all(t.nbytes == t.params // 2 for t in packed)
    ran = operators(out.model, ids)
    assert ran["MatMulNBits"] == 2 and kernels.proof(get("onnx_int4@32").kernel, ran)
    with torch.no_grad():
        want = model(ids)
    assert ((out.model(ids) - want).norm() / want.norm()).item() < 0.15


def test_onnx_int4_without_a_matmul_is_unsupported():
    with pytest.raises(Unsupported, match="no MatMul with a constant weight"):
        get("onnx_int4@32").apply(Net().eval(), context())  # its Linear exports as Gemm


@pytest.mark.parametrize("block, error", [(8, "power of 2 >= 16"), (48, "power of 2 >= 16"),
                                          (32.5, "block must be an integer")])
def test_onnx_int4_block_sizes_are_powers_of_two_from_16(block, error):
    with pytest.raises(KeyError, match=error):
        get(f"onnx_int4@{block}")
