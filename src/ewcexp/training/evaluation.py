"""Evaluation: test accuracy on each task, with the prediction restricted to the output units
active for it in the scenario (the task's head, or the classes seen so far)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ewcexp.data.scenarios import Scenario, Task


@torch.inference_mode()
def accuracy(
    model: nn.Module,
    task: Task,
    scenario: Scenario,
    seen: int,
    device: torch.device,
    batch_size: int,
    limit: int | None = None,
) -> float:
    """Test accuracy on `task` once tasks 0..`seen` are learned (on its first `limit` test
    images only, if given: the fixed subset continual evaluation uses)."""
    images, labels = task.test_set()
    active = scenario.active(task.index, seen)
    targets = labels + scenario.offset(task.index) - active.start
    return accuracy_over(model, images[:limit], targets[:limit], active, device, batch_size)


@torch.inference_mode()
def accuracy_over(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    active: slice,
    device: torch.device,
    batch_size: int,
) -> float:
    """Accuracy of the prediction among the `active` output units (`targets` index them):
    also the pretrained task's, through its own units."""
    was_training = model.training
    model.eval()
    targets = targets.to(device)
    correct = 0
    for start in range(0, len(targets), batch_size):
        logits = model(images[start : start + batch_size].to(device))[:, active]
        correct += int((logits.argmax(1) == targets[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(targets)
