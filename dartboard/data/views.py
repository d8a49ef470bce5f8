"""Two-view datasets for Siamese self-supervised learning (NASiam, thesis 5.1.1): every sample is
``([2, C, H, W], label)``, two augmentations of one image (the label is for evaluation only).

Augmentations are on unless the dataset's name says otherwise: ``digits-views`` augments,
``digits-views-noaug`` is the explicit ablation (two identical views; the thesis, Table 5.2,
shows that it collapses). CIFAR-10/100 use SimSiam's policy; an image folder too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from dartboard.data.datasets import DatasetInfo, Splits, _cifar, _digits, image_folder

# Digits (8x8, standardised): crops of 50-100% of the area resized back to 8x8, contrast x[0.6, 1.4],
# brightness +-0.4 std, Gaussian noise 0.1 std (a SimSiam-like policy scaled to 8x8 grayscale; no flips,
# which change a digit's meaning).
DIGITS_CROP_SCALE = (0.5, 1.0)
DIGITS_CONTRAST = 0.4
DIGITS_BRIGHTNESS = 0.4
DIGITS_NOISE = 0.1
# SimSiam (Chen & He 2021) CIFAR policy: crop 20-100%, colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8,
# grayscale p=0.2, horizontal flip.
CIFAR_CROP_SCALE = (0.2, 1.0)


def digits_augment(image: torch.Tensor) -> torch.Tensor:
    """One random view of a standardised ``[1, 8, 8]`` digit (torch's global RNG: seeded, checkpointed)."""
    from torchvision.transforms import v2

    size = image.shape[-1]
    view = v2.RandomResizedCrop(size, scale=DIGITS_CROP_SCALE, antialias=True)(image)
    contrast = 1.0 + (torch.rand(()) * 2 - 1) * DIGITS_CONTRAST
    brightness = (torch.rand(()) * 2 - 1) * DIGITS_BRIGHTNESS
    return view * contrast + brightness + DIGITS_NOISE * torch.randn_like(view)


class TwoViews(Dataset):
    """``base[i] = (image, label)`` -> ``(stack([augment(image), augment(image)]), label)``;
    ``augment=None``: two identical views (the no-augmentation ablation)."""

    def __init__(self, base: Dataset, augment: Callable[[torch.Tensor], torch.Tensor] | None):
        self.base, self.augment = base, augment

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[index]
        if self.augment is None:
            return torch.stack([image, image]), label
        return torch.stack([self.augment(image), self.augment(image)]), label


def digits_views(augment: bool) -> Splits:
    plain = _digits()
    aug = digits_augment if augment else None
    name = "digits-views" if augment else "digits-views-noaug"
    return Splits(TwoViews(plain.train, aug), TwoViews(plain.test, aug), DatasetInfo(name, 1, 8, 10))


class _TwoCrops:
    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        return torch.stack([self.transform(image), self.transform(image)])


def simsiam_transform(size: int, mean, std) -> Callable:
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size, scale=CIFAR_CROP_SCALE),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def image_views(name: str, root: str | None, image_size: int) -> Splits:
    """CIFAR-10/100 (``cifar10-views``) or an image folder (``imagefolder-views``) from a local path,
    with SimSiam's augmentations applied twice."""
    base = name[: -len("-views")]
    splits = image_folder(root, image_size) if base == "imagefolder" else _cifar(base, root)
    size = splits.info.input_size
    mean, std = ((0.5,) * 3, (0.5,) * 3) if base == "imagefolder" else (
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    two = _TwoCrops(simsiam_transform(size, mean, std))
    for part in (splits.train, splits.test):
        part.transform = two
    info = splits.info
    return Splits(splits.train, splits.test, DatasetInfo(name, info.in_channels, size, info.num_classes,
                                                         classes=info.classes))
