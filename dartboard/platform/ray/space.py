"""A study's search space: which trials exist (variants x seeds x sampled hyperparameters), how
they are sampled (Optuna TPE or random, define-by-run with conditions; or a grid), and the search
run each trial config stands for.

A trial config is ``{"variant": NAME, "seed": N, PATH: value, ...}``; ``variant`` and ``seed`` are
left out where the study has only one. ASHA-stopped trials reach Optuna as PRUNED, never as
complete with a truncated value (:class:`PruneAwareOptunaSearch`).
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from dartboard.platform.config import SearchRunConfig, StudyConfig
from dartboard.platform.ray.options import parse_path, root_option, set_option

RESERVED = ("variant", "seed")


# ------------------------------------------------------------------ validation (no cluster needed)
def validate_study(cfg: StudyConfig) -> None:
    """Every check that needs no cluster: searchers, option paths, conditions, sampler, data, and a
    dry build of each variant's searcher with sampled values (so a bad nested option fails now)."""
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
    for key in ("epochs", "space"):
        if key in cfg.options or key in cfg.params or any(key in v.options for v in cfg.variants):
            raise ValueError(f"options.{key}: set the study's top-level {key!r} field instead")
    for v in cfg.variants:
        unknown = sorted((set(cfg.options) | set(v.options)) - set(specs[v.searcher].options))
        if unknown:
            where = "options" if unknown[0] in cfg.options else f"variants.{v.name}.options"
            raise ValueError(f"{where}.{unknown[0]}: searcher {v.searcher!r} has no hyperparameter {unknown[0]!r}; "
                             f"its hyperparameters: {', '.join(sorted(specs[v.searcher].options))}")
    variant_names = [v.name for v in cfg.variants]
    for pname, dist in cfg.params.items():
        if pname in RESERVED or pname == "searcher":
            raise ValueError(f"params.{pname}: list variants in 'variants' (or 'searcher') and seeds in 'seeds'")
        parse_path(pname)
        when = dict(dist.when)
        want_searcher, want_variant = when.pop("searcher", None), when.pop("variant", None)
        for key, want, known in (("searcher", want_searcher, cfg.searchers()), ("variant", want_variant,
                                                                                  variant_names)):
            for w in ([want] if isinstance(want, str) else list(want or [])):
                if w not in known:
                    raise ValueError(f"params.{pname}.when.{key}: {w!r} is not one of the study's {key}s {known}")
        for other in when:
            if other not in cfg.params:
                raise ValueError(f"params.{pname}.when.{other}: conditions may name 'searcher', 'variant' or another "
                                 f"parameter of the study, got {other!r}")
        for v in dist.values or []:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"params.{pname}.values: choices must be numbers, strings, booleans or null, "
                                 f"got {v!r}")
        for v in cfg.variants:
            if _applies(dist.model_dump(), v.name, v.searcher) and root_option(pname) not in specs[v.searcher].options:
                raise ValueError(f"params.{pname}: searcher {v.searcher!r} has no hyperparameter "
                                 f"{root_option(pname)!r}; its hyperparameters: "
                                 f"{', '.join(sorted(specs[v.searcher].options))}")
        if cfg.sampler == "grid" and (dist.type != "choice" or dist.when):
            raise ValueError(f"params.{pname}: the grid sampler takes 'choice' distributions without 'when' "
                             f"(got {dist.type!r}); use sampler tpe or random for ranges")
    if cfg.dataset != "digits" and cfg.data_root is None and cfg.dataset != "imagefolder":
        raise ValueError(f"data_root: dataset {cfg.dataset!r} needs a local data_root (nothing is downloaded)")
    _dry_build(cfg)


