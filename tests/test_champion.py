"""The @champion alias moves only to a better model on the same measure (or with --promote)."""

from __future__ import annotations

import json

import pytest

from dartboard.platform.tracking.champion import SIGNATURE_TAG, decide
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve

SIG = json.dumps({"kind": "supernet"})


@pytest.mark.parametrize("current, new, promote, move, says", [
    (None, {"metric.objective": "0.1"}, False, True, "first champion"),
    ({"dataset": "digits", "metric.test_acc": "0.95"}, {"dataset": "digits", "metric.test_acc": 0.96}, False, True,
     "0.9600 beats the champion's 0.9500"),
    ({"dataset": "digits", "metric.test_acc": "0.95"}, {"dataset": "digits", "metric.test_acc": 0.95}, False, False,
     "does not beat"),
    # test accuracies on other data sets do not compare; the same objective on the same data does
    ({"dataset": "cifar10", "metric.test_acc": "0.5", SIGNATURE_TAG: SIG, "metric.objective": "0.9"},
     {"dataset": "digits", "metric.test_acc": 0.99, SIGNATURE_TAG: SIG, "metric.objective": 0.8}, False, False,
     "objective 0.8000 does not beat the champion's 0.9000"),
    ({SIGNATURE_TAG: SIG, "metric.objective": "0.7"}, {SIGNATURE_TAG: SIG, "metric.objective": 0.8}, False, True,
     "objective 0.8000 beats"),
    ({SIGNATURE_TAG: SIG, "metric.objective": "0.7"}, {SIGNATURE_TAG: "other", "metric.objective": 0.99}, False,
     False, "not comparable"),
    ({SIGNATURE_TAG: SIG, "metric.objective": "0.9"}, {SIGNATURE_TAG: SIG, "metric.objective": 0.1}, True, True,
     "--promote"),
])
def test_decision_by_hand(current, new, promote, move, says):
    decision = decide(current, new, promote)
    assert decision.move is move and says in decision.reason


def _finish(uri, tmp_path, run: str, objective: float, promote: bool = False):
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.runner import StudyResult
    from dartboard.platform.ray.trial import trial_payload
    from dartboard.platform.tracking.study import StudyTracker

    cfg = StudyConfig(name=f"s-{run}", register_as="net")
    run_dir = str(tmp_path / run)
    metrics = {"objective": objective, "search_done": 1.0, "genotype": json.dumps(gt.to_dict(resolve("darts-v2")))}
    best = trial_payload(cfg, run_dir, "t1", {}, metrics, None)
    tracker = StudyTracker(uri, promote=promote)
    tracker.open(cfg, run_dir)
    tracker.finish(StudyResult(run_dir, cfg, [best], best, 1.0), [], {})
    tracker.close(failed=False)
    return tracker


@pytest.mark.mlflow
def test_a_worse_champion_does_not_take_the_alias(tmp_path):
    from dartboard.platform.tracking import runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = runs.client(uri)
    first = _finish(uri, tmp_path, "a", 0.8)
    assert first.decision.move and c.get_model_version_by_alias("net", "champion").version == first.champion.version
    worse = _finish(uri, tmp_path, "b", 0.7)
    assert not worse.decision.move and worse.champion.version != first.champion.version
    assert c.get_model_version_by_alias("net", "champion").version == first.champion.version
    better = _finish(uri, tmp_path, "c", 0.9)
    assert better.decision.move and c.get_model_version_by_alias("net", "champion").version == better.champion.version
    forced = _finish(uri, tmp_path, "d", 0.1, promote=True)
    assert c.get_model_version_by_alias("net", "champion").version == forced.champion.version
    assert c.get_model_version("net", worse.champion.version).tags["champion.moved"] == "0"
