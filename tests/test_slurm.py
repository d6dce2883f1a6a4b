"""Multiruns through a real SLURM (`hydra/launcher=slurm`), and a job that SLURM signals, that
submitit requeues and that resumes to the numbers of an uninterrupted job.

Needs a running cluster: `scripts/local_slurm.sh start` (what `.ci/run` does)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ARRAY_TASK = re.compile(r"\d+_\d+")  # submitit names a job's folder <array job id>_<task>
JOB_FOLDER = re.compile(r"\d+(_\d+)?")  # ... or <job id> when it submits a single job


def cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not found: start a local cluster with `scripts/local_slurm.sh start`"
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        return "no SLURM cluster answers sinfo: `scripts/local_slurm.sh start` starts one"
    return None


if problem := cluster_problem():
    pytest.skip(problem, allow_module_level=True)

# A site config kept outside the repository, found through --config-dir, as a user keeps the
# partition and account of their cluster.
SITE = """\
defaults:
  - slurm
partition: debug
cpus_per_task: 1   # one thread per job: the local cluster runs on two cores
mem_gb: null
timeout_min: 10
"""
# tiny jobs, but long enough (four tasks of 2,000 steps) to be interrupted mid-run
JOB = [*TINY, "task_sequence.num_tasks=4", "train.iterations=2000", "fisher.num_samples=200"]


def multirun(sweep_dir: Path, data_root: Path, *overrides: str) -> subprocess.Popen:
    """`python run.py -cd <site> -m hydra/launcher=site ...`, started in the background."""
    site = sweep_dir.parent / "site-conf"
    (site / "hydra" / "launcher").mkdir(parents=True, exist_ok=True)
    (site / "hydra" / "launcher" / "site.yaml").write_text(SITE)
    args = ["-cd", str(site), "-m", "hydra/launcher=site", *JOB, *overrides]
    return subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *args, f"data.root={data_root}"]
        + [f"hydra.sweep.dir={sweep_dir}"],
        cwd=sweep_dir.parent,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(launcher: subprocess.Popen) -> str:
    output, _ = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, output[-3000:]
    return output


def metrics(job_dir: Path) -> dict:
    results = json.loads((job_dir / "results.json").read_text())
    return {key: results[key] for key in ("acc_matrix", "avg_acc", "bwt", "forgetting", "fisher")}


@pytest.fixture(scope="module")
def four_jobs(tmp_path_factory, data_root) -> Path:
    sweep_dir = tmp_path_factory.mktemp("slurm") / "multirun"
    finish(multirun(sweep_dir, data_root, "strategy=ewc,online_ewc", "lambda=10,100"))
    return sweep_dir


def test_multirun_runs_each_job_on_slurm(four_jobs):
    jobs = sorted(p for p in four_jobs.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        seen.add((results["strategy"], results["lambda"]))
        assert len(results["acc_matrix"]) == 4 and 0 <= results["avg_acc"] <= 1
    assert seen == {("ewc", 10), ("ewc", 100), ("online_ewc", 10), ("online_ewc", 100)}
    # each ran as a SLURM array task: submitit's folders are named <array job>_<task>
    job_ids = [p.name for p in (four_jobs / ".submitit").iterdir() if ARRAY_TASK.fullmatch(p.name)]
    assert len(job_ids) == 4
    # SLURM's accounting saw them through: COMPLETED (it may record that a moment later)
    deadline = time.monotonic() + 60
    while (states := array_states(job_ids[0].split("_")[0])) != dict.fromkeys(job_ids, "COMPLETED"):
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


def array_states(array_job: str) -> dict[str, str]:
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array_job],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("|") for line in done.stdout.split())


def test_signalled_job_is_requeued_and_resumes_to_identical_results(four_jobs, tmp_path, data_root):
    sweep_dir = tmp_path / "multirun"
    launcher = multirun(sweep_dir, data_root, "strategy=online_ewc", "lambda=100", "logger=wandb")
    job_dir = sweep_dir / "0"
    deadline = time.monotonic() + 600
    while not (job_dir / "checkpoint.pt").exists():  # the first task is done
        assert launcher.poll() is None and time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    (job_id,) = [
        p.name for p in (sweep_dir / ".submitit").iterdir() if JOB_FOLDER.fullmatch(p.name)
    ]
    # what SLURM sends before a time limit (submitit asks for it with --signal=USR2@<delay>)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    finish(launcher)

    log = (job_dir / "ewcexp.log").read_text()
    assert "received SIGUSR2" in log
    assert "resuming after task" in log
    (uninterrupted,) = [  # the same job in the four-job multirun
        p
        for p in four_jobs.glob("[0-9]*")
        if json.loads((p / "results.json").read_text())["strategy"] == "online_ewc"
        and json.loads((p / "results.json").read_text())["lambda"] == 100
    ]
    assert metrics(job_dir) == metrics(uninterrupted)
    # the requeued job reopened the W&B run of the first attempt
    runs = sorted((job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({run.name.rsplit("-", 1)[-1] for run in runs}) == 1


def test_gpu_jobs_sent_from_a_machine_without_one_are_submitted_and_each_says_why(
    tmp_path, data_root
):
    """`-m device=cuda` typed on a login node without a GPU: nothing refuses it up front (the
    jobs run elsewhere); SLURM runs each job on the node with a GPU in its config, which has
    no CUDA here, so each job says so in its log, and the launching command lists them."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the jobs would train")
    sweep_dir = tmp_path / "multirun"
    launcher = multirun(sweep_dir, data_root, "device=cuda", "lambda=10,100")
    output, _ = launcher.communicate(timeout=900)
    assert launcher.returncode == 1, output[-3000:]
    job_ids = [p.name for p in (sweep_dir / ".submitit").iterdir() if ARRAY_TASK.fullmatch(p.name)]
    assert len(job_ids) == 2  # both submitted, as an array
    why = "error: device=cuda is not allowed: CUDA is not available on"
    for job in ("0", "1"):
        assert why in (sweep_dir / job / "ewcexp.log").read_text()
        assert not (sweep_dir / job / "results.json").exists()
        assert not (sweep_dir / job / "checkpoint.pt").exists()
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"error: of 2 jobs in {sweep_dir}, 2 crashed (0, 1); job 0: {why}")
    assert "Traceback" not in output
    # what the jobs asked SLURM for: the GPU of device=cuda
    submitted = next((sweep_dir / ".submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --gpus-per-node=1" in submitted
