"""Epoch checkpoints of an in-process final training (``dartboard train`` without Ray), so that the same
command relaunched after an interrupt continues the training where it stopped, and ends as an uninterrupted
one would have, bit for bit: what a relaunch of a Ray Train job does with its checkpoints
(``platform/ray/final_job.py``).

    OUT/train-checkpoint/trainer.pt      FinalTrainer.state_dict() (weights, optimizer, schedule, grad scaler,
                                         epoch, history, RNG states) and the loader's shuffling generator
    OUT/train-checkpoint/progress.json   {"identity": ..., "epochs_done": n, "seconds": s}

A checkpoint is written to ``train-checkpoint.tmp`` and renamed over the previous one, so an interrupt while
writing leaves the previous epoch's whole; it is removed once the model files are written. A checkpoint of
another training (genotype, data set, image size or a training setting differ) is refused by name, never
loaded or overwritten. Nothing is unpickled when reading.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dartboard.errors import UserInputError, message_line

CHECKPOINT_DIR = "train-checkpoint"
STATE_FILE = "trainer.pt"
PROGRESS_FILE = "progress.json"


class TrainCheckpoint:
    """The checkpoint in ``out`` of the training whose :func:`~dartboard.platform.ray.final_job.job_identity` is
    ``identity``, on data of the class names ``classes`` (recorded, and checked where a checkpoint records them: an
    image folder whose class folders changed since would give other labels, another classifier); ``epochs_done`` > 0
    when one was found (the training continues after it)."""

    def __init__(self, out: str | Path, identity: dict[str, Any], classes: list[str] | None = None):
        from dartboard.platform.ray.final_job import check_identity

        self.folder, self.identity, self.classes = Path(out) / CHECKPOINT_DIR, identity, classes
        self.epochs_done, self.seconds = 0, 0.0  # the epochs and the training seconds the checkpoint holds
        progress = self.folder / PROGRESS_FILE
        if progress.is_file():
            try:
                saved = json.loads(progress.read_text())
                recorded, done, seconds = saved.get("identity"), int(saved["epochs_done"]), float(saved["seconds"])
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise UserInputError(f"checkpoint {self.folder}: {PROGRESS_FILE} cannot be read ({err!r}); remove the "
                                     f"folder to start the training anew, or use a new output folder") from None
            check_identity(str(self.folder), recorded, identity)
            self._check_classes(saved.get("classes"))
            self.epochs_done, self.seconds = done, seconds

    def _check_classes(self, recorded: Any) -> None:
        if recorded is None or self.classes is None or list(recorded) == list(self.classes):
            return
        raise UserInputError(f"checkpoint {self.folder}: it trained on the classes {', '.join(map(str, recorded))}; "
                             f"the data has {', '.join(self.classes) or 'none'} now (class folders added, removed or "
                             f"renamed since); restore the data to continue it, or remove the folder to start the "
                             f"training anew, or use a new output folder")

    def restore(self, trainer: Any, loader: Any) -> float:
        """Load the saved state into ``trainer`` and ``loader``'s shuffling generator; the seconds trained before
        (0 when there is no checkpoint)."""
        if not self.epochs_done:
            return 0.0
        from dartboard.training.checkpoint import UNREADABLE, load_state

        try:
            state = load_state(self.folder / STATE_FILE)
            saved_trainer, saved_loader = state["trainer"], state["loader"]
        except UNREADABLE as err:  # cut short by a full disk, gone, edited
            raise UserInputError(f"checkpoint {self.folder}: {STATE_FILE} cannot be read ({message_line(err)}); remove "
                                 f"the folder to start the training anew, or use a new output folder") from None
        try:
            trainer.load_state_dict(saved_trainer)
        except RuntimeError as err:  # a checkpoint that records no classes, of data whose class count changed since
            raise UserInputError(f"checkpoint {self.folder}: its network does not fit this training's "
                                 f"({message_line(err, last=True)}); the "
                                 f"data changed since (its classes?): restore it to continue the training, or remove "
                                 f"the folder to start anew, or use a new output folder") from None
        loader.generator.set_state(saved_loader)
        return self.seconds

    def save(self, trainer: Any, loader: Any, seconds: float) -> None:
        from dartboard.training.checkpoint import save_state

        tmp, old = self.folder.with_name(f"{CHECKPOINT_DIR}.tmp"), self.folder.with_name(f"{CHECKPOINT_DIR}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_state({"trainer": trainer.state_dict(), "loader": loader.generator.get_state()}, tmp / STATE_FILE)
        (tmp / PROGRESS_FILE).write_text(json.dumps({"identity": self.identity, "epochs_done": trainer.epoch,
                                                     "seconds": seconds,
                                                     **({"classes": self.classes} if self.classes else {})}))
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        self.epochs_done, self.seconds = trainer.epoch, seconds

    def remove(self) -> None:
        for suffix in ("", ".tmp", ".old"):  # .tmp: a save that an interrupt cut short
            shutil.rmtree(self.folder.with_name(f"{CHECKPOINT_DIR}{suffix}"), ignore_errors=True)


def check_no_other_kind(out: str | Path, ray_job: bool) -> None:
    """One output folder, one training: an unfinished training of the other kind in ``out`` (in one process, when
    this one is a Ray Train job; a Ray Train job in ``out/ray``, when this one runs in one process) is refused, so
    that neither finishes later over the other's model files."""
    out = Path(out)
    if ray_job:
        progress = out / CHECKPOINT_DIR / PROGRESS_FILE
        if progress.is_file():
            try:
                done = json.loads(progress.read_text())["epochs_done"]
            except (ValueError, KeyError, TypeError):  # edited by hand: still an unfinished training's folder
                done = "?"
            raise UserInputError(f"--out: {str(out)!r} holds an unfinished training in one process ({done} epochs "
                                 f"done); finish it with the same command without --workers and --address, or give "
                                 f"another --out")
        return
    from dartboard.platform.ray.final_job import RAY_DIR, RUN_NAME

    if not (out / RAY_DIR / RUN_NAME).is_dir():
        return
    from dartboard.platform.ray.storage import run_checkpoints

    found = run_checkpoints(str(out / RAY_DIR / RUN_NAME))
    if found and not found[-1][1].get("done"):
        raise UserInputError(f"--out: {str(out)!r} holds an unfinished Ray Train job ({len(found[-1][1]['history'])} "
                             f"epochs done); finish it with the same command and its --workers and --address, or "
                             f"give another --out")
