import contextlib
import math

import pytest
import torch
from torch.func import functional_call

from dartboard.data.catalog import load_dataset
from dartboard.data.datasets import make_loader, search_split
from dartboard.searchers.base import seed_everything
from dartboard.searchers.config import EngineConfig
from dartboard.searchers.discretize import darts_parse
from dartboard.searchers.loop import run_search
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import SPACES, CellSpace, register_space
from dartboard.spaces.cells import edge_list
from dartboard.spaces.genotype import DartsGenotype, Edge

TINY = CellSpace.uniform("tiny-test", ["skip_connect", "sep_conv_3x3", "avg_pool_3x3"], steps=2)
if TINY.name not in SPACES:
    register_space(TINY)


def tiny_searcher(**kw):
    return build_searcher("darts", {"space": TINY.name, "C": 4, "layers": 3, "steps": 2, "multiplier": 2,
                                    "epochs": 4, **kw}, DataShape(1, 8, 10))


def test_published_defaults():
    c = EngineConfig()
    assert (c.C, c.layers, c.epochs, c.w_lr, c.w_lr_min, c.w_momentum, c.w_weight_decay, c.grad_clip) == (
        16, 8, 50, 0.025, 0.001, 0.9, 3e-4, 5.0)
    assert (c.arch_lr, c.arch_betas, c.arch_weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    s = build_searcher("darts", {"C": 4, "layers": 3}, DataShape(1, 8, 10))
    assert s.parts.alpha_init.scale == 1e-3  # DARTS: alpha = 1e-3 * randn


def test_second_order_matches_finite_difference_of_unrolled_objective():
    """dL_val(w', a)/da with w' = w - xi (grad_w L_train(w, a) + wd w + momentum buf), by central differences,
    vs the searcher's hypergradient, after real search steps (non-empty momentum buffer, wd > 0)."""
    seed_everything(0)
    s = tiny_searcher(order=2, w_lr=0.5, w_weight_decay=0.05, unrolled_r=1e-3)
    # Finite differences need a smooth function: a tiny ReLU network flips units under a 1e-3 shift,
    # which makes gradients jump. SiLU keeps the network smooth; the formula under test is unchanged.
    for module in list(s.supernet.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.SiLU())
    s.supernet.double()
    s.arch.double()
    x_tr, y_tr = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    x_va, y_va = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    for i in range(2):  # real weight (and alpha) steps: the momentum buffers fill
        g = torch.Generator().manual_seed(10 + i)
        s.step((torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)),
               (x_va, y_va))
    group = s.w_optimizer.param_groups[0]
    xi, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
    assert wd == 0.05 and momentum == 0.9
    names = [n for n, _ in s.supernet.named_parameters()]
    w0 = [p.detach().clone() for _, p in s.supernet.named_parameters()]
    bufs = [s.w_optimizer.state[p]["momentum_buffer"].clone() for _, p in s.supernet.named_parameters()]
    assert all(b.abs().sum() > 0 for b in bufs)
    alphas = list(s.arch.parameters())

    def objective(alpha_values):
        cw = [torch.softmax(a, -1) for a in alpha_values]
        w = [p.clone().requires_grad_(True) for p in w0]
        loss_tr = s.objective.loss(functional_call(s.supernet, dict(zip(names, w, strict=True)), (x_tr, cw)), y_tr)
        g = torch.autograd.grad(loss_tr, w)
        unrolled = {n: p - xi * (gi + wd * p + momentum * b) for n, p, gi, b in zip(names, w0, g, bufs, strict=True)}
        return s.objective.loss(functional_call(s.supernet, unrolled, (x_va, cw)), y_va)

    base = [a.detach().clone() for a in alphas]
    eps = 1e-5
    fd = []
    for gi, a in enumerate(base):
        grad = torch.zeros_like(a)
        for idx in range(a.numel()):
            plus = [b.clone() for b in base]
            minus = [b.clone() for b in base]
            plus[gi].view(-1)[idx] += eps
            minus[gi].view(-1)[idx] -= eps
            grad.view(-1)[idx] = (objective(plus) - objective(minus)) / (2 * eps)
        fd.append(grad)
    hyper = s.unrolled_grads(x_tr, y_tr, x_va, y_va)
    first = torch.autograd.grad(s.objective.loss(s.supernet(x_va, s.group_weights()), y_va), alphas)
    fd_flat, hyper_flat = torch.cat([g.flatten() for g in fd]), torch.cat([g.flatten() for g in hyper])
    first_flat = torch.cat([g.flatten() for g in first])
    rel = (hyper_flat - fd_flat).norm() / fd_flat.norm()
    assert rel < 1e-3, rel
    # the second-order term matters here: the first-order gradient is far off
    assert (first_flat - fd_flat).norm() / fd_flat.norm() > 10 * rel


