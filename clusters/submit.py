"""Entry script for running a dartboard study on a Ray cluster, the same way on every launcher:

    ray submit clusters/aws.yaml clusters/submit.py -- sweep STUDY.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python clusters/submit.py sweep STUDY.yaml
    python clusters/submit.py --local ablate STUDY.yaml          # this machine, a private Ray

It runs ``dartboard COMMAND ARGS...`` on the head (or the job's driver): it connects to the
running cluster (``--address auto`` unless ``--local``), points checkpoints at the shared
storage named by ``$DARTBOARD_STORAGE`` and MLflow at the head's tracking server (from
``~/mlflow/env``, written by clusters/start_mlflow.sh) unless ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

COMMANDS = ("sweep", "ablate", "search", "train")
# commands that take --address and --storage (train: as a Ray Train job on the cluster; without --address it would
# start a private Ray on the head node alone)
ADDRESS_COMMANDS = ("sweep", "ablate", "train")


def build_argv(command: str, args: list[str], local: bool, env: dict[str, str]) -> list[str]:
    """The ``dartboard`` argv for ``command``: adds the cluster address and shared storage."""
    if command not in COMMANDS:
        raise SystemExit(f"submit.py: unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    argv = [command, *args]
    if command in ADDRESS_COMMANDS:
        if not local and "--address" not in args:
            argv += ["--address", env.get("RAY_ADDRESS", "auto")]
        # train takes --storage only as a Ray Train job (with --address, or --workers > 1 on a private Ray)
        ray_train = command != "train" or "--address" in argv
        if env.get("DARTBOARD_STORAGE") and "--storage" not in args and ray_train:
            argv += ["--storage", env["DARTBOARD_STORAGE"]]
    return argv


def tracking_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """MLFLOW_TRACKING_URI from the head's ~/mlflow/env when the caller did not set one."""
    env = dict(env)
    env_file = home / "mlflow" / "env"
    if "MLFLOW_TRACKING_URI" not in env and env_file.is_file():
        for line in env_file.read_text().splitlines():
            if line.startswith("export MLFLOW_TRACKING_URI="):
                env["MLFLOW_TRACKING_URI"] = line.split("=", 1)[1].strip()
    return env


def job_command(command: str, args: list[str], dashboard: str = "http://127.0.0.1:8265") -> str:
    """The equivalent Ray Jobs API submission (run from the repository root)."""
    return (f"ray job submit --address {dashboard} --working-dir . -- python clusters/submit.py "
            + shlex.join([command, *args]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true", help="run on a private local Ray, not a cluster")
    parser.add_argument("--print-job-command", action="store_true", help="print the `ray job submit` line")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    if ns.print_job_command:
        print(job_command(ns.command, ns.args))
        return
    os.environ.update(tracking_env(dict(os.environ), Path.home()))
    dartboard_argv = build_argv(ns.command, ns.args, ns.local, dict(os.environ))
    print("dartboard " + shlex.join(dartboard_argv), flush=True)
    from dartboard.platform.cli import main as dartboard_main

    dartboard_main(dartboard_argv)


if __name__ == "__main__":
    main(sys.argv[1:])
