"""Starting weights and frozen parameters: every run writes `<run dir>/model.pt`; a later run
starts from it with `model.weights`; `model.trainable` leaves the rest untouched, without
importance or penalty; bad files and patterns are one line before any training."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ewcexp.config.checks import ConfigError
from ewcexp.model.weights import freeze_all_but, load_weights, model_file
from tests.conftest import TINY, run_cli


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_load_weights_takes_a_run_file_or_a_state_dict_and_names_the_first_misfit(tmp_path):
    source, target = mlp(), mlp()
    torch.save(model_file(source, {"_target_": "x"}), tmp_path / "model.pt")
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    for name in ("model.pt", "plain.pt"):
        load_weights(target, str(tmp_path / name), "x")
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                    target.state_dict().values(), strict=True))  # fmt: skip
    wider = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ConfigError, match=r"tensor '0.weight' is \[3, 4\] in the file, \[5, 4\]"):
        load_weights(wider, str(tmp_path / "plain.pt"), "x")
    deeper = nn.Sequential(*mlp(), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"the file has no tensor '3.weight'"):
        load_weights(deeper, str(tmp_path / "plain.pt"), "x")
    with pytest.raises(ConfigError, match=r"the model has no tensor '2.weight'"):
        load_weights(nn.Sequential(nn.Linear(4, 3)), str(tmp_path / "plain.pt"), "x")
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(ConfigError, match=r"model.weights=.*text.pt is not allowed: not a file"):
        load_weights(target, str(tmp_path / "text.pt"), "x")


def test_freeze_all_but_keeps_matching_parameters_trainable_and_refuses_a_dead_pattern():
    model = mlp()
    freeze_all_but(model, ["2.*"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"2.weight", "2.bias"}
    with pytest.raises(ConfigError, match=r"'head\.\*' matches no parameter; the model's are 0.w"):
        freeze_all_but(mlp(), ["2.*", "head.*"])


@pytest.mark.slow
def test_a_run_starts_from_an_earlier_runs_model_pt_and_trains_only_what_matches(
    tmp_path, data_root
):
    """Run A writes model.pt; run B loads it with only the first layer trainable: B's other
    tensors end exactly as A's, its first layer moved, its Fisher and counts cover that layer
    alone; A's model.pt holds what A's last evaluation measured."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    done = run_cli(*TINY, "strategy=ewc", cwd=first, data_root=data_root)
    assert done.returncode == 0, done.stderr
    saved = torch.load(first / "run" / "model.pt", weights_only=True)
    assert saved["model"]["_target_"] == "ewcexp.model.networks.MLP"
    total = 784 * 32 + 32 + 32 * 10 + 10
    assert saved["parameters"] == {"total": total, "trainable": total}
    done = run_cli(
        *TINY, "strategy=ewc", f"model.weights={first / 'run' / 'model.pt'}",
        "model.trainable=[layers.0.*]", cwd=second, data_root=data_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = torch.load(second / "run" / "model.pt", weights_only=True)["state_dict"]
    for name, tensor in saved["state_dict"].items():
        assert torch.equal(after[name], tensor) == (not name.startswith("layers.0.")), name
    results = json.loads((second / "run" / "results.json").read_text())
    assert results["parameters"] == {"total": total, "trainable": 784 * 32 + 32}
    for consolidated in results["fisher"]:
        assert set(consolidated["per_parameter"]) == {"layers.0.weight", "layers.0.bias"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["model.weights=WRONG", "model.hidden_sizes=[16]"],
         "error: model.weights=WRONG does not fit model._target_=ewcexp.model.networks.MLP: "
         "tensor 'layers.0.weight' is [32, 784] in the file, [16, 784] in the model"),
        (["model.weights=/nonexistent/model.pt"],
         "error: model.weights=/nonexistent/model.pt is not allowed: there is no such file"),
        (["model.trainable=[head.*]"],
         "error: model.trainable=['head.*'] is not allowed: 'head.*' matches no parameter"),
        (["model.trainable=[]"],
         "error: model.trainable=[] is not allowed: expected null or a non-empty list of "
         "parameter-name patterns"),
    ],
)  # fmt: skip
def test_a_misfit_file_or_pattern_is_one_line_and_nothing_is_written(
    tmp_path, data_root, overrides, line
):
    wrong = tmp_path / "wrong.pt"
    torch.save({"layers.0.weight": torch.zeros(32, 784)}, wrong)  # a first layer of 32
    overrides = [o.replace("WRONG", str(wrong)) for o in overrides]
    done = run_cli(*TINY, *overrides, cwd=tmp_path, data_root=data_root)
    assert done.returncode != 0
    errors = [row for row in done.stderr.splitlines() if row.startswith("error:")]
    assert errors and errors[0].startswith(line.replace("WRONG", str(wrong)))
    assert "Traceback" not in done.stderr
    run = tmp_path / "run"
    assert not (run / "results.json").exists() and not (run / "checkpoint.pt").exists()
    assert not (run / "model.pt").exists()


