"""Where a study lives: a local folder, a shared mount, or s3:// / gs:// (through pyarrow.fs, the
filesystems Ray itself uses). The run directory holds the study file, Tune's experiment state,
each trial's Train run (``trials/train-<trial_id>``, its epoch checkpoints) and the result."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from dartboard.errors import UserInputError

DEFAULT_STORAGE = "runs/studies"
STUDY_FILE = "study.yaml"
RESULT_FILE = "study_result.json"
TRIALS_DIR = "trials"


def resolve_storage(storage: str | None) -> str:
    """Local folders become absolute (default ./runs/studies); s3://, gs:// and other URIs stay."""
    if storage and "://" in storage and not storage.startswith("file://"):
        return storage.rstrip("/")
    return str(Path(storage.removeprefix("file://") if storage else DEFAULT_STORAGE).expanduser().resolve())


def check_storage(storage: str) -> None:
    """Write and delete a probe file, so an unwritable storage fails before any trial starts. The local folders
    the probe had to make are removed again: a study refused after this check leaves nothing behind."""
    import pyarrow.fs

    from dartboard.platform.checks import folders_removed_after

    try:
        with nullcontext() if "://" in storage else folders_removed_after(Path(storage)):
            fs, root = pyarrow.fs.FileSystem.from_uri(storage)
            fs.create_dir(root, recursive=True)
            probe = f"{root}/.dartboard-write-probe"
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
    except Exception as err:  # noqa: BLE001 - any filesystem failure is the same user error
        raise UserInputError(f"storage: {storage!r} is not writable ({' '.join(str(err).split())})") from None


def write_text(uri: str, text: str) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(uri: str, field_name: str) -> str:
    """A file of a run directory the user named (``--resume``): one it cannot read is their input's error."""
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError) as err:
        raise UserInputError(f"{field_name}: cannot read {uri!r}: is it a study run directory? ({err})") from None


def exists(uri: str) -> bool:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def upload_dir(local: Path, uri: str) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)


def download_dir(uri: str, local: Path) -> Path:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    local.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return local


def train_dir(run_dir: str, trial_id: str) -> str:
    return f"{run_dir}/{TRIALS_DIR}/train-{trial_id}"


def run_checkpoints(run_uri: str) -> list[tuple[str, dict[str, Any]]]:
    """The epoch checkpoints of one Ray Train run folder (a path or a URI: s3://, gs://, file://), sorted by
    name, each with its progress.json; unreadable ones are skipped, and a folder that cannot be listed
    has none. Used by the study's trials and by the final training alike."""
    import pyarrow.fs

    from dartboard.platform.ray.checkpoint import PROGRESS_FILE

    uri = run_uri.rstrip("/") if "://" in run_uri else str(Path(run_uri).resolve())
    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(uri)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError):
        return []
    found = []
    for info in sorted(infos, key=lambda i: i.base_name):
        if info.type != pyarrow.fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{PROGRESS_FILE}") as f:
                progress = json.loads(f.read().decode())
        except (OSError, json.JSONDecodeError):
            continue
        found.append((f"{uri}/{info.base_name}", progress))
    return found


def last_checkpoint(run_dir: str, trial_id: str) -> tuple[str, dict[str, Any]] | None:
    """The trial's most advanced epoch checkpoint (URI, its progress.json), or None."""
    best: tuple[tuple[int, int], str, dict[str, Any]] | None = None
    for where, progress in run_checkpoints(train_dir(run_dir, trial_id)):
        rank = (int(bool(progress.get("done"))), len(progress.get("history", [])))
        if best is None or rank > best[0]:
            best = (rank, where, progress)
    return None if best is None else (best[1], best[2])


def train_run_finished(run_dir: str, trial_id: str) -> bool:
    """Whether the trial's Train run already made its last report (before a driver crash)."""
    found = last_checkpoint(run_dir, trial_id)
    return bool(found and found[1].get("done"))
