"""Independent random streams, and the reference code's setup choices as options:
`task_sequence.pad_to`, `task_sequence.class_order=random`, `optimizer.reset_per_task`."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from ewcexp.config.checks import ConfigError, check_config
from ewcexp.config.seeds import STREAMS, generator, stream_seed
from ewcexp.data.image_data import ImageData
from ewcexp.data.images import load_images
from ewcexp.data.sequences import PermutedSequence, SplitSequence, padded
from tests.conftest import TINY, compose_config, run_cli
from tests.test_resume import INTERRUPTIONS, killed_run, metrics


def test_each_purpose_draws_its_own_stream_the_same_for_the_same_seed():
    """Batches, importance samples, task draws and weights no longer share raw numbers; each
    stream is SeedSequence(seed).spawn(...)[k]'s first word and repeats exactly."""
    draws = {p: torch.randperm(1000, generator=generator(0, p))[:50] for p in STREAMS}
    for first in STREAMS:
        for second in STREAMS:
            if first != second:
                assert not torch.equal(draws[first], draws[second])
        again = torch.randperm(1000, generator=generator(0, first))[:50]
        assert torch.equal(draws[first], again)
    children = np.random.SeedSequence(7).spawn(len(STREAMS))
    for purpose, k in STREAMS.items():
        assert stream_seed(7, purpose) == int(children[k].generate_state(1, np.uint64)[0])
    assert stream_seed(0, "batches") != stream_seed(1, "batches")


def experiment(tmp_path, data_root, *overrides):
    from ewcexp.training.runner import run_experiment

    cfg = compose_config(*TINY, f"data.root={data_root}", *overrides)
    check_config(cfg)
    return run_experiment(cfg, tmp_path)


def test_task_ones_fisher_samples_are_not_its_first_batch(tmp_path, data_root):
    """Seeded alike, the batch order's first epoch and the Fisher's sample draw were one and
    the same permutation: the Fisher saw exactly the first batch's images. The run's two
    generators now draw different ones: the first batch the training loop takes and the
    samples the Fisher draws (through the objects the runner uses) share few images."""
    from ewcexp.importance.contract import TaskData
    from ewcexp.training.loop import batch_indices
    from ewcexp.training.runner import prepare

    cfg = compose_config(*TINY, f"data.root={data_root}", "resume=false")
    run, state, _ = prepare(cfg, {}, tmp_path)
    task = run.sequence.tasks[0]
    images, _ = task.train_set()
    (first_batch,) = batch_indices(len(images), 128, 1, state.batch_rng)
    data = TaskData.of(task, run.sequence.scenario, run.device, state.fisher_rng)
    drawn, _ = data.subset(128)
    batch_rows = {tuple(row.tolist()) for row in images[first_batch].flatten(1)}
    shared = sum(tuple(row.tolist()) in batch_rows for row in drawn.flatten(1))
    assert shared < 64, f"{shared} of the Fisher's 128 samples are in the first batch"


def test_pad_to_pads_before_permuting_and_the_model_follows(tmp_path, data_root):
    results = experiment(tmp_path, data_root, "task_sequence.pad_to=32")
    assert results["config"]["task_sequence"]["pad_to"] == 32
    assert "padded to 32×32" in results["data_source"]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert state["layers.0.weight"].shape[1] == 32 * 32  # the MLP's input follows
    images = load_images("mnist", str(data_root), download=False)
    big = padded(images, 32)
    assert big.train_images.shape[1:] == (32, 32)
    assert torch.equal(big.train_images[:, 2:30, 2:30], images.train_images)
    assert big.train_images[:, :2].sum() == 0 and big.train_images[:, :, 30:].sum() == 0
    sequence = PermutedSequence("mnist", images, 2, "domain", seed=0, pad_to=32)
    assert len(sequence.tasks[1].pixel_permutation) == 1024  # the border pixels move too
    # the images' size is the data's: refused as the sequence is built, before any training
    with pytest.raises(
        ConfigError,
        match=r"^task_sequence.pad_to=20 is not allowed: mnist has images of 28×28; "
        r"expected null or at least 28$",
    ):
        PermutedSequence("mnist", images, 2, "domain", seed=0, pad_to=20)
    colour = ImageData(*(torch.zeros(1, 3, 32, 30, dtype=torch.uint8), torch.zeros(1)) * 2, "c")
    with pytest.raises(
        ConfigError, match=r"^task_sequence.pad_to=31 is not allowed: cifar10 has images of 30×32"
    ):
        SplitSequence("cifar10", colour, 1, "task", seed=0, classes_per_task=1, pad_to=31)


