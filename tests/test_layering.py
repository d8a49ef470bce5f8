"""The core is torch only: datasets, final training, ViT fine-tuning and the checkpoint format import
neither ray, mlflow, optuna nor the command line's typer (each checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLATFORM_ONLY = ("ray", "mlflow", "optuna", "typer", "dartboard.platform")


@pytest.mark.parametrize("module", ["dartboard.data.datasets", "dartboard.training.final",
                                    "dartboard.training.vit_finetune", "dartboard.training.checkpoint"])
def test_core_module_imports_with_torch_alone(module):
    code = (f"import sys, {module}\n"
            f"print(' '.join(m for m in {PLATFORM_ONLY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imports {result.stdout.strip()}"
