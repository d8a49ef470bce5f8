"""Typed run configuration (pydantic): flags and YAML files land here and are validated
before anything starts; errors name the field, the value and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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
    dataset: str | None = None  # None: the preset's own data (an application's), else digits
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

    @model_validator(mode="after")
    def _dataset(self) -> SearchRunConfig:
        if self.dataset is None:
            from dartboard.searchers.presets import PRESETS  # data only: no torch

            preset = PRESETS.get(self.searcher)
            self.dataset = preset.dataset if preset is not None and preset.dataset else "digits"
        check_dataset_name(self.dataset, self.data_root)
        return self

    def searcher_options(self) -> dict[str, Any]:
        """Options with the dataset's defaults filled in where the user gave none."""
        from dartboard.searchers.registry import get_searcher_spec
        from dartboard.spaces.catalog import get_space

        spec = get_searcher_spec(self.searcher)
        defaults: dict[str, Any] = {}
        if is_small_dataset(self.dataset):
            profile = spec.small_data_defaults
            defaults = dict(DIGITS_SEARCH_DEFAULTS if profile is None else profile)
        space = self.options.get("space", spec.defaults.get("space"))
        if space is not None:  # a space's own supernet settings (tiny81: 1 step, 2 cells) win over the profile
            defaults.update(get_space(space).network_defaults)
        return {**defaults, **self.options}


def check_dataset_name(name: str, data_root: str | None = None) -> None:
    from dartboard.data.catalog import check_data_root, check_dataset  # names only: no torch

    check_data_root(check_dataset(name), data_root)


def is_small_dataset(name: str | None) -> bool:
    """Digits and the data made from it: the searchers' small-data profile applies."""
    from dartboard.data.catalog import SMALL_DATASETS

    return name in SMALL_DATASETS


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu, cuda[:N] or mps, got {device!r}") from None
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was asked for but no CUDA GPU is available")
        index, count = torch.device(device).index, torch.cuda.device_count()
        if index is not None and index >= count:  # it failed at the first tensor moved
            raise ValueError(f"device: expected cuda:0 to cuda:{count - 1} ({count} CUDA GPU(s) here), got "
                             f"{device!r}")
    if device.startswith("mps") and not torch.backends.mps.is_available():  # it failed at the first tensor moved
        raise ValueError(f"device: {device!r} was asked for but Apple's MPS is not available here (it needs a Mac "
                         f"with Apple silicon and a PyTorch build with MPS)")
    return device


def load_yaml(path: str | Path, *, empty_ok: bool = True, what: str = "a mapping at the top level"
              ) -> dict[str, Any]:
    """The mapping of a YAML file the user gave (``empty_ok``: an empty file is ``{}``)."""
    from dartboard.errors import check_file
    from dartboard.user_files import parse_mapping

    path = check_file(path, "config file")
    return parse_mapping(path.read_text(), f"config file {str(path)!r}", empty_ok=empty_ok, what=what)


# ---------------------------------------------------------------------------------- studies
# A study is variants x seeds x sampled hyperparameters, run by one runner (platform/ray/runner.py);
# `dartboard sweep`, `dartboard ablate` and `dartboard bench quality` are front ends of it.
class Distribution(BaseModel):
    """One outer hyperparameter of a study: ``uniform``/``loguniform`` (low, high), ``int`` (low, high,
    step, log) or ``choice`` (values); ``when`` makes it conditional, e.g. ``{searcher: darts-2nd}`` or
    ``{variant: NAME}``. The parameter's name is an option path (``platform/ray/space.py``):
    ``arch_lr``, ``discretizer_options.sigma_threshold``, ``regularizers[proximity].rho``."""

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
            twice = [w for i, v in enumerate(self.values) for w in self.values[:i] if v == w]  # the first of each
            if twice:  # the grid would run the same trial twice; TPE would weigh the value double
                raise ValueError(f"a 'choice' distribution lists {twice[0]!r} more than once; give each value once")
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


class StudyResources(BaseModel):
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
    def _shared_gpu(self) -> StudyResources:
        # Fractions pack several one-worker trials on a GPU. Two DDP ranks of one trial on one GPU is
        # what Ray's packing gives, and NCCL refuses it ("Duplicate GPU detected").
        if self.workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError(f"gpus_per_worker {self.gpus_per_worker:g} with {self.workers} workers would put DDP "
                             "ranks of one trial on a shared GPU, which NCCL refuses; use fractions with workers: 1 "
                             "(several trials per GPU) or whole GPUs per worker")
        return self


