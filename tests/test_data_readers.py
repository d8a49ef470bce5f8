"""The CIFAR-10/100 and ImageFolder readers on tiny on-disk fixtures written here: the python-pickle
CIFAR layout (``cifar-10-batches-py``, ``cifar-100-python``) and a folder of PNGs. Checked: shapes,
labels, the normalisation (value by value), the test transform (deterministic) and the training
augmentation (each output is one of the 9 x 9 x 2 crops/flips of the padded image, and several occur).

torchvision compares every CIFAR file's MD5 with the official release; the fixtures cannot match it,
so the reading tests replace that comparison by "the file exists" (and one test keeps it, to see a
copy that differs refused with one line).
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dartboard.data.catalog import DataError, load_dataset
from dartboard.data.datasets import make_loader, search_split

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PER_BATCH, N_TEST = 4, 6


def image(i: int) -> np.ndarray:
    """A 3x32x32 uint8 image with no symmetry (so crops and flips are told apart), different per i."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((c * 71 + h * 5 + w * 3 + 17 * i) % 256).astype(np.uint8)


def write_cifar(root, name: str) -> tuple[list[int], list[int]]:
    """The python-pickle layout torchvision reads; returns the train and test labels written."""
    classes = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    files = ([f"data_batch_{k}" for k in range(1, 6)] if name == "cifar10" else ["train"])
    per_file = PER_BATCH if name == "cifar10" else 5 * PER_BATCH
    train_labels: list[int] = []
    count = 0
    for file in files:
        labels = [(count + j) * 7 % classes for j in range(per_file)]
        data = np.stack([image(count + j).reshape(-1) for j in range(per_file)])
        (folder / file).write_bytes(pickle.dumps({"data": data, label_key: labels}))
        train_labels += labels
        count += per_file
    test_labels = [(j * 3) % classes for j in range(N_TEST)]
    data = np.stack([image(1000 + j).reshape(-1) for j in range(N_TEST)])
    (folder / ("test_batch" if name == "cifar10" else "test")).write_bytes(
        pickle.dumps({"data": data, label_key: test_labels}))
    meta_key = "label_names" if name == "cifar10" else "fine_label_names"
    (folder / ("batches.meta" if name == "cifar10" else "meta")).write_bytes(
        pickle.dumps({meta_key: [f"class{k}" for k in range(classes)]}))
    return train_labels, test_labels


