"""The datasets by name, before any is loaded: which names exist, which are small (the searchers' small-data
profile applies) and which are read from a folder the user gives. No torch is imported here: a study's checks and
its trial actors (``platform.config.SearchRunConfig``) validate a dataset's name without loading it. The loaders
themselves live in :mod:`dartboard.data.datasets`, :mod:`dartboard.data.views` and :mod:`dartboard.data.pmsm`, imported
when :func:`load_dataset` loads their data."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dartboard.data.colour_digits import COLOUR_DIGITS
from dartboard.errors import DataError
from dartboard.registries import Registry

#: name -> loader(root, image_size) -> Splits. Other data (a user's, or an application's like the motor
#: simulator's below) is added with :func:`register_dataset`; ``small``: sized for a laptop CPU, so the
#: searchers' small-data profile applies (digits and the data made from it).
DATASETS: Registry[Callable[[str | None, int], Any]] = Registry("dataset")
SMALL_DATASETS: set[str] = set()
LOCAL_DATASETS = ("cifar10", "cifar100", "imagenet")  # read from a folder the user gives (--data-root)
#: Built-in data of one image size, which a loader's ``image_size`` does not change (image folders are resized).
FIXED_SIZE_DATASETS = ("digits", "colour-digits", "cifar10", "cifar100", "digits-views", "digits-views-noaug",
                       "cifar10-views", "cifar100-views", "pmsm")


def register_dataset(name: str, loader: Callable[[str | None, int], Any], small: bool = False) -> None:
    DATASETS.add(name, loader)
    if small:
        SMALL_DATASETS.add(name)


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise DataError(f"dataset: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return name


def trained_on(name: str) -> str:
    """The data a network searched on ``name`` trains on: a two-view dataset (NASiam's) is made from another, whose
    images the SSL pretraining makes its own views of; every other dataset is its own."""
    if name.startswith("digits-views"):
        return "digits"
    return name.removesuffix("-views")


def absolute_root(root: str | None) -> str | None:
    """A local data folder as an absolute path (``~`` expanded): a study's trials and a training on Ray run in
    worker processes whose working folder is not the command's, where a relative path names nothing."""
    if root is None or "://" in root:
        return root
    return os.path.abspath(os.path.expanduser(root))


def check_data_root(name: str, root: str | None, decided_by: str | None = None,
                    fields: tuple[str, str] = ("data_root (--data-root)", "--dataset")) -> None:
    """A folder given for data that is made in memory would be ignored: refused, so that a user who meant
    another dataset learns it before a search or training runs on the wrong data. ``decided_by``: what chose the
    dataset where the user cannot (a registered model: the data set it was trained on); ``fields``: how the user
    gave the folder and names the dataset (a command's flags, a study file's keys)."""
    if root is not None and name in BUILT_IN_MEMORY:
        other = (f" ({decided_by})" if decided_by else f", or name the dataset that folder holds ({fields[1]} "
                 f"{', '.join(LOCAL_DATASETS + ('imagefolder',))})")
        raise DataError(f"{fields[0]}: dataset {name!r} is made in memory and reads no folder, so {root!r} would be "
                        f"ignored; leave it out{other}")


def _builtin(name: str) -> Callable[[str | None, int], Any]:
    """The loader of a built-in dataset, imported when the dataset is loaded: the two-view data of
    :mod:`dartboard.data.views`, the others :func:`dartboard.data.datasets.load_builtin`."""

    def load(root: str | None, image_size: int) -> Any:
        if name.startswith("digits-views"):
            from dartboard.data.views import digits_views

            return digits_views(augment=name == "digits-views")
        if name.endswith("-views"):
            from dartboard.data.views import image_views

            return image_views(name, root, image_size)
        from dartboard.data.datasets import load_builtin

        return load_builtin(name, root, image_size)

    return load


#: the built-in datasets: name -> small
BUILTIN = {"digits": True, COLOUR_DIGITS: True, "cifar10": False, "cifar100": False, "imagefolder": False,
           # ImageNet (ILSVRC-2012) as the user keeps it: DATA_ROOT/train/<wnid>/*.JPEG and DATA_ROOT/val/<wnid>/*.JPEG
           "imagenet": False,
           # two-view data for Siamese self-supervised search (NASiam), dartboard.data.views; -noaug: the ablation
           # with the augmentations off
           "digits-views": True, "digits-views-noaug": True, "cifar10-views": False, "cifar100-views": False,
           "imagefolder-views": False}
#: Built-in data made in memory (scikit-learn's bundled digits and what is made from them): no folder is read.
BUILT_IN_MEMORY = ("digits", COLOUR_DIGITS, "digits-views", "digits-views-noaug")
for _name, _small in BUILTIN.items():
    register_dataset(_name, _builtin(_name), small=_small)


def _pmsm(root: str | None, image_size: int) -> Any:
    """The PMSM motor's data (thesis 6.2): :func:`dartboard.data.pmsm.load_pmsm`, a simulator in torch."""
    from dartboard.data.pmsm import load_pmsm

    return load_pmsm(root, image_size)


register_dataset("pmsm", _pmsm, small=True)


def load_dataset(name: str = "digits", root: str | None = None, image_size: int = 32) -> Any:
    """The train part and the held-out test part of a dataset (``datasets.Splits``), by name: its folder
    ``root`` where it is read from one; ``image_size`` for image folders, which are resized."""
    check_data_root(check_dataset(name), root)
    return DATASETS[name](root, image_size)