class StudyObjective(BaseModel):
    """What the study maximises: the supernet's validation accuracy (``supernet``), the derived
    architecture's validation accuracy after a short training from scratch (``derived``; for NASiam's
    ``mlp`` heads: the weighted-kNN accuracy of the backbone after a short SSL pretraining with them,
    ``train_channels`` = the backbone's C), or the
    test accuracy of each trial's final training (``final``, needs ``final_training.scope: trial``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["supernet", "derived", "final"] = "supernet"
    train_epochs: int = Field(3, ge=1)
    train_channels: int = Field(8, ge=1)
    train_layers: int = Field(3, ge=1)
    train_batch_size: int = Field(64, ge=1)


class FinalTraining(BaseModel):
    """Training a genotype from scratch: of the champion after the study (``scope: champion``, then
    registered with its weights) or of every trial's genotype inside the trial (``scope: trial``,
    ablation tables: test error, network size)."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["champion", "trial"] = "champion"
    channels: int = Field(16, ge=2)
    layers: int = Field(8, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int | None = None  # None: the trial's seed (scope trial) or 0 (champion)


class StudyScheduler(BaseModel):
    """ASHA on a per-epoch metric (the rung clock is the epoch counter the workers report), or FIFO."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha", "fifo"] = "asha"
    metric: str = "val_acc"
    # Whether ASHA keeps the trials of the lowest or the highest metric; None: from the metric's name (max for
    # objective and accuracies, min for losses, errors and regrets); any other name must say.
    mode: Literal["min", "max"] | None = None
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)

    @model_validator(mode="after")
    def _mode_of_metric(self) -> StudyScheduler:
        if self.mode is None:
            if self.metric == "objective" or self.metric.endswith(("acc", "accuracy")):
                self.mode = "max"
            elif self.metric.endswith(("loss", "error", "err", "regret")):
                self.mode = "min"
            elif self.type == "asha":
                raise ValueError(f"mode: say min or max for the metric {self.metric!r} (only the objective, "
                                 "accuracies, losses, errors and regrets are told by their name)")
        return self


class StudyVariant(BaseModel):
    """One row of a comparison: a registered searcher (or preset) and options on top of the study's."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    searcher: str
    options: dict[str, Any] = Field(default_factory=dict)


class StudyReport(BaseModel):
    """The study's table: which trial metrics (mean +- std over seeds per variant) and plot axes."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[str] = Field(default_factory=lambda: ["objective", "val_acc"], min_length=1)
    size_metric: str = "parameters"
    rank_metric: str = "objective"  # picks each variant's best seed for the alpha plots
    rank_mode: Literal["min", "max"] = "max"


class StudyConfig(BaseModel):
    """A study: variants x seeds x sampled hyperparameters, sampler, scheduler, objective, resources,
    storage and an optional final training."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("study", pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    # The variants: `searcher` (a name, or a list of names, each a variant of that name) or `variants`.
    searcher: str | list[str] | None = None
    variants: list[StudyVariant] = Field(default_factory=list)
    space: str | None = None  # the cell space (searcher option `space`); None keeps the searcher's default
    dataset: str | None = None  # a registered dataset; None: the presets' own (nasiam: digits-views) or digits
    data_root: str | None = None
    image_size: int = Field(32, ge=8)
    batch_size: int = Field(64, ge=1)
    train_fraction: float | None = Field(None, gt=0.0, lt=1.0)  # None: the searcher's schedule decides
    epochs: int = Field(3, ge=1)  # the budget: search epochs per trial (ASHA's max_t)
    options: dict[str, Any] = Field(default_factory=dict)  # fixed searcher options of every variant
    params: dict[str, Distribution] = Field(default_factory=dict)  # the outer hyperparameters
    sampler: Literal["tpe", "grid", "random"] = "tpe"
    num_samples: int | None = Field(None, ge=1)  # tpe/random: number of trials (default 8); grid: 1
    seed: int = 0  # the sampler's seed, and the trials' seed when `seeds` is not given
    seeds: list[int] | None = None  # trial seeds (grid: every variant x every seed)
    max_concurrent: int = Field(2, ge=1)
    resources: StudyResources = Field(default_factory=StudyResources)
    objective: StudyObjective = Field(default_factory=StudyObjective)
    final_training: FinalTraining | None = None  # None: the champion is registered as a genotype only
    scheduler: StudyScheduler = Field(default_factory=StudyScheduler)
    report: StudyReport = Field(default_factory=StudyReport)
    storage: str | None = None  # local folder (default ./runs/studies), s3://, gs:// or a shared mount
    max_failures: int = Field(2, ge=0)  # Tune retries of a trial (driver/node loss)
    train_max_failures: int = Field(2, ge=0)  # Ray Train retries inside a trial (worker/node loss)
    ray_address: str | None = None  # None: start a local Ray; "auto" or ray://... joins a cluster
    ray_num_cpus: int | None = Field(None, ge=1)  # logical CPUs of a local Ray (None: this machine's)
    experiment: str = "dartboard-studies"  # MLflow experiment of the parent run
    register_as: str | None = None  # registered-model name of the champion (None: the study's name)

    @field_validator("space", mode="before")
    @classmethod
    def _space_is_a_name(cls, value: Any) -> Any:
        if isinstance(value, dict | list):  # the search space of a sweep is `params`
            raise ValueError("expected the name of a cell space (darts, darts-none, s_o, ...); the outer "
                             "hyperparameters to sample, with their distributions, go under params:")
        return value

    @model_validator(mode="after")
    def _variants_and_seeds(self) -> StudyConfig:
        if self.searcher is not None and self.variants:
            raise ValueError("searcher: give either 'searcher' (names) or 'variants', not both")
        if not self.variants:
            names = [self.searcher or "darts"] if not isinstance(self.searcher, list) else self.searcher
            if not names:
                raise ValueError("searcher: expected at least one searcher name")
            self.variants = [StudyVariant(name=n, searcher=n) for n in names]
            self.searcher = None
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variants: names must be unique, repeated: {', '.join(dup)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds: expected distinct seeds, got {self.seeds}")
        if self.sampler != "grid" and len(self.trial_seeds()) > 1:
            raise ValueError(f"seeds: the {self.sampler!r} sampler draws one configuration per trial and runs it "
                             f"with the study's seed; give one seed or use sampler: grid (variants x seeds)")
        if self.num_samples is None:
            self.num_samples = 1 if self.sampler == "grid" else 8
        elif self.sampler == "grid" and self.num_samples != 1:
            n = self.num_samples
            drawn = f", or draw {n} configurations of params with sampler: random or tpe" if self.params else ""
            raise ValueError(f"num_samples: the grid sampler runs each grid point once (it is an ablation's default), "
                             f"got {n}; run each {n} times with seeds (seeds: {list(range(n))}){drawn}")
        if self.objective.kind == "final" and (self.final_training is None or self.final_training.scope != "trial"):
            raise ValueError("objective.kind: 'final' needs final_training with scope: trial")
        return self

    @model_validator(mode="after")
    def _preset_dataset(self) -> StudyConfig:
        if self.dataset is None:
            from dartboard.searchers.presets import PRESETS  # data only: no torch

            own = {v.searcher: (PRESETS[v.searcher].dataset if v.searcher in PRESETS else None) or "digits"
                   for v in self.variants}
            if len(set(own.values())) > 1:
                raise ValueError("dataset: the variants' presets train on different data ("
                                 + ", ".join(f"{k}: {d}" for k, d in own.items()) + "); set the study's dataset")
            self.dataset = next(iter(own.values()), "digits")
        from dartboard.data.catalog import check_data_root  # names only: no torch

        check_data_root(self.dataset, self.data_root, fields=("data_root", "dataset:"))  # the study file's keys
        return self

    @model_validator(mode="after")
    def _batch_shared_by_workers(self) -> StudyConfig:
        if self.batch_size % self.resources.workers:  # each DDP rank takes batch_size / workers (worker.py)
            raise ValueError(f"batch_size: {self.batch_size} is not divisible by resources.workers "
                             f"{self.resources.workers}; the global batch is shared equally by the DDP ranks")
        final = self.final_training
        if final is not None and final.scope == "champion" and final.batch_size % self.resources.workers:
            raise ValueError(f"final_training.batch_size: {final.batch_size} is not divisible by resources.workers "
                             f"{self.resources.workers}; the champion trains as a Ray Train job on those workers")
        return self

    def trial_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def variant(self, name: str) -> StudyVariant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"variant: {name!r} is not a variant of study {self.name!r}")

    def searchers(self) -> list[str]:
        return list(dict.fromkeys(v.searcher for v in self.variants))

    def trials_per_sample(self) -> int:
        return len(self.variants) * len(self.trial_seeds()) if self.sampler == "grid" else 1
