"""The suite's xdist groups reach the scheduler (README's command, `-n 2 --dist loadgroup`): the Ray tests run one
after the other on one worker and a module's tests on one worker, so module fixtures (an MLflow server, a trained
network) are built once. pytest-xdist carries a test's group to its scheduler as a suffix of the node id; with
pytest 9.2 that suffix no longer took, and every test was handed out alone without any error (pytest-xdist issue
1386; the test extra pins pytest below 9.2)."""

from __future__ import annotations

import pytest


def test_the_module_group_is_in_the_node_id(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("only under pytest-xdist with --dist loadgroup (README's test command)")
    assert request.node.nodeid.endswith("@tests/test_xdist_groups.py"), request.node.nodeid
