"""Checks of what a command will need, made before it does any work: an output folder it can write,
a tracking server or Ray cluster it can reach, a registry file that exists where a command only reads one. Each
failure is one :class:`~dartboard.errors.UserInputError` naming the flag and the value, so a search
never runs for minutes to fail on its last write, a server that is down is reported in seconds
rather than after MLflow's retries (minutes), and a lookup never leaves an empty registry behind.

Standard library only: the command line calls these before torch or mlflow are imported.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from dartboard.errors import UserInputError

#: Seconds to wait for a TCP connection to the tracking server or a Ray cluster.
TRACKING_CONNECT_TIMEOUT_S = 5.0


def check_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """Make sure files can be created in the folder ``path`` (created if missing). Leaves nothing
    behind: the probe file and any folder made for it are removed again."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{flag}: {str(folder)!r} exists and is not a folder")
    try:
        with folders_removed_after(folder):
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".dartboard-probe-"):
                pass
    except OSError as err:
        raise UserInputError(f"{flag}: cannot write to {str(folder)!r} ({err.strerror or err})") from None


@contextmanager
def folders_removed_after(folder: Path) -> Iterator[None]:
    """Around a write probe in the local ``folder``: the folders of its path that do not exist yet (the probe
    makes them) are removed again afterwards, deepest first, so a probe leaves nothing behind."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    try:
        yield
    finally:
        for made in missing:  # deepest first
            try:
                made.rmdir()
            except OSError:
                break


@contextmanager
def folder_held(path: str | os.PathLike, flag: str) -> Iterator[None]:
    """One dartboard process at a time writes the output folder ``path`` (created if missing, and removed again
    if nothing was written in it): a second search or training there, which would interleave its checkpoints and
    model files with the first's, is refused by name. An advisory lock on the folder itself (``flock``), released
    when the holder ends, however it ends: a killed process leaves no stale lock. Where ``fcntl`` does not exist, or
    the file system takes no locks, nothing is locked."""
    folder = Path(path)
    check_writable_dir(folder, flag)
    with folders_removed_after(folder):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserInputError(f"{flag}: {str(folder)!r} is in use by another dartboard process (a search or "
                                     f"a training writing there); wait for it to end, or give another {flag}"
                                     ) from None
            except OSError:  # a file system without locks (some network mounts): the folder is used unlocked
                pass
            yield
        finally:
            os.close(fd)


def check_writable_file(path: str | os.PathLike, flag: str) -> None:
    """Make sure the file ``path`` can be written (its folder is writable, it is not a folder)."""
    target = Path(path)
    if target.is_dir():
        raise UserInputError(f"{flag}: {str(target)!r} is a folder; expected a file name")
    check_writable_dir(target.parent if str(target.parent) else Path("."), flag)


#: MLflow's own switch (``mlflow.environment_variables.MLFLOW_ALLOW_FILE_STORE``) that opens a file store anyway.
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def check_tracking_server(uri: str, flag: str = "--tracking-uri") -> None:
    """An ``http(s)://`` tracking URI must accept a TCP connection within seconds (MLflow itself
    retries for minutes); a file store (``file:`` or a path), which MLflow 3 refuses to open (with a traceback,
    wherever the command first touches it) unless ``MLFLOW_ALLOW_FILE_STORE`` is set, is refused here; other
    local URIs (``sqlite:``) are not checked here."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file") and os.environ.get(ALLOW_FILE_STORE, "").strip().lower() not in ("true", "1"):
        raise UserInputError(f"{flag}: {uri!r} is a file store (a folder of runs), which MLflow 3 no longer opens; "
                             f"use a database such as sqlite:///mlflow.db (the default) or a server "
                             f"http://HOST:PORT, or set {ALLOW_FILE_STORE}=true to open it anyway")
    if parts.scheme not in ("http", "https"):
        return
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:  # a port that is not a number
        raise UserInputError(f"{flag}: {uri!r} is not a valid URL ({err})") from None
    if not host:
        raise UserInputError(f"{flag}: {uri!r} names no host")
    _check_reachable(host, port, f"{flag}: cannot reach the MLflow tracking server at {uri}")


def check_ray_address(address: str, flag: str = "--address") -> None:
    """An explicit Ray cluster address (``HOST:PORT`` of its head, or ``ray://HOST:PORT`` of Ray Client) must
    accept a TCP connection within seconds: Ray itself retries for minutes, printing a warning every few seconds.
    ``auto`` and ``local`` are Ray's to resolve."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as err:  # a port that is not a number
        raise UserInputError(f"{flag}: {address!r} is not a valid address ({err})") from None
    if not host or port is None:
        raise UserInputError(f"{flag}: expected HOST:PORT of a Ray cluster's head, ray://HOST:PORT or auto, got "
                             f"{address!r}")
    _check_reachable(host, port, f"{flag}: cannot reach a Ray cluster at {address}")


def _check_reachable(host: str, port: int, failure: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=TRACKING_CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UserInputError(f"{failure} ({reason})") from None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` tracking URI (SQLAlchemy's form: ``sqlite:///relative.db``,
    ``sqlite:////absolute.db``, an optional ``?query``); None for another scheme or an in-memory database."""
    if not uri.startswith("sqlite://"):
        return None
    path = uri[len("sqlite://"):].split("?", 1)[0]
    path = path[1:] if path.startswith("/") else path
    return Path(path) if path and path != ":memory:" else None


def check_registry_exists(uri: str, flag: str = "--tracking-uri") -> None:
    """A command that only reads the registry (pull, models, predict, evaluate, export) must not create an
    empty ``mlflow.db`` where there was none (MLflow creates a sqlite file on its first connection) and then
    report a model as missing: a missing file is named as such."""
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        where = str(path) if path.is_absolute() else f"{path} in {Path.cwd()}"
        raise UserInputError(f"no MLflow registry at {uri}: {where} does not exist (run from the folder your "
                             f"studies tracked to, or pass {flag} or set MLFLOW_TRACKING_URI)")
