"""Typed run configuration (pydantic): flags and YAML files land here and are validated
before anything starts; errors name the field, the value and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

# The published DARTS supernet (C=16, 8 cells, 50 epochs) is sized for CIFAR-10 on a GPU. On the
# bundled 8x8 digits on a laptop CPU the default search uses a smaller supernet, so that the
# default `dartboard search` finishes in minutes; every value can be overridden.
DIGITS_SEARCH_DEFAULTS: dict[str, Any] = {"C": 8, "layers": 5, "epochs": 10}
DIGITS_TRAIN_DEFAULTS: dict[str, Any] = {"channels": 16, "layers": 8, "epochs": 30}


class SearchRunConfig(BaseModel):
    """One search: which searcher on which data, and its hyperparameters (``options``)."""

    model_config = ConfigDict(extra="forbid")

    searcher: str = "darts"
    dataset: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    data_root: str | None = None
    image_size: int = Field(32, ge=8)
    batch_size: int = Field(64, ge=1)
    train_fraction: float = Field(0.5, gt=0.0, lt=1.0)  # DARTS: train set split 50/50 into train and val
    seed: int = 0
    device: str = "auto"
    options: dict[str, Any] = Field(default_factory=dict)
    out: str | None = None
    tracking_uri: str | None = None
    experiment: str = "dartboard"
    mlflow: bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto" and not (value == "cpu" or value.startswith("cuda") or value == "mps"):
            raise ValueError(f"expected auto, cpu, cuda[:N] or mps, got {value!r}")
        return value

    def searcher_options(self) -> dict[str, Any]:
        """Options with the dataset's defaults filled in where the user gave none."""
        defaults = DIGITS_SEARCH_DEFAULTS if self.dataset == "digits" else {}
        return {**defaults, **self.options}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but no CUDA GPU is available")
    return device


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r}: expected a mapping at the top level")
    return data
