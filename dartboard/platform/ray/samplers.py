"""Optuna through Ray Tune: the define-by-run space of a study (variants, conditions, option paths)
and the searcher that tells Optuna an ASHA-stopped trial is PRUNED, never complete with a truncated
value. Imported by the study driver only (trial processes do not need Optuna)."""

from __future__ import annotations

import math
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.space import condition_applies, value_matches


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
            if not condition_applies(d, variant, self.variants[variant]):
                continue
            others = {k: w for k, w in d["when"].items() if k not in ("searcher", "variant")}
            if not all(value_matches(chosen.get(k), w) for k, w in others.items()):
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

    from dartboard.platform.ray.session import verbose

    if cfg.sampler == "grid":
        return None
    if not verbose():  # Optuna's INFO lines ("A new study created in memory ...") on stderr, like Ray's, only then
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    else:
        # TPE's default 10 random start-up trials would make a small study pure random search.
        startup = min(10, max(2, cfg.num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup)
    params = {k: v.model_dump() for k, v in cfg.params.items()}
    return PruneAwareOptunaSearch(space=StudySpace(params, {v.name: v.searcher for v in cfg.variants}),
                                  metric="objective", mode="max", sampler=sampler)
