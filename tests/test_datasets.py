"""KMNIST, CIFAR-10/100, the rotated and new split sequences, and the download command, all on
small synthetic files in the real on-disk formats, read and fetched by torchvision itself."""

from __future__ import annotations

import functools
import gzip
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision import datasets
from torchvision.transforms.v2.functional import InterpolationMode
from torchvision.transforms.v2.functional import rotate as torchvision_rotate

import ewcexp.data.images
from ewcexp.config.checks import SEQUENCE_KEYS, ConfigError, check_config, without_keys
from ewcexp.data.image_data import DataUnavailable
from ewcexp.data.images import load_images
from ewcexp.data.scenarios import rotate
from ewcexp.data.sequences import RotatedSequence, SplitSequence
from ewcexp.training.runner import run_experiment
from tests.conftest import (
    TINY,
    compose_config,
    md5_of,
    synthetic_colour_images,
    synthetic_images,
    trust_cifar_files,
    write_cifar,
    write_dataset,
)


@pytest.fixture(scope="session")
def new_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic KMNIST (IDX, 400 train / 100 test), CIFAR-10 (100 / 30) and CIFAR-100
    (1,000 / 300) in torchvision's layout."""
    root = tmp_path_factory.mktemp("new-data")
    write_dataset(root, "KMNIST")
    write_cifar(root, "CIFAR10")
    write_cifar(root, "CIFAR100")
    return root


@pytest.fixture
def cifar_root(new_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`new_data_root`, with torchvision trusting its synthetic CIFAR files for this test."""
    trust_cifar_files(monkeypatch, new_data_root, "CIFAR10")
    trust_cifar_files(monkeypatch, new_data_root, "CIFAR100")
    return new_data_root


def sequence_node(cfg):
    """The task_sequence section as its sequence class takes it (the runner's keys out)."""
    return without_keys(cfg.task_sequence, SEQUENCE_KEYS)


def load(name: str, root: Path) -> ewcexp.data.images.ImageData:
    return load_images(name, root, download=False, allow_fallback=False)


# --- datasets -------------------------------------------------------------------------------


def test_kmnist_is_read_from_idx_files_by_torchvision(new_data_root):
    data = load("kmnist", new_data_root)
    images, labels = synthetic_images(40, seed=0)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (400, 28, 28)
    assert data.train_labels.dtype == torch.int64 and data.test_images.shape == (100, 28, 28)
    assert torch.equal(data.train_images, torch.from_numpy(images))
    assert torch.equal(data.train_labels, torch.from_numpy(labels).long())
    assert data.source == f"torchvision:{new_data_root}"


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_is_uint8_channels_first_with_int64_labels(cifar_root, name, classes):
    data = load(name, cifar_root)
    train, train_labels = synthetic_colour_images(classes, 10, seed=0)
    test, test_labels = synthetic_colour_images(classes, 3, seed=1)
    assert data.train_images.dtype == torch.uint8 and data.train_images.is_contiguous()
    assert data.train_images.shape == (10 * classes, 3, 32, 32)
    assert data.test_images.shape == (3 * classes, 3, 32, 32)
    assert torch.equal(data.train_images, torch.from_numpy(train))  # same pixels, same channels
    assert torch.equal(data.test_images, torch.from_numpy(test))
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert torch.equal(data.train_labels, torch.from_numpy(train_labels))
    assert torch.equal(data.test_labels, torch.from_numpy(test_labels))


def test_cifar_files_failing_torchvisions_checksums_are_not_used(new_data_root):
    # without trust_cifar_files, the synthetic batches do not match the real CIFAR-10 md5s
    with pytest.raises(DataUnavailable, match="cifar10: files data_batch_1, "):
        load("cifar10", new_data_root)


@pytest.mark.parametrize(
    ("name", "folder", "first_file"),
    [
        ("kmnist", "KMNIST/raw", "train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
        ("cifar100", "cifar-100-python", "train"),
    ],
)
def test_a_missing_dataset_is_one_line_saying_what_where_and_how(
    tmp_path, name, folder, first_file
):
    root = tmp_path / "empty"
    with pytest.raises(DataUnavailable) as raised:
        load(name, root)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: files {first_file}, ")
    assert f"not found in {root / folder} " in message
    assert f"`python -m ewcexp.data download {name} --root {root}`" in message


# --- sequences: configs ---------------------------------------------------------------------

NEW_SEQUENCES = {
    # option: (dataset, class, num_tasks, scenario, classes per task)
    "rotated_mnist": ("mnist", "RotatedSequence", 10, "domain", 10),
    "rotated_fashion_mnist": ("fashion_mnist", "RotatedSequence", 10, "domain", 10),
    "rotated_kmnist": ("kmnist", "RotatedSequence", 10, "domain", 10),
    "permuted_kmnist": ("kmnist", "PermutedSequence", 10, "domain", 10),
    "split_kmnist": ("kmnist", "SplitSequence", 5, "task", 2),
    "split_cifar10": ("cifar10", "SplitSequence", 5, "task", 2),
    "split_cifar100": ("cifar100", "SplitSequence", 10, "task", 10),
}


@pytest.mark.parametrize("option", NEW_SEQUENCES)
def test_each_new_sequence_has_its_documented_defaults(option):
    dataset, class_name, num_tasks, scenario, classes_per_task = NEW_SEQUENCES[option]
    cfg = compose_config(f"task_sequence={option}", "seed=7")
    check_config(cfg)
    sequence = cfg.task_sequence
    assert sequence._target_ == f"ewcexp.data.sequences.{class_name}"
    assert sequence.dataset == dataset and sequence.num_tasks == num_tasks
    assert sequence.scenario == scenario and sequence.seed == 7
    if class_name == "SplitSequence":
        assert sequence.classes_per_task == classes_per_task and sequence.class_order is None
    if class_name == "RotatedSequence":
        assert sequence.max_angle == 180 and sequence.angles == "even"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "task_sequence.max_angle=0",
            "task_sequence.max_angle=0 is not allowed: expected a number of degrees in (0, 360]",
        ),
        (
            "task_sequence.angles=spiral",
            "task_sequence.angles=spiral is not allowed: expected one of even, random",
        ),
    ],
)
def test_bad_rotation_settings_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as raised:
        check_config(compose_config("task_sequence=rotated_mnist", override))
    assert str(raised.value) == message


