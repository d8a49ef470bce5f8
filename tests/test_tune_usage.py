"""Ray's usage record of a study's callbacks without Ray's logger integrations (platform/ray/tune_usage.py):
the record is Ray's own count, taken without the imports Ray makes for it, and only around ``Tuner.fit``; a
trial actor's start without Tune's IPython import (platform/ray/trial.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("ray")

from ray import tune  # noqa: E402
from ray.tune.logger import CSVLoggerCallback, LoggerCallback  # noqa: E402

from dartboard.platform.ray.trial import TrialCallback  # noqa: E402
from dartboard.platform.ray.tune_usage import custom_callback_counts  # noqa: E402


class _Logger(LoggerCallback):
    pass


class MLflowLoggerCallback(tune.Callback):  # a user's class named like one of Ray's built-ins
    pass


def test_the_count_of_dartboards_callbacks_is_rays_own_and_ray_counts_its_own_builtins():
    from ray.air._internal.usage import _count_callbacks

    ours = [TrialCallback.__new__(TrialCallback), _Logger(), tune.Callback(), object(), TrialCallback.__new__(
        TrialCallback)]
    assert custom_callback_counts(ours) == {"CustomCallback": 3, "CustomLoggerCallback": 1}
    assert json.dumps(custom_callback_counts(ours)) == json.dumps(_count_callbacks(ours))  # the tag, to the byte
    assert custom_callback_counts([]) == {} == _count_callbacks([])
    from ray.air.integrations.comet import CometLoggerCallback
    from ray.air.integrations.mlflow import MLflowLoggerCallback as Rays
    from ray.air.integrations.wandb import WandbLoggerCallback
    from ray.tune.logger.aim import AimLoggerCallback
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    from dartboard.platform.ray.tune_usage import RAY_CALLBACK_NAMES

    builtins = (WandbLoggerCallback, Rays, CometLoggerCallback, AimLoggerCallback, *DEFAULT_CALLBACK_CLASSES)
    assert RAY_CALLBACK_NAMES == {cls.__name__ for cls in builtins}  # the names _count_callbacks compares
    assert custom_callback_counts([tune.Callback(), CSVLoggerCallback()]) is None  # Ray's: Ray counts
    assert custom_callback_counts([MLflowLoggerCallback()]) is None
    assert _count_callbacks([MLflowLoggerCallback()]) == {"MLflowLoggerCallback": 1}  # why: Ray counts by name


def test_tune_records_the_callbacks_without_importing_rays_logger_integrations():
    """In a fresh interpreter, after the runner's warm-up: inside the block, what ``Tuner.fit`` calls
    (``ray.tune.tune``'s ``air_usage.tag_callbacks``, its TensorBoard logger) imports no new module and records
    Ray's tag; after it, Ray's own function is back, records the same tag and imports MLflow to do so."""
    code = (
        "import importlib, json, sys\n"
        "from ray import tune\n"
        "from ray.air._internal import usage\n"
        "recorded = []\n"
        "def record(key, value):\n"
        "    recorded.append([key == usage.TagKey.AIR_CALLBACKS, value])\n"
        "usage.record_extra_usage_tag = record\n"
        "rays = usage.tag_callbacks\n"
        "from ray.tune.logger import TBXLoggerCallback\n"
        "from dartboard.platform.ray.runner import _warm_tune_imports\n"
        "from dartboard.platform.ray.trial import TrialCallback\n"
        "from dartboard.platform.ray.tune_usage import light_callback_usage\n"
        "tune_run = importlib.import_module('ray.tune.tune')\n"
        "_warm_tune_imports()\n"
        "callbacks = [TrialCallback.__new__(TrialCallback), tune.Callback()]\n"
        "before = set(sys.modules)\n"
        "with light_callback_usage():\n"
        "    swapped = tune_run.air_usage.tag_callbacks is not rays\n"
        "    tune_run.air_usage.tag_callbacks(callbacks)\n"
        "    TBXLoggerCallback()\n"
        "new = sorted(set(sys.modules) - before)\n"
        "back = usage.tag_callbacks is rays\n"
        "usage.tag_callbacks(callbacks)\n"
        "print(json.dumps({'swapped': swapped, 'new': new, 'back': back, 'recorded': recorded,\n"
        "                  'mlflow after': 'mlflow' in sys.modules}))\n"
    )
    seen = _in_a_fresh_interpreter(code)
    tag = [True, json.dumps({"CustomCallback": 2})]
    assert seen == {"swapped": True, "new": [], "back": True, "recorded": [tag, tag], "mlflow after": True}, seen


def test_the_study_runner_fits_its_tuner_inside_the_block(tmp_path, monkeypatch):
    from ray.air._internal import usage

    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray import runner

    rays, seen = usage.tag_callbacks, []

    class Tuner:
        def __init__(self, *args, **kwargs):
            self.callbacks = kwargs["run_config"].callbacks

        def fit(self):
            seen.append(usage.tag_callbacks is not rays)
            seen.append(custom_callback_counts(self.callbacks))
            return []

    monkeypatch.setattr(runner.tune, "Tuner", Tuner)
    cfg = StudyConfig(name="t", searcher="darts", params={"w_lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
                      num_samples=2, final_training=None)
    result = runner._run_on_ray(cfg, str(tmp_path / "study"), False, [])
    assert seen == [True, {"CustomCallback": 1}] and result.trials == []
    assert usage.tag_callbacks is rays


def test_a_trial_actors_start_imports_ipython_only_where_it_is_loaded(tmp_path):
    """Tune's ``Trainable.__init__`` in an actor imports IPython to clear its shell (0.17 s of each trial actor's
    start where IPython is installed). A stand-in IPython package on the path records what Ray does with it, in a
    fresh interpreter: the study's trainable does not import it; Ray's plain function trainable does (the
    stand-in is what Ray finds); once it is loaded, the study's trainable clears the shell as Ray would; and
    Ray's function is back after each construction."""
    shell = tmp_path / "IPython" / "core"
    shell.mkdir(parents=True)
    (tmp_path / "IPython" / "__init__.py").write_text("")
    (shell / "__init__.py").write_text("")
    (shell / "interactiveshell.py").write_text(
        "class InteractiveShell:\n"
        "    cleared = 0\n"
        "    @classmethod\n"
        "    def clear_instance(cls):\n"
        "        cls.cleared += 1\n")
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from ray.tune.trainable import trainable as module\n"
        "from ray.tune.trainable.function_trainable import wrap_function\n"
        "from dartboard.platform.ray.trial import trainable\n"
        "def plain(config):\n"
        "    pass\n"
        "rays = module.disable_ipython\n"
        "module.Trainable.is_actor = lambda self: True\n"
        "def build(fn):\n"
        "    cls = wrap_function(fn)\n"
        "    cls.setup = lambda self, config: None\n"
        "    cls(config={})\n"
        "    return module.disable_ipython is rays\n"
        "study = trainable({'config': {}, 'run_dir': '.'}, 1)\n"
        "seen = {'study': build(study), 'study loads': 'IPython' in sys.modules}\n"
        "seen['ray'] = build(plain)\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "seen['ray clears'] = InteractiveShell.cleared\n"
        "seen['study again'] = build(study)\n"
        "seen['study clears'] = InteractiveShell.cleared\n"
        "print(json.dumps(seen))\n"
    )
    seen = _in_a_fresh_interpreter(code)
    assert seen == {"study": True, "study loads": False, "ray": True, "ray clears": 1, "study again": True,
                    "study clears": 2}, seen


def _in_a_fresh_interpreter(code: str) -> dict:
    """What ``code``, run by a new Python process, prints as JSON on its last line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
