"""The one ``ray.init`` path (platform/ray/session.py): what every worker's environment gets. A private
local instance turns Ray Train's preemption watcher off (no node of it can be preempted; the watcher costs
a process per Train run and a poll every 5 s); a cluster keeps Ray's default; the user's setting wins."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from dartboard.platform.ray import session  # noqa: E402


@pytest.fixture
def captured(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv(session.PREEMPTION_WATCHER_ENV, raising=False)
    return calls


def test_a_private_local_instance_runs_without_the_preemption_watcher(captured):
    assert session.init_ray(num_cpus=2) is True
    (kw,) = captured
    assert kw["address"] == "local" and kw["include_dashboard"] is True
    assert kw["runtime_env"]["env_vars"][session.PREEMPTION_WATCHER_ENV] == "0"


def test_a_cluster_keeps_rays_default_watcher(captured):
    session.init_ray(address="ray://head:10001")
    (kw,) = captured
    assert kw["address"] == "ray://head:10001"
    assert session.PREEMPTION_WATCHER_ENV not in kw["runtime_env"]["env_vars"]


def test_the_users_setting_reaches_the_workers_either_way(captured, monkeypatch):
    monkeypatch.setenv(session.PREEMPTION_WATCHER_ENV, "1")
    session.init_ray(num_cpus=2)
    session.init_ray(address="ray://head:10001")
    assert [kw["runtime_env"]["env_vars"][session.PREEMPTION_WATCHER_ENV] for kw in captured] == ["1", "1"]
