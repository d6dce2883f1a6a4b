"""The app a user installs: the `ewcexp` command, `python -m ewcexp`, `ewcexp.run()` in Python,
a run directory one live run at a time, and folders of their own for runs started together."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import ewcexp
from ewcexp.config.checks import ConfigError
from ewcexp.config.folders import RunDirInUse, hold, in_use
from tests.conftest import REPO, TINY, run_cli
from tests.test_own_code import lab  # noqa: F401 - the user's folder of "Your own model/data"

FAST = [*TINY, "task_sequence.num_tasks=2", "train.iterations=5"]


def test_version_is_the_installed_distributions():
    assert ewcexp.__version__ == importlib.metadata.version("ewcexp")


@pytest.mark.slow
def test_run_in_python_returns_what_the_command_writes(tmp_path, data_root):
    """`ewcexp.run` is `python run.py` in this process: the same numbers and files."""
    overrides = [*FAST, f"data.root={data_root}"]
    results = ewcexp.run(overrides, output_dir=tmp_path / "api")
    written = json.loads((tmp_path / "api" / "results.json").read_text())
    assert results["acc_matrix"] == written["acc_matrix"] and results["status"] == "completed"
    assert (tmp_path / "api" / ".hydra" / "config.yaml").is_file()  # as the command keeps it
    assert "average accuracy" in (tmp_path / "api" / "ewcexp.log").read_text()
    done = run_cli(*FAST, cwd=tmp_path, data_root=data_root)
    assert done.returncode == 0, done.stderr
    command = json.loads((tmp_path / "run" / "results.json").read_text())
    assert command["acc_matrix"] == results["acc_matrix"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lamda=4"], "lamda=4 is not allowed: the config has no key lamda"),
        (["lambda=1,2"], "lambda=1,2 is not allowed: a sweep of values needs -m"),
        (["-m", "lambda=1"], "-m is not allowed: run() takes overrides (key=value) only"),
        (["model=mynet"], "model=mynet is not allowed: expected one of cnn, mlp, resnet18"),
        (["hparams_search=lambda_optuna"], "hparams_search=lambda_optuna is not allowed: run()"),
    ],
)
def test_run_in_python_refuses_what_the_command_refuses(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as refused:
        ewcexp.run(overrides, output_dir=tmp_path / "never")
    assert str(refused.value).startswith(message)
    assert not (tmp_path / "never").exists()


def test_python_dash_m_is_the_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ewcexp", "lamda=4"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: lamda=4 is not allowed"), done.stderr
    assert not list(tmp_path.iterdir())  # refused before Hydra made a folder


def test_a_run_directory_takes_one_live_run_and_a_killed_one_leaves_no_lock(tmp_path):
    with hold(tmp_path):
        assert "is in use by a live run (process" in in_use(tmp_path)
        with (
            pytest.raises(RunDirInUse, match="choose another folder with hydra.run.dir"),
            hold(tmp_path),
        ):
            pass
    assert in_use(tmp_path) is None
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from ewcexp.config.folders import hold\nwith hold(Path(sys.argv[1])):\n"
         " print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    assert f"process {holder.pid} on" in in_use(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".lock").exists() and in_use(tmp_path) is None
    with hold(tmp_path):
        pass


@pytest.mark.slow
def test_a_second_run_into_a_live_runs_folder_is_refused_in_one_line(tmp_path, data_root):
    """Before Hydra writes anything: the first run's .hydra/ and checkpoint stay its own."""
    first = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *TINY, "train.iterations=3000",
         f"data.root={data_root}", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while in_use(tmp_path / "run") is None:
            assert first.poll() is None and time.monotonic() < deadline, "never started"
            time.sleep(0.05)
        overrides = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
        second = run_cli("lambda=7", cwd=tmp_path, data_root=data_root)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"error: run directory {tmp_path}/run is in use by a live run (process {first.pid} "
            f"on {os.uname().nodename}): wait for it to end, or choose another folder with "
            "hydra.run.dir=..."
        ]
        assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == overrides
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_runs_started_together_get_folders_of_their_own(tmp_path, data_root):
    """Hydra's default names a folder to the second; ours to the microsecond."""
    command = [sys.executable, str(REPO / "run.py"), *FAST, f"data.root={data_root}"]
    runs = [subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE) for _ in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    folders = list((tmp_path / "outputs").glob("*/*"))
    assert len(folders) == 2 and all((f / "results.json").is_file() for f in folders)


