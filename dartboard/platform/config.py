"""Typed run configuration (pydantic): flags and YAML files land here and are validated
before anything starts; errors name the field, the value and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    # DARTS: the train set split 50/50 into train and val; None = the split the searcher's schedule
    # implies (CS-k and FIMT with k=10: 90.91/9.09, Maile et al.)
    train_fraction: float | None = Field(None, gt=0.0, lt=1.0)
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
        from dartboard.searchers.registry import get_searcher_spec
        from dartboard.spaces.catalog import get_space

        spec = get_searcher_spec(self.searcher)
        defaults: dict[str, Any] = {}
        if self.dataset == "digits":
            profile = spec.small_data_defaults
            defaults = dict(DIGITS_SEARCH_DEFAULTS if profile is None else profile)
        space = self.options.get("space", spec.defaults.get("space"))
        if space is not None:  # a space's own supernet settings (tiny81: 1 step, 2 cells) win over the profile
            defaults.update(get_space(space).network_defaults)
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


# ---------------------------------------------------------------------------------- sweeps (issue 5)
class Distribution(BaseModel):
    """One outer hyperparameter of a study: ``uniform``/``loguniform`` (low, high), ``int`` (low, high,
    step, log) or ``choice`` (values); ``when`` makes it conditional, e.g. ``{searcher: darts-2nd}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    step: int | None = Field(None, ge=1)
    log: bool = False
    values: list[Any] | None = None
    when: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' distribution needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type!r} distribution needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"expected low < high, got low={self.low}, high={self.high}")
        if (self.type == "loguniform" or self.log) and self.low <= 0:
            raise ValueError(f"a log-scale distribution needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an 'int' distribution needs integer bounds, got {self.low}, {self.high}")
        return self


class SweepResources(BaseModel):
    """Per trial: Ray Train workers, CPUs and GPUs (fractions allowed) per worker."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, ge=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    trial_driver_cpus: float = Field(0.0, ge=0.0)  # the Tune function that launches the trial's trainer

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"expected a fraction <= 1 or a whole number of GPUs, got {value}")
        return value

    @model_validator(mode="after")
    def _shared_gpu(self) -> SweepResources:
        # Fractions pack several one-worker trials on a GPU. Two DDP ranks of one trial on one GPU is
        # what Ray's packing gives, and NCCL refuses it ("Duplicate GPU detected").
        if self.workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError(f"gpus_per_worker {self.gpus_per_worker:g} with {self.workers} workers would put DDP "
                             "ranks of one trial on a shared GPU, which NCCL refuses; use fractions with workers: 1 "
                             "(several trials per GPU) or whole GPUs per worker")
        return self


class SweepObjective(BaseModel):
    """What Optuna maximises: the supernet's validation accuracy (``supernet``), or the derived
    architecture's validation accuracy after a short training from scratch (``derived``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["supernet", "derived"] = "supernet"
    train_epochs: int = Field(3, ge=1)
    train_channels: int = Field(8, ge=1)
    train_layers: int = Field(3, ge=1)
    train_batch_size: int = Field(64, ge=1)


class SweepFinalTraining(BaseModel):
    """After the sweep: train the best genotype from scratch and register it with its weights."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(16, ge=2)
    layers: int = Field(8, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class SweepScheduler(BaseModel):
    """ASHA on a per-epoch metric; the rung clock is the epoch counter the workers report."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha", "fifo"] = "asha"
    metric: str = "val_acc"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class SweepConfig(BaseModel):
    """A study: searcher, space, dataset, budget and the outer hyperparameters as distributions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("study", pattern=r"^[A-Za-z0-9._-]+$")
    searcher: str | list[str] = "darts"  # a list makes the searcher itself a choice (conditionals use `when`)
    space: str | None = None  # the cell space (searcher option `space`); None keeps the searcher's default
    dataset: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    data_root: str | None = None
    image_size: int = Field(32, ge=8)
    batch_size: int = Field(64, ge=1)
    train_fraction: float | None = Field(None, gt=0.0, lt=1.0)  # None: the searcher's schedule decides
    epochs: int = Field(3, ge=1)  # the budget: search epochs per trial (ASHA's max_t)
    options: dict[str, Any] = Field(default_factory=dict)  # fixed searcher options
    params: dict[str, Distribution] = Field(default_factory=dict)  # the outer hyperparameters
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    resources: SweepResources = Field(default_factory=SweepResources)
    objective: SweepObjective = Field(default_factory=SweepObjective)
    final_training: SweepFinalTraining | None = None  # None: the champion is registered as a genotype only
    scheduler: SweepScheduler = Field(default_factory=SweepScheduler)
    storage: str | None = None  # local folder (default ./runs/sweeps), s3://, gs:// or a shared mount
    max_failures: int = Field(2, ge=0)  # Tune retries of a trial (driver/node loss)
    train_max_failures: int = Field(2, ge=0)  # Ray Train retries inside a trial (worker/node loss)
    ray_address: str | None = None  # None: start a local Ray; "auto" or ray://... joins a cluster
    ray_num_cpus: int | None = Field(None, ge=1)  # logical CPUs of a local Ray (None: this machine's)

    def searchers(self) -> list[str]:
        return [self.searcher] if isinstance(self.searcher, str) else list(self.searcher)
