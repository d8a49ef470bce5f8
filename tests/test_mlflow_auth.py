"""The cluster head's MLflow server, started for real by clusters/start_mlflow.sh on loopback: basic auth
is enforced, the admin password file is private, a new user reads but cannot write (default READ), and
dartboard's tracking and registry calls work through it with the admin's credentials."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import _session_members, free_port, pid_alive, stop_group, wait_for_url

from dartboard.platform.cli import main as cli_main
from dartboard.platform.tracking import runs

SCRIPT = Path(__file__).resolve().parents[1] / "clusters" / "start_mlflow.sh"


def _request(url: str, user: str | None = None, password: str | None = None, body: dict | None = None,
             answer: list | None = None) -> int:
    """HTTP status of a GET (or a JSON POST when ``body`` is given), with optional basic-auth credentials;
    the decoded JSON answer of a success is appended to ``answer``."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            if answer is not None:
                answer.append(json.loads(resp.read() or b"{}"))
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    home = tmp_path_factory.mktemp("head-home")
    port = free_port()
    env = {**os.environ, "HOME": str(home), "DARTBOARD_PRIVATE_IP": "127.0.0.1", "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_ADMIN_PASSWORD", None)
    # A session of its own: the script's nohup'd server (and its uvicorn worker) stays in this process group.
    starter = subprocess.run(["bash", str(SCRIPT), str(home / "artifacts")], env=env, capture_output=True, text=True,
                             timeout=120, start_new_session=True)
    assert starter.returncode == 0, starter.stderr
    state = home / "mlflow"
    pid = int((state / "server.pid").read_text())
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{uri}/health", lambda: pid_alive(pid), state / "server.log", "mlflow server (basic auth)")
        yield {"uri": uri, "state": state, "password": (state / "admin_password").read_text().strip(),
               "stdout": starter.stdout}
    finally:
        if pid_alive(pid):
            stop_group(os.getpgid(pid), lambda: pid_alive(pid))


def test_short_admin_password_is_refused_before_start(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "DARTBOARD_PRIVATE_IP": "127.0.0.1", "MLFLOW_ADMIN_PASSWORD": "short"}
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "artifacts")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "at least 12 characters" in run.stderr
    assert not (tmp_path / "mlflow" / "server.pid").exists()


def test_state_is_private_and_script_prints_the_address(head):
    state = head["state"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("admin_password", "basic_auth.ini"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert len(head["password"]) >= 24
    assert head["uri"] in head["stdout"]
    assert (state / "env").read_text().strip() == f"export MLFLOW_TRACKING_URI={head['uri']}"


def test_the_server_runs_without_mlflows_job_consumers(head):
    """MLflow's job execution (huey consumers for GenAI jobs dartboard never submits) is off: the server's
    session holds the server and its uvicorn worker, no job runner."""
    pid = int((head["state"] / "server.pid").read_text())
    commands = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                for p in _session_members(os.getsid(pid))]
    assert any("mlflow server" in c for c in commands), commands
    assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands


def test_requests_without_valid_credentials_are_refused(head):
    url = f"{head['uri']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _request(url) == 401
    assert _request(url, "admin", "not-the-password") == 401
    assert _request(url, "admin", head["password"]) == 200


def test_new_user_reads_but_cannot_write(head):
    uri, admin, alice = head["uri"], ("admin", head["password"]), ("alice", "alice-password-1")
    assert _request(f"{uri}/api/2.0/mlflow/users/create", *admin, body={"username": alice[0], "password": alice[1]}) \
        == 200
    exp = "auth-readonly"
    created: list = []
    assert _request(f"{uri}/api/2.0/mlflow/experiments/create", *admin, body={"name": exp}, answer=created) == 200
    assert _request(f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={exp}", *alice) == 200
    code = _request(f"{uri}/api/2.0/mlflow/experiments/update", *alice,
                    body={"experiment_id": created[0]["experiment_id"], "new_name": "renamed"})
    assert code == 403


def test_dartboard_tracks_and_lists_models_through_the_auth_server(head, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", head["password"])
    uri = head["uri"]
    genotype = tmp_path / "genotype.json"
    genotype.write_text(json.dumps({"kind": "darts", "note": "artifact through the proxied store"}))
    parent = runs.start_parent_run(uri, "auth-study", "study", {"epochs": 1}, {"study": "auth"})
    child = runs.log_child_run(uri, parent, "darts/seed0", {"seed": 0}, [{"train_loss": 1.0}, {"train_loss": 0.5}],
                                   {"val_acc": 0.9}, [genotype])
    runs.end_run(uri, parent)
    c = runs.client(uri)
    assert c.get_run(child).data.metrics["val_acc"] == 0.9
    assert [m.value for m in c.get_metric_history(child, "train_loss")] == [1.0, 0.5]
    got = Path(c.download_artifacts(child, "genotype.json", str(tmp_path / "dl")))
    assert json.loads(got.read_text())["note"] == "artifact through the proxied store"
    assert any((head["state"].parent / "artifacts").rglob("genotype.json"))  # stored by the server, not the client
    c.create_registered_model("auth-net")
    try:
        cli_main(["models", "list", "--tracking-uri", uri])
    except SystemExit as exit_:
        assert not exit_.code
    assert "auth-net" in capsys.readouterr().out
