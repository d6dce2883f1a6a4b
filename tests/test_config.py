"""Every config group composes; bad input is refused with one line before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ewcexp.app.command_line import unknown_group_choice, unknown_key
from ewcexp.app.compose import hydra_configs
from ewcexp.config.checks import ConfigError, check_config, check_machine
from ewcexp.data.sequences import build_sequence
from tests.conftest import REPO, TINY, compose_config, run_cli, with_companions

CONF = REPO / "src" / "ewcexp" / "conf"
GROUPS = ["task_sequence", "model", "strategy", "fisher", "optimizer", "device"]


@pytest.mark.parametrize(
    "override",
    [f"{group}={path.stem}" for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))],
)
def test_every_group_option_composes_and_validates(override):
    cfg = compose_config(*with_companions(override))
    if override == "device=cuda":
        pytest.skip("cuda is checked against this machine below")
    check_config(cfg)


# each paper preset: the settings its header documents
PRESETS = {
    "split_mnist_task": ("split_mnist", "task", 5, [400, 400], 0.001, 128, 2000, 1e5),
    "split_mnist_class": ("split_mnist", "class", 5, [400, 400], 0.001, 128, 2000, 1e9),
    "permuted_mnist_domain": ("permuted_mnist", "domain", 10, [1000, 1000], 1e-4, 128, 5000, 100),
    "split_cifar10_task": ("split_cifar10", "task", 5, None, 1e-3, 256, 2000, 100),
    # van de Ven's ICLR 2025 blog post on the Fisher
    "fisher_blog_split_mnist": ("split_mnist", "task", 5, [400, 400], 0.001, 128, 2000, 1e5),
    "fisher_blog_split_cifar10": ("split_cifar10", "task", 5, None, 1e-3, 256, 2000, 100),
    # Hsu et al. 2018: 4 epochs per task (train.iterations null), ewc's λ = 2·reg_coef
    "hsu_split_mnist_task": ("split_mnist", "task", 5, [400, 400], 0.001, 128, None, 200),
    "hsu_split_mnist_domain": ("split_mnist", "domain", 5, [400, 400], 0.001, 128, None, 200),
    "hsu_split_mnist_class": ("split_mnist", "class", 5, [400, 400], 0.001, 128, None, 1200),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_experiment_presets_set_the_papers_setup(name):
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == sorted(PRESETS)
    sequence, scenario, tasks, hidden, lr, batch, iterations, strength = PRESETS[name]
    cfg = compose_config(f"experiment={name}")
    check_config(cfg)
    expected_sequence = compose_config(f"task_sequence={sequence}").task_sequence
    assert cfg.task_sequence.dataset == expected_sequence.dataset
    assert cfg.task_sequence._target_ == expected_sequence._target_
    assert (cfg.task_sequence.scenario, cfg.task_sequence.num_tasks) == (scenario, tasks)
    assert cfg.model.get("hidden_sizes") == hidden
    assert (cfg.optimizer.lr, cfg.train.batch_size, cfg.train.iterations) == (lr, batch, iterations)
    assert cfg.fisher.estimator == "exact" and cfg["lambda"] == strength
    assert compose_config(f"experiment={name}", "lambda=7")["lambda"] == 7  # the CLI still wins
    if iterations is None:
        assert cfg.train.epochs == 4
    # what each preset's source did with the choices reference code makes differently
    reset, padding, order, strategy = SOURCE_CHOICES[name]
    assert cfg.optimizer.reset_per_task is reset
    assert cfg.task_sequence.get("pad_to") == padding
    assert cfg.task_sequence.get("class_order") == order
    assert cfg.strategy._target_.rsplit(".", 1)[-1] == strategy
    if strategy == "OnlineEWC":
        assert cfg.strategy.gamma == 1.0  # the blog's γ: online_ewc's default
    assert cfg.task_sequence.active_classes == ("all" if name == "split_mnist_class" else "seen")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_takes_any_strategy_and_the_mnist_ones_any_small_model(name):
    """A preset sets no key that only its own strategy or model takes, so `strategy=finetune`
    (the "no penalty" rows of docs/results.md) and `model=cnn` compose with it; a model whose
    keys it does set gets one line saying how to drop them."""
    for strategy in sorted(p.stem for p in (CONF / "strategy").glob("*.yaml")):
        check_config(compose_config(f"experiment={name}", *with_companions(f"strategy={strategy}")))
    models = ["cnn", "mlp"] if "cifar" not in name else ["resnet18"]
    if name == "permuted_mnist_domain":  # its MLP is 2×1000: hidden_sizes is set
        with pytest.raises(ConfigError, match="model.hidden_sizes=.* is not allowed"):
            check_config(compose_config(f"experiment={name}", "model=cnn"))
        models = ["mlp"]
    for model in models:
        check_config(compose_config(f"experiment={name}", f"model={model}"))


SOURCE_CHOICES = {  # optimizer.reset_per_task, task_sequence.pad_to, class_order, strategy
    "split_mnist_task": (False, None, None, "EWC"),
    "split_mnist_class": (False, None, None, "EWC"),
    "permuted_mnist_domain": (False, 32, None, "EWC"),
    "split_cifar10_task": (False, None, None, "EWC"),
    "fisher_blog_split_mnist": (False, None, "random", "OnlineEWC"),
    "fisher_blog_split_cifar10": (False, None, "random", "OnlineEWC"),
    "hsu_split_mnist_task": (False, None, None, "EWC"),
    "hsu_split_mnist_domain": (False, None, None, "EWC"),
    "hsu_split_mnist_class": (False, None, None, "EWC"),
}


def slurm_launcher(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_launcher_preset_composes_with_overridable_defaults():
    """The values the README lists; a GPU only with device=cuda; any key overridable."""
    launcher = slurm_launcher("device=cuda", "hydra.launcher.partition=gpu")
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.qos, launcher.gpus_per_node) == (
        "gpu", None, None, 1,
    )  # fmt: skip
    documented = {
        "timeout_min": 240, "cpus_per_task": 4, "mem_gb": 16, "array_parallelism": 64,
        "max_num_timeout": 10, "signal_delay_s": 120,
    }  # fmt: skip
    assert {key: launcher[key] for key in documented} == documented
    assert slurm_launcher("device=cpu").gpus_per_node is None
    assert slurm_launcher("hydra.launcher.timeout_min=60").timeout_min == 60


def test_default_config_has_the_documented_keys():
    cfg = compose_config()
    assert cfg["lambda"] == 400 and cfg.seed == 0
    assert cfg.fisher.estimator == "exact" and cfg.fisher.num_samples == -1
    assert cfg.strategy.strength == 400  # follows the top-level lambda
    assert compose_config("lambda=10", "strategy=online_ewc").strategy.strength == 10


BAD = {
    "lambda=-1": "lambda=-1 is not allowed: expected a number >= 0",
    "data.validation_size=-5": "data.validation_size=-5 is not allowed: expected an integer >= 0",
    "lambda=abc": "lambda=abc is not allowed: expected a number >= 0",
    "strategy.gamma=1.5": "strategy.gamma=1.5 is not allowed: expected a number in (0, 1]",
    "fisher.estimator=foo": "fisher.estimator=foo is not allowed: expected one of exact, sample",
    "fisher.num_samples=0": "fisher.num_samples=0 is not allowed: expected -1 (all) or an integer",
    "task_sequence.num_tasks=0": "task_sequence.num_tasks=0 is not allowed: expected an integer in [1, 1000]",
    "optimizer.lr=0": "optimizer.lr=0 is not allowed: expected a number > 0",
    "train.iterations=-5": "train.iterations=-5 is not allowed: expected null or an integer >= 1",
    "task_sequence.scenario=tasks": "task_sequence.scenario=tasks is not allowed: expected one of",
    "model.hidden_sizes=[400,0]": "model.hidden_sizes=[400, 0] is not allowed",
    # keys the hand-kept table of checks used to miss
    "train.log_every=0": "train.log_every=0 is not allowed: expected an integer >= 1",
    "model.width=0": "model.width=0 is not allowed: expected an integer >= 1",
    "optimizer.momentum=-1": "optimizer.momentum=-1 is not allowed: expected a number >= 0",
    "task_sequence.seed=abc": "task_sequence.seed=abc is not allowed: expected an integer >= 0",
    "lambda=inf": "lambda=inf is not allowed: expected a number >= 0",
    "+lamda=4": "lamda=4 is not allowed: there is no such key (the top-level keys are seed",
    "fisher.chunk_size=0": "fisher.chunk_size=0 is not allowed: expected an integer >= 1",
}
GROUP_FOR = {
    "strategy.": "strategy=online_ewc",
    "model.width": "model=resnet18",
    "optimizer.": "optimizer=sgd",
}


@pytest.mark.parametrize("override", list(BAD))
def test_bad_values_name_key_value_and_what_is_allowed(override):
    extra = [group for key, group in GROUP_FOR.items() if override.startswith(key)]
    with pytest.raises(ConfigError) as error:
        check_config(compose_config(*extra, override))
    assert str(error.value).startswith(BAD[override])
    assert "\n" not in str(error.value)


def test_split_sequence_with_more_tasks_than_classes_allow(data_root):
    """How many classes there are, the loaded data says: refused as the sequence is built."""
    offline = [f"data.root={data_root}", "data.download=false", "task_sequence=split_mnist"]
    cfg = compose_config(*offline, "task_sequence.num_tasks=6")
    check_config(cfg)  # the values alone are allowed
    with pytest.raises(
        ConfigError,
        match=r"^task_sequence.num_tasks=6 is not allowed: mnist has 10 "
        r"classes, so with classes_per_task=2 at most 5 tasks$",
    ):
        build_sequence(cfg.task_sequence, cfg.data)
    cfg = compose_config(*offline, "task_sequence.num_tasks=10", "task_sequence.classes_per_task=1")
    assert len(build_sequence(cfg.task_sequence, cfg.data).tasks) == 10


def test_class_order_must_be_a_permutation():
    """A class twice is refused from the value alone; which classes there are, the data says
    (tests/test_reference_options.py)."""
    with pytest.raises(ConfigError, match=r"class_order=\[0, 0, 1"):
        check_config(
            compose_config(
                "task_sequence=split_mnist", "task_sequence.class_order=[0,0,1,2,3,4,5,6,7,8]"
            )
        )


def test_cuda_is_a_question_for_the_machine_that_trains():
    """device=cuda is a value any machine may submit (a login node has no GPU); the job asks
    its own machine."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = compose_config("device=cuda")
    check_config(cfg)  # the values alone are fine
    with pytest.raises(ConfigError, match="device=cuda is not allowed: CUDA is not available"):
        check_machine(cfg)
    check_machine(compose_config("device=cpu"))


