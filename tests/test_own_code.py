"""A researcher's own network and data set (README: "Your own model", "Your own data"): a
package and a config folder outside the repository, joined through Hydra's search path, run
from their own folder with no new code in ewcexp; and the pieces that make it work (the
loaders, the checks on what only the data shows, the config rule for others' code)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ewcexp.config.checks import ConfigError, check_component
from ewcexp.data import (
    DataUnavailable,
    ImageData,
    as_image_data,
    image_folder,
    load_images,
    tensor_file,
)
from ewcexp.data.sequences import PermutedSequence, RotatedSequence, SplitSequence
from ewcexp.model.networks import FloatImages, build_model
from tests.conftest import REPO

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (210, 210, 30)]
CLASSES = ["circle", "cross", "square", "star"]  # folder names: classes 0..3 in sorted order

# a loader of a user's that imports torchvision.datasets (and with it triton)
FOLDER_LOADER = '''"""Returns plain tensors: no ewcexp import."""
import numpy as np
import torch
from PIL import Image
from torchvision import datasets


def load_shapes(path: str, test_every: int = 4) -> dict:
    found = datasets.ImageFolder(path)
    images = np.stack([np.asarray(Image.open(file).convert("RGB")) for file, _ in found.samples])
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(found.targets)
    test = torch.arange(len(labels)) % test_every == 0
    return {
        "train_images": images[~test], "train_labels": labels[~test],
        "test_images": images[test], "test_labels": labels[test],
    }
'''


def write_shapes(folder: Path, per_class: int, seed: int, side: int = 12) -> None:
    """PNGs in one folder per class, side × side RGB: a class's own colour on its own fixed
    mask, plus noise (learnable under permutations and rotations alike)."""
    rng = np.random.default_rng(seed)
    masks = np.random.default_rng(7).random((len(CLASSES), side, side)) < 0.5
    for label, (name, colour) in enumerate(zip(CLASSES, COLOURS, strict=True)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(0, 60, (side, side, 3))
            pixels = np.where(masks[label][..., None], np.array(colour), 0) + noise
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name / f"{i}.png")


def readme_blocks(section: str, language: str) -> list[str]:
    """The `language` code blocks of the README's section `section`, in order."""
    text = (REPO / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def write_spectra(path: Path) -> None:
    """The README loader's format: grey uint8 8×8 images of 3 classes, a fixed pattern each."""
    rng = np.random.default_rng(3)
    patterns = np.random.default_rng(5).random((3, 8, 8)) < 0.4
    labels = np.repeat(np.arange(3), 40)
    images = np.where(patterns[labels], 200, 0) + rng.integers(0, 50, (len(labels), 8, 8))
    np.savez(path, images=images.astype(np.uint8), labels=labels)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's folder, with the README's examples: mylab/ (nets.py, data.py, and a loader
    importing torchvision.datasets), shapes/{train,test}/<class>/*.png, flat/<class>/*.png,
    spectra.npz, and conf/ with their model and sequence options."""
    lab = tmp_path_factory.mktemp("lab")
    (model_python,) = readme_blocks("Your own model", "python")
    mynet, shufflenet = readme_blocks("Your own model", "yaml")
    (data_python,) = readme_blocks("Your own data", "python")
    split_shapes, permuted_spectra = readme_blocks("Your own data", "yaml")
    (lab / "mylab").mkdir()
    (lab / "mylab" / "__init__.py").write_text("")
    (lab / "mylab" / "nets.py").write_text(model_python)
    (lab / "mylab" / "data.py").write_text(data_python)
    (lab / "mylab" / "folders.py").write_text(FOLDER_LOADER)
    write_shapes(lab / "shapes" / "train", 30, seed=0)
    write_shapes(lab / "shapes" / "test", 10, seed=1)
    write_shapes(lab / "flat", 10, seed=2)
    write_spectra(lab / "spectra.npz")
    home = "${oc.env:HOME}/mylab/shapes"
    assert home in split_shapes and "/data/spectra.npz" in permuted_spectra
    options = {
        "model/mynet.yaml": mynet,
        "model/shufflenet.yaml": shufflenet,
        "task_sequence/split_shapes.yaml": split_shapes.replace(home, str(lab / "shapes")),
        "task_sequence/permuted_spectra.yaml": permuted_spectra.replace(
            "/data/spectra.npz", str(lab / "spectra.npz")
        ),
        "task_sequence/permuted_shapes.yaml": (
            "defaults:\n  - permuted_mnist\n  - _self_\n"
            f"dataset:\n  _target_: mylab.folders.load_shapes\n  path: {lab / 'flat'}\n"
        ),
    }
    for name, text in options.items():
        (lab / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (lab / "conf" / name).write_text(text)
    return lab


def run_in(lab: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python <repo>/run.py hydra.searchpath=[file://<lab>/conf] ...` from the user's folder."""
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "run.py"),
            f"hydra.searchpath=[file://{lab}/conf]",
            "logger=none",
            "train.iterations=40",
            "train.batch_size=32",
            "fisher.num_samples=32",
            *overrides,
        ],
        cwd=lab,
        env={**os.environ, "PYTHONPATH": str(lab), "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def results_of(done: subprocess.CompletedProcess, run_dir: Path) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    acc = np.array(results["acc_matrix"])
    assert ((acc >= 0) & (acc <= 1)).all()
    return results


# --- end to end, from the user's folder -----------------------------------------------------


@pytest.mark.slow
def test_own_network_on_own_image_folder_split_with_validation_and_class_order(lab):
    done = run_in(
        lab,
        "model=mynet",
        "task_sequence=split_shapes",
        "task_sequence.class_order=[3,1,0,2]",
        "data.validation_size=20",
        f"hydra.run.dir={lab}/split",
    )
    results = results_of(done, lab / "split")
    assert results["config"]["model"]["_target_"] == "mylab.nets.MyNet"
    assert results["class_order"] == [3, 1, 0, 2]
    assert results["task_names"] == ["classes 3/1", "classes 0/2"]
    assert results["data_source"] == (
        f"image folder {lab / 'shapes'} (validation: 20 held-out training images)"
    )
    assert results["avg_acc"] > 0.75  # colours: two-way heads, far above chance


@pytest.mark.slow
def test_own_loader_as_a_permuted_class_incremental_sequence(lab):
    """The README's loader and its sequence option, one of its keys on the command line."""
    done = run_in(
        lab,
        "model=mynet",
        "task_sequence=permuted_spectra",
        "task_sequence.num_tasks=3",
        "task_sequence.scenario=class",
        "task_sequence.dataset.test_every=4",
        f"hydra.run.dir={lab}/permuted",
    )
    results = results_of(done, lab / "permuted")
    assert results["data_source"] == "mylab.data.load_spectra"
    assert results["config"]["task_sequence"]["dataset"]["test_every"] == 4
    assert results["scenario"] == "class" and len(results["acc_matrix"]) == 3
    assert results["acc_matrix"][0][0] > 0.6  # 3 classes: chance is 1/3


@pytest.mark.slow
def test_torchvision_architecture_by_name_on_a_rotated_image_folder(lab):
    """shufflenet_v2_x0_5 through `_target_` (num_classes filled in, float RGB fed to it);
    the sequence's dataset given on the command line."""
    done = run_in(
        lab,
        "model=shufflenet",
        "task_sequence=rotated_mnist",
        f"task_sequence.dataset={{_target_:ewcexp.data.own.image_folder,path:{lab / 'flat'}}}",
        "task_sequence.num_tasks=2",
        "task_sequence.max_angle=90",
        f"hydra.run.dir={lab}/rotated",
    )
    results = results_of(done, lab / "rotated")
    assert results["task_names"] == ["rotation 0°", "rotation 45°"]
    assert results["data_source"].startswith(f"image folder {lab / 'flat'} (0.2 of each class")
    state = torch.load(lab / "rotated" / "checkpoint.pt", weights_only=True)["model"]
    assert state["net.fc.weight"].shape == (4, 1024)  # the domain scenario's 4 shared units


@pytest.mark.slow
def test_code_of_theirs_imported_before_the_first_job_leaks_nothing_at_exit(lab):
    """The up-front check imports the user's loader (which imports torchvision.datasets, and
    with it triton) and torchvision.models before the job starts; nothing of theirs may be
    reported leaked when the process ends (nanobind lists live objects of its modules)."""
    done = run_in(
        lab,
        "model=shufflenet",
        "task_sequence=permuted_shapes",
        "task_sequence.num_tasks=1",
        "train.iterations=2",
        f"hydra.run.dir={lab}/leaks",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaked" not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_what_the_data_refuses_is_one_line_before_training(lab):
    done = run_in(
        lab, "task_sequence=split_shapes", "task_sequence.num_tasks=3", f"hydra.run.dir={lab}/no"
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: task_sequence.num_tasks=3 is not allowed: image folder {lab / 'shapes'} has 4 "
        "classes, so with classes_per_task=2 at most 2 tasks"
    )
    assert not (lab / "no" / "checkpoint.pt").exists()


# --- loaders --------------------------------------------------------------------------------


def test_image_folder_reads_train_and_test_class_folders(lab):
    data = image_folder(str(lab / "shapes"))
    assert data.train_images.shape == (120, 3, 12, 12) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (40, 3, 12, 12)
    assert data.train_labels.tolist() == [c for c in range(4) for _ in range(30)]
    first = np.array(Image.open(lab / "shapes" / "train" / "circle" / "0.png"))
    assert torch.equal(data.train_images[0], torch.from_numpy(first).permute(2, 0, 1))
    grey = image_folder(str(lab / "shapes"), image_size=[6, 8], grey=True)
    assert grey.train_images.shape == (120, 6, 8)


def test_a_flat_image_folder_holds_out_the_same_fraction_of_each_class_every_time(lab):
    data = image_folder(str(lab / "flat"), test_fraction=0.3)
    assert torch.bincount(data.test_labels).tolist() == [3, 3, 3, 3]
    assert torch.bincount(data.train_labels).tolist() == [7, 7, 7, 7]
    again = image_folder(str(lab / "flat"), test_fraction=0.3)
    assert torch.equal(again.test_images, data.test_images)


def test_image_folder_problems_are_one_line(tmp_path, lab):
    write_shapes(tmp_path / "mixed", 2, seed=0, side=12)
    Image.new("RGB", (16, 12)).save(tmp_path / "mixed" / "star" / "big.png")
    with pytest.raises(DataUnavailable, match=r"images of different sizes \(12×12 in .*, 16×12 "):
        image_folder(str(tmp_path / "mixed"))
    assert image_folder(str(tmp_path / "mixed"), image_size=12).train_images.shape[1:] == (
        3, 12, 12,
    )  # fmt: skip
    with pytest.raises(DataUnavailable, match=f"^image folder {tmp_path / 'none'}: .*No such"):
        image_folder(str(tmp_path / "none"))
    (tmp_path / "split" / "train" / "a").mkdir(parents=True)
    (tmp_path / "split" / "test" / "b").mkdir(parents=True)
    for part, name in (("train", "a"), ("test", "b")):
        Image.new("RGB", (4, 4)).save(tmp_path / "split" / part / name / "x.png")
    with pytest.raises(DataUnavailable, match="train/ has the classes a but test/ b"):
        image_folder(str(tmp_path / "split"))


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_tensor_files_round_trip(tmp_path, lab, suffix):
    data = image_folder(str(lab / "shapes"))
    parts = {key: getattr(data, key) for key in ("train_images", "train_labels")}
    parts |= {"test_images": data.test_images, "test_labels": data.test_labels}
    path = tmp_path / f"shapes{suffix}"
    if suffix == ".npz":
        np.savez(path, **{key: value.numpy() for key, value in parts.items()})
    else:
        torch.save(parts, path)
    loaded = tensor_file(str(path))
    assert loaded.source == f"tensor file {path}"
    for key, value in parts.items():
        assert torch.equal(getattr(loaded, key), value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_images": torch.zeros(4, 3, 2, 2)}, "train_images are float32 [4, 3, 2, 2]; "),
        ({"test_labels": torch.zeros(2)}, "test_labels are float32 [2]; expected integer"),
        (
            {"test_images": torch.zeros(2, 1, 2, 2, dtype=torch.uint8)},
            "test_images are uint8 [2, 1, 2, 2] but train_images",
        ),
        ({"train_labels": torch.tensor([0, 1, 3, 3])}, "no training images of class 2; "),
        ({"train_labels": torch.tensor([0, 1])}, "4 train_images but 2 train_labels"),
    ],
)
def test_a_users_tensors_are_checked_in_one_line(change, message):
    parts = {
        "train_images": torch.zeros(4, 3, 2, 2, dtype=torch.uint8),
        "train_labels": torch.tensor([0, 1, 2, 0]),
        "test_images": torch.zeros(2, 3, 2, 2, dtype=torch.uint8),
        "test_labels": torch.tensor([1, 2]),
    }
    assert as_image_data(parts, "mylab.data.f").train_labels.dtype == torch.int64
    with pytest.raises(DataUnavailable) as raised:
        as_image_data(parts | change, "mylab.data.f")
    assert str(raised.value).startswith(f"mylab.data.f: {message}")


def test_a_data_root_that_cannot_take_a_download_is_one_line():
    root = "/proc/ewcexp-data"  # a folder nobody, root included, can create
    with pytest.raises(DataUnavailable) as raised:
        load_images("kmnist", root, download=True, allow_fallback=False)
    assert f"data.root={root} cannot take them (/proc takes no new folder" in str(raised.value)


# --- sequences over any number of classes ---------------------------------------------------


def four_classes(side: int = 12) -> ImageData:
    images = torch.randint(0, 256, (40, 3, side, side), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    return ImageData(images, labels, images[:8], labels[:8], "mine")


def test_permuted_and_rotated_sequences_use_every_class_of_the_data():
    for sequence in (
        PermutedSequence("mine", four_classes(), 3, "class", seed=0),
        RotatedSequence("mine", four_classes(), 3, "domain", seed=0),
    ):
        assert sequence.classes_per_task == 4
        assert all(task.class_ids == [0, 1, 2, 3] for task in sequence.tasks)
    assert PermutedSequence("mine", four_classes(), 3, "class", 0).scenario.output_size == 12


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_tasks": 3}, "num_tasks=3 is not allowed: mine has 4 classes, so with "),
        ({"classes_per_task": 5}, "classes_per_task=5 is not allowed: mine has 4 classes; "),
        ({"class_order": [0, 1, 2, 4]}, r"class_order=\[0, 1, 2, 4\] is not allowed: expected "),
        ({"pad_to": 10}, "pad_to=10 is not allowed: mine has images of 12×12; expected null or"),
    ],
)
def test_what_only_the_data_shows_is_refused_as_the_sequence_is_built(settings, message):
    with pytest.raises(ConfigError, match=f"^task_sequence.{message}"):
        SplitSequence(
            "mine", four_classes(), **{"num_tasks": 2, "scenario": "task", "seed": 0} | settings
        )


# --- models ---------------------------------------------------------------------------------


def model_node(target: str, **keys: object) -> OmegaConf:
    return OmegaConf.create({"_target_": target, **keys})


def test_a_torchvision_architecture_gets_num_classes_and_float_images():
    sample = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)  # grey
    model = build_model(
        model_node("torchvision.models.shufflenet_v2_x0_5", weights=None), (28, 28), 10, sample
    )
    assert isinstance(model, FloatImages) and model.net.fc.out_features == 10
    assert model.repeat == 3  # grey repeated to the channels its first convolution takes
    assert model(sample).shape == (2, 10) and model.training


def test_a_network_taking_input_shape_gets_the_data_s_sizes_and_uint8(lab, monkeypatch):
    monkeypatch.syspath_prepend(str(lab))
    sample = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    model = build_model(model_node("mylab.nets.MyNet", hidden=8), (3, 12, 12), 4, sample)
    assert type(model).__name__ == "MyNet" and model.layers[1].in_features == 432


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            {"_target_": "torchvision.models.shufflenet_v2_x0_5", "num_classes": 7},
            "model.num_classes=7 is not allowed: the runner sets it",
        ),
        (
            {"_target_": "torchvision.models.shufflenet_v2_x0_5", "dropout": 0.1},
            r"model.dropout=0.1 is not allowed: ShuffleNetV2.__init__\(\) got an unexpected "
            "keyword argument 'dropout'$",
        ),
        (
            {"_target_": "torch.nn.Identity"},
            r"model._target_=torch.nn.Identity is not allowed: on images \[2, 3, 12, 12\] it "
            r"returned \[2, 3, 12, 12\]; expected \[2, 4\]",
        ),
        (
            {"_target_": "torchvision.models.squeezenet1_1"},
            r"model._target_=torchvision.models.squeezenet1_1 is not allowed on images "
            r"\[2, 3, 12, 12\]: .*Output size is too small",
        ),
        (
            {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 4},
            "model.out_features=4 is not allowed: the runner sets it",
        ),
    ],
)
def test_a_model_that_does_not_fit_is_one_line(node, message):
    sample = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    with pytest.raises(ConfigError, match=f"^{message}"):
        build_model(OmegaConf.create(node), (3, 12, 12), 4, sample)


# --- the config check on others' code -------------------------------------------------------


def test_a_target_that_does_not_import_is_one_line():
    with pytest.raises(ConfigError) as raised:
        check_component("model", model_node("mylab_missing.nets.MyNett"))
    message = str(raised.value)
    assert message.startswith("model._target_=mylab_missing.nets.MyNett is not allowed: ")
    assert "No module named 'mylab_missing'" in message and "\n" not in message


def test_keys_of_others_code_are_checked_where_it_says_what_it_takes(tmp_path, monkeypatch):
    """torchvision's builders take **kwargs and pass them on: those keys are accepted
    unchecked, while a key its signature types is still checked; without **kwargs, an
    unknown key is refused; a key without a type hint is the code's own to check."""
    check_component(
        "model", model_node("torchvision.models.resnet18", weights=None, zero_init_residual=True)
    )
    with pytest.raises(
        ConfigError, match=r"^model.progress=3 is not allowed: expected true or false$"
    ):
        check_component("model", model_node("torchvision.models.resnet18", progress=3))
    (tmp_path / "theirs.py").write_text(
        "def net(input_shape, out_features, width: int = 4, act='relu'):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    check_component("model", model_node("theirs.net", width=8, act=["anything"]))
    with pytest.raises(
        ConfigError, match=r"^model.width=wide is not allowed: expected an integer$"
    ):
        check_component("model", model_node("theirs.net", width="wide"))
    with pytest.raises(
        ConfigError,
        match=r"^model.depth=2 is not allowed: there is no such key \(theirs.net takes input_shape, out_features, width, act\)$",
    ):
        check_component("model", model_node("theirs.net", depth=2))


@pytest.mark.parametrize("weights", ["bogus", "DEFAULT"])
def test_weights_a_torchvision_builder_refuses_are_one_line(weights):
    """`weights=bogus` (unknown) and `DEFAULT` (1000 ImageNet classes, not 4): its own words."""
    node = model_node("torchvision.models.shufflenet_v2_x0_5", weights=weights)
    with pytest.raises(ConfigError, match=f"is not allowed with weights={weights}: "):
        build_model(node, (3, 12, 12), 4, sample=torch.zeros(2, 3, 12, 12, dtype=torch.uint8))