# --- sequences: contents --------------------------------------------------------------------


def test_rotation_turns_train_and_test_alike_and_differs_between_tasks(data_root):
    images = load("mnist", data_root)
    sequence = RotatedSequence("mnist", images, 4, "domain", seed=0, max_angle=360)
    assert [task.rotation for task in sequence.tasks] == [0, 90, 180, 270]
    assert [task.name for task in sequence.tasks][:2] == ["rotation 0°", "rotation 90°"]
    turned = []
    for quarter_turns, task in enumerate(sequence.tasks):
        train, train_labels = task.train_set()
        test, test_labels = task.test_set()
        # right angles land on the pixel grid: the result is exactly torch.rot90's
        assert torch.equal(train, torch.rot90(images.train_images, quarter_turns, dims=(1, 2)))
        assert torch.equal(test, torch.rot90(images.test_images, quarter_turns, dims=(1, 2)))
        assert torch.equal(train_labels, images.train_labels)
        assert torch.equal(test_labels, images.test_labels)
        turned.append(test)
    assert all(not torch.equal(a, b) for i, a in enumerate(turned) for b in turned[i + 1 :])


def test_any_angle_turns_each_image_as_torchvision_turns_it_alone(data_root):
    images = load("mnist", data_root)
    sequence = RotatedSequence("mnist", images, 4, "domain", seed=0)  # 0, 45, 90, 135 degrees
    task = sequence.tasks[1]
    assert task.rotation == 45
    train, _ = task.train_set()
    test, _ = task.test_set()
    for turned, original in ((train[7], images.train_images[7]), (test[3], images.test_images[3])):
        alone = torchvision_rotate(original.unsqueeze(0), 45.0, InterpolationMode.BILINEAR)
        assert torch.equal(turned, alone.squeeze(0))
        assert not torch.equal(turned, original)