@pytest.fixture
def files_exist(monkeypatch):
    """torchvision's MD5 comparison with the official release, as 'the file exists'."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def normalised(img: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(img.astype(np.float32) / 255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def crops_and_flips(img: np.ndarray) -> list[torch.Tensor]:
    """Every output RandomCrop(32, padding=4) + RandomHorizontalFlip can give (before normalising)."""
    padded = np.pad(img, ((0, 0), (4, 4), (4, 4)))
    out = []
    for top in range(9):
        for left in range(9):
            crop = padded[:, top:top + 32, left:left + 32]
            out += [crop, crop[:, :, ::-1]]
    return out


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_the_python_layout_with_shapes_labels_and_normalisation(tmp_path, files_exist, name, classes):
    train_labels, test_labels = write_cifar(tmp_path, name)
    splits = load_dataset(name, str(tmp_path))
    assert (splits.info.in_channels, splits.info.input_size, splits.info.num_classes) == (3, 32, classes)
    assert len(splits.train) == 5 * PER_BATCH and len(splits.test) == N_TEST
    for j in range(N_TEST):  # the test transform: ToTensor + Normalize with the CIFAR-10 statistics
        x, y = splits.test[j]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == test_labels[j]
        assert torch.allclose(x, normalised(image(1000 + j), CIFAR_MEAN, CIFAR_STD), atol=1e-6)
    assert torch.equal(splits.test[0][0], splits.test[0][0])  # deterministic
    assert [splits.train[j][1] for j in range(len(splits.train))] == train_labels


def test_cifar_training_augmentation_is_a_padded_crop_and_flip(tmp_path, files_exist):
    write_cifar(tmp_path, "cifar10")
    splits = load_dataset("cifar10", str(tmp_path))
    candidates = [normalised(np.ascontiguousarray(c), CIFAR_MEAN, CIFAR_STD) for c in crops_and_flips(image(0))]
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        x, _ = splits.train[0]
        assert x.shape == (3, 32, 32)
        matches = [k for k, c in enumerate(candidates) if torch.allclose(x, c, atol=1e-6)]
        assert matches, "the training transform is not a 4-pixel padded crop (+ flip) of the image"
        seen.add(matches[0])
    assert len(seen) > 1, "the training transform is not random"


def test_cifar_batches_and_search_split_on_the_fixture(tmp_path, files_exist):
    write_cifar(tmp_path, "cifar10")
    splits = load_dataset("cifar10", str(tmp_path))
    train, val = search_split(splits.train, seed=0)
    assert len(train) == len(val) == 5 * PER_BATCH // 2
    x, y = next(iter(make_loader(train, 4, shuffle=True, seed=0)))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,) and y.dtype == torch.int64


def test_a_cifar_copy_that_differs_from_the_release_is_one_data_error(tmp_path):
    write_cifar(tmp_path, "cifar10")  # the MD5 comparison is kept: the fixture is not the release
    with pytest.raises(DataError, match="is incomplete or differs from the official python version of CIFAR10"):
        load_dataset("cifar10", str(tmp_path))


# ------------------------------------------------------------------ ImageFolder
def write_folder(root, part: str, classes: dict[str, list[tuple[int, int, int]]], mode: str = "RGB") -> None:
    for cls, colours in classes.items():
        (root / part / cls).mkdir(parents=True)
        for k, colour in enumerate(colours):
            img = Image.new("RGB", (12, 10), colour)
            (img.convert(mode) if mode != "RGB" else img).save(root / part / cls / f"{k}.png")


def test_imagefolder_resizes_normalises_and_labels_by_folder(tmp_path):
    write_folder(tmp_path, "train", {"cat": [(255, 0, 0), (0, 255, 0)], "dog": [(0, 0, 255)]})
    write_folder(tmp_path, "test", {"cat": [(51, 102, 153)], "dog": [(255, 255, 255)]})
    splits = load_dataset("imagefolder", str(tmp_path), image_size=16)
    assert (splits.info.in_channels, splits.info.input_size, splits.info.num_classes) == (3, 16, 2)
    assert len(splits.train) == 3 and len(splits.test) == 2
    assert [y for _, y in splits.train] == [0, 0, 1]  # classes in sorted folder order
    x, y = splits.test[0]
    assert x.shape == (3, 16, 16) and y == 0
    expected = (torch.tensor([51, 102, 153]) / 255.0 - 0.5) / 0.5  # Normalize((0.5,)*3, (0.5,)*3)
    assert torch.allclose(x, expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-6)
    assert torch.equal(splits.train[0][0], splits.train[0][0])  # no augmentation: train is deterministic too



def test_a_test_folder_without_a_class_keeps_the_training_labels(tmp_path):
    # ImageFolder numbers each folder's classes on its own: test/ without 'b' labelled its 'c' images 1 ('b' in train)
    write_folder(tmp_path, "train", {"a": [(10, 0, 0)], "b": [(20, 0, 0)], "c": [(30, 0, 0), (31, 0, 0)]})
    write_folder(tmp_path, "test", {"a": [(40, 0, 0)], "c": [(60, 0, 0), (61, 0, 0)]})
    splits = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert [y for _, y in splits.test] == [0, 2, 2] and splits.test.targets == [0, 2, 2]
    assert splits.test.classes == ["a", "b", "c"] and splits.info.num_classes == 3
    write_folder(tmp_path, "test", {"d": [(70, 0, 0)]})
    with pytest.raises(DataError, match=r"class folder\(s\) 'd' not in train/ \(its classes: a, b, c\)"):
        load_dataset("imagefolder", str(tmp_path), image_size=8)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_class_folder_without_an_image_is_refused_by_name(split, tmp_path):
    """torchvision's FileNotFoundError with a traceback, before: an empty class folder, or one of other files."""
    write_folder(tmp_path, "train", {"a": [(10, 0, 0)], "b": [(20, 0, 0)]})
    write_folder(tmp_path, "test", {"a": [(40, 0, 0)], "b": [(50, 0, 0)]})
    (tmp_path / split / "c").mkdir()
    (tmp_path / split / "d").mkdir()
    (tmp_path / split / "d" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=rf"imagefolder: '.*{split}': class folder\(s\) 'c', 'd' hold no image file "
                                        r"\(.jpg, .*\); each class needs at least one image, or remove its folder"):
        load_dataset("imagefolder", str(tmp_path), image_size=8)
    for part in ("train", "test"):  # an image in each: read
        for name in ("c", "d"):
            (tmp_path / part / name).mkdir(exist_ok=True)
            (tmp_path / part / name / "0.png").write_bytes((tmp_path / part / "a" / "0.png").read_bytes())
    assert load_dataset("imagefolder", str(tmp_path), image_size=8).info.num_classes == 4


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    """Jupyter's .ipynb_checkpoints folder was a class, macOS's ._x.png metadata copies were images that could not be
    read (an error in the middle of an epoch)."""
    write_folder(tmp_path, "train", {"a": [(10, 0, 0), (11, 0, 0)], "b": [(20, 0, 0)],
                                     ".ipynb_checkpoints": [(0, 0, 0)]})
    write_folder(tmp_path, "test", {"a": [(40, 0, 0)], "b": [(50, 0, 0)]})
    (tmp_path / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    (tmp_path / "train" / "b" / ".thumbnails").mkdir()
    (tmp_path / "train" / "b" / ".thumbnails" / "0.png").write_bytes((tmp_path / "train" / "b" / "0.png").read_bytes())
    splits = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert splits.info.classes == ("a", "b") and len(splits.train) == 3
    assert [y for _, y in splits.train] == [0, 0, 1]
    copy = pickle.loads(pickle.dumps(splits.train))  # as a DataLoader's worker processes get it (spawn)
    assert copy.classes == ["a", "b"] and [y for _, y in copy] == [0, 0, 1]
    (tmp_path / "train" / "b" / "0.png").unlink()  # b: only a hidden copy left
    with pytest.raises(DataError, match=r"class folder\(s\) 'b' hold no image file"):
        load_dataset("imagefolder", str(tmp_path), image_size=8)


def test_a_split_without_class_folders_is_refused_by_name(tmp_path):
    write_folder(tmp_path, "train", {"a": [(10, 0, 0)], "b": [(20, 0, 0)]})
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "0.png").write_bytes((tmp_path / "train" / "a" / "0.png").read_bytes())
    with pytest.raises(DataError, match=r"imagefolder: '.*test': .*Expected one subfolder of images \(.jpg, .*\) "
                                        r"per class"):
        load_dataset("imagefolder", str(tmp_path), image_size=8)


