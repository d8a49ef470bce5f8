"""The whole search step replayed from one CUDA graph (dartboard.searchers.graphed): what it refuses,
by name, on any machine; on a GPU, that replays search exactly like eager steps."""

from __future__ import annotations

import pytest
import torch

from dartboard.searchers.graphed import GraphedStep, graph_blockers
from dartboard.searchers.registry import DataShape, build_searcher

SHAPE = DataShape(1, 8, 10)
TINY = {"C": 4, "layers": 2}


def _on_cuda_in_name(name: str, **options):
    """A CPU-built searcher that claims a CUDA device: graph_blockers reads the parts, not the kernels."""
    s = build_searcher(name, {**TINY, **options}, SHAPE)
    s.device = torch.device("cuda")
    return s


@pytest.mark.parametrize("name, options", [("darts", {}), ("darts", {"order": 2}), ("darts", {"precision": "bf16"}),
                                           ("fairdarts", {}), ("ddarts", {}), ("darts+cs10", {})])
def test_plain_bilevel_steps_can_be_captured(name, options):
    assert graph_blockers(_on_cuda_in_name(name, **options)) == []


@pytest.mark.parametrize("name, options, reason", [
    ("darts", {"precision": "fp16"}, "precision fp16"),
    ("darts+fimt", {}, "schedule FimtSchedule"),
    ("gdas", {}, "activation"),
    ("sdarts-rs", {}, "perturbation RandomSmoothing"),
    ("pc-darts", {}, "mixed op PartialChannel"),
    ("darts+admm", {}, "regularizer Admm"),
    ("ddarts", {"deactivation": "reference"}, "regularizer Ablation: deactivation 'reference'"),
])
def test_host_side_state_is_refused_by_name(name, options, reason):
    reasons = graph_blockers(_on_cuda_in_name(name, **options))
    assert any(r.startswith(reason) for r in reasons), reasons


def test_a_cpu_search_is_refused_with_the_device_named():
    s = build_searcher("darts", TINY, SHAPE)
    with pytest.raises(ValueError, match="cuda_graph: the step cannot be captured in a CUDA graph: CUDA graphs need "
                                         "a CUDA device, the search runs on cpu"):
        GraphedStep(s)


def test_the_cuda_graph_option_is_checked_when_the_search_is_built():
    with pytest.raises(ValueError, match="searcher 'darts': cuda_graph: .* CUDA graphs need a CUDA device"):
        build_searcher("darts", {**TINY, "cuda_graph": True}, SHAPE)
    with pytest.raises(ValueError, match="cuda_graph: expected true or false, got 'yes'"):
        build_searcher("darts", {**TINY, "cuda_graph": "yes"}, SHAPE)
    assert build_searcher("darts", TINY, SHAPE).graphed is None  # off by default: step() is eager_step()


def test_a_graphed_search_refuses_several_workers():
    s = build_searcher("darts", TINY, SHAPE)
    s.graphed = GraphedStep.__new__(GraphedStep)  # as built on a GPU with cuda_graph=true
    with pytest.raises(ValueError, match="cuda_graph: one worker only"):
        s.distribute(lambda m: m, lambda grads: None)
    assert s.train_module is s.supernet  # nothing wrapped


def test_an_unfused_adam_is_refused():
    s = _on_cuda_in_name("darts")
    s.arch_optimizer.optimizers[0].defaults["fused"] = False
    assert any("Adam without fused=True" in r for r in graph_blockers(s))


@pytest.mark.gpu
@pytest.mark.parametrize("name, order", [("darts", 1), ("darts", 2), ("fairdarts", 1), ("ddarts", 1),
                                         ("darts+cs10", 1)])