@pytest.mark.slow
def test_random_class_order_comes_from_the_seed_and_is_recorded(tmp_path, data_root):
    orders = {}
    for seed in (0, 0, 1):
        results = experiment(
            tmp_path / f"{seed}-{len(orders)}", data_root, "task_sequence=split_mnist",
            "task_sequence.class_order=random", f"seed={seed}",
        )  # fmt: skip
        order = results["class_order"]
        assert sorted(order) == list(range(10))
        assert results["task_names"][0] == f"classes {order[0]}/{order[1]}"
        orders.setdefault(seed, []).append(order)
    assert orders[0][0] == orders[0][1] != orders[1][0]
    natural = experiment(tmp_path / "natural", data_root, "task_sequence=split_mnist")
    assert natural["class_order"] == list(range(10))
    permuted = experiment(tmp_path / "permuted", data_root)
    assert permuted["class_order"] is None
    check_config(compose_config("task_sequence=split_mnist", "task_sequence.class_order=[1,2]"))
    with pytest.raises(
        ConfigError,
        match=r"^task_sequence.class_order=\[1, 2\] is not allowed: expected null, random or a "
        r"permutation of 0..9 \(mnist has 10 classes\)$",
    ):
        SplitSequence(
            "mnist", load_images("mnist", data_root, download=False), 5, "task", 0, 2, [1, 2]
        )


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_reset_per_task_false_carries_the_optimizer_state_to_the_next_task(
    tmp_path, data_root, optimizer
):
    """Adam's step count (SGD's momentum buffer) runs on across tasks and sits in the
    checkpoint of every task end; with the default it starts afresh and none is kept."""
    extra = [f"optimizer={optimizer}"] + (["optimizer.momentum=0.9"] if optimizer == "sgd" else [])
    carried = experiment(tmp_path / "carried", data_root, *extra, "optimizer.reset_per_task=false")
    fresh = experiment(tmp_path / "fresh", data_root, *extra)
    saved = torch.load(tmp_path / "carried" / "checkpoint.pt", weights_only=True)
    state = next(iter(saved["optimizer"]["state"].values()))
    if optimizer == "adam":
        assert float(state["step"]) == 3 * 30  # three tasks of 30 steps, one running count
    else:
        assert "momentum_buffer" in state
    assert "optimizer" not in torch.load(tmp_path / "fresh" / "checkpoint.pt", weights_only=True)
    assert carried["acc_matrix"][0] == fresh["acc_matrix"][0]  # task 1 is the same
    assert carried["acc_matrix"][1:] != fresh["acc_matrix"][1:]


