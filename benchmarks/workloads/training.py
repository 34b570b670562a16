"""The training loop references and recovery fine-tunes share: seeded, deterministic, on a fixed
number of threads."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.threads import threads
from benchmarks.workloads.console import progress
from benchmarks.workloads.device import model_device

# Training runs on a fixed number of threads: float reductions split across threads add up in
# another order, so a recipe gives the same bytes only on the same thread count (and ISA).
TRAIN_THREADS = 2


# Knowledge distillation (Hinton et al., 2015): the loss mixes the task's with the KL divergence
# of the student's softened distribution from the teacher's, times T² so that the soft term's
# gradients keep their size as the temperature T softens it.
KD_TEMPERATURE = 2.0
KD_WEIGHT = 0.5  # of the soft term; 0 is the task's loss alone, the plain fine-tune


def distillation_loss(task: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor,
                      weight: float | None = None) -> torch.Tensor:
    """(1 - w) x the task's loss + w x T² KL(teacher || student) of the logits softened by T
    (logits (..., classes): every leading position is one sample)."""
    weight = KD_WEIGHT if weight is None else weight
    t = KD_TEMPERATURE
    classes = student.shape[-1]
    soft = F.kl_div(F.log_softmax(student.reshape(-1, classes).float() / t, dim=-1),
                    F.log_softmax(teacher.reshape(-1, classes).float() / t, dim=-1),
                    reduction="batchmean", log_target=True)
    return (1 - weight) * task + weight * t * t * soft


@contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels on CUDA, where cuDNN's autotuner and atomic adds otherwise make two
    runs of one fine-tune differ (on an H100, MobileNetV2 prune_global@0.8+ft moved 3.8 points
    between two runs). A kernel with no deterministic version warns. CPU training is left as
    it is: it is deterministic already, and the cached references were trained that way."""
    if device.type != "cuda":
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def train(
    model: nn.Module,
    batch_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    n_items: int,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
    epochs: int | None = None,
    max_steps: int | None = None,
    weight_decay: float = 1e-4,
) -> nn.Module:
    """AdamW on the parameters that require grad, one-cycle schedule; seeded, so a rerun trains
    the same model.

    `batch_loss(model, indices)` is the loss of one batch of the training items; `max_steps`
    cuts training short (a recovery fine-tune is a few hundred steps of the same loop). Without
    `epochs`, as many as `max_steps` full batches take.
    """
    if epochs is None:
        if max_steps is None or n_items < batch_size:
            raise ValueError(f"{desc}: give epochs, or max_steps and at least one full batch "
                             f"({n_items} items, batch {batch_size})")
        epochs = -(-max_steps // (n_items // batch_size))
    torch.manual_seed(seed)  # dropout and anything else that draws from the global generator
    gen = torch.Generator().manual_seed(seed)
    plan = [idx for _ in range(epochs) for idx in torch.randperm(n_items, generator=gen)
            .split(batch_size) if len(idx) == batch_size][:max_steps]
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapter only
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(plan))
    model.train()
    bar = progress(plan, desc=desc, unit="step")
    with threads(TRAIN_THREADS), deterministic(model_device(model)):
        for idx in bar:
            loss = batch_loss(model, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()