def test_random_angles_come_from_the_seed_and_stay_below_max_angle(data_root):
    images = load("mnist", data_root)

    def angles(seed: int) -> list[float]:
        sequence = RotatedSequence("mnist", images, 5, "domain", seed, 90, angles="random")
        return [task.rotation for task in sequence.tasks]

    first = angles(3)
    assert first == angles(3) and first != angles(4)
    assert all(0 <= angle < 90 for angle in first) and len(set(first)) == 5


@pytest.mark.parametrize(
    ("scenario", "size", "active"), [("domain", 10, (0, 10)), ("class", 30, (0, 30))]
)
def test_rotated_scenarios_share_or_grow_the_head(new_data_root, scenario, size, active):
    sequence = RotatedSequence("kmnist", load("kmnist", new_data_root), 3, scenario, seed=0)
    assert sequence.classes_per_task == 10 and sequence.scenario.output_size == size
    assert sequence.scenario.active(1, seen=2) == slice(*active)


def test_rotate_turns_colour_images_channel_by_channel():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(rotate(images, 90), torch.rot90(images, 1, dims=(2, 3)))
    assert torch.equal(rotate(images[:, 0], 90), torch.rot90(images[:, 0], 1, dims=(1, 2)))


def test_split_cifar10_gives_class_pairs_and_a_head_per_task(cifar_root):
    cfg = compose_config("task_sequence=split_cifar10", f"data.root={cifar_root}")
    images = load("cifar10", cifar_root)
    sequence = instantiate(sequence_node(cfg), images=images)
    assert isinstance(sequence, SplitSequence) and sequence.input_shape == (3, 32, 32)
    assert [task.class_ids for task in sequence.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert sequence.scenario.output_size == 10
    assert [sequence.scenario.active(t, seen=4) for t in (0, 4)] == [slice(0, 2), slice(8, 10)]
    for task in sequence.tasks:
        x, local = task.test_set()
        kept = torch.isin(images.test_labels, torch.tensor(task.class_ids))
        assert x.shape == (6, 3, 32, 32) and torch.equal(x, images.test_images[kept])
        assert torch.equal(torch.tensor(task.class_ids)[local], images.test_labels[kept])


def test_split_cifar100_is_10_tasks_of_10_or_by_override_20_of_5(cifar_root):
    images = load("cifar100", cifar_root)
    ten = instantiate(sequence_node(compose_config("task_sequence=split_cifar100")), images=images)
    assert [len(task.class_ids) for task in ten.tasks] == [10] * 10
    assert ten.tasks[9].class_ids == list(range(90, 100)) and ten.scenario.output_size == 100
    cfg = compose_config(
        "task_sequence=split_cifar100",
        "task_sequence.num_tasks=20",
        "task_sequence.classes_per_task=5",
    )
    check_config(cfg)
    twenty = instantiate(sequence_node(cfg), images=images)
    assert [task.class_ids for task in twenty.tasks][:2] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert len(twenty.tasks) == 20 and twenty.scenario.active(19, seen=19) == slice(95, 100)
    train, local = twenty.tasks[3].train_set()
    assert train.shape == (50, 3, 32, 32) and sorted(set(local.tolist())) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="cifar100 has 100 classes, so .* at most 20 tasks"):
        SplitSequence("cifar100", images, 21, "task", seed=0, classes_per_task=5)


def test_split_cifar100_class_order_deals_out_the_given_classes(cifar_root):
    order = list(range(99, -1, -1))
    sequence = SplitSequence("cifar100", load("cifar100", cifar_root), 10, "class", 0, 10, order)
    assert sequence.tasks[0].class_ids == list(range(99, 89, -1))
    train, local = sequence.tasks[0].train_set()
    images = sequence.images
    kept = torch.isin(images.train_labels, torch.tensor(order[:10]))
    assert torch.equal(torch.tensor(order[:10])[local], images.train_labels[kept])
    assert torch.equal(train, images.train_images[kept])
    assert sequence.scenario.active(0, seen=1) == slice(0, 20)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
