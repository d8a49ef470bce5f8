"""Colour models of ColorNAS (thesis appendix A.2.2): RGB images to the channels the per-channel
networks see. Each model is a torch transform (an ``nn.Module`` without parameters) on ``[3, H, W]``
or ``[N, 3, H, W]`` RGB tensors, usable in a torchvision ``Compose`` or as a network's first layer.

- ``rb`` (Algorithm 6): delete channel 1 (green); dichromacy, the thesis' ablation.
- ``rgb``: the identity.
- ``rgby`` (Algorithm 7, after Hong et al.): R' = R - min(R, G), G' = G - min(R, G), B, Y.
  As printed, line 6 sets Y = R' + G', which equals |R - G| (one of R', G' is always 0): a
  yellow pixel (R = G) gets Y = 0. The yellow component the algorithm evidently means is the
  common part of R and G, Y = min(R, G). The printed form is the default (``yellow="printed"``);
  ``yellow="min"`` is the other (R', G', B are the same in both).

The models act on raw intensities. On data normalised with one scale for all channels (the
bundled colour digits are not normalised at all) min and subtraction commute with the scaling;
CIFAR's per-channel normalisation makes them approximate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

YELLOWS = ("printed", "min")  # Algorithm 7 as printed (Y = R' + G' = |R - G|) | Y = min(R, G)


@dataclass(frozen=True)
class ColourModelSpec:
    name: str
    channels: tuple[str, ...]  # the names of the output channels, in order
    description: str


COLOUR_MODELS: dict[str, ColourModelSpec] = {
    "rb": ColourModelSpec("rb", ("R", "B"), "RGB without green (thesis Algorithm 6)"),
    "rgb": ColourModelSpec("rgb", ("R", "G", "B"), "RGB as is"),
    "rgby": ColourModelSpec("rgby", ("R", "G", "B", "Y"), "RGB to RGBY (thesis Algorithm 7, Hong et al.)"),
}
RGB_CHANNELS = 3  # every colour model converts RGB images


def colour_model_spec(name: str) -> ColourModelSpec:
    if name not in COLOUR_MODELS:
        raise ValueError(f"colour_model: unknown colour model {name!r}; expected one of {', '.join(COLOUR_MODELS)}")
    return COLOUR_MODELS[name]


def check_yellow(yellow: str) -> str:
    if yellow not in YELLOWS:
        raise ValueError(f"yellow: expected one of {', '.join(YELLOWS)}, got {yellow!r}")
    return yellow


def _check_rgb(x: torch.Tensor, model: str) -> None:
    if x.dim() not in (3, 4) or x.shape[-3] != RGB_CHANNELS:
        raise ValueError(f"colour model {model!r}: expected RGB images shaped [3, H, W] or [N, 3, H, W], "
                         f"got shape {list(x.shape)}")


def rgb_to_rb(x: torch.Tensor) -> torch.Tensor:
    """Algorithm 6: delete channel 1 (green)."""
    _check_rgb(x, "rb")
    return torch.stack((x.select(-3, 0), x.select(-3, 2)), dim=-3)


def rgb_to_rgby(x: torch.Tensor, yellow: str = "printed") -> torch.Tensor:
    """Algorithm 7: R' = R - min(R, G), G' = G - min(R, G), B, and Y = R' + G' (printed) or min(R, G)."""
    _check_rgb(x, "rgby")
    check_yellow(yellow)
    r, g, b = x.select(-3, 0), x.select(-3, 1), x.select(-3, 2)
    common = torch.minimum(r, g)
    r_, g_ = r - common, g - common
    y = r_ + g_ if yellow == "printed" else common
    return torch.stack((r_, g_, b, y), dim=-3)


class ColourModel(nn.Module):
    """The transform of one colour model (no parameters)."""

    def __init__(self, name: str = "rgb", yellow: str = "printed"):
        super().__init__()
        self.spec = colour_model_spec(name)
        self.yellow = check_yellow(yellow)

    @property
    def channels(self) -> tuple[str, ...]:
        return self.spec.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.name == "rb":
            return rgb_to_rb(x)
        if self.spec.name == "rgby":
            return rgb_to_rgby(x, self.yellow)
        _check_rgb(x, "rgb")
        return x

    def extra_repr(self) -> str:
        return f"{self.spec.name}" + (f", yellow={self.yellow}" if self.spec.name == "rgby" else "")


COLORNAS = "colornas"
