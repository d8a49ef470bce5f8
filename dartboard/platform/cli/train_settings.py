"""`dartboard train`'s settings: the evaluation protocols' published values (DARTS CIFAR-10, scaled down on the
small bundled data; DARTS ImageNet mobile), the flags over them, and the flags such a training would not use."""

from __future__ import annotations

from dartboard.errors import UserInputError

#: TrainConfig's fields as the flags that set them (errors name the flag the user typed).
FLAGS = {"channels": "--channels", "layers": "--layers", "epochs": "--epochs", "batch_size": "--batch-size",
         "lr": "--lr", "drop_path_prob": "--drop-path", "cutout_length": "--cutout-length",
         "label_smoothing_eps": "--label-smoothing", "precision": "--precision", "grad_clip": "--grad-clip",
         "lr_schedule": "--lr-schedule", "lr_gamma": "--lr-gamma"}
#: ``--protocol``: the evaluation protocol whose published values are the defaults (``cifar``: DARTS CIFAR-10,
#: scaled down on the small bundled data; ``imagenet``: DARTS ImageNet mobile, ``IMAGENET_PROTOCOL``).
PROTOCOLS = ("cifar", "imagenet")
def check_image_size(image_size: int | None, dataset: str) -> None:
    from dartboard.data.catalog import FIXED_SIZE_DATASETS

    if image_size is None:
        return
    if image_size < 1:
        raise UserInputError(f"--image-size: expected a positive integer, got {image_size}")
    if dataset in FIXED_SIZE_DATASETS:
        raise UserInputError(f"--image-size: {dataset!r} has images of one size, which it would ignore; only image "
                             f"folders are resized (imagefolder, imagenet)")


#: The DARTS evaluation protocol's switches (Liu et al. 2019, CIFAR-10: auxiliary towers weight 0.4,
#: cutout 16 px, drop path 0.2), the defaults on CIFAR and image folders. On the small bundled data
#: (8x8 digits) they are off: a 16-px cutout would blank the whole image.
PUBLISHED_SWITCHES = {"auxiliary": True, "cutout": True, "drop_path_prob": 0.2}
SMALL_DATA_SWITCHES = {"auxiliary": False, "cutout": False, "drop_path_prob": 0.0}


def protocol_switches(dataset: str, **given) -> dict:
    """The given switches, the others at the dataset's defaults."""
    from dartboard.platform.config import is_small_dataset

    defaults = SMALL_DATA_SWITCHES if is_small_dataset(dataset) else PUBLISHED_SWITCHES
    return {k: given[k] if given.get(k) is not None else v for k, v in defaults.items()}


def settings_of(protocol: str, dataset: str, given: dict) -> dict:
    """The protocol's published values (``cifar`` scaled down on the small bundled data), then every
    value the user gave (None: not given)."""
    from dartboard.platform.config import DIGITS_TRAIN_DEFAULTS, is_small_dataset
    from dartboard.training.final import IMAGENET_PROTOCOL

    if protocol == "imagenet":
        base = dict(IMAGENET_PROTOCOL)
    else:
        base = {"lr": 0.025, **protocol_switches(dataset), **(DIGITS_TRAIN_DEFAULTS if is_small_dataset(dataset)
                                                              else {})}
    return {**base, **{k: v for k, v in given.items() if v is not None}}


def check_used(settings: dict, given: dict, default: str) -> None:
    """A flag (``given``: the values the user gave, None if not) that the effective ``settings`` (the protocol's
    defaults on the dataset, ``default`` in words, then the flags) leave unused is refused, not ignored."""
    from dartboard.training.final import LR_SCHEDULES, TrainConfig

    schedule = settings.get("lr_schedule", TrainConfig.lr_schedule)
    if given["lr_gamma"] is not None and schedule != "step" and schedule in LR_SCHEDULES:  # a bad one: its own error
        how = f"--lr-schedule {schedule}" if given["lr_schedule"] is not None else default
        raise UserInputError(f"--lr-gamma: {given['lr_gamma']} would be ignored by the {schedule!r} learning-rate "
                             f"schedule ({how}); it is the step schedule's decay per epoch: add --lr-schedule step, "
                             f"or drop --lr-gamma")
    if given["cutout_length"] is not None and not settings.get("cutout", TrainConfig.cutout):
        how = "--no-cutout" if given["cutout"] is False else default
        raise UserInputError(f"--cutout-length: {given['cutout_length']} would be ignored: cutout is off ({how}); "
                             f"add --cutout, or drop --cutout-length")


def fitted_cutout(cfg, input_size: int, given: bool):
    """The published cutout square, 16 px, is half the side of CIFAR's 32-px images; on smaller images a default
    cutout (no ``--cutout-length``) takes half their side (16 px centred anywhere in an 8-px image blanks it all)."""
    from dataclasses import replace

    if cfg.cutout and not given and cfg.cutout_length > input_size // 2:
        return replace(cfg, cutout_length=max(1, input_size // 2))
    return cfg


def train_config(protocol: str, dataset: str, given: dict, **fixed):
    """The :func:`settings_of` as a TrainConfig, with ``fixed`` (seed, device) on top."""
    from dartboard.training.final import TrainConfig

    try:
        return TrainConfig(**{**settings_of(protocol, dataset, given), **fixed})
    except UserInputError as err:  # name the flag, not the config field
        field, _, rest = str(err).partition(":")
        raise UserInputError(f"{FLAGS.get(field, field)}:{rest}") from None