def test_one_class_is_read_but_refused_by_a_search_and_a_training(tmp_path):
    """Every label the same: a classifier's cross-entropy is 0 from the first step, and it learns nothing. The folder
    still loads: self-supervised pretraining (NASiam) reads one folder of unlabelled images."""
    from dartboard.searchers.registry import DataShape, build_searcher
    from dartboard.spaces.catalog import resolve
    from dartboard.training.final import TrainConfig, build_network

    write_folder(tmp_path, "train", {"only": [(10, 0, 0), (20, 0, 0)]})
    write_folder(tmp_path, "test", {"only": [(40, 0, 0)]})
    splits = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert splits.info.num_classes == 1
    with pytest.raises(ValueError, match="objective 'classification': the data has 1 class; a classifier needs at "
                                         "least two"):
        build_searcher("darts", {"C": 4, "layers": 3}, DataShape(3, 8, 1), "cpu")
    with pytest.raises(DataError, match="imagefolder: the data has 1 class; a classifier needs at least two"):
        build_network(resolve("darts-v2"), TrainConfig(channels=4, layers=2), splits)
    assert build_searcher("nasiam-simsiam", {}, DataShape(3, 8, 1), "cpu") is not None
    assert build_searcher("darts", {"C": 4, "layers": 3}, DataShape(3, 8, 2), "cpu") is not None


def test_an_image_that_cannot_be_read_is_named_as_the_datas_error(tmp_path):
    write_folder(tmp_path, "train", {"cat": [(255, 0, 0)], "dog": [(0, 0, 255)]})
    write_folder(tmp_path, "test", {"cat": [(51, 102, 153)], "dog": [(255, 255, 255)]})
    (tmp_path / "train" / "dog" / "0.png").write_bytes(b"not a png")  # a file that is no image, named .png
    png = tmp_path / "train" / "cat" / "0.png"
    png.write_bytes(png.read_bytes()[:40])  # a truncated one
    splits = load_dataset("imagefolder", str(tmp_path), image_size=8)
    for k, name in ((0, "cat"), (1, "dog")):
        with pytest.raises(DataError, match=f"image folder: cannot read '.*train/{name}/0.png' as an image"):
            splits.train[k]  # was PIL's UnidentifiedImageError or OSError, with a traceback from the command line
    assert splits.test[0][0].shape == (3, 8, 8)


