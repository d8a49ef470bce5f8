"""A study's search space: which trials exist (variants x seeds x sampled hyperparameters), how
they are sampled (a grid here; Optuna TPE or random in ``samplers.py``, which the trial processes
never import), and the search run each trial config stands for.

A trial config is ``{"variant": NAME, "seed": N, PATH: value, ...}``; ``variant`` and ``seed`` are
left out where the study has only one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dartboard.platform.config import SearchRunConfig, StudyConfig
from dartboard.platform.ray.options import parse_path, root_option, set_option

log = logging.getLogger("dartboard")

RESERVED = ("variant", "seed")


# ------------------------------------------------------------------ validation (no cluster needed)
def validate_study(cfg: StudyConfig) -> None:
    """Every check that needs no cluster: searchers, option paths, conditions, sampler, data, and a
    dry build of each variant's searcher with sampled values (so a bad nested option fails now)."""
    check_study(cfg)
    dry_build(cfg)


def check_study(cfg: StudyConfig, new: bool = True) -> None:
    """The checks of :func:`validate_study` without the dry build (which builds every variant's searcher
    and its optimizers: about a second). The searcher registry imports torch (1.3 s on 2 cores). ``new``: a study
    about to start, not one resumed (a study that ran is finished as it was designed)."""
    specs = _searcher_specs(cfg)  # an unknown searcher first: the study's other checks read the variants
    if new:
        _check_repeats(cfg)
    _check_fixed_options(cfg, specs)
    for pname, dist in cfg.params.items():
        _check_param(cfg, specs, pname, dist)
    _check_data(cfg)


def _check_repeats(cfg: StudyConfig) -> None:
    """Refuse a study whose trials would repeat one another (one configuration, one seed: identical results): a tpe
    or random sampler with no params (a draw is then only a variant), or two variants of the grid that are the same
    search (searcher and options)."""
    if cfg.sampler != "grid":
        if not cfg.params and cfg.num_samples > 1:
            raise ValueError(f"sampler: with no params, the {cfg.sampler!r} sampler draws only the variant; its "
                             f"{cfg.num_samples} trials would repeat one configuration with one seed (identical "
                             f"results). Compare the variants with sampler: grid (each variant x each of seeds), or "
                             f"give params")
        return
    seen: dict[str, str] = {}
    for v in cfg.variants:  # the study's options and the grid's params (no `when` on the grid) are every variant's
        options = {**cfg.options, **v.options}
        same = seen.setdefault(json.dumps([v.searcher, options], sort_keys=True, default=str), v.name)
        if same != v.name:
            raise ValueError(f"variants: {same!r} and {v.name!r} are the same search (searcher {v.searcher!r}, the "
                             f"same options): the grid would run their trials twice, with the same results; give one "
                             f"of them other options")


def _searcher_specs(cfg: StudyConfig) -> dict[str, Any]:
    from dartboard.searchers.registry import get_searcher_spec
    from dartboard.spaces.catalog import get_space

    specs = {}
    for v in cfg.variants:
        try:
            specs[v.searcher] = get_searcher_spec(v.searcher)
        except ValueError as err:
            where = "searcher" if v.name == v.searcher and len(cfg.variants) == 1 else f"variants.{v.name}.searcher"
            raise ValueError(f"{where}: {err}") from None
    if cfg.space is not None:
        try:
            get_space(cfg.space)
        except (KeyError, ValueError) as err:
            raise ValueError(f"space: {err}") from None
    return specs


def _check_fixed_options(cfg: StudyConfig, specs: dict[str, Any]) -> None:
    for key in ("epochs", "space"):
        if key in cfg.options or key in cfg.params or any(key in v.options for v in cfg.variants):
            raise ValueError(f"options.{key}: set the study's top-level {key!r} field instead")
    for v in cfg.variants:
        unknown = sorted((set(cfg.options) | set(v.options)) - set(specs[v.searcher].options))
        if unknown:
            where = "options" if unknown[0] in cfg.options else f"variants.{v.name}.options"
            raise ValueError(f"{where}.{unknown[0]}: searcher {v.searcher!r} has no hyperparameter {unknown[0]!r}; "
                             f"its hyperparameters: {', '.join(sorted(specs[v.searcher].options))}")