def test_the_hessian_shift_has_norm_r_along_the_unrolled_validation_gradient():
    """Eq 2.8's finite difference moves w by +-R grad_w' L_val with R = r / ||grad_w' L_val||: each shift has norm r
    whatever the gradient's size. (The hypergradient itself hardly depends on R on a smooth function, so the test of
    its value cannot see a missing normalisation.)"""
    from dartboard.searchers.hypergradient import unrolled_arch_grads

    torch.manual_seed(0)
    network = torch.nn.Linear(3, 2).double()
    alpha = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    w_optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    shifts = []

    def loss_fn(params, x, y, weights, amp=True):
        output = functional_call(network, params, (x,)) * torch.softmax(weights[0], -1)
        if not amp:  # the two shifted passes of the finite difference
            shifts.append(torch.cat([(params[n] - p).detach().flatten() for n, p in network.named_parameters()]))
        return 50.0 * ((output - y) ** 2).sum(), output  # a large loss: ||grad|| far from 1

    batches = tuple(torch.randn(4, k, dtype=torch.float64) for k in (3, 2, 3, 2))
    r = 0.01
    unrolled_arch_grads(network, loss_fn, [alpha], lambda: [alpha], lambda gw: torch.zeros((), dtype=torch.float64),
                        w_optimizer, lambda t: t, batches, r, lambda *a: None)
    assert len(shifts) == 2
    plus, minus = shifts
    assert float(plus.norm()) == pytest.approx(r, rel=1e-6)  # R is computed in fp32
    assert torch.allclose(minus, -plus, atol=1e-15)


