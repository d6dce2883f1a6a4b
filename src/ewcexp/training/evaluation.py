"""Evaluation: test accuracy on each task, with the prediction restricted to the output units
active for it in the scenario (the task's head, or the classes seen so far)."""

from __future__ import annotations

import torch
from torch import nn

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
    was_training = model.training
    model.eval()
    images, labels = task.test_set()
    images, labels = images[:limit], labels[:limit]
    active = scenario.active(task.index, seen)
    targets = (labels + scenario.offset(task.index) - active.start).to(device)
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size].to(device))[:, active]
        correct += int((logits.argmax(1) == targets[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(labels)
