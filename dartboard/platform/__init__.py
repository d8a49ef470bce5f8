"""Where and when searches run: CLI, Ray Train/Tune, Optuna, MLflow."""

import os
import sys
import types

# MLflow's usage telemetry sends events to the internet from a background thread that also writes
# os.environ (_MLFLOW_TELEMETRY_SESSION_ID) while other threads read it: a request reading the
# environment then fails with KeyError (seen in a sweep). dartboard runs offline; a user who wants
# the telemetry sets MLFLOW_DISABLE_TELEMETRY=false.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow draws a progress bar for each artifact it copies (three per registered champion, in the middle of the
# sweep's summary); dartboard prints what it registered itself. MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true shows them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _legacy_registry_module() -> types.ModuleType:
    """Model versions registered before the platform's layout change run ``from
    dartboard.platform.registry import build_from_files`` in their MLflow pyfunc code. That module
    is now ``platform.tracking.models``; this alias (no file, so ``registry`` stays one module)
    keeps those versions loadable through ``mlflow.pyfunc.load_model``."""
    module = types.ModuleType(f"{__name__}.registry", "Alias of dartboard.platform.tracking.models "
                              "for model versions registered before the move.")

    def build_from_files(files):
        from dartboard import network_from_files

        return network_from_files(files)

    module.build_from_files = build_from_files
    return module


sys.modules.setdefault(f"{__name__}.registry", _legacy_registry_module())