def test_learning_rate_schedules_the_searcher_uses_by_hand():
    """Weights: cosine from w_lr to w_lr_min over the epochs (DARTS); alphas with lr_schedule cosine:
    cosine from arch_lr to lr_min over the epochs after the warm-up, constant during it. Read from the
    searcher's own optimizers, epoch by epoch (the lr each epoch trained with)."""
    s = tiny_searcher(epochs=4, w_lr=0.025, w_lr_min=0.001, arch_lr=0.01, warmup_epochs=1,
                      **{"arch_optimizer.lr_schedule": "cosine", "arch_optimizer.lr_min": 0.002})
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    w_lrs, a_lrs = [], []
    for _ in range(4):
        s.step((x, y), (x, y))
        w_lrs.append(s.w_optimizer.param_groups[0]["lr"])
        a_lrs.append(s.arch_optimizer.lr)
        s.end_epoch()
    assert w_lrs == pytest.approx([0.001 + 0.012 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert a_lrs == pytest.approx([0.01, 0.01, 0.002 + 0.004 * (1 + math.cos(math.pi / 3)),
                                   0.002 + 0.004 * (1 + math.cos(2 * math.pi / 3))])


def test_alpha_step_descends_validation_loss():
    seed_everything(1)
    s = tiny_searcher(arch_lr=0.05, arch_weight_decay=0.0)
    s.supernet.eval()  # fixed BN statistics: the loss is a function of alpha only
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before = float(s.objective.loss(s.supernet(x, s.group_weights()), y))
    for _ in range(5):
        s.arch_step(x, y, x, y)
    after = float(s.objective.loss(s.supernet(x, s.group_weights()), y))
    assert after < before


def test_darts_parse_by_hand():
    edges = edge_list(2)  # (0,2) (1,2) (0,3) (1,3) (2,3)
    prims = [("none", "skip_connect", "sep_conv_3x3")] * 5
    w = torch.tensor([
        [0.9, 0.05, 0.05],  # node 2 from 0: none dominates but the best non-none is 0.05
        [0.1, 0.2, 0.7],  # node 2 from 1: sep 0.7
        [0.0, 0.6, 0.4],  # node 3 from 0: skip 0.6
        [0.0, 0.1, 0.3],  # node 3 from 1: sep 0.3 (dropped)
        [0.0, 0.2, 0.5],  # node 3 from 2: sep 0.5
    ])
    cell = darts_parse(w, edges, prims)
    assert cell.edges == (Edge("skip_connect", 0, 2), Edge("sep_conv_3x3", 1, 2),
                          Edge("skip_connect", 0, 3), Edge("sep_conv_3x3", 2, 3))
    assert cell.concat == (2, 3)
    w[1, 2] = float("nan")  # a diverged search: say so, do not derive an arbitrary cell
    with pytest.raises(FloatingPointError, match="'sep_conv_3x3' is nan: the search diverged"):
        darts_parse(w, edges, prims)


HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def test_step_has_no_host_sync_points(monkeypatch):
    """The step reads no tensor value on the host (CUDA-graph friendly): no .item(), float(t), int(t),
    bool(t) (an `if` on a tensor), .tolist(), .cpu() or .numpy() on any tensor."""
    s = tiny_searcher()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    calls = []

    def recorder(name):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        return wrapped

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, recorder(name))
    s.step((x, y), (x, y))  # the first step (lazy optimizer state is created) and a later one
    s.step((x, y), (x, y))
    monkeypatch.undo()
    assert calls == []
    # the check sees each kind of read (it would catch one in the step)
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, recorder(name))
    t = torch.ones(())
    t.item(), float(t), int(t), bool(t), t.tolist(), t.cpu(), t.numpy()
    monkeypatch.undo()
    assert sorted(calls) == sorted(HOST_READS)


def test_search_on_digits_moves_alphas_and_learns():
    seed_everything(0)
    splits = load_dataset("digits")
    train, val = search_split(splits.train, seed=0)
    tl = make_loader(train, 64, shuffle=True, seed=0, drop_last=True)
    vl = make_loader(val, 64, shuffle=True, seed=1, drop_last=True)
    s = build_searcher("darts", {"C": 4, "layers": 3, "epochs": 3, "arch_lr": 3e-3}, DataShape(1, 8, 10))
    entropy0 = sum(float(-(w * w.log()).sum()) for w in s.group_weights())
    history = run_search(s, tl, vl, 3)
    assert history[-1]["val_acc"] > history[0]["val_acc"]
    assert history[-1]["val_acc"] > 0.5
    entropy1 = sum(float(-(w * w.log()).sum()) for w in s.group_weights())
    assert entropy1 < entropy0  # mixing weights moved away from uniform
    genotype = s.derive()
    assert isinstance(genotype, DartsGenotype) and len(genotype.normal.edges) == 8
    assert len(s.history) == 3 and len(s.history[0]["weights"]) == 2


def test_checkpoint_round_trip_continues_identically():
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    seed_everything(3)
    a = tiny_searcher()
    a.step((x, y), (x, y))
    a.end_epoch()
    state = a.state_dict()
    seed_everything(99)
    b = tiny_searcher()
    b.load_state_dict(state)
    a.step((x, y), (x, y))
    b.step((x, y), (x, y))
    for pa, pb in zip(list(a.arch.parameters()) + list(a.supernet.parameters()),
                      list(b.arch.parameters()) + list(b.supernet.parameters()), strict=True):
        assert torch.equal(pa, pb)
    assert b.epoch == 1