def test_imagefolder_reads_val_when_there_is_no_test_and_greyscale_as_rgb(tmp_path):
    write_folder(tmp_path, "train", {"a": [(10, 10, 10)], "b": [(20, 20, 20)], "c": [(30, 30, 30)]}, mode="L")
    write_folder(tmp_path, "val", {"a": [(40, 40, 40)], "b": [(50, 50, 50)], "c": [(60, 60, 60)]}, mode="L")
    splits = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert splits.info.num_classes == 3 and len(splits.test) == 3
    x, _ = splits.test[2]
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x, torch.full((3, 8, 8), (60 / 255.0 - 0.5) / 0.5), atol=1e-6)


@pytest.mark.parametrize("name", ["digits", "colour-digits", "digits-views", "digits-views-noaug"])
def test_a_folder_for_data_made_in_memory_is_refused_not_ignored(name, tmp_path):
    from pydantic import ValidationError

    from dartboard.platform.config import SearchRunConfig

    with pytest.raises(DataError, match=rf"dataset '{name}' is made in memory and reads no folder"):
        load_dataset(name, str(tmp_path))
    with pytest.raises(ValidationError, match="reads no folder"):  # a search's or a study trial's config
        SearchRunConfig(dataset=name, data_root=str(tmp_path))
    assert SearchRunConfig(dataset=name).data_root is None


def test_a_study_file_is_told_its_own_keys_for_a_folder_it_would_ignore(tmp_path):
    # before: the study's trial config said "data_root (--data-root) ... (--dataset cifar10, ...)", flags no study has
    from pydantic import ValidationError

    from dartboard.platform.config import StudyConfig

    with pytest.raises(ValidationError, match=r"data_root: dataset 'digits' is made in memory and reads no folder, so "
                                              r".* would be ignored; leave it out, or name the dataset that folder "
                                              r"holds \(dataset: cifar10, cifar100, imagenet, imagefolder\)"):
        StudyConfig(searcher="darts", data_root=str(tmp_path))


def test_a_relative_data_root_is_kept_as_the_commands_folder_names_it(tmp_path, monkeypatch):
    # A study's trials (on Ray) and a resumed search read the folder from processes whose working folder need not be
    # the command's: a search's run.json (and a study's study.yaml, test_sweep_ray.py) hold it as an absolute path.
    from dartboard.data.catalog import absolute_root
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.run import run_search_job

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute_root("imgs") == str(tmp_path / "imgs") and absolute_root("~/c") == str(tmp_path / "home" / "c")
    assert absolute_root("../c") == str(tmp_path.parent / "c")
    assert absolute_root("s3://bucket/data") == "s3://bucket/data" and absolute_root(None) is None
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8, 3), 60 * i, dtype=np.uint8)).save(tmp_path / "imgs" / split / name /
                                                                                  f"{i}.png")
    cfg = SearchRunConfig(dataset="imagefolder", data_root="imgs", image_size=8, batch_size=2, mlflow=False,
                          out="s", options={"C": 2, "layers": 1, "epochs": 1})
    assert cfg.data_root == "imgs"  # errors about it name it as the user gave it
    run_search_job(cfg, progress=False)
    assert json.loads((tmp_path / "s" / "run.json").read_text())["data_root"] == str(tmp_path / "imgs")


def test_a_training_on_ray_hands_its_workers_the_data_folder_as_the_command_names_it(tmp_path, monkeypatch):
    # `dartboard train G --data-root imgs --workers 2` failed in every worker: "folder 'imgs' does not exist".
    import ray

    from dartboard.platform.ray import final_job, session
    from dartboard.spaces.published import darts_v2
    from dartboard.training.final import TrainConfig

    handed = {}

    class Handed(Exception):
        pass

    def trainer(genotype, train, dataset, data_root, storage, **kwargs):
        handed["data_root"] = data_root
        raise Handed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(session, "init_ray", lambda **kwargs: False)  # no Ray: the trainer is not built for real
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(final_job, "make_final_trainer", trainer)
    with pytest.raises(Handed):
        final_job.train_on_ray(darts_v2(), TrainConfig(channels=2, layers=1, batch_size=4), "imagefolder", "imgs",
                               tmp_path / "out", workers=2)
    assert handed["data_root"] == str(tmp_path / "imgs")