def _check_param(cfg: StudyConfig, specs: dict[str, Any], pname: str, dist: Any) -> None:
    """One outer hyperparameter: its path, its condition, its values, the variants it applies to."""
    if pname in RESERVED or pname == "searcher":
        raise ValueError(f"params.{pname}: list variants in 'variants' (or 'searcher') and seeds in 'seeds'")
    parse_path(pname)
    _check_condition(cfg, pname, dict(dist.when))
    for v in dist.values or []:
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise ValueError(f"params.{pname}.values: choices must be numbers, strings, booleans or null, "
                             f"got {v!r}")
    for v in cfg.variants:
        applies = condition_applies(dist.model_dump(), v.name, v.searcher)
        if applies and root_option(pname) not in specs[v.searcher].options:
            raise ValueError(f"params.{pname}: searcher {v.searcher!r} has no hyperparameter "
                             f"{root_option(pname)!r}; its hyperparameters: "
                             f"{', '.join(sorted(specs[v.searcher].options))}")
    if cfg.sampler == "grid" and (dist.type != "choice" or dist.when):
        raise ValueError(f"params.{pname}: the grid sampler takes 'choice' distributions without 'when' "
                         f"(got {dist.type!r}); use sampler tpe or random for ranges")


def _check_condition(cfg: StudyConfig, pname: str, when: dict[str, Any]) -> None:
    want_searcher, want_variant = when.pop("searcher", None), when.pop("variant", None)
    for key, want, known in (("searcher", want_searcher, cfg.searchers()),
                             ("variant", want_variant, [v.name for v in cfg.variants])):
        for w in ([want] if isinstance(want, str) else list(want or [])):
            if w not in known:
                raise ValueError(f"params.{pname}.when.{key}: {w!r} is not one of the study's {key}s {known}")
    for other in when:
        if other not in cfg.params:
            raise ValueError(f"params.{pname}.when.{other}: conditions may name 'searcher', 'variant' or another "
                             f"parameter of the study, got {other!r}")


def _check_data(cfg: StudyConfig) -> None:
    from dartboard.data.catalog import LOCAL_DATASETS, check_dataset

    check_dataset(cfg.dataset)
    if cfg.dataset in LOCAL_DATASETS and cfg.data_root is None:
        raise ValueError(f"data_root: dataset {cfg.dataset!r} needs a local data_root (nothing is downloaded)")
    # On this machine's own Ray the trials read the folder (pmsm: file) the driver sees; on a cluster its nodes may
    # see other folders than the driver (their own copies): the trials say so there.
    if cfg.data_root is not None and not cfg.ray_address and not Path(cfg.data_root).exists():
        raise ValueError(f"data_root: {cfg.data_root!r} does not exist")


def dry_build(cfg: StudyConfig) -> None:
    """Build each variant's searcher on a tiny shape and derive once, with every applicable parameter
    at its lowest and at its highest value, and with each other value of a choice: option values the searcher
    refuses (a regularizer option that does not exist, a threshold out of range) fail here, before any trial
    starts."""
    from dartboard.searchers.loop import check_search_epochs, unsearched_reduce_cell
    from dartboard.searchers.optim_imports import defer_dynamo_import
    from dartboard.searchers.registry import build_searcher

    defer_dynamo_import()  # its optimizers would import torch._dynamo: 1.1 CPU s beside Ray's start
    shape = _dry_shape(cfg)
    unsearched: list[str] = []  # variants whose supernet has no reduction cell
    for v in cfg.variants:
        for sample in _dry_samples(cfg, v):
            run = SearchRunConfig(**trial_run_config(cfg, sample))
            options = run.searcher_options()
            graph = options.get("cuda_graph") is True  # built here on the CPU without it, then checked
            if graph:
                options["cuda_graph"] = False
            try:
                searcher = build_searcher(run.searcher, options, shape, "cpu")
                check_search_epochs(searcher)
                if unsearched_reduce_cell(searcher) and v.name not in unsearched:
                    unsearched.append(v.name)
                if graph:
                    _check_cuda_graph(cfg, searcher)
                genotype = searcher.derive()
            except (ValueError, TypeError, KeyError) as err:
                names = ", ".join(f"{k}={sample[k]}" for k in sample if k != "variant") or "its fixed options"
                raise ValueError(f"variants.{v.name}: searcher {v.searcher!r} refuses the study's options "
                                 f"({names}): {err}") from None
            check_trainable(cfg, v.name, genotype.kind)
    if unsearched:
        log.warning("study: the supernet of variant(s) %s has no reduction cell (fewer than 3 cells), so the reduce "
                    "cell's alphas get no gradient and their genotypes' reduction cell is the initial alphas'; give "
                    "layers >= 3 (or reductions) to search it", ", ".join(unsearched))


