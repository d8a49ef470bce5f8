"""Test-suite wide settings: GPU tests skip themselves without CUDA; slow tests run only when
asked for (``-m slow`` or ``DARTBOARD_SLOW=1``)."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    run_slow = os.environ.get("DARTBOARD_SLOW") == "1" or "slow" in (config.getoption("-m") or "")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow or DARTBOARD_SLOW=1"))
