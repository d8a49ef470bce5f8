"""The command line's contract, through the installed ``dartboard`` console script (CONVENTIONS.md):
usage errors exit 2 with click's one-line error, bad input exits 2 with one line, interrupts exit
130/143 after ``finally`` blocks ran, internal errors keep their traceback and exit 1; ``--help`` and
usage errors import neither torch nor ray nor mlflow; commands are registered once per process.

Faults are injected from a state the test controls: a ``sitecustomize`` module on the subprocess's
``PYTHONPATH`` replaces the function behind ``dartboard info`` before the command runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "optuna")


def console_script() -> str:
    """The installed entry point itself (not a pyenv shim), so signals reach the Python process."""
    script = Path(sysconfig.get_path("scripts")) / "dartboard"
    found = str(script) if script.is_file() else shutil.which("dartboard")
    if found is None:
        pytest.skip("the dartboard console script is not installed (pip install -e .)")
    return found


def sigint_default() -> None:
    """``preexec_fn`` of a command the test interrupts with SIGINT: Ctrl-C's default handling, even when the
    test runner itself was started with SIGINT ignored (e.g. as a background job of a shell), which Python
    children would inherit and honour (no KeyboardInterrupt at all)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env_for(*front: Path, **extra: str) -> dict[str, str]:
    """The subprocess runs this checkout's code (and ``front`` folders first, e.g. a sitecustomize)."""
    path = os.pathsep.join([*map(str, front), str(REPO)])
    return {**os.environ, "PYTHONPATH": path, **extra}


def run(args: list[str], env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(), *args], env=env or env_for(), capture_output=True, text=True,
                          timeout=timeout)


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """The console script's ``main`` in this process: its exit code, stdout and stderr. For commands that leave
    nothing of the process set (no Ray, no MLflow tracking URI), where an interpreter's start would cost 2-4 s."""
    from dartboard.platform.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # a bug raises its own exception instead: the test fails with it
        main(args)
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def run_here(args: list[str], capsys) -> tuple[int, str]:
    """The ``main`` that the console script runs, in this process (no interpreter start and imports: 2-4 s a
    command): its exit code and stderr. For input refused before any work, where nothing of the process is left
    set; the console script's own handling of the same errors is tested through it, above and below."""
    from dartboard.platform.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # a bug raises its own exception instead: the test fails with it
        main(args)
    return done.value.code, capsys.readouterr().err


def signalled(args: list[str], at: str | None, signum: int, timeout: int = 120, cwd: Path | None = None
              ) -> tuple[int, str]:
    """``dartboard ARGS`` (one OpenMP thread), sent ``signum`` when its stderr first shows a line starting with ``at``
    (a state of the command's own, not a timer; None: never); its exit code and stderr."""
    proc = subprocess.Popen([console_script(), *args], env=env_for(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default, cwd=cwd)
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if at is not None and line.startswith(at):
                proc.send_signal(signum)
                break
        log.extend(proc.stderr)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(log)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level names of every module imported, from ``PYTHONPROFILEIMPORTTIME`` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0])
    return names


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.lower().startswith("error")]


# ------------------------------------------------------------------ help and usage errors are instant
@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["search", "--help"], 0),
    (["bench", "--help"], 0),
    (["train", "darts-v2", "--no-such-flag"], 2),
    (["prune", "demo", "--no-such-flag"], 2),
])
def test_help_and_bad_flags_import_no_heavy_module(args, code):
    result = run(args, env_for(PYTHONPROFILEIMPORTTIME="1"))
    assert result.returncode == code, result.stderr[-2000:]
    modules = imported_modules(result.stderr)
    assert "dartboard" in modules  # the profile did record this checkout's imports
    assert not modules & set(HEAVY), f"{args} imported {sorted(modules & set(HEAVY))}"


def test_help_lists_every_command_once():
    result = run(["--help"])
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.startswith("  ")]
    for name in ("search", "train", "info", "searchers", "sweep", "ablate", "models", "pull", "distance", "prune",
                 "prune-study", "bench", "retrieve", "export"):
        assert listed.count(name) == 1, (name, listed)


@pytest.mark.parametrize("args, message", [
    (["train", "darts-v2", "--no-such-flag"], "No such option: --no-such-flag"),
    (["info"], "Missing argument"),
    (["search", "--epochs", "many"], "Invalid value for '--epochs'"),
    (["bench", "spede"], "No such command 'spede'"),
    (["ablate", "/nonexistent/study.yaml"], "does not exist"),
])
def test_usage_errors_exit_2_with_one_error_line(args, message):
    result = run(args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and message in errors[0], result.stderr


# ------------------------------------------------------------------ user errors vs bugs
def inject(tmp_path: Path, body: str) -> dict[str, str]:
    """A sitecustomize that replaces ``network_info`` (what ``dartboard info`` calls) by ``body``."""
    folder = tmp_path / "inject"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import dartboard.platform.cli.info as info\n\n\n"
        "def network_info(*args, **kwargs):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n\n"
        "info.network_info = network_info\n")
    return env_for(folder)