@pytest.mark.parametrize("precision", ["bf16"])
def test_autocast_step_runs_on_cpu(precision):
    s = tiny_searcher(precision=precision)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    s.step((x, y), (x, y))
    m = s.end_epoch()
    assert math.isfinite(m["train_loss"])


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="order: expected 1 or 2, got 3"):
        EngineConfig(order=3)
    with pytest.raises(ValueError, match="precision"):
        EngineConfig(precision="fp8")
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        build_searcher("darts", {"colour": 1}, DataShape(1, 8, 10))
    with pytest.raises(ValueError, match="unknown searcher 'dorts'"):
        build_searcher("dorts", {}, DataShape(1, 8, 10))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("order", [1, 2])
def test_search_step_on_gpu(precision, order):
    s = build_searcher("darts", {"C": 8, "layers": 5, "epochs": 2, "order": order, "precision": precision},
                       DataShape(1, 8, 10), "cuda")
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    before = [a.detach().clone() for a in s.arch.parameters()]
    for _ in range(3):
        s.step((x, y), (x, y))
    m = s.end_epoch()
    assert math.isfinite(m["train_loss"]) and math.isfinite(m["val_loss"])
    assert any(not torch.equal(b, a.detach()) for b, a in zip(before, s.arch.parameters(), strict=True))


def test_the_unrolled_step_moves_the_weights_in_a_few_ops(monkeypatch):
    """The unrolled weights w' and the Hessian's shifted weights w +- R d_w come from foreach ops: outside the
    network's passes and gradients, the second-order hypergradient makes a few calls for all weight tensors (a
    loop over them made 15 per tensor; R's sum keeps 2 per tensor, see hypergradient.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dartboard.searchers import hypergradient

    class Count(TorchDispatchMode):
        calls, paused = 0, False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not Count.paused and func.overloadpacket not in (torch.ops.aten.detach, torch.ops.aten.alias):
                Count.calls += 1
            return func(*args, **(kwargs or {}))

    def paused(fn):
        def run(*args, **kwargs):
            Count.paused = True
            try:
                return fn(*args, **kwargs)
            finally:
                Count.paused = False
        return run

    seed_everything(0)
    s = tiny_searcher(order=2)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    s.step((x, y), (x, y))  # the momentum buffers exist
    monkeypatch.setattr(torch.autograd, "grad", paused(torch.autograd.grad))
    loss_fn = paused(hypergradient.functional_loss(s.supernet, s.autocast, s.objective.loss, s.forward_weights))
    n = len(list(s.supernet.parameters()))
    with Count():
        hypergradient.unrolled_arch_grads(s.supernet, loss_fn, s.arch_parameters(), paused(s.group_weights),
                                          paused(s.regularization), s.w_optimizer, s.arch_scaler.scale,
                                          (x, y, x, y), 0.01, lambda *a: None)
    assert n > 20 and Count.calls < 3 * n, (n, Count.calls)


def test_the_unrolled_steps_forward_skips_untying_only_where_no_tensor_has_two_names(monkeypatch):
    """``functional_loss`` swaps the parameters without PyTorch's per-call untying of shared tensors when none is
    shared (a supernet); a module whose one weight has two names still sees the new tensor under both."""
    from dartboard.searchers import hypergradient
    from dartboard.searchers.hypergradient import _has_tied_tensors, functional_loss

    searcher = tiny_searcher()
    assert not _has_tied_tensors(searcher.supernet)
    ties = []
    real = hypergradient.functional_call
    monkeypatch.setattr(hypergradient, "functional_call",
                        lambda *a, **k: ties.append(k["tie_weights"]) or real(*a, **k))
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    searcher.unrolled_grads(x, y, x, y)
    assert ties == [False] * 4  # the train gradient, the unrolled weights, the two shifted ones
    monkeypatch.undo()

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x, weights):
            return self.b(self.a(x)) * weights[0]

    net = Tied()
    assert _has_tied_tensors(net)
    new = torch.eye(2) * 3.0  # given under the one name named_parameters() lists
    loss_fn = functional_loss(net, contextlib.nullcontext, lambda out, y: out.sum())
    x = torch.ones(1, 2)
    loss, out = loss_fn({"a.weight": new}, x, None, [torch.tensor(1.0)], amp=False)
    torch.testing.assert_close(out, torch.full((1, 2), 9.0))  # both layers took the new weight: 3 * 3 * 1
