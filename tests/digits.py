"""A real, tiny workload for harness tests: an MLP on scikit-learn's 1,797 8x8 digits."""

from __future__ import annotations

from functools import cache

import torch
from sklearn.datasets import load_digits
from torch import nn

from benchmarks.workloads.base import Score, Workload, train


@cache
def _trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    train(model, lambda i: (x[train_idx][i], y[train_idx][i]), len(train_idx), epochs=12,
          batch_size=50, lr=1e-2, seed=0, desc="digits")
    return model.eval(), x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def digits_workload() -> Workload:
    model, x_train, y_train, x_test, y_test = _trained()

    def evaluate(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        with torch.inference_mode():
            correct = candidate(x_test.to(input_dtype)).argmax(1) == y_test
        return Score(100.0 * correct.float().mean().item(), correct)

    def finetune(candidate: nn.Module) -> None:
        train(candidate, lambda i: (x_train[i], y_train[i]), len(y_train), epochs=2,
              batch_size=50, lr=2e-3, seed=1, desc="digits ft")

    return Workload(
        name="digits-mlp", metric="top1_pct", higher_is_better=True, model=model,
        evaluate=evaluate, calibration=list(x_train[:256].split(64)),
        example_input=x_test[:32], finetune=finetune, checkpoint_sha256="test",
    )