def test_a_user_input_error_is_one_line_exit_2(tmp_path):
    env = inject(tmp_path, """
        from dartboard.errors import UserInputError
        raise UserInputError("channels: expected a positive integer, got -1")
    """)
    result = run(["info", "darts-v2"], env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: channels: expected a positive integer, got -1"


def test_an_internal_value_error_keeps_its_traceback_exit_1(tmp_path):
    env = inject(tmp_path, """
        raise ValueError("an internal bug, not the user's input")
    """)
    result = run(["info", "darts-v2"], env)
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().endswith("ValueError: an internal bug, not the user's input")


@pytest.mark.parametrize("args, message", [
    (["info", "darts-v9"], "'darts-v9' is neither a file nor a catalog name"),
    (["distance", "resnet18"], "genotypes: expected at least two, got 1"),
    (["bench", "quality", "--seeds", "0,x", "--no-mlflow"], "--seeds: expected comma-separated integers"),
    (["bench", "speed", "--precision", "fp64"], "precision: expected fp32, bf16 or fp16, got 'fp64'"),
    (["bench", "speed", "--device", "cpu", "--engines", "batched+graph"],
     "CUDA graphs need a CUDA device, the search runs on cpu"),
    (["prune", "vit_tiny_patch16_224", "--cuda-graph"], "--cuda-graph: CUDA graphs need --device cuda, got 'cpu'"),
])
def test_bad_input_is_one_line_exit_2(args, message, capsys, monkeypatch):
    import torch

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # a count no command sets by default: a command that set its own would show
    try:
        code, err = run_here(args, capsys)
        assert torch.get_num_threads() == 3  # refused before anything of this process was set
    finally:
        torch.set_num_threads(threads)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err


# ------------------------------------------------------------------ interrupts
INTERRUPTIBLE = """
    import pathlib, time
    folder = pathlib.Path({folder!r})
    try:
        (folder / "started").write_text("running")
        {wait}
    finally:
        (folder / "saved").write_text("what exists")
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_exits_130_or_143_after_saving(tmp_path, signum, code):
    env = inject(tmp_path, INTERRUPTIBLE.format(folder=str(tmp_path), wait="time.sleep(300)"))
    proc = subprocess.Popen([console_script(), "info", "darts-v2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        while not (tmp_path / "started").exists():  # the command is inside its work
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert (tmp_path / "saved").read_text() == "what exists"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_search_saves_its_finished_epochs(tmp_path, signum, code):
    import json

    out = tmp_path / "run"
    args = ["search", "--epochs", "50", "--set", "C=4", "--set", "layers=2", "--no-mlflow", "--out", str(out)]
    returncode, stderr = signalled(args, "epoch   1 ", signum)  # once the search's first epoch has ended
    assert returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    finished = json.loads((out / "interrupted.json").read_text())
    assert finished["epochs"] == 50 and 1 <= finished["epochs_finished"] < 50
    assert len(json.loads((out / "history.json").read_text())) == finished["epochs_finished"]
    assert (out / "genotype.json").is_file()


def test_keyboard_interrupt_raised_inside_a_command_exits_130(tmp_path):
    env = inject(tmp_path, INTERRUPTIBLE.format(folder=str(tmp_path), wait="raise KeyboardInterrupt"))
    result = run(["info", "darts-v2"], env)
    assert result.returncode == 130, result.stderr
    assert (tmp_path / "saved").is_file()


# ------------------------------------------------------------------ registration
def test_commands_are_registered_once_however_often_main_runs(capsys):
    import typer

    from dartboard.platform.cli import build_app, main

    for _ in range(2):
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0
    capsys.readouterr()
    app = build_app()
    assert build_app() is app
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert len(names) == len(set(names)) == 17, names  # 17 with NASiam's retrieve and export
    assert sorted(typer.main.get_command(app).commands) == sorted(names)


def test_main_called_from_python_leaves_the_sigterm_handler_as_it_was(capsys):
    from dartboard.platform.cli import main

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert signal.getsignal(signal.SIGTERM) is before


def test_help_defaults_read_from_source_equal_the_imported_constants():
    from dartboard.platform.cli import prune
    from dartboard.searchers.dario import proxies
    from dartboard.searchers.dario import search as dario

    for name in ("GATE_GRADIENTS", "ITERATIONS", "MODEL_LR", "SEARCH_LR", "THRESHOLD", "WARMUP_MEAN",
                 "WARMUP_SAMPLES"):
        assert getattr(prune, name) == getattr(dario, name), name
    assert prune.DEFAULT_PROXY == proxies.DEFAULT_PROXY


def test_literal_constants_refuses_a_missing_name():
    from dartboard.platform.cli.defaults import literal_constants

    with pytest.raises(LookupError, match="NO_SUCH_CONSTANT"):
        literal_constants("dartboard.searchers.dario.proxies", "DEFAULT_PROXY", "NO_SUCH_CONSTANT")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