@pytest.mark.parametrize(
    ("sequence", "dataset", "extra"),
    [
        ("split_cifar10", "cifar10", []),
        ("split_cifar100", "cifar100", []),
        ("split_kmnist", "kmnist", []),
        ("permuted_kmnist", "kmnist", []),
        ("rotated_kmnist", "kmnist", ["task_sequence.angles=random"]),
        ("rotated_mnist", "mnist", []),
        ("rotated_fashion_mnist", "fashion_mnist", []),
    ],
)
def test_new_sequences_train_end_to_end(
    tmp_path, data_root, cifar_root, sequence, dataset, extra, scenario
):
    """The sequences not trained in test_runs.py, in every scenario, through the runner."""
    root = data_root if dataset in ("mnist", "fashion_mnist") else cifar_root
    cfg = compose_config(
        *TINY,
        "train.iterations=10",
        "strategy=ewc_sum",
        "fisher.num_samples=32",
        f"task_sequence={sequence}",
        f"task_sequence.scenario={scenario}",
        f"data.root={root}",
        *extra,
    )
    check_config(cfg)
    results = run_experiment(cfg, tmp_path)
    assert len(results["acc_matrix"]) == 3
    assert results["scenario"] == scenario
    assert results["config"]["task_sequence"]["dataset"] == dataset
    assert results["data_source"] == f"torchvision:{root}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "tasks", "model"),
    [
        ("split_mnist_task", 5, "MLP"),
        ("split_mnist_class", 5, "MLP"),
        ("permuted_mnist_domain", 10, "MLP"),
        ("split_cifar10_task", 5, "ResNet18"),
        ("hsu_split_mnist_task", 5, "MLP"),
        ("hsu_split_mnist_domain", 5, "MLP"),
        ("hsu_split_mnist_class", 5, "MLP"),
        ("fisher_blog_split_mnist", 5, "MLP"),
        ("fisher_blog_split_cifar10", 5, "ResNet18"),
    ],
)
def test_every_preset_runs_end_to_end(tmp_path, data_root, cifar_root, preset, tasks, model):
    """The paper setups as a user starts them, only shortened: a few steps and Fisher samples."""
    root = cifar_root if "cifar" in preset else data_root
    cfg = compose_config(
        f"experiment={preset}",
        *(["train.batch_size=32"] if "cifar" in preset else []),  # ResNet-18 on a CPU
        "train.iterations=3",
        "fisher.num_samples=8",
        "strategy=online_ewc",  # one stored term: keeps the 2x1000 MLP's checkpoints small
        f"data.root={root}",
        "data.download=false",
        "logger=none",
    )
    check_config(cfg)
    results = run_experiment(cfg, tmp_path)
    assert len(results["acc_matrix"]) == tasks
    assert all(len(row) == tasks for row in results["acc_matrix"])
    assert results["config"]["model"]["_target_"] == f"ewcexp.model.networks.{model}"
    assert results["fisher_estimator"] == "exact"
    padding = ", padded to 32×32" if preset == "permuted_mnist_domain" else ""
    assert results["data_source"] == f"torchvision:{root}{padding}"


# --- the download command -------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no request log in test output
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server over a fresh folder, standing in for the datasets' hosts: (folder, URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join()