#: What makes a genotype that is no cell network into a model, for the errors of :func:`check_trainable`
MADE_ELSEWHERE = {"gates": "a DARIO study's champion is the pruned ViT its objective 'derived' fine-tunes",
                  "mlp": "NASiam heads are pretrained by their SSL framework: `dartboard train` of the champion",
                  "flux_mlp": "a PMSM flux model is trained by `dartboard pmsm compare`"}


def check_trainable(cfg: StudyConfig, variant: str, kind: str) -> None:
    """A study whose trials train the derived genotype (``final_training``: a cell network from scratch; objective
    ``derived``: a cell network, NASiam heads or a pruned ViT briefly) refuses a variant whose genotype that training
    cannot take, before any trial: each would run its whole search, then fail."""
    from dartboard.platform.ray.derived import DERIVED_KINDS
    from dartboard.spaces.genotype import CELL_NETWORK_KINDS

    why = MADE_ELSEWHERE.get(kind, f"a {kind!r} genotype is trained by no study")
    if cfg.final_training is not None and kind not in CELL_NETWORK_KINDS:
        raise ValueError(f"variants.{variant}: final_training trains a cell network from scratch, and its genotype is "
                         f"a {kind!r} genotype ({why}); drop final_training (and an objective of kind 'final')")
    if cfg.objective.kind == "derived" and kind not in DERIVED_KINDS:
        raise ValueError(f"variants.{variant}: objective 'derived' trains the derived network briefly, and its "
                         f"genotype is a {kind!r} genotype ({why}); give the objective kind 'supernet'")


def _dry_samples(cfg: StudyConfig, variant: Any) -> list[dict[str, Any]]:
    """What the dry build tries for one variant: its applicable parameters all at their lowest, all at their highest,
    then each inner value of a choice with the others at their lowest (a choice's values are a short list; any of
    them may be drawn)."""
    dists = {pname: d for pname, dist in cfg.params.items()
             if condition_applies(d := dist.model_dump(), variant.name, variant.searcher)}

    def at(d: dict[str, Any], end: str) -> Any:
        value = d["values"][0 if end == "low" else -1] if d["type"] == "choice" else d[end]
        return int(value) if d["type"] == "int" else value

    low, high = ({pname: at(d, end) for pname, d in dists.items()} for end in ("low", "high"))
    inner = [{**low, pname: value} for pname, d in dists.items() if d["type"] == "choice"
             for value in d["values"][1:-1]]
    return [{"variant": variant.name, **sample} for sample in (low, high, *inner)]


def _check_cuda_graph(cfg: StudyConfig, searcher: Any) -> None:
    """``cuda_graph: true`` in a study: one worker with a GPU, and parts a CUDA graph can replay."""
    from dartboard.searchers.graphed import graph_blockers

    r = cfg.resources
    if r.workers > 1:
        raise ValueError(f"cuda_graph: one worker only (the all-reduces of several workers are not captured); "
                         f"resources.workers is {r.workers}")
    if r.gpus_per_worker <= 0:
        raise ValueError("cuda_graph: the trials need a GPU (resources.gpus_per_worker is 0)")
    reasons = graph_blockers(searcher, device=False)
    if reasons:
        raise ValueError("cuda_graph: the step cannot be captured in a CUDA graph: " + "; ".join(reasons))


