"""The one trial checkpoint format (every study kind, every epoch):

    searcher.pt     searcher.state_dict() (weights, alphas, optimizers, schedules, history, RNG states),
                    plain containers saved with torch.save, read back with weights_only=True
    progress.json   {"history": [per-epoch reported metrics], "search_seconds": s, "done": bool}
    genotype.json   the architecture derived after this epoch
    status.json     only for a diverged trial: its NaN/inf report (a retry does not train it again)

The last checkpoint of a trial with ``final_training.scope: trial`` also holds the trained network
(``weights.safetensors``, ``network.json``), ``result.json`` and the alpha history for reports.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dartboard.model_files import GENOTYPE_FILE

STATE_FILE = "searcher.pt"
PROGRESS_FILE = "progress.json"
STATUS_FILE = "status.json"
RESULT_FILE = "result.json"
ALPHA_HISTORY_FILE = "alpha_history.json"
ALPHA_GROUPS_FILE = "alpha_groups.json"


def save_state(state: dict[str, Any], path: Path) -> Path:
    """``training.checkpoint.save_state`` (the format), imported on use: Tune's trial actor reads the
    file names of this module and never a tensor, so it imports no torch (backend.py)."""
    from dartboard.training.checkpoint import save_state as save

    return save(state, path)


def load_state(path: Path) -> dict[str, Any]:
    from dartboard.training.checkpoint import load_state as load

    return load(path)


def write_epoch(folder: Path, searcher: Any, progress: dict[str, Any], genotype_json: str) -> None:
    save_state(searcher.state_dict(), folder / STATE_FILE)
    (folder / PROGRESS_FILE).write_text(json.dumps(progress))
    (folder / GENOTYPE_FILE).write_text(genotype_json)


def read_progress(folder: Path) -> dict[str, Any]:
    f = folder / PROGRESS_FILE
    return json.loads(f.read_text()) if f.is_file() else {"history": [], "search_seconds": 0.0, "done": False}


def write_last(folder: Path, searcher: Any, model: Callable[[Path], None] | None = None) -> None:
    """A search's last checkpoint beyond its state: the alpha history (:func:`write_alphas`) and, where ``model`` is
    given, the files of the model the trial scored (a DARIO trial's fine-tuned pruned ViT)."""
    write_alphas(folder, searcher)
    if model is not None:
        model(folder)


def write_alphas(folder: Path, searcher: Any) -> None:
    """The alpha history and how to read it (Searcher protocol ``alpha_groups``), for reports."""
    groups = [{"name": g.name, "rows": [list(r) if isinstance(r, tuple) else r for r in g.rows],
               "primitives": [list(p) for p in g.primitives]} for g in searcher.alpha_groups()]
    (folder / ALPHA_GROUPS_FILE).write_text(json.dumps(groups))
    (folder / ALPHA_HISTORY_FILE).write_text(json.dumps(searcher.history))