@pytest.mark.slow
def test_pretrained_on_makes_the_starting_weights_task_0_consolidated_and_evaluated(
    tmp_path, data_root
):
    """A run learns MNIST's ten digits as one task; runs on permuted MNIST start from its
    model.pt with task_sequence.pretrained_on=mnist: T0's accuracy at the start is the first
    run's own (its output layer loaded into T0's units), it is measured after every task
    through those units, and an L2 penalty consolidated at the start holds the shared layer
    there, where fine-tuning moves it."""
    first = tmp_path / "mnist"
    first.mkdir()
    one_task = ["task_sequence=split_mnist", "task_sequence.num_tasks=1",
                "task_sequence.classes_per_task=10", "train.iterations=100"]  # fmt: skip
    done = run_cli(*TINY, *one_task, cwd=first, data_root=data_root)
    assert done.returncode == 0, done.stderr
    learned = json.loads((first / "run" / "results.json").read_text())["avg_acc"]
    start = torch.load(first / "run" / "model.pt", weights_only=True)["state_dict"]
    hidden = ["layers.0.weight", "layers.0.bias"]  # shared by T0 and the new tasks
    kept = {}
    for strategy in ("finetune", "l2"):
        folder = tmp_path / strategy
        folder.mkdir()
        done = run_cli(
            *TINY, "task_sequence.pretrained_on=mnist", f"model.weights={first / 'run' / 'model.pt'}",
            f"strategy={strategy}", "lambda=10000", "train.iterations=100", cwd=folder,
            data_root=data_root,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results = json.loads((folder / "run" / "results.json").read_text())
        assert results["pretrained_on"] == "mnist"
        assert results["acc_pretrained"][0] == pytest.approx(learned, abs=1e-6)
        assert len(results["acc_pretrained"]) == 4  # the start, then after each of 3 tasks
        assert [m["acc/pretrained"] for m in results["per_task"]] == results["acc_pretrained"][1:]
        assert "T0 (mnist)" in done.stderr + done.stdout
        end = torch.load(folder / "run" / "model.pt", weights_only=True)["state_dict"]
        kept[strategy] = sum(float((end[n] - start[n]).norm()) for n in hidden)
    # L2 was consolidated at the starting weights before task 1: it pulls the shared layers
    # back there (the synthetic digits are too easy for T0's accuracy itself to drop)
    assert kept["l2"] < 0.1 * kept["finetune"]

    # with a replay memory, T0's training images join it first, with T0's own units; SI,
    # whose importance comes from its training path, says in one line that T0 gets none
    folder = tmp_path / "si_replay"
    folder.mkdir()
    done = run_cli(
        *TINY, "task_sequence.pretrained_on=mnist", f"model.weights={first / 'run' / 'model.pt'}",
        "strategy=si", "replay.size=300", "replay.policy=class_balanced", "train.iterations=20",
        cwd=folder, data_root=data_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warned = [row for row in (done.stderr + done.stdout).splitlines() if "gives T0" in row]
    assert len(warned) == 1 and "strategy=si" in warned[0], done.stderr
    memory = torch.load(folder / "run" / "checkpoint.pt", weights_only=True)["memory"]
    from_t0 = memory["tasks"] == 3  # stored as task len(tasks)
    assert 0 < int(from_t0.sum()) < 300  # T0's samples and the new tasks' share the slots
    assert bool((memory["units"][from_t0] >= 10).all())  # T0's units, after the scenario's 10
    assert bool((memory["units"][~from_t0] < 10).all())


@pytest.mark.slow
def test_pretrained_on_data_that_is_not_there_is_one_line_and_nothing_is_written(
    tmp_path, data_root
):
    done = run_cli(*TINY, "task_sequence.pretrained_on=cifar10", cwd=tmp_path, data_root=data_root)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    errors = [row for row in done.stderr.splitlines() if row.startswith("error:")]
    assert errors and "cifar10" in errors[0].lower()
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