def group_problem(args: list[str]) -> str | None:
    with hydra_configs(args) as configs:
        return unknown_group_choice(args, configs)


def key_problem(args: list[str]) -> str | None:
    with hydra_configs(args) as configs:
        return unknown_key(args, configs)


def test_unknown_group_option_is_caught_before_hydra():
    assert group_problem(["strategy=ewcc"]) == (
        "strategy=ewcc is not allowed: expected one of agem, ewc, ewc_sum, ewcpp, finetune, joint, "
        "l2, lwf, lwf_ewc, mas, online_ewc, si"
    )
    assert group_problem(["-m", "strategy=ewc,ewcc", "lambda=1,2"]).startswith(
        "strategy=ewcc is not allowed"
    )
    assert group_problem(["hydra/launcher=slurmm"]).startswith(
        "hydra/launcher=slurmm is not allowed: expected one of basic, local, slurm,"
    )
    assert group_problem(["strategy=ewc,l2", "hydra.run.dir=x", "+foo=bar", "lambda=3"]) is None


def test_group_options_come_from_hydras_search_path(tmp_path):
    """A user's folder added with hydra.searchpath (file:// or pkg://) or --config-dir adds
    options; without it they are refused."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mynet.yaml").write_text(
        "_target_: ewcexp.model.networks.MLP\nhidden_sizes: [8]\n"
    )
    searched = f"hydra.searchpath=[file://{tmp_path}]"
    assert group_problem(["model=mynet"]).startswith("model=mynet is not allowed")
    assert group_problem([searched, "model=mynet"]) is None
    assert group_problem(["-cd", str(tmp_path), "model=mynet"]) is None
    assert group_problem([f"--config-dir={tmp_path}", "-m", "model=mlp,mynet"]) is None
    assert group_problem([searched, "model=mynetz"]).startswith(
        "model=mynetz is not allowed: expected one of cnn, mlp, mynet, resnet18"
    )
    # a package's configs: pkg:// names a module (ewcexp's own here, as a stand-in)
    assert group_problem(["hydra.searchpath=[pkg://ewcexp.conf]", "model=mlp"]) is None
    # keys of the user's option are known once it is chosen
    assert key_problem([searched, "model=mynet", "model.hidden_sizes=[3]"]) is None


def test_help_lists_every_group_option_and_the_launchers(tmp_path):
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for group in sorted(g for g in CONF.iterdir() if g.is_dir() and g.name != "hydra"):
        listed = next(line for line in lines if line.startswith(f"{group.name}: "))
        options = listed.split(": ", 1)[1].split(", ")
        assert options == sorted(o.stem for o in group.glob("*.yaml")), listed
    for launcher in (CONF / "hydra" / "launcher").glob("*.yaml"):
        assert f"hydra/launcher={launcher.stem}" in done.stdout
    assert "fisher.structure=kfac" in done.stdout and "lambda: 400" in done.stdout
    assert not (tmp_path / "run").exists()  # nothing run, nothing written


def test_unknown_key_is_caught_before_hydra_with_the_closest_key():
    assert key_problem(["lamda=4"]) == (
        "lamda=4 is not allowed: the config has no key lamda (did you mean lambda? "
        "`ewcexp --help` lists them)"
    )
    assert key_problem(["-m", "train.iteration=1,2"]).startswith(
        "train.iteration=1,2 is not allowed: the config has no key train.iteration (did you "
        "mean train.iterations?"
    )
    # keys are looked up with the chosen group options: the CNN has no hidden_sizes
    assert key_problem(["model=cnn", "model.hidden_sizes=[8]"]).startswith(
        "model.hidden_sizes=[8] is not allowed"
    )
    assert key_problem(["model=mlp,cnn", "model.hidden_sizes=[8]"]) is None
    for fine in (
        ["lambda=3", "train.iterations=5", "strategy.gamma=0.9", "strategy=online_ewc"],
        ["experiment=split_mnist_task", "train.eval_batch_size=64"],
        ["+foo=bar", "hydra.run.dir=x", "hydra/launcher=slurm", "hydra.launcher.timeout_min=5"],
    ):
        assert key_problem(fine) is None, fine


@pytest.mark.slow
@pytest.mark.parametrize("override", ["lambda=abc", "strategy=ewcc", "lamda=4", "device=cuda"])
def test_cli_bad_input_is_one_line_no_traceback_no_results(override, tmp_path: Path):
    """device=cuda on a machine without CUDA: the job's own line (also in its log file)."""
    import torch

    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run_cli(override, cwd=tmp_path)
    if override == "device=cuda":
        assert "error: device=cuda is not allowed" in (tmp_path / "run" / "ewcexp.log").read_text()
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {override.split('=')[0]}=")
    assert "Traceback" not in done.stdout + done.stderr
    assert not list(tmp_path.rglob("results.json"))
    assert "task 1/" not in done.stdout + done.stderr  # no training started