def _dry_build(cfg: StudyConfig) -> None:
    """Build each variant's searcher on a tiny shape and derive once, with every applicable parameter
    at its lowest and at its highest value: option values the searcher refuses (a regularizer option
    that does not exist, a threshold out of range) fail here, before any trial starts."""
    from dartboard.searchers.registry import DataShape, build_searcher

    for v in cfg.variants:
        for end in ("low", "high"):
            sample: dict[str, Any] = {"variant": v.name}
            for pname, dist in cfg.params.items():
                d = dist.model_dump()
                if _applies(d, v.name, v.searcher):
                    value = d["values"][0 if end == "low" else -1] if d["type"] == "choice" else d[end]
                    sample[pname] = int(value) if d["type"] == "int" else value
            run = SearchRunConfig(**trial_run_config(cfg, sample))
            try:
                build_searcher(run.searcher, run.searcher_options(), DataShape(1, 8, 10), "cpu").derive()
            except (ValueError, TypeError, KeyError) as err:
                names = ", ".join(f"{k}={sample[k]}" for k in sample if k != "variant") or "its fixed options"
                raise ValueError(f"variants.{v.name}: searcher {v.searcher!r} refuses the study's options "
                                 f"({names}): {err}") from None


def _applies(dist: dict[str, Any], variant: str, searcher: str) -> bool:
    when = dist.get("when") or {}
    for key, actual in (("searcher", searcher), ("variant", variant)):
        if key in when and not _matches(actual, when[key]):
            return False
    return True


def _matches(value: Any, want: Any) -> bool:
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


# ------------------------------------------------------------------ samplers
class StudySpace:
    """Optuna define-by-run space (picklable: OptunaSearch saves its state with pickle)."""

    def __init__(self, params: dict[str, dict[str, Any]], variants: dict[str, str]):
        self.params, self.variants = params, variants  # variants: name -> searcher

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        names = list(self.variants)
        chosen: dict[str, Any] = {}
        if len(names) > 1:
            chosen["variant"] = trial.suggest_categorical("variant", names)
        variant = chosen.get("variant", names[0])
        for name, d in self.params.items():
            if not _applies(d, variant, self.variants[variant]):
                continue
            others = {k: w for k, w in d["when"].items() if k not in ("searcher", "variant")}
            if not all(_matches(chosen.get(k), w) for k, w in others.items()):
                continue
            kind = d["type"]
            if kind == "choice":
                chosen[name] = trial.suggest_categorical(name, d["values"])
            elif kind == "int":
                chosen[name] = trial.suggest_int(name, int(d["low"]), int(d["high"]), step=d["step"] or 1,
                                                 log=d["log"])
            else:
                chosen[name] = trial.suggest_float(name, d["low"], d["high"], log=kind == "loguniform" or d["log"])
        return None


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna an ASHA-stopped trial is PRUNED (not complete with a truncated
    value) and keys intermediate values by the reported epoch counter."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, step = result.get(self.metric), result.get("epoch")
        if isinstance(value, (int, float)) and math.isfinite(value) and step is not None:
            ot_trial = self._ot_trials[trial_id]
            if int(step) not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (not error and result is not None and result.get("search_done") != 1.0
                and trial_id in self._ot_trials and trial_id not in self._completed_trials):
            from optuna.trial import TrialState

            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if result is not None and not error and not math.isfinite(float(result.get(self.metric, math.nan))):
            error, result = True, None  # a non-finite objective is a failed trial, never a value
        super().on_trial_complete(trial_id, result=result, error=error)


def make_search_alg(cfg: StudyConfig) -> PruneAwareOptunaSearch | None:
    """Optuna TPE (seeded; start-up trials scaled to the study) or Optuna random; None for a grid."""
    import optuna

    if cfg.sampler == "grid":
        return None
    if cfg.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    else:
        # TPE's default 10 random start-up trials would make a small study pure random search.
        startup = min(10, max(2, cfg.num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup)
    params = {k: v.model_dump() for k, v in cfg.params.items()}
    return PruneAwareOptunaSearch(space=StudySpace(params, {v.name: v.searcher for v in cfg.variants}),
                                  metric="objective", mode="max", sampler=sampler)


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
    mode = "min" if s.metric.endswith("loss") else "max"
    return ASHAScheduler(time_attr="epoch", metric=s.metric, mode=mode, max_t=cfg.epochs,
                         grace_period=min(s.grace_period, cfg.epochs), reduction_factor=s.reduction_factor)
