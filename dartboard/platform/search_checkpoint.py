"""Epoch checkpoints of a local search (``dartboard search``), so that ``--resume OUT`` finishes an
interrupted search exactly as an uninterrupted one would have.

    OUT/run.json                   the run's config (SearchRunConfig), written when the search starts
    OUT/checkpoint/searcher.pt     searcher.state_dict() (weights, alphas, optimizers, RNG states, ...),
    OUT/checkpoint/progress.json   and the finished epochs' metrics: the Ray worker's format
    OUT/checkpoint/genotype.json   (``platform/ray/checkpoint.py``)
    OUT/checkpoint/loaders.pt      the shuffling generators' states of the train and val loaders

A checkpoint is written to ``checkpoint.tmp`` and renamed over the previous one, so an interrupt
while writing leaves the previous epoch's checkpoint whole. Nothing is unpickled when reading.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dartboard.errors import UserInputError, message_line
from dartboard.platform.ray.checkpoint import PROGRESS_FILE, read_progress, write_epoch
from dartboard.training.checkpoint import UNREADABLE, load_state, save_state

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoint"
LOADERS_FILE = "loaders.pt"


@dataclass
class SearchProgress:
    history: list[dict[str, float]] = field(default_factory=list)  # metrics of each finished epoch
    seconds: float = 0.0  # search time spent so far (all sessions)


def start(out: Path, config: dict[str, Any]) -> None:
    """A new search in ``out``: its config (what --resume rebuilds from); no older checkpoint stays."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    (out / RUN_FILE).write_text(json.dumps(config, indent=1))


def recorded_data(folder: str | Path) -> tuple[str, str | None, int | None] | None:
    """(dataset, data_root, image_size) that the search in ``folder`` ran on, from its run.json; None where there is
    none."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not a search's run.json: nothing recorded
    dataset = config.get("dataset") if isinstance(config, dict) else None
    root, size = config.get("data_root"), config.get("image_size")
    if not isinstance(dataset, str):
        return None
    return dataset, root if isinstance(root, str) else None, size if isinstance(size, int) else None


def _generators(loaders: Sequence[Any]) -> list[torch.Generator]:
    gens = [getattr(loader, "generator", None) for loader in loaders]
    if any(g is None for g in gens):
        raise ValueError("search checkpoint: every loader needs its own shuffling generator")
    return gens


def write(out: Path, searcher: Any, loaders: Sequence[Any], progress: SearchProgress) -> None:
    tmp, final = out / f"{CHECKPOINT_DIR}.tmp", out / CHECKPOINT_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from dartboard.spaces.genotype import to_dict

    write_epoch(tmp, searcher, {"history": progress.history, "search_seconds": progress.seconds, "done": False},
                json.dumps(to_dict(searcher.derive())))
    save_state({"generators": [g.get_state() for g in _generators(loaders)]}, tmp / LOADERS_FILE)
    old = out / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def read(out: Path) -> SearchProgress:
    def progress() -> SearchProgress:
        data = read_progress(out / CHECKPOINT_DIR)
        return SearchProgress(list(data["history"]), float(data["search_seconds"]))

    return readable(out, out / CHECKPOINT_DIR / PROGRESS_FILE, progress)


def restore(out: Path, searcher: Any, loaders: Sequence[Any]) -> None:
    """The searcher's full state and the loaders' shuffling state after the last finished epoch."""
    from dartboard.platform.ray.checkpoint import STATE_FILE

    state, loaders_file = out / CHECKPOINT_DIR / STATE_FILE, out / CHECKPOINT_DIR / LOADERS_FILE
    saved = readable(out, state, lambda: load_state(state))
    try:
        searcher.load_state_dict(saved)
    except RuntimeError as err:  # e.g. an image folder given a class folder since: another classifier
        raise UserInputError(f"--resume: the supernet of {str(state)!r} does not fit this search's "
                             f"({message_line(err, last=True)}); the data changed since the search started (its "
                             f"classes?): restore it to finish the search, or search anew with another --out") from None
    states = readable(out, loaders_file, lambda: load_state(loaders_file)["generators"])
    for gen, state in zip(_generators(loaders), states, strict=True):
        gen.set_state(state)


def readable(out: Path, path: Path, read: Callable[[], Any]) -> Any:
    """``read()`` of the search's file ``path`` (in ``out``); a file that is missing or cannot be read (cut by a full
    disk, edited) is refused naming it, with the ways to search anew (a new search in ``out`` would be refused: it
    holds an unfinished search)."""
    try:
        return read()
    except UNREADABLE as err:
        raise UserInputError(f"--resume: {str(path)!r} cannot be read ({message_line(err)}): the "
                             f"checkpoint is damaged and the search cannot continue from it; search anew with "
                             f"another --out, or delete {str(out / CHECKPOINT_DIR)!r} to search anew in "
                             f"{str(out)!r}") from None
