"""Real servers on loopback for the tests (MLflow, MLflow with auth, an S3-compatible store): a free
port, waiting until the server answers, and stopping its process group."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_url(url: str, alive: Callable[[], bool], log: Path, what: str, timeout: float = 180) -> None:
    """Poll ``url`` until the server answers (any HTTP status counts: an auth app answers 401); fail the
    test with the tail of ``log`` when the process dies or ``timeout`` passes first."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if not alive() or time.time() > deadline:
                pytest.fail(f"{what} did not start: {log.read_text()[-3000:] if log.is_file() else '(no log)'}")
            time.sleep(0.3)


def pid_alive(pid: int) -> bool:
    """For a server that is not this process's child (a child that exited stays a zombie: use poll())."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, alive: Callable[[], bool], grace: float = 10) -> None:
    """SIGTERM the process group, SIGKILL it if the server is still ``alive()`` after ``grace`` seconds
    (uvicorn workers may ignore SIGTERM while busy)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    if alive():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def kill_session(leader: int, wait: float = 60) -> None:
    """SIGKILL every process of the session that ``leader`` started (``start_new_session=True``), in
    whatever process group it is (Ray's workers are not all in the leader's group), and wait until they
    are gone: a killed driver's Ray workers must not go on writing after this returns."""
    deadline = time.time() + wait
    while members := [p for p in _session_members(leader) if p != os.getpid()]:
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.time() > deadline:
            break
        time.sleep(0.2)