def test_the_job_folders_checked_up_front_are_those_hydra_will_use(tmp_path):
    """Job n of a basic sweep is <sweep dir>/n, in Hydra's order (a repeated key: its last
    values, one place); an Optuna search's jobs and folders only Hydra can name are left to
    the jobs; an interpolation only a running job resolves is no refusal."""
    import json

    from ewcexp.app.command_line import refused_job as refused_in
    from ewcexp.training import checkpoint

    def refused_job(args: list[str]) -> str | None:
        with hydra_configs(args) as configs:
            return refused_in(args, configs)

    sweep = tmp_path / "sweep"
    config = OmegaConf.to_container(compose_config("lambda=37.5"), resolve=True)
    checkpoint.save(sweep / "0", {"config": json.dumps(config)})
    at = f"hydra.sweep.dir={sweep}"
    assert refused_job(["-m", "lambda=37.5,1", at]) is None  # job 1: a new folder
    assert "was written with lambda=37.5, this run has lambda=1:" in refused_job(
        ["-m", "lambda=1,37.5", at]
    )
    assert refused_job(["-m", "lambda=1,2", "lambda=37.5,3", at]) is None
    assert refused_job(["hparams_search=lambda_optuna", at]) is None
    assert refused_job(["-m", "lambda=1", "hydra.sweep.dir=${oc.env:HOME}/x"]) is None
    assert refused_job(["data.root=${hydra:runtime.cwd}/data"]) is None
    assert refused_job(["hparams_search=lambda_optuna", "lambda=-2"]).startswith(
        "lambda=-2 is not allowed"
    )
    typed = refused_job(["experiment=split_mnist_task", "+model.width=3"])
    assert typed.startswith("model.width=3 is not allowed") and "drop it" not in typed


