"""Datasets. The default is scikit-learn's bundled digits (8x8 grayscale, 10 classes):
nothing is ever downloaded. CIFAR-10/100 are read from a local torchvision-format folder
and any image folder from disk.

The loaders return the train part and a held-out test part (:class:`Splits`); they are loaded by name
with :func:`dartboard.data.catalog.load_dataset`. ``search_split`` divides the train part into the search
protocol's train/val halves with the run's seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from dartboard.data.colour_digits import COLOUR_DIGITS, colourise
from dartboard.errors import DataError, UserInputError

DIGITS_TEST_SEED = 0  # the held-out test split of digits is fixed, so test accuracies compare


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    input_size: int
    num_classes: int
    # The normalisation the loader applies to pixel values in [0, 1], per channel (recorded with a
    # trained model so that `dartboard predict` feeds it the same inputs); empty when unknown.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # The class names in label order (an image folder's class folders, CIFAR's names), recorded with a trained model
    # so that `dartboard predict` names its classes; empty where a label is its own name (digits).
    classes: tuple[str, ...] = ()


@dataclass
class Splits:
    train: Dataset
    test: Dataset
    info: DatasetInfo


def _digits_arrays(colour: bool = False, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """(x_train, x_test, y_train, y_test) of digits in [0, 1]; ``colour``: the colour-digits images.
    scikit-learn's digits and split, through this machine's cache (:mod:`dartboard.data.digits_cache`)."""
    from dartboard.data.digits_cache import digits_split

    d = digits_split(DIGITS_TEST_SEED, test_fraction)
    x = d["images"].astype(np.float32) / 16.0
    y = d["target"]
    if colour:
        x = colourise(x, y)
    return x[d["train_idx"]], x[d["test_idx"]], y[d["train_idx"]], y[d["test_idx"]]


def _digits() -> Splits:
    x_tr, x_te, y_tr, y_te = _digits_arrays()
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def tensors(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy((a - mean) / std).unsqueeze(1), torch.from_numpy(b))

    return Splits(tensors(x_tr, y_tr), tensors(x_te, y_te), DatasetInfo("digits", 1, 8, 10, (mean,), (std,)))


def _colour_digits() -> Splits:
    """colour-digits (:mod:`dartboard.data.colour_digits`): the digits split, RGB in [0, 1], not normalised."""
    x_tr, x_te, y_tr, y_te = _digits_arrays(colour=True)

    def tensors(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(a), torch.from_numpy(b))

    # the identity normalisation, recorded with a trained model so that `dartboard predict` feeds it raw pixels too
    info = DatasetInfo(COLOUR_DIGITS, 3, 8, 10, (0.0,) * 3, (1.0,) * 3)
    return Splits(tensors(x_tr, y_tr), tensors(x_te, y_te), info)


def _cifar(name: str, root: str | None) -> Splits:
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    if root is not None and Path(root).name == folder and Path(root).is_dir() and not (Path(root) / folder).is_dir():
        raise DataError(f"{name}: --data-root {root!r} is the {folder!r} folder itself; pass the folder that holds it: "
                        f"{str(Path(root).parent)!r}")
    if root is None or not (Path(root) / folder).is_dir():
        where = "no --data-root given" if root is None else f"looked for {folder!r} under {root!r}"
        raise DataError(
            f"{name}: no local copy found ({where}). dartboard never downloads "
            f"data: download the python version of {name.upper()} yourself, extract it so that "
            f"ROOT/{folder} exists, and pass --data-root ROOT."
        )
    from torchvision import datasets, transforms

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(root, train=True, transform=train_tf, download=False)
        test = cls(root, train=False, transform=test_tf, download=False)
    except RuntimeError as err:  # torchvision checks every file's MD5 against the official release
        raise DataError(f"{name}: {str(Path(root) / folder)!r} is incomplete or differs from the official "
                        f"python version of {name.upper()} (a file is missing or its MD5 differs); extract the "
                        "original archive there again") from err
    return Splits(train, test, DatasetInfo(name, 3, 32, 10 if name == "cifar10" else 100, mean, std,
                                           tuple(train.classes)))


#: ImageNet's channel statistics (torchvision, DARTS ``train_imagenet.py``).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_transforms(image_size: int) -> tuple[Callable, Callable]:
    """DARTS ``train_imagenet.py``'s augmentation at ``image_size`` (published: 224): train a random resized
    crop, a horizontal flip and colour jitter (brightness, contrast, saturation 0.4, hue 0.2); test a resize of
    the shorter side to 256/224 of the size and the centre crop."""
    from torchvision import transforms

    norm = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                                *norm])
    test = transforms.Compose([transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                               *norm])
    return train, test


def _imagenet(root: str | None, image_size: int) -> Splits:
    train_tf, test_tf = imagenet_transforms(image_size)
    return image_folder(root, image_size, "imagenet", IMAGENET_MEAN, IMAGENET_STD, (train_tf, test_tf))


def read_image(path: str):
    """An RGB PIL image (torchvision's folder loader does the same) for a user's image folders: a file it cannot read
    (not an image, truncated) is named as the data's error, wherever in an epoch it is first read. A palette image
    with a transparent colour goes through RGBA, as PIL asks (converted straight to RGB, PIL warns on every such
    file). A 16-bit grayscale picture is scaled to 8 bits (PIL's own conversion clips it: every value from 255 up,
    nearly the whole picture, would be white), as ``dartboard predict`` reads it."""
    from PIL import Image

    from dartboard.data.preprocess import SIXTEEN_BIT_MODES, sixteen_bit_unit

    try:
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES:
                return Image.fromarray(np.round(sixteen_bit_unit(img) * 255.0).astype(np.uint8)).convert("RGB")
            if img.mode == "P" and "transparency" in img.info:
                return img.convert("RGBA").convert("RGB")
            return img.convert("RGB")
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"image folder: cannot read {path!r} as an image ({' '.join(str(err).split())}); remove or "
                        f"replace it") from None


def image_folder(root: str | None, image_size: int, name: str = "imagefolder",
                 mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5),
                 transforms_: tuple[Callable, Callable] | None = None) -> Splits:
    """train/ and test/ (or val/: ImageNet's layout) of one folder per class, resized to ``image_size``
    (or through ``transforms_``: the train and the test transform)."""
    if root is None or not Path(root).is_dir():
        problem = "no --data-root given" if root is None else f"folder {root!r} does not exist"
        raise DataError(f"{name}: {problem}; pass --data-root with train/ and test/ (or val/) "
                        "subfolders of one folder per class (nothing is downloaded)")
    base = Path(root)
    test_dir = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
    if not (base / "train").is_dir() or test_dir is None:
        split = base.name in ("train", "test", "val") and (base.parent / "train").is_dir()
        hint = f"; {root!r} is a split itself: pass the folder that holds it, {str(base.parent)!r}" if split else ""
        raise DataError(f"{name}: {root!r} must hold train/ and test/ (or val/) subfolders, one folder per class{hint}")
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    train_tf, test_tf = transforms_ or (tf, tf)
    train = class_folders(base / "train", train_tf, name)
    test = class_folders(test_dir, test_tf, name)
    _labels_of(train, test, f"{name}: {str(test_dir)!r}")
    return Splits(train, test, DatasetInfo(name, 3, image_size, len(train.classes), mean, std, tuple(train.classes)))


def class_folders(folder: str | Path, transform: Callable, where: str) -> Any:
    """torchvision's ``ImageFolder`` of ``folder`` (one subfolder of images per class) read with :func:`read_image`.
    Hidden folders and files (a name that starts with a dot: Jupyter's ``.ipynb_checkpoints``, macOS's ``._x.png``
    copies of a file's metadata) are neither classes nor images; torchvision takes them as both. A class folder without
    an image file is refused naming it (torchvision raises a FileNotFoundError)."""
    from torchvision import datasets

    root = Path(folder)
    extensions, expanded = datasets.folder.IMG_EXTENSIONS, os.path.expanduser(str(root))  # as torchvision reads it
    named = ", ".join(extensions)

    def is_image(path: str) -> bool:  # torchvision joins ``expanded`` and the rest; 0.1 us a file (ImageNet: 1.28M)
        return path.lower().endswith(extensions) and os.sep + "." not in path[len(expanded):]

    try:
        data = datasets.ImageFolder(str(root), transform=transform, loader=read_image, is_valid_file=is_image,
                                    allow_empty=True)
    except FileNotFoundError as err:  # no class folder at all
        raise DataError(f"{where}: {str(root)!r}: {' '.join(str(err).split())} Expected one subfolder of images "
                        f"({named}) per class") from None
    classes = [c for c in data.classes if not c.startswith(".")]
    if not classes:
        raise DataError(f"{where}: {str(root)!r}: no class folder (only hidden ones); expected one subfolder of "
                        f"images ({named}) per class")
    if classes != data.classes:  # the hidden ones dropped, the labels renumbered (a plain ImageFolder: picklable)
        label = {data.class_to_idx[c]: i for i, c in enumerate(classes)}
        data.samples = data.imgs = [(path, label[t]) for path, t in data.samples if t in label]
        data.targets = [t for _, t in data.samples]
        data.classes, data.class_to_idx = classes, {c: i for i, c in enumerate(classes)}
    empty = sorted(set(classes) - {classes[t] for t in data.targets})
    if empty:
        raise DataError(f"{where}: {str(root)!r}: class folder(s) {', '.join(map(repr, empty))} hold no image file "
                        f"({named}); each class needs at least one image, or remove its folder")
    return data


def _labels_of(train: Any, test: Any, where: str) -> None:
    """The test split's labels as the training split's: ``ImageFolder`` numbers each folder's classes on its own, so a
    test folder without one of the classes would give the next classes the labels of others. A class the training
    split lacks has no label: refused."""
    if test.classes == train.classes:
        return
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise DataError(f"{where}: class folder(s) {', '.join(map(repr, unknown))} not in train/ (its classes: "
                        f"{', '.join(train.classes)}); the test split can only hold classes the network learns")
    label = {i: train.class_to_idx[c] for i, c in enumerate(test.classes)}
    test.samples = test.imgs = [(path, label[t]) for path, t in test.samples]
    test.targets = [t for _, t in test.samples]
    test.classes, test.class_to_idx = list(train.classes), dict(train.class_to_idx)


def load_builtin(name: str, root: str | None, image_size: int) -> Splits:
    """A built-in dataset of :mod:`dartboard.data.catalog` (which names them without loading them)."""
    if name == "digits":
        return _digits()
    if name == COLOUR_DIGITS:  # ColorNAS
        return _colour_digits()
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root)
    if name == "imagefolder":
        return image_folder(root, image_size)
    if name == "imagenet":
        return _imagenet(root, image_size)
    raise DataError(f"dataset: {name!r} is not a built-in dataset")


def search_split(train: Dataset, seed: int, fraction: float | None = 0.5) -> tuple[Subset, Subset]:
    """The search protocol's split of the training set (DARTS: 50/50), seeded by the run."""
    fraction = 0.5 if fraction is None else fraction
    if not 0.0 < fraction < 1.0:
        raise DataError(f"train_fraction: expected a value in (0, 1), got {fraction}")
    n = len(train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(n * fraction)
    return Subset(train, perm[:cut]), Subset(train, perm[cut:])


def check_batch(batch_size: int, sizes: dict[str, int], name: str = "batch_size") -> None:
    """Loaders that drop a last partial batch yield nothing from data smaller than one batch: a search or a
    training would run no step, so that is refused, naming the part that is too small (``name``: the setting that
    gave the batch size, as the user wrote it)."""
    for part, size in sizes.items():
        if size < batch_size:
            raise UserInputError(f"{name}: {batch_size} is larger than the {part} ({size} samples); lower the "
                                 f"batch size or give more data")


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool = False,
                workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)