def test_epochs_mode_trains_each_task_for_whole_passes_over_its_data(tmp_path, data_root):
    """train.iterations=null: each task takes `epochs` passes of ceil(N / batch) steps (a
    last short batch included), counted by Adam's step carried across tasks."""
    import math

    from ewcexp.training.runner import prepare

    options = [
        "task_sequence=split_mnist", "train.iterations=null", "train.epochs=2",
        "train.batch_size=64", "optimizer.reset_per_task=false",
    ]  # fmt: skip
    experiment(tmp_path / "run", data_root, *options)
    cfg = compose_config(*TINY, f"data.root={data_root}", *options, "resume=false")
    tasks = prepare(cfg, {}, tmp_path / "sizes")[0].sequence.tasks
    sizes = [len(task.train_set()[1]) for task in tasks]
    assert any(size % 64 for size in sizes)  # a short last batch somewhere
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    (step, *_) = {float(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert step == sum(2 * math.ceil(size / 64) for size in sizes)


@pytest.mark.slow
def test_carried_optimizer_state_survives_kills_mid_task_and_at_task_ends(tmp_path, data_root):
    """The resume test's interruptions with reset_per_task=false: every checkpoint holds the
    optimizer state, and the resumed run ends with the uninterrupted run's numbers."""
    option = "optimizer.reset_per_task=false"
    reference = tmp_path / "reference"
    reference.mkdir()
    done = run_cli(*killed_args(), option, cwd=reference, data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "run"
    for where, when, signum, (tasks_done, task_steps) in INTERRUPTIONS:
        stopped = killed_run(where, when, run_dir, data_root, signum, option)
        assert stopped.returncode in (-signal.SIGKILL, 128 + signum), stopped.stderr[-2000:]
        saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert (saved["tasks_done"], saved["task_steps"]) == (tasks_done, task_steps)
        assert "optimizer" in saved  # at task ends too: the next task carries on from it
    resumed = run_cli(*killed_args(), option, cwd=tmp_path, data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metrics(run_dir) == metrics(reference / "run")
    assert (
        json.loads((run_dir / "results.json").read_text())["config"]["optimizer"]["reset_per_task"]
        is False
    )


def killed_args() -> list[str]:
    from tests.test_resume import ARGS

    return list(ARGS)


def test_resnet_standardises_pixels_per_channel_when_given_a_mean_and_std():
    from ewcexp.model.networks import ResNet18

    torch.manual_seed(0)
    standardised = ResNet18(
        (3, 32, 32), 4, width=4, pixel_mean=[0.5, 0.4, 0.3], pixel_std=[0.2, 0.25, 0.5]
    )
    plain = ResNet18((3, 32, 32), 4, width=4)
    plain.load_state_dict(
        {k: v for k, v in standardised.state_dict().items() if "pixel" not in k}, strict=False
    )
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    by_hand = (images.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.5]
    ).view(3, 1, 1)
    standardised.eval(), plain.eval()
    torch.testing.assert_close(standardised(images), plain(by_hand))
    with pytest.raises(
        ConfigError, match=r"^model.pixel_mean=\[0.5\] with model.pixel_std=None is not allowed"
    ):
        check_config(compose_config("model=resnet18", "model.pixel_mean=[0.5]"))


def test_all_classes_active_from_the_first_task_in_the_class_scenario(tmp_path, data_root):
    from ewcexp.data.scenarios import Scenario

    seen, every = Scenario("class", 5, 2), Scenario("class", 5, 2, all_classes_active=True)
    assert (seen.active(0, 0), every.active(0, 0)) == (slice(0, 2), slice(0, 10))
    assert every.active(3, 1) == slice(0, 10) and seen.active(3, 1) == slice(0, 8)
    assert Scenario("task", 5, 2, True).active(1, 4) == slice(2, 4)  # only `class` changes
    split = ["task_sequence=split_mnist", "task_sequence.scenario=class"]
    wide = experiment(tmp_path / "all", data_root, *split, "task_sequence.active_classes=all")
    assert wide["config"]["task_sequence"]["active_classes"] == "all"
    # the loop's first task, through the objects the runner builds: its loss spans units
    # 0-1, or all six units of the three tasks
    from ewcexp.training.loop import training_set
    from ewcexp.training.runner import prepare

    for option, units in (("seen", 2), ("all", 6)):
        cfg = compose_config(
            *TINY, f"data.root={data_root}", *split, f"task_sequence.active_classes={option}"
        )
        run = prepare(cfg, {}, tmp_path / f"prepared-{option}")[0]
        _, _, lo, hi = training_set(run.sequence.tasks[:1], run.sequence.scenario, 0, run.device)
        assert (lo == 0).all() and (hi == units).all(), option


def test_first_unpermuted_keeps_task_one_and_draws_the_rest_alike(data_root):
    from ewcexp.data.images import load_images
    from ewcexp.data.sequences import PermutedSequence

    images = load_images("mnist", str(data_root), download=False)
    plain = PermutedSequence("mnist", images, 3, "domain", seed=4)
    first = PermutedSequence("mnist", images, 3, "domain", seed=4, first_unpermuted=True)
    assert first.tasks[0].pixel_permutation is None and first.tasks[0].name == "original"
    assert torch.equal(first.tasks[0].test_set()[0], images.test_images)
    for t in (1, 2):
        assert torch.equal(first.tasks[t].pixel_permutation, plain.tasks[t].pixel_permutation)


@pytest.mark.slow
def test_a_standardisation_that_does_not_fit_the_images_is_one_line(tmp_path, data_root):
    done = run_cli(
        *[o for o in TINY if not o.startswith("model.")], "model=resnet18", "model.width=4",
        "model.pixel_mean=[0.5,0.5,0.5]",
        "model.pixel_std=[0.2,0.2,0.2]", cwd=tmp_path, data_root=data_root,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: model.pixel_mean=[0.5, 0.5, 0.5] is not allowed: the images have 1 channel(s); "
        "expected null or 1 numbers"
    ]
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resnet_stem_bias_and_last_relu_as_the_reference_builds_them():
    from ewcexp.model.networks import ResNet18

    torch.manual_seed(0)
    ours = ResNet18((3, 32, 32), 4, width=4)
    theirs = ResNet18((3, 32, 32), 4, width=4, stem_bias=True, last_relu=False)
    assert ours.stem[0].bias is None and theirs.stem[0].bias is not None
    assert [b.final_relu for b in theirs.blocks] == [True] * 7 + [False]
    assert all(b.final_relu for b in ours.blocks)
    features = theirs.blocks(theirs.stem(torch.randn(2, 3, 32, 32)))
    assert (features < 0).any()  # no ReLU after the last block: negative features reach pooling