@pytest.mark.slow
def test_every_job_is_checked_before_hydra_writes_or_starts_anything(tmp_path, data_root):
    """A sweep with one bad value starts no job; a refused run leaves an earlier run's
    `.hydra/` in its directory as it was (a bad value, or a config its checkpoint was not
    written with); a sweep without -m is one line."""
    (tmp_path / "sweep").mkdir()
    swept = run_cli("-m", "lambda=1,-5", *TINY, cwd=tmp_path / "sweep", data_root=data_root)
    assert swept.returncode != 0
    assert swept.stderr.strip() == "error: lambda=-5 is not allowed: expected a number >= 0"
    assert not (tmp_path / "sweep" / "multirun").exists()  # not even job 0's folder

    first = run_cli(*TINY, "train.iterations=2", cwd=tmp_path, data_root=data_root)
    assert first.returncode == 0, first.stderr[-2000:]
    saved = {f: f.read_bytes() for f in (tmp_path / "run" / ".hydra").iterdir()}
    for override, message in (
        ("lambda=-1", "error: lambda=-1 is not allowed"),
        ("lambda=5", "was written with lambda=400, this run has lambda=5"),
    ):
        refused = run_cli(*TINY, "train.iterations=2", override, cwd=tmp_path, data_root=data_root)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert {f: f.read_bytes() for f in (tmp_path / "run" / ".hydra").iterdir()} == saved

    single = run_cli("lambda=1,5", cwd=tmp_path / "sweep")
    assert single.stderr.strip() == (
        "error: lambda=1,5 is not allowed: a sweep of values needs -m (a job each)"
    )


@pytest.mark.parametrize("estimator", ["exact", "sample", "empirical", "batched"])
def test_fisher_group_picks_the_estimator_and_keeps_the_shared_defaults(estimator):
    cfg = compose_config(f"fisher={estimator}")
    assert (cfg.fisher.estimator, cfg.fisher.num_samples, cfg.fisher.batch_size) == (
        estimator,
        -1,
        256,
    )
    # the key still works alone, and the command line's choice wins over a preset's
    assert compose_config(f"fisher.estimator={estimator}").fisher.estimator == estimator
    preset = compose_config(f"fisher={estimator}", "experiment=split_mnist_task")
    assert preset.fisher.estimator == estimator