def _dry_shape(cfg: StudyConfig):
    """The data shape of the dry builds, at 8 pixels: a small data set's own channels and classes
    (grayscale digits, RGB colour-digits; loaded in well under a second), RGB for the others."""
    from dartboard.data.catalog import SMALL_DATASETS, load_dataset
    from dartboard.searchers.registry import DataShape

    if cfg.dataset in SMALL_DATASETS:
        info = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size).info
        return DataShape(info.in_channels, 8, info.num_classes)
    return DataShape(3, 8, 10)


def condition_applies(dist: dict[str, Any], variant: str, searcher: str) -> bool:
    when = dist.get("when") or {}
    for key, actual in (("searcher", searcher), ("variant", variant)):
        if key in when and not value_matches(actual, when[key]):
            return False
    return True


def value_matches(value: Any, want: Any) -> bool:
    return value in want if isinstance(want, list) else value == want


# ------------------------------------------------------------------ one trial's search run
def trial_run_config(cfg: StudyConfig, trial_config: dict[str, Any]) -> dict[str, Any]:
    """The trial's SearchRunConfig (as a dict): study options, the variant's, then the sampled values
    at their option paths (nested ones inside copies of the preset's lists and mappings)."""
    from dartboard.searchers.registry import get_searcher_spec

    variant = cfg.variant(trial_config.get("variant", cfg.variants[0].name))
    seed = int(trial_config.get("seed", cfg.trial_seeds()[0]))
    options = {**cfg.options, **variant.options, **({"space": cfg.space} if cfg.space else {}), "epochs": cfg.epochs}
    defaults = get_searcher_spec(variant.searcher).defaults
    for path in sorted(k for k in trial_config if k not in RESERVED):
        options = set_option(options, path, trial_config[path], defaults)
    run = SearchRunConfig(searcher=variant.searcher, dataset=cfg.dataset, data_root=cfg.data_root,
                          image_size=cfg.image_size, batch_size=cfg.batch_size, train_fraction=cfg.train_fraction,
                          seed=seed, device="cuda" if cfg.resources.gpus_per_worker > 0 else "cpu", options=options,
                          mlflow=False)
    return run.model_dump()


def trial_key(cfg: StudyConfig, trial_config: dict[str, Any], trial_id: str) -> str:
    """A readable, stable name of a trial: ``VARIANT/seedN`` (+ ``/PATH=value`` for grid values) on a
    grid; the Tune trial id for sampled studies (their configs are not known in advance)."""
    if cfg.sampler != "grid":
        return trial_id
    variant = trial_config.get("variant", cfg.variants[0].name)
    seed = trial_config.get("seed", cfg.trial_seeds()[0])
    extra = "".join(f"/{k}={trial_config[k]}" for k in sorted(trial_config) if k not in RESERVED)
    return f"{variant}/seed{seed}{extra}"


# ------------------------------------------------------------------ grid and scheduler
def grid_param_space(cfg: StudyConfig) -> dict[str, Any]:
    """Tune's grid: every variant x every seed x every choice of every parameter."""
    from ray import tune

    space: dict[str, Any] = {}
    if len(cfg.variants) > 1:
        space["variant"] = tune.grid_search([v.name for v in cfg.variants])
    if len(cfg.trial_seeds()) > 1:
        space["seed"] = tune.grid_search(cfg.trial_seeds())
    for pname, dist in cfg.params.items():
        space[pname] = tune.grid_search(list(dist.values or []))
    return space


def make_scheduler(cfg: StudyConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    # ASHA stops every trial whose report reaches max_t (the last search epoch) unless told not to: a trial that
    # trains its genotype after its search (final_training scope trial) would lose that training's report (Tune's
    # last result, the objective of `objective.kind: final`, the champion's choice) or be stopped inside it. Its
    # rungs still apply, the last epoch's included: a trial in the bottom there gets no final training.
    trains_after = cfg.final_training is not None and cfg.final_training.scope == "trial"
    return ASHAScheduler(time_attr="epoch", metric=s.metric, mode=s.mode, max_t=cfg.epochs,
                         grace_period=min(s.grace_period, cfg.epochs), reduction_factor=s.reduction_factor,
                         stop_last_trials=not trains_after)
