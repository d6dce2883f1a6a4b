"""The replay memory against its definitions (reservoir sampling's inclusion probabilities,
class-balanced counts), its storage and random stream, and experience replay end to end:
every scenario through the command line with W&B read back, and a killed run resumed."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from ewcexp.data.replay import ReplayMemory
from tests.conftest import TINY, read_wandb_run, run_cli
from tests.test_resume import ARGS, killed_run, whole_run


def stream(size: int) -> torch.Tensor:
    """`size` distinct one-pixel uint8 images, the pixel naming the sample."""
    return torch.arange(size, dtype=torch.uint8)[:, None, None]


def test_reservoir_keeps_every_sample_of_the_stream_with_probability_m_over_n():
    """Vitter's algorithm R: after N samples, each one is in the M slots with probability
    M/N, the first (which filled the memory) as much as the last; over 4,000 memories with
    their own streams the frequencies are within 5 standard errors of M/N."""
    size, seen, repeats = 10, 100, 4000
    kept = torch.zeros(seen)
    for seed in range(repeats):
        memory = ReplayMemory(size, "reservoir", torch.Generator().manual_seed(seed))
        for batch in stream(seen).split(32):  # offered minibatch by minibatch, as in training
            memory.add(batch, torch.zeros(len(batch), dtype=torch.long), task=0)
        assert len(memory) == size
        kept[memory.images[:, 0, 0].long()] += 1
    frequency = kept / repeats
    error = (size / seen * (1 - size / seen) / repeats) ** 0.5
    assert (frequency - size / seen).abs().max() < 5 * error
    assert frequency[:size].mean() == pytest.approx(size / seen, abs=2 * error)
    assert frequency.sum() == pytest.approx(size)  # M slots, no sample twice


def test_reservoir_by_minibatch_is_algorithm_r_one_sample_at_a_time_on_the_same_draws():
    """The memory takes a minibatch at once; Vitter's algorithm R, written out one sample at
    a time on the same uniform draws (one per sample past the M-th), keeps the same samples
    in the same slots, including when two samples of a minibatch draw one slot."""
    size, batch = 7, 16
    memory = ReplayMemory(size, "reservoir", torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)
    slots, seen = [], 0
    for part in stream(200).split(batch):
        memory.add(part, torch.zeros(len(part), dtype=torch.long), task=0)
        past_the_mth = sum(1 for number in range(seen + 1, seen + len(part) + 1) if number > size)
        uniform = torch.rand(past_the_mth, generator=draws, dtype=torch.float64).tolist()
        for sample in part[:, 0, 0].tolist():
            seen += 1
            if seen <= size:
                slots.append(sample)
                continue
            j = int(uniform.pop(0) * seen)
            if j < size:
                slots[j] = sample
    assert memory.images[:, 0, 0].tolist() == slots and memory.seen == seen == 200


def test_class_balanced_shares_the_slots_evenly_among_the_classes_seen():
    """Three classes of 60, 30 and 10 samples, shuffled, into 30 slots: the rare class keeps
    all 10, the other two 10 each; with 12 slots and four classes, 3 each."""
    units = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    memory = ReplayMemory(30, "class_balanced", torch.Generator().manual_seed(0))
    memory.add(stream(100)[order], units[order], task=0)
    assert torch.bincount(memory.units).tolist() == [10, 10, 10]
    assert set(memory.images[memory.units == 2, 0, 0].tolist()) == set(range(90, 100))
    # each slot holds the unit of the image in it
    assert (units[memory.images[:, 0, 0].long()] == memory.units).all()
    four = torch.arange(4).repeat_interleave(25)
    memory = ReplayMemory(12, "class_balanced", torch.Generator().manual_seed(0))
    for task, part in enumerate(four.split(25)):  # one class per task, as in split sequences
        memory.add(stream(25), part, task=task)
    assert torch.bincount(memory.units).tolist() == [3, 3, 3, 3]
    assert torch.bincount(memory.tasks).tolist() == [3, 3, 3, 3]


def test_memory_keeps_images_as_stored_and_draws_only_from_its_own_stream():
    memory = ReplayMemory(8, "reservoir", torch.Generator().manual_seed(0))
    memory.add(stream(20), torch.arange(20) % 3, task=1)
    assert memory.images.dtype == torch.uint8 and memory.images.shape == (8, 1, 1)
    global_state = torch.get_rng_state()
    images, units, tasks = memory.draw(5)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert images.dtype == torch.uint8 and (tasks == 1).all()
    assert (units == images[:, 0, 0].long() % 3).all()


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_a_restored_memory_keeps_and_draws_what_the_uninterrupted_one_does(policy):
    def offered(memory: ReplayMemory, part: slice) -> None:
        images = stream(200)[part]
        memory.add(images, images[:, 0, 0].long() % 4, task=0)

    whole = ReplayMemory(16, policy, torch.Generator().manual_seed(3))
    offered(whole, slice(0, 120))
    saved = whole.state_dict()
    offered(whole, slice(120, 200))
    restored = ReplayMemory(16, policy, torch.Generator().manual_seed(99))
    restored.load_state_dict(saved)
    offered(restored, slice(120, 200))
    assert torch.equal(whole.images, restored.images) and whole.seen == restored.seen == 200
    assert all(torch.equal(a, b) for a, b in zip(whole.draw(6), restored.draw(6), strict=True))


def results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_replay_combines_with_a_penalty_in_every_scenario_and_w_and_b_has_its_settings(
    tmp_path, data_root, scenario
):
    """`strategy=ewc replay.size=...` on split MNIST: a completed run whose config (in
    results.json and in the W&B run read back) holds the memory's settings; in the
    class-incremental scenario, replay keeps the first task well above what EWC alone does."""
    quiet = [o for o in TINY if o != "logger=none"]
    common = [*quiet, "task_sequence=split_mnist", f"task_sequence.scenario={scenario}"]
    replayed = run_cli(
        *common, "strategy=ewc", "replay.size=60", "replay.batch_size=16",
        cwd=tmp_path, data_root=data_root,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    with_memory = results(tmp_path / "run")
    assert with_memory["status"] == "completed"
    assert with_memory["config"]["replay"] == {
        "_target_": "ewcexp.data.replay.ReplaySettings",
        "size": 60,
        "policy": "reservoir",
        "batch_size": 16,
    }
    (run,) = [r["run"] for r in read_wandb_run(tmp_path / "run") if r["type"] == "run"]
    config = run["config"].get("update", run["config"])
    assert config["replay"] == with_memory["config"]["replay"]
    if scenario == "class":
        (tmp_path / "alone").mkdir()
        alone = run_cli(
            *common, "strategy=ewc", "logger=none", cwd=tmp_path / "alone", data_root=data_root
        )
        assert alone.returncode == 0, alone.stderr[-2000:]
        without = results(tmp_path / "alone" / "run")
        first_task = [row[0] for row in with_memory["acc_matrix"]][-1]
        assert first_task > [row[0] for row in without["acc_matrix"]][-1] + 0.2


@pytest.mark.slow
def test_a_run_with_a_memory_killed_mid_task_resumes_to_the_uninterrupted_numbers(
    tmp_path, data_root
):
    """The memory is in the checkpoint: SIGTERM in task 2 (mid-task checkpoint), then a
    resume, ends with the numbers of a run never stopped."""
    import torch as torch_

    extra = ["replay.size=40", "replay.policy=class_balanced"]
    whole = whole_run(tmp_path, data_root, *extra)
    run_dir = tmp_path / "run"
    stopped = killed_run(
        "ewcexp.training.loop.active_cross_entropy", 40, run_dir, data_root, signal.SIGTERM, *extra
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    saved = torch_.load(run_dir / "checkpoint.pt", weights_only=True)
    assert (saved["tasks_done"], saved["task_steps"]) == (1, 10)
    assert saved["memory"]["filled"] == 40 and saved["memory"]["images"].dtype == torch_.uint8
    resumed = run_cli(*ARGS, *extra, cwd=tmp_path, data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for key in ("acc_matrix", "avg_acc", "bwt", "forgetting", "per_task"):
        assert results(run_dir)[key] == whole[key], key
