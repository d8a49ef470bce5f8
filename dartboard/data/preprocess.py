"""The preprocessing a trained network expects, recorded with it (``network.json``) and applied to
image files by ``dartboard predict``.

A data set's loader turns pixels into the network's input in two steps: values scaled to [0, 1]
(8-bit images divided by 255; digits' 0..16 divided by 16), then normalised per channel with the
loader's mean and std. :class:`Preprocessing` records the second step with the input size and the
channel count; :func:`read_image` does the first for PNG/JPEG and NPY files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dartboard.errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ARRAY_SUFFIXES = (".npy",)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's RGB -> L conversion uses
#: PIL's modes of 16-bit grayscale pictures (a 16-bit PNG opens as one of them): values 0..65535.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class Preprocessing:
    """Input of the network = (pixels in [0, 1], resized to ``input_size`` squared, converted to
    ``channels``) - mean[c]) / std[c]."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "channels": self.channels, "value_range": [0.0, 1.0],
                "mean": list(self.mean), "std": list(self.std), "resize": "bilinear"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "preprocessing") -> Preprocessing:
        try:
            pre = cls(int(data["input_size"]), int(data["channels"]), tuple(float(v) for v in data["mean"]),
                      tuple(float(v) for v in data["std"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UserInputError(f"{where}: expected input_size, channels, mean and std, got {dict(data)!r} "
                                 f"({err})") from None
        if len(pre.mean) != pre.channels or len(pre.std) != pre.channels or min(pre.std) <= 0:
            raise UserInputError(f"{where}: mean and std need one value per channel ({pre.channels}), std > 0; "
                                 f"got mean {list(pre.mean)}, std {list(pre.std)}")
        return pre

    def apply(self, image: np.ndarray) -> torch.Tensor:
        """One image (C, H, W) with values in [0, 1] -> the network's input (channels, size, size)."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        x = convert_channels(x, self.channels)
        if tuple(x.shape[1:]) != (self.input_size, self.input_size):
            x = torch.nn.functional.interpolate(x[None], size=(self.input_size, self.input_size), mode="bilinear",
                                                align_corners=False, antialias=True)[0]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (x - mean) / std


def preprocessing_of(info: Any) -> Preprocessing | None:
    """The record of a :class:`~dartboard.data.datasets.DatasetInfo`; None when its loader does not say
    how it normalises."""
    if not info.mean or not info.std:
        return None
    return Preprocessing(info.input_size, info.in_channels, tuple(info.mean), tuple(info.std))


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    have = x.shape[0]
    if have == 4:  # RGBA: the alpha channel is not part of any data set's input
        x, have = x[:3], 3
    if have == channels:
        return x
    if have == 3 and channels == 1:
        return sum(w * x[i] for i, w in enumerate(LUMA))[None]
    if have == 1:
        return x.expand(channels, *x.shape[1:]).clone()
    raise UserInputError(f"image: {have} channels cannot be converted to the model's {channels}")


def read_image(path: str | Path) -> np.ndarray:
    """A PNG/JPEG/BMP or NPY file as float32 (C, H, W) with values in [0, 1]."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise UserInputError(f"{path}: a folder, not an image file; give its files ({path}/*.png, ...)")
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    if suffix in IMAGE_SUFFIXES:
        return _read_picture(path)
    if suffix in ARRAY_SUFFIXES:
        return _read_array(path)
    raise UserInputError(f"{path}: unknown image type {suffix!r}; expected one of "
                         f"{', '.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)}")


def _read_picture(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES:
                return sixteen_bit_unit(img)[None]
            if img.mode not in ("L", "RGB", "RGBA"):  # a palette's transparent colour is an alpha, as PIL asks
                alpha = "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)
                img = img.convert("RGBA" if alpha else "RGB")
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise UserInputError(f"{path}: not a readable image ({err})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def sixteen_bit_unit(img: Any) -> np.ndarray:
    """A 16-bit grayscale PIL picture as float32 (H, W) values in [0, 1]."""
    return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)


def _load_npy(path: Path) -> np.ndarray:
    """The one array of an .npy file; any other file (text, an .npz archive, a cut file, Python objects) refused."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK"):
        raise UserInputError(f"{path}: an archive of arrays (.npz), not one NumPy array of pixels")
    if head != b"\x93NUMPY":
        raise UserInputError(f"{path}: not a NumPy .npy file (it does not start with NumPy's header)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # a truncated file, or Python objects (never unpickled)
        raise UserInputError(f"{path}: not a NumPy array of pixels ({err})") from None
    return array


def _read_array(path: Path) -> np.ndarray:
    array = _load_npy(path)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[-1] < array.shape[0]:
        array = array.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W); the smaller end axis is the channels
    elif array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3, 4) or not array.size:
        raise UserInputError(f"{path}: expected an array (H, W), (C, H, W) or (H, W, C) with 1, 3 or 4 channels, "
                             f"got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if not np.issubdtype(array.dtype, np.floating):
        raise UserInputError(f"{path}: expected uint8, uint16 or float values, got {array.dtype}")
    if not np.isfinite(array).all():
        raise UserInputError(f"{path}: {int((~np.isfinite(array)).sum())} pixel value(s) are NaN or infinite")
    if float(array.min()) < 0.0 or float(array.max()) > 1.0:
        raise UserInputError(f"{path}: float pixel values must lie in [0, 1], got [{array.min():.4g}, "
                             f"{array.max():.4g}]")
    return array.astype(np.float32)


def load_inputs(paths: Sequence[str | Path], pre: Preprocessing) -> torch.Tensor:
    """The files as one batch of network inputs (N, channels, size, size)."""
    return torch.stack([pre.apply(read_image(p)) for p in paths])
