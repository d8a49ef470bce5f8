"""Whether a study's champion takes the ``@champion`` alias from the version that holds it.

The alias moves only to a better model on the same measure: both trained from scratch on the same
data (compare their test accuracy, on the data set's fixed test split), or both scored by the same
study objective on the same data (compare the objective). A model that cannot be compared with the
current champion does not take the alias; ``promote`` (``--promote``) moves it anyway.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIGNATURE_TAG = "objective.signature"  # what the objective measured (kind, data, budget) as JSON


@dataclass(frozen=True)
class Decision:
    move: bool
    reason: str


def objective_signature(study: Any) -> str:
    """The study objective's identity: its kind and settings, the data and the search budget."""
    return json.dumps({**study.objective.model_dump(), "dataset": study.dataset, "epochs": study.epochs},
                      sort_keys=True)


def _number(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def decide(current: Mapping[str, str] | None, new: Mapping[str, Any], promote: bool = False) -> Decision:
    """``current``: the tags of the version holding the alias (None: no champion yet); ``new``: the
    new version's tags. Higher is better for test accuracy and for every study objective."""
    if current is None:
        return Decision(True, "first champion")
    if promote:
        return Decision(True, "promoted by the user (--promote)")
    new = {k: str(v) for k, v in new.items()}
    old_acc, new_acc = _number(current, "metric.test_acc"), _number(new, "metric.test_acc")
    if old_acc is not None and new_acc is not None and current.get("dataset") == new.get("dataset"):
        if new_acc > old_acc:
            return Decision(True, f"test accuracy {new_acc:.4f} beats the champion's {old_acc:.4f}")
        return Decision(False, f"test accuracy {new_acc:.4f} does not beat the champion's {old_acc:.4f}")
    old_obj, new_obj = _number(current, "metric.objective"), _number(new, "metric.objective")
    if old_obj is not None and new_obj is not None and current.get(SIGNATURE_TAG) == new.get(SIGNATURE_TAG):
        if new_obj > old_obj:
            return Decision(True, f"objective {new_obj:.4f} beats the champion's {old_obj:.4f}")
        return Decision(False, f"objective {new_obj:.4f} does not beat the champion's {old_obj:.4f}")
    return Decision(False, "not comparable with the current champion (another objective or data set, or no "
                           "test accuracy); --promote moves the alias anyway")
