"""benchmarks/conv_plan_ab.py: the batched engine under several conv plans, interleaved in one process (toy size:
a check of the script; its numbers mean nothing here)."""

from __future__ import annotations

import pytest
from scripts import load_script

from dartboard.spaces import batched


def _load():
    return load_script("benchmarks/conv_plan_ab.py")


def test_it_times_each_plan_and_puts_the_devices_plans_back(capsys):
    ab = _load()
    before = dict(batched.CONV_PLANS)
    assert ab.main(["", "matmul_limit=64,linear_1x1=True", "--scale", "toy", "--repeats", "1"]) == 0
    assert batched.CONV_PLANS == before
    lines = capsys.readouterr().out.splitlines()
    assert "1.00x  ConvPlan()" in lines[1] and lines[2].endswith("ConvPlan(matmul_limit=64,linear_1x1=True)")
    assert lines[3].startswith("paired:") and "1.000x (rounds 1.000-1.000)  ConvPlan()" in lines[3]
    assert lines[4].startswith("paired:") and lines[4].endswith("ConvPlan(matmul_limit=64,linear_1x1=True)")


def test_paired_ratios_are_each_rounds_speed_up_over_the_first_plan():
    ab = _load()
    times = {"": [1.0, 2.0, 4.0], "b": [0.5, 4.0, 2.0]}  # rounds: 1 / 0.5, 2 / 4, 4 / 2
    assert ab.paired(times) == {"": (1.0, 1.0, 1.0), "b": (2.0, 0.5, 2.0)}


def test_a_plan_is_parsed_from_its_text():
    ab = _load()
    assert ab.parse_plan("matmul_limit=64, pointwise='block_diagonal'") == {"matmul_limit": 64,
                                                                           "pointwise": "block_diagonal"}


@pytest.mark.parametrize("plan, problem", [("matmul_limit", "key=value"),
                                           ("pointwise=block_diagonal", "no Python literal")])
def test_a_plan_it_cannot_read_is_a_usage_error(plan, problem, capsys):
    with pytest.raises(SystemExit) as stop:
        _load().main([plan, "--scale", "toy"])
    assert stop.value.code == 2 and problem in capsys.readouterr().err
