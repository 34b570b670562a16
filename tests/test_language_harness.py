"""The harness on a language-shaped workload: token-id inputs, perplexity, a decoding probe."""

from __future__ import annotations

import json

import torch
from torch import nn

from benchmarks.harness.cell import measure_reference, run_cell
from benchmarks.harness.compare import LedgerCell
from benchmarks.harness.verdict import baseline_entry, judge
from benchmarks.workloads.base import KLD, PERPLEXITY, Probe, Score, Workload, evaluation
from benchmarks.workloads.causal_lm import Distributions, fidelity


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(ids)))


def lm_workload() -> Workload:
    torch.manual_seed(0)
    model = TinyLM().eval()
    windows = torch.randint(64, (16, 33), generator=torch.Generator().manual_seed(1))

    with torch.inference_mode():
        reference = Distributions.of(windows, model(windows[:, :-1]).float())

    def evaluate(candidate: nn.Module, _dtype: torch.dtype = torch.float32) -> Score:
        with torch.inference_mode():
            logits = candidate(windows[:, :-1]).float()
            loss = nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:],
                                               reduction="none").mean(1).double()
        return Score(float(loss.mean().exp()), loss, {"ppl_first_half": float(loss[:8].mean()
                                                                               .exp())},
                     fidelity={"kld": fidelity(reference, logits)[0]})

    def greedy(candidate: nn.Module):
        def run():
            ids = windows[:1, :4]
            for _ in range(8):
                ids = torch.cat([ids, candidate(ids)[:, -1:].argmax(-1)], dim=1)
            return ids
        return run

    return Workload(name="tiny-lm", metric=PERPLEXITY, fidelity=(KLD,), model=model,
                    evaluate=evaluate, calibration=[windows[:4, :-1]],
                    example_input=windows[:2, :-1], finetune=None, checkpoint_sha256="test",
                    evaluation=evaluation("random windows", len(windows), windows),
                    timed_items=("prefill", 64, "tok"),
                    probes={"decode": Probe(greedy, 8, "tok")})


def test_a_language_cell_keeps_token_ids_and_gates_its_probe():
    workload = lm_workload()
    for technique in ("bf16", "int8_dynamic"):  # bf16 must not cast the token ids
        record, _ = run_cell(workload, measure_reference(workload, "cpu"), technique,
                             device="cpu", n_threads=1)
        assert record.metric is PERPLEXITY and not record.self_check_problems
        assert set(record.gated()) == {"accuracy_drop", "size_ratio", "speedup",
                                       "decode_speedup", "kld"}
        kld, interval = record.gated()["kld"], record.fidelity_intervals["kld"]
        assert interval.low <= kld <= interval.high
        assert record.accuracy_drop == record.compressed_metric - record.reference_metric
        assert record.drop_interval.low <= record.accuracy_drop <= record.drop_interval.high
        assert {"ppl_first_half", "prefill_tok_per_s", "decode_tok_per_s"} <= set(record.extras)
        baseline = baseline_entry(record)
        assert baseline["accuracy_drop"]["tolerance"] == 0.1  # perplexity's own tolerance
        checks = judge(record, baseline, speed_gated=True)
        assert {c.metric for c in checks} >= {"decode_speedup", "kld"}
        assert not [c.message for c in checks if c.failed]
        # The ledger entry carries the same gated numbers, so `compare` judges them too.
        entry = json.loads(json.dumps(record.to_json()))
        assert LedgerCell(entry).gated() == record.gated()
        assert [c.status for c in judge(LedgerCell(entry), baseline, speed_gated=True)] == \
            [c.status for c in checks]


def test_fidelity_is_zero_for_the_reference_and_torchs_kl_divergence_otherwise():
    batch = torch.randint(64, (3, 9), generator=torch.Generator().manual_seed(2))
    logits = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(3))
    reference = Distributions.of(batch, logits)
    kld, same_top = fidelity(reference, logits)
    assert torch.allclose(kld, torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert (same_top == 100).all()
    moved = logits + torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(4))
    kld, same_top = fidelity(reference, moved)
    want = nn.functional.kl_div(moved.log_softmax(-1), logits.log_softmax(-1), log_target=True,
                                reduction="none").sum(-1).mean(1)
    assert torch.allclose(kld.float(), want, rtol=1e-5)
    agree = (moved.argmax(-1) == logits.argmax(-1)).double().mean(1) * 100
    assert torch.equal(same_top, agree)
