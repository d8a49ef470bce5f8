"""The README's quickstart and CI agree: ``.ci/run`` installs the test extra and runs exactly the test command
written in the README, and the main job's console script is the one the package installs. A README edit that
changes the test command, or a CI script that drifts from it, goes red here instead of in a CI run that tests
something else than what the README promises."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> list[str]:
    """The commands of the README's quickstart block (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart[^\n]*\n+```bash\n(.*?)```", text, re.S)
    assert block, "README.md: no ```bash block under '## Quickstart'"
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def ci_commands() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readmes_test_command():
    (tests,) = [line for line in quickstart() if "pytest" in line]
    install, command = (part.strip() for part in tests.split("&&", 1))
    assert shlex.split(install)[-1] == ".[test]", install  # the quickstart installs the test extra
    ci = ci_commands()
    assert command in ci, f".ci/run does not run the README's test command {command!r}: {ci}"
    installs = [line for line in ci if "pip" in line and "install" in line]
    assert installs and any(shlex.split(line)[-1] == ".[test]" for line in installs), installs
    assert ci.index(command) > max(ci.index(line) for line in installs)  # installed first, then tested


def test_the_main_job_is_the_installed_console_script():
    (main,) = [line for line in quickstart() if "pytest" not in line]
    install, job = (part.strip() for part in main.split("&&", 1))
    assert shlex.split(install)[-1] == "."
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert shlex.split(job)[0] in scripts, (job, scripts)