@pytest.mark.slow
def test_installed_into_a_fresh_virtual_environment(tmp_path, data_root, lab):  # noqa: F811
    """`uv pip install <repo>` (a wheel, not the source tree) with the locked versions, then
    from another folder: the `ewcexp` command, `python -m ewcexp`, `ewcexp-report` and
    `ewcexp.run`, with the configs from inside the package; and the README's "Your own
    model" and "Your own data" examples through the installed command."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not found")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", str(venv)], check=True)
    locked = tmp_path / "requirements.txt"
    subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-q",
         "-o", str(locked)], cwd=REPO, check=True,
    )  # fmt: skip
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(locked),
         str(REPO)], check=True,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": ""}
    args = [*FAST, f"data.root={data_root}"]

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)

    installed = run("python", "-c", "import ewcexp, pathlib; print(pathlib.Path(ewcexp.__file__))")
    assert str(venv) in installed.stdout, installed.stdout + installed.stderr
    done = run("ewcexp", *args, "hydra.run.dir=cmd")
    assert done.returncode == 0, done.stderr
    done = run("python", "-m", "ewcexp", "-m", *args, "lambda=1,2", "hydra.sweep.dir=sweep")
    assert done.returncode == 0, done.stderr
    api = run("python", "-c", f"import ewcexp; print(ewcexp.run({args!r}, 'api')['avg_acc'])")
    assert api.returncode == 0, api.stderr
    report = run("ewcexp-report", "sweep")
    assert report.returncode == 0 and "ewc" in report.stdout, report.stderr
    results = json.loads((elsewhere / "cmd" / "results.json").read_text())
    assert float(api.stdout.split()[-1]) == results["avg_acc"]
    assert run("ewcexp", "model=mynet").stderr.startswith("error: model=mynet is not allowed")
    # the user's own network and image folder, from their folder, through the search path
    own = [f"hydra.searchpath=[file://{lab}/conf]", "logger=none", "train.iterations=40"]
    theirs = {**env, "PYTHONPATH": str(lab)}
    for name, options in {
        "mine": ["model=mynet", "task_sequence=split_shapes"],
        "torchvision": ["model=shufflenet", "task_sequence=split_shapes"],
        "loader": ["model=mynet", "task_sequence=permuted_spectra"],
    }.items():
        done = subprocess.run(
            ["ewcexp", *own, *options, f"hydra.run.dir={tmp_path / name}"],
            cwd=lab, env=theirs, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((tmp_path / name / "results.json").read_text())["status"] == "completed"


def test_run_in_python_leaves_the_callers_hydra_as_it_was(tmp_path):
    """A notebook that composes its own configs with Hydra's API keeps doing so."""
    from hydra import compose, initialize_config_dir

    (tmp_path / "mine.yaml").write_text("answer: 42\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        with pytest.raises(ConfigError):
            ewcexp.run(["lamda=1"])
        assert compose("mine").answer == 42


def test_a_live_run_in_an_interpolated_folder_is_seen_before_hydra_writes(tmp_path):
    from ewcexp.app.command_line import refused_job
    from ewcexp.app.compose import hydra_configs

    args = ["seed=3", f"hydra.run.dir={tmp_path}/runs/${{seed}}"]
    with hold(tmp_path / "runs" / "3"), hydra_configs(args) as configs:
        assert "is in use by a live run" in refused_job(args, configs)
    with hydra_configs(args) as configs:
        assert refused_job(args, configs) is None
