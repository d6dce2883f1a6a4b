"""Task sequences: labels, heads and permutations, through the real loaders."""

from __future__ import annotations

import torch

from ewcexp.data.images import load_images
from ewcexp.data.scenarios import Scenario
from ewcexp.data.sequences import PermutedSequence, SplitSequence


def mnist(root):
    return load_images("mnist", root, download=False, allow_fallback=False)


def test_split_tasks_hold_their_classes_with_local_labels(data_root):
    sequence = SplitSequence(
        "mnist", mnist(data_root), 5, "task", seed=0, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    )
    images = sequence.images
    for task in sequence.tasks:
        x, local = task.train_set()
        assert set(local.tolist()) == {0, 1}
        originals = torch.tensor(task.class_ids)[local]
        assert torch.equal(x, images.train_images[torch.isin(images.train_labels, originals)])
        assert task.train_size == len(local)
    assert sequence.tasks[0].class_ids == [9, 8]


def test_permutation_is_the_same_for_train_and_test_and_differs_between_tasks(data_root):
    sequence = PermutedSequence("mnist", mnist(data_root), 3, "domain", seed=5)
    images = sequence.images
    perms = [task.pixel_permutation for task in sequence.tasks]
    assert not torch.equal(perms[0], perms[1])
    for task, perm in zip(sequence.tasks, perms, strict=True):
        train, _ = task.train_set()
        test, _ = task.test_set()
        assert torch.equal(train.flatten(1), images.train_images.flatten(1)[:, perm])
        assert torch.equal(test.flatten(1), images.test_images.flatten(1)[:, perm])
    again = PermutedSequence("mnist", mnist(data_root), 3, "domain", seed=5)
    assert torch.equal(again.tasks[2].pixel_permutation, perms[2])


def test_scenarios_place_heads_and_active_units():
    task, domain, klass = (Scenario(kind, 5, 2) for kind in ("task", "domain", "class"))
    assert (task.output_size, domain.output_size, klass.output_size) == (10, 2, 10)
    assert task.active(3, seen=4) == slice(6, 8) and task.offset(3) == 6
    assert domain.active(3, seen=4) == slice(0, 2) and domain.offset(3) == 0
    assert klass.active(1, seen=3) == slice(0, 8) and klass.offset(1) == 2
    assert klass.active(4, seen=1) == slice(0, 10)  # a future task: its own classes are included


def test_active_cross_entropy_slices_or_masks_to_the_same_loss():
    from ewcexp.training.loop import active_cross_entropy

    logits, targets = torch.randn(6, 10), torch.tensor([4, 5, 4, 5, 5, 4])
    lo, hi = torch.full((6,), 4), torch.full((6,), 6)
    torch.testing.assert_close(
        active_cross_entropy(logits, targets, 4, 6), active_cross_entropy(logits, targets, lo, hi)
    )
    torch.testing.assert_close(
        active_cross_entropy(logits, targets, 4, 6),
        torch.nn.functional.cross_entropy(logits[:, 4:6], targets - 4),
    )
