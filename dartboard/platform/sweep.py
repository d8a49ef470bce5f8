"""`dartboard sweep`: a hyperparameter sweep as a front end of the study runner (Optuna TPE by
default, ASHA, the champion trained from scratch and registered as ``NAME@champion``)."""

from __future__ import annotations

from dartboard.platform.config import StudyConfig
from dartboard.platform.ray.runner import StudyResult, load_study, run_study, stored_study  # noqa: F401
from dartboard.platform.ray.space import validate_study  # noqa: F401 - re-exported for the CLI
from dartboard.platform.ray.trial import TrialHook


def run_sweep(cfg: StudyConfig | None = None, *, resume: str | None = None, tracking_uri: str | None = None,
              mlflow: bool = True, hooks: list[TrialHook] = (), promote: bool = False) -> StudyResult:
    """Run (or resume) a sweep; the best genotype is also written to RUN_DIR/best_genotype.json.
    ``hooks`` get each finished trial's payload as it ends. The champion takes the ``@champion`` alias
    only when it beats the current one (``tracking.champion``) or with ``promote``; ``result.tracker``
    says what happened (``tracker.decision``)."""
    from pathlib import Path

    from dartboard.platform.tracking.study import StudyTracker

    tracker = StudyTracker(tracking_uri, promote=promote) if mlflow else None
    result = run_study(cfg, resume=resume, tracker=tracker, hooks=hooks)
    result.tracker = tracker
    if result.best is not None and "://" not in result.run_dir:
        from dartboard.spaces import genotype as gt

        gt.save(gt.from_dict(result.best["genotype"]), Path(result.run_dir) / "best_genotype.json")
    return result