def test_replayed_steps_search_like_eager_steps(name, order):
    """Same seed, same batches: 2 eager warm-up calls, a capture, replays, a learning-rate change
    (a second capture) and a smaller last batch (eager) give the alphas, weights and epoch metrics
    (the parts' own meters too: FairDARTS L_01, D-DARTS L_AB) of plain eager steps. In float64: the
    atomics of cuDNN's weight gradients differ from run to run, and 15 steps of a tiny supernet would
    grow fp32 differences past any tolerance that still means something."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _replay_equals_eager(name, order)
    finally:
        torch.set_default_dtype(dtype)


def _replay_equals_eager(name: str, order: int) -> None:
    def build():
        torch.manual_seed(0)
        return build_searcher(name, {"C": 8, "layers": 5, "order": order, "epochs": 2}, DataShape(1, 16, 10), "cuda")

    eager, graphed = build(), build()
    stepper = GraphedStep(graphed, warmup=2)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g))
               for _ in range(14)]
    batches.append((batches[0][0][:5], batches[0][1][:5]))
    metrics = []
    for i, (x, y) in enumerate(batches):
        if i == 8:  # the cosine schedule lowers the weight lr: a capture of the old lr is stale
            metrics.append((eager.end_epoch(), graphed.end_epoch()))
        eager.step((x, y), (x.flip(0), y.flip(0)))
        stepper((x, y), (x.flip(0), y.flip(0)))
    metrics.append((eager.end_epoch(), graphed.end_epoch()))
    # CS-k (k = 10): epoch 0 replays only the graph without an alpha step, epoch 1 both graphs
    assert (stepper.captures, stepper.eager_steps) == (3 if name == "darts+cs10" else 2, 2)
    assert stepper.replays == len(batches) - 3
    assert graphed.global_step == eager.global_step == len(batches) and graphed.arch_steps == eager.arch_steps
    for a, b in zip(eager.arch_parameters(), graphed.arch_parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
    for a, b in zip(eager.weight_parameters(), graphed.weight_parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
    for m_eager, m_graphed in metrics:
        assert m_graphed.keys() == m_eager.keys() and {"train_loss", "val_acc"} <= m_eager.keys()
        for key, value in m_eager.items():
            assert m_graphed[key] == pytest.approx(value, rel=1e-7, abs=1e-9), key


@pytest.mark.gpu
def test_the_cuda_graph_option_searches_like_eager_steps():
    """``cuda_graph: true`` through the search loop (two epochs, an lr change between them, a smaller last
    batch) ends where the eager search ends (float64, as above)."""
    from dartboard.searchers.loop import run_search

    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        g = torch.Generator().manual_seed(2)
        data = [(torch.randn(16, 1, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g))
                for _ in range(6)] + [(torch.randn(5, 1, 16, 16, generator=g, dtype=torch.float64),
                                       torch.randint(0, 10, (5,), generator=g))]
        runs = []
        for graph in (False, True):
            torch.manual_seed(0)
            s = build_searcher("darts", {"C": 8, "layers": 5, "epochs": 2, "cuda_graph": graph}, DataShape(1, 16, 10),
                               "cuda")
            runs.append((s, run_search(s, data, data[::-1], epochs=2)))
        (eager, h_eager), (graphed, h_graphed) = runs
        assert graphed.graphed.replays > 0 and graphed.graphed.captures == 2
        for a, b in zip(eager.arch_parameters(), graphed.arch_parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
        for m_eager, m_graphed in zip(h_eager, h_graphed, strict=True):
            assert m_graphed["val_loss"] == pytest.approx(m_eager["val_loss"], rel=1e-7)
    finally:
        torch.set_default_dtype(dtype)


def test_a_capture_is_stale_after_an_epoch_or_a_changed_lr_or_weight_decay():
    """What a capture bakes in and may change between calls (epoch-end hooks and schedulers: R-DARTS ADA
    raises the weight decay, DARTS-PT masks ops, DARTOpti's warm-up epochs end) is in the key that makes
    the next call capture again."""
    s = build_searcher("darts", TINY, SHAPE)
    stepper = GraphedStep.__new__(GraphedStep)  # its key only: no capture on a CPU
    stepper.engine = s
    key = stepper._key()
    s.w_optimizer.param_groups[0]["weight_decay"] *= 10
    assert stepper._key() != key
    s.w_optimizer.param_groups[0]["weight_decay"] /= 10
    assert stepper._key() == key
    s.arch_optimizer.optimizers[0].param_groups[0]["lr"] = 0.5
    assert stepper._key() != key
    s.arch_optimizer.optimizers[0].param_groups[0]["lr"] = key[2][0]
    assert stepper._key() == key
    s.epoch += 1
    assert stepper._key() != key


def test_parts_that_cannot_be_captured_any_more_turn_the_steps_eager(caplog):
    """An epoch-end hook may change the parts (DARTS-PT's projection: ops skipped at weight 0, decided on
    the host): before each capture the blockers are checked again, and the search goes on eagerly, saying why."""
    s = _on_cuda_in_name("darts")
    stepper = GraphedStep(s, warmup=1)
    stepper.eager_steps = 1  # past the warm-up (a CUDA side stream)
    s.device = torch.device("cpu")  # the eager steps run here
    s.supernet.set_skip_zero_weights(True)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with caplog.at_level("WARNING", logger="dartboard"):
        stepper((x, y), (x, y))
        stepper((x, y), (x, y))
    assert "ops skipped where their weight is zero" in stepper.eager_reason
    assert stepper.graphs == {} and stepper.captures == 0 and s.global_step == 2
    assert sum("cuda_graph: eager steps from epoch 0 on" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------ the bookkeeping of replays, on the CPU
class _FakeStream:
    def __init__(self, device=None):
        pass

    def wait_stream(self, other):
        pass


class _FakeGraph:
    """A CPU stand-in for a CUDA graph, with a real graph's effects: the capture runs the step and then
    undoes everything it changed (a real capture runs no kernel); a replay runs the step again on the
    static buffers, rewrites the captured meters' tensors in place (a replay rewrites the graph's outputs)
    and changes no host-side counter (a replay runs no Python)."""

    stepper: GraphedStep | None = None

    def replay(self):
        from dartboard.searchers.base import EpochMeter

        stepper = _FakeGraph.stepper
        engine = stepper.engine
        due, record = next((d, c) for d, c in stepper.graphs.items() if c.graph is self)
        real = [owner.meter for owner, _ in record.meters]
        for owner, _ in record.meters:
            owner.meter = EpochMeter()
        counters = (engine.global_step, engine.arch_steps)
        engine.schedule.arch_step_due = lambda: due  # the graph's own choice (a replay runs no Python)
        x_train, y_train, x_val, y_val = stepper._static
        try:
            engine.eager_step((x_train, y_train), (x_val, y_val))
            for owner, captured in record.meters:
                assert owner.meter.sums.keys() == captured.sums.keys()
                for name, value in owner.meter.sums.items():
                    captured.sums[name].copy_(value)
        finally:
            del engine.schedule.arch_step_due
            for (owner, _), meter in zip(record.meters, real, strict=True):
                owner.meter = meter
            engine.global_step, engine.arch_steps = counters


def _fake_capture(graph):
    import contextlib
    import copy

    @contextlib.contextmanager
    def capture():
        engine = _FakeGraph.stepper.engine
        net = {k: v.clone() for k, v in engine.supernet.state_dict().items()}
        alphas = [a.detach().clone() for a in engine.arch_parameters()]
        optimizers = [engine.w_optimizer, *engine.arch_optimizer.optimizers]
        states = [copy.deepcopy(o.state_dict()) for o in optimizers]
        yield
        engine.supernet.load_state_dict(net)
        with torch.no_grad():
            for a, saved in zip(engine.arch_parameters(), alphas, strict=True):
                a.copy_(saved)
        for o, state in zip(optimizers, states, strict=True):
            o.load_state_dict(state)

    return capture()


@pytest.mark.parametrize("name, options, graphs", [("darts", {}, 2), ("fairdarts", {}, 2), ("ddarts", {}, 2),
                                                   ("darts+cs10", {"schedule": {"name": "constant", "k": 3}}, 4)])
def test_replays_keep_the_books_of_eager_steps_on_a_stand_in_graph(name, options, graphs, monkeypatch):
    """GraphedStep's own logic, on the CPU, with a stand-in graph that has a real one's effects: warm-up
    calls, static buffers, the meters (the engine's and the parts': FairDARTS L_01, D-DARTS L_AB), the
    step counters, a smaller batch run eagerly and a new capture after an epoch; under CS-k (an alpha step
    every k-th iteration) a graph with and one without the alpha step. The search, its metrics and its
    counters (the schedule's too) equal plain eager steps'."""
    import contextlib

    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", _fake_capture)
    from dartboard.searchers import graphed as graphed_module

    blockers = graphed_module.graph_blockers  # the checks before each capture, all but the device
    monkeypatch.setattr(graphed_module, "graph_blockers", lambda engine, device=True: blockers(engine, device=False))

    def build():
        torch.manual_seed(0)
        return build_searcher(name, {"C": 4, "layers": 3, "epochs": 2, **options}, SHAPE)

    eager, graphed = build(), build()
    stepper = _FakeGraph.stepper = GraphedStep(graphed, warmup=2)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(9)]
    batches.insert(5, (batches[0][0][:3], batches[0][1][:3]))  # another shape, mid-epoch: eager
    metrics = []
    for i, (x, y) in enumerate(batches):
        if i == 7:  # a new epoch (and a lower weight lr): a new capture
            metrics.append((eager.end_epoch(), graphed.end_epoch()))
        eager.step((x, y), (x.flip(0), y.flip(0)))
        stepper((x, y), (x.flip(0), y.flip(0)))
    metrics.append((eager.end_epoch(), graphed.end_epoch()))
    assert (stepper.eager_steps, stepper.captures, stepper.replays) == (2, graphs, len(batches) - 3)
    assert (graphed.global_step, graphed.arch_steps) == (eager.global_step, eager.arch_steps)
    assert graphed.global_step == 10 and graphed.arch_steps == (10 if graphs == 2 else 4)
    assert graphed.schedule.state_dict() == eager.schedule.state_dict()
    for a, b in zip(eager.arch_parameters(), graphed.arch_parameters(), strict=True):
        torch.testing.assert_close(b, a)
    for a, b in zip(eager.weight_parameters(), graphed.weight_parameters(), strict=True):
        torch.testing.assert_close(b, a)
    for m_eager, m_graphed in metrics:
        assert m_graphed.keys() == m_eager.keys() and {"train_loss", "val_acc"} <= m_eager.keys()
        for key, value in m_eager.items():
            assert m_graphed[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