def publish(
    monkeypatch: pytest.MonkeyPatch, source: Path, folder: Path, url: str
) -> dict[str, list[Path]]:
    """Put KMNIST's and CIFAR-10's synthetic files on the mirror as the archives torchvision
    downloads, and point torchvision's URLs and md5s at them; returns the archives by dataset."""
    (folder / "kmnist").mkdir()
    resources = []
    for archive, _ in datasets.KMNIST.resources:
        unpacked = (source / "KMNIST" / "raw" / archive.removesuffix(".gz")).read_bytes()
        (folder / "kmnist" / archive).write_bytes(gzip.compress(unpacked, mtime=0))
        resources.append((archive, md5_of(folder / "kmnist" / archive)))
    monkeypatch.setattr(datasets.KMNIST, "mirrors", [f"{url}kmnist/"])
    monkeypatch.setattr(datasets.KMNIST, "resources", resources)

    cifar = datasets.CIFAR10
    with tarfile.open(folder / cifar.filename, "w:gz") as tar:
        tar.add(source / cifar.base_folder, arcname=cifar.base_folder)
    monkeypatch.setattr(cifar, "url", f"{url}{cifar.filename}")
    monkeypatch.setattr(cifar, "tgz_md5", md5_of(folder / cifar.filename))
    trust_cifar_files(monkeypatch, source, "CIFAR10")
    return {
        "kmnist": [folder / "kmnist" / archive for archive, _ in resources],
        "cifar10": [folder / cifar.filename],
    }


def test_download_fetches_verifies_and_puts_data_where_runs_read_it(
    tmp_path, new_data_root, mirror, monkeypatch, capsys
):
    publish(monkeypatch, new_data_root, *mirror)
    root = tmp_path / "downloaded"
    assert ewcexp.data.images.main(["download", "kmnist", "cifar10", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"kmnist: 400 train / 100 test images in {root / 'KMNIST' / 'raw'}" in out
    assert f"cifar10: 100 train / 30 test images in {root / 'cifar-10-batches-py'}" in out
    assert f"data.root={root}" in out and f"EWCEXP_DATA_ROOT={root}" in out
    for name in ("kmnist", "cifar10"):
        fetched, original = load(name, root), load(name, new_data_root)
        assert torch.equal(fetched.train_images, original.train_images)
        assert torch.equal(fetched.test_labels, original.test_labels)


def test_download_root_defaults_to_EWCEXP_DATA_ROOT(tmp_path, new_data_root, mirror, monkeypatch):
    publish(monkeypatch, new_data_root, *mirror)
    monkeypatch.setenv("EWCEXP_DATA_ROOT", str(tmp_path / "from-env"))
    assert ewcexp.data.images.main(["download", "kmnist"]) == 0
    assert load("kmnist", tmp_path / "from-env").train_images.shape == (400, 28, 28)


def test_download_rejects_a_corrupted_file_and_fetches_it_again_later(
    tmp_path, new_data_root, mirror, monkeypatch, capsys
):
    archives = publish(monkeypatch, new_data_root, *mirror)
    broken = {path: path.read_bytes() for path in (archives["kmnist"][1], archives["cifar10"][0])}
    for path, good in broken.items():  # cut short, as if the connection dropped halfway
        path.write_bytes(good[: len(good) // 2])
    root = tmp_path / "downloaded"
    assert ewcexp.data.images.main(["download", "kmnist", "cifar10", "--root", str(root)]) == 1
    err = capsys.readouterr().err  # torchvision's progress bars, then one line per dataset
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0].startswith(f"error: kmnist: download into {root} failed: Error downloading ")
    assert "train-labels-idx1-ubyte.gz" in errors[0] and "corrupted" in errors[0]
    assert errors[1] == f"error: cifar10: download into {root} failed: File not found or corrupted."
    for name in ("kmnist", "cifar10"):
        with pytest.raises(DataUnavailable):
            load(name, root)

    for path, good in broken.items():  # the hosts serve whole files again
        path.write_bytes(good)
    assert ewcexp.data.images.main(["download", "kmnist", "cifar10", "--root", str(root)]) == 0
    for name in ("kmnist", "cifar10"):
        assert torch.equal(load(name, root).train_labels, load(name, new_data_root).train_labels)


def test_download_of_an_unknown_name_is_one_line_listing_the_names(tmp_path, capsys):
    assert ewcexp.data.images.main(["download", "kmnist", "imagenet", "--root", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "error: unknown dataset imagenet: expected one or more of "
        "mnist, fashion_mnist, kmnist, cifar10, cifar100\n"
    )
    assert not any(tmp_path.iterdir())  # nothing fetched before the names were checked
