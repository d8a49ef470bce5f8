"""The one engine: presets are compositions of named parts, every composition runs or is refused
before the search starts with an error that names the conflict, options are validated by name."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from dartboard.searchers.compose import PART_KINDS
from dartboard.searchers.discretize import DISCRETIZERS
from dartboard.searchers.parts.activations import ACTIVATIONS
from dartboard.searchers.parts.arch_optimizers import ARCH_OPTIMIZERS
from dartboard.searchers.parts.groupings import GROUPINGS
from dartboard.searchers.parts.inits import ALPHA_INITS
from dartboard.searchers.parts.regularizers import REGULARIZERS
from dartboard.searchers.protocol import Searcher
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.catalog import SPACES, CellSpace, register_space

torch.set_num_threads(1)

TINY = "test-engine-tiny"
if TINY not in SPACES:  # 1 step (2 edges), 3 cheap ops
    register_space(CellSpace.uniform(TINY, ("skip_connect", "max_pool_3x3", "sep_conv_3x3"), steps=1))
SHAPE = DataShape(1, 8, 10)
SMALL = {"space": TINY, "steps": 1, "multiplier": 1, "C": 4, "layers": 3, "stem_multiplier": 1, "epochs": 2}


def data(n: int = 2, seed: int = 0, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def build(name: str = "darts-variant", seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_searcher(name, {**SMALL, **options}, SHAPE)


def test_darts_variant_without_options_is_bit_identical_to_darts():
    batches = data(4)
    a, b = build("darts"), build("darts-variant")
    for s in (a, b):
        for i in range(6):
            s.step(batches[i % 4], batches[(i + 1) % 4])
        s.end_epoch()
    for x, y in zip(a.arch_parameters() + a.weight_parameters(), b.arch_parameters() + b.weight_parameters(),
                    strict=True):
        assert torch.equal(x, y)
    assert a.derive() == b.derive()


def test_every_searcher_satisfies_the_protocol():
    s = build("ddarts")
    assert isinstance(s, Searcher)
    assert s.epochs == 2 and s.train_fraction == 0.5 and not s.stop_requested
    assert [g.name for g in s.alpha_groups()] == ["cell_0", "cell_1", "cell_2"]
    assert s.space_info == {"space": TINY, "layers": 3, "reductions": (1, 2)}


# ----------------------------------------------------------------------------- all pairs of parts
#: The choices of every kind of part (the registries' entries) plus the hypergradient order.
CHOICES: dict[str, list] = {
    "grouping": sorted(GROUPINGS),
    "alpha_init": sorted(ALPHA_INITS),
    "activation": sorted(ACTIVATIONS),
    "arch_optimizer": sorted(ARCH_OPTIMIZERS),
    "schedule": [{"name": "alternate"}, {"name": "constant", "k": 2}, {"name": "fimt", "k": 2}],
    "regularizers": [[name] for name in sorted(REGULARIZERS)] + [[]],
    "hooks": [[{"name": "rdarts", "every": 1, "start_epoch": 0}], [{"name": "distance_stop"}], []],
    "discretizer": sorted(DISCRETIZERS),
    "order": [1, 2],
}


LAYER_DISCRETIZERS = {n for n, f in DISCRETIZERS.items() if getattr(f, "row_kind", "edge") == "layer"}


def pairwise_cover(choices: dict[str, list]) -> list[dict[str, object]]:
    """A greedy all-pairs covering set: every pair of choices of two kinds is in some row."""
    kinds = list(choices)
    uncovered = {(k1, i, k2, j) for k1, k2 in itertools.combinations(kinds, 2)
                 for i in range(len(choices[k1])) for j in range(len(choices[k2]))}
    rows = []
    while uncovered:
        k1, i, k2, j = min(uncovered)
        row = {k1: i, k2: j}
        for k in kinds:  # fill the others to cover the most still-uncovered pairs
            if k in row:
                continue
            row[k] = max(range(len(choices[k])), key=lambda c, k=k: sum(
                (a, row[a], k, c) in uncovered or (k, c, a, row[a]) in uncovered for a in row))
        uncovered -= {(a, row[a], b, row[b]) for a, b in itertools.combinations(kinds, 2)}
        rows.append({k: choices[k][row[k]] for k in kinds})
    return rows


def expected_conflict(row: dict[str, object]) -> str | None:
    if row["discretizer"] in LAYER_DISCRETIZERS:  # chain spaces' parses, refused on a cell space
        return f"discretizer '{row['discretizer']}' parses layer rows"
    if row["alpha_init"] == "encoded":
        return "alpha_init 'encoded'"
    if row["order"] == 2 and ["ablation"] == row["regularizers"]:
        return "regularizer 'ablation'"
    return None


ROWS = pairwise_cover(CHOICES)


def test_the_cover_has_every_pair():
    for (k1, c1s), (k2, c2s) in itertools.combinations(CHOICES.items(), 2):
        for c1, c2 in itertools.product(c1s, c2s):
            assert any(r[k1] == c1 and r[k2] == c2 for r in ROWS), (k1, c1, k2, c2)
    assert len(ROWS) < 90  # far fewer than the 600-odd pairs (the one-shot samplers and regularizers included)


@pytest.mark.parametrize("row", ROWS, ids=[f"row{i}" for i in range(len(ROWS))])
def test_every_pair_of_parts_runs_one_step_or_is_refused_by_name(row):
    conflict = expected_conflict(row)
    if conflict is not None:
        with pytest.raises(ValueError, match=conflict):
            build(**row)
        return
    s = build(**row)
    batches = data(2)
    s.step(batches[0], batches[1])
    metrics = s.end_epoch()
    assert math.isfinite(metrics["train_loss"])
    if row["schedule"]["name"] == "fimt":  # FIMT steps once the Fisher trace falls under its threshold
        assert metrics["arch_steps"] == 0.0
    else:  # alternate and CS-k take their first alpha step at once (a projection may hold alphas at 0)
        assert metrics["arch_steps"] == 1.0 and math.isfinite(metrics["val_loss"])
        assert all(torch.isfinite(a).all() for a in s.arch_parameters())
    assert s.state_dict()["counters"]["global_step"] == 1
    assert s.derive().kind in ("darts", "cells")


def test_the_part_kinds_are_the_registries():
    assert set(PART_KINDS) == {"grouping", "alpha_init", "activation", "arch_optimizer", "schedule", "perturbation",
                               "mixed_op", "discretizer", "objective"}


# ----------------------------------------------------------------------------- compositions
def test_ddarts_takes_a_schedule_and_regularizers():
    """The issue's command: dartboard search --searcher ddarts --set schedule=fimt --set 'regularizers=[proximity]'."""
    s = build("ddarts", schedule="fimt", regularizers=["proximity"])
    assert [type(r).__name__ for r in s.regularizers] == ["Proximity"]  # the user's list replaces the preset's
    assert s.train_fraction == pytest.approx(10 / 11) and len(s.arch_optimizer.optimizers) == 3
    t = build("ddarts", schedule={"name": "constant", "k": 2},
              regularizers=["proximity", {"name": "zero_one", "per_group": True}, "ablation"])
    batches = data(2)
    for i in range(4):
        t.step(batches[i % 2], batches[(i + 1) % 2])
    assert math.isfinite(t.end_epoch()["val_loss"])


@pytest.mark.parametrize("name", ["darts", "ddarts", "fairdarts", "darts+pr+fimt"])
@pytest.mark.parametrize("activation", ["simplex", "capped_simplex"])
def test_a_projected_activation_is_always_projected(name, activation):
    s = build(name, activation=activation, arch_lr=0.5)
    batches = data(2)
    for i in range(4):
        s.step(batches[i % 2], batches[(i + 1) % 2])
        for a in s.arch_parameters():
            total = a.sum(dim=1)
            assert (a >= 0).all()
            assert (total <= 1 + 1e-6).all() if activation == "capped_simplex" else torch.allclose(
                total, torch.ones_like(total))


@pytest.mark.parametrize("name", ["darts", "ddarts"])
def test_crb_always_masks(name):
    s = build(name, activation="crb", arch_lr=0.5, alpha_init={"name": "uniform", "scale": 0.2})
    batches = data(2)
    for i in range(6):
        s.step(batches[i % 2], batches[(i + 1) % 2])
    masked = [(c, e, o) for c, cell in enumerate(s.supernet.active_ops()) for e, active in enumerate(cell)
              for o in range(3) if o not in active]
    assert masked, "no op was masked"
    for c, e, o in masked:
        assert float(s.arch[s.supernet.cell_group[c]][e, o]) <= 0.0


def test_dartopti_is_a_preset_of_the_engine():
    s = build_searcher("dartopti", {"C": 4, "epochs": 2, "regularizers": ["proximity"], "schedule": "constant"},
                       SHAPE)
    assert type(s).__name__ == "Engine" and [g.name for g in s.alpha_groups()] == ["type_0"]
    batches = data(2)
    s.step(batches[0], batches[1])
    s.end_epoch()


# ----------------------------------------------------------------------------- options
def test_unknown_parts_and_options_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown activation 'softmx'; known activations: capped_simplex, crb"):
        build(activation="softmx")
    with pytest.raises(ValueError, match="discretizer 'sparse' has no option 'sigma_treshold'; its options: "
                                         "sigma_threshold"):
        build("ddarts", discretizer_options={"sigma_treshold": 0.8})
    with pytest.raises(ValueError, match="regularizer 'zero_one' has no option 'wieght'"):
        build(regularizers=[{"name": "zero_one", "wieght": 2}])
    with pytest.raises(ValueError, match="unknown option 'w_ab'"):  # ddarts-lf has no ablation term
        build("ddarts-lf", w_ab=0.5)
    with pytest.raises(ValueError, match="regularizers.ablation.weight: this search has no regularizers named"):
        build("fairdarts", **{"regularizers.ablation.weight": 0.5})
    with pytest.raises(ValueError, match="arch_lr: expected a number >= 0"):
        build(arch_lr="fast")


def test_aliases_and_dotted_paths_set_part_options():
    s = build("ddarts", w01=3.0, w_ab=0.25, sigma_threshold=0.7, **{"schedule": "constant", "schedule.k": 4})
    zero_one, ablation = s.regularizers
    assert zero_one.weight == 3.0 and ablation.weight == 0.25 and s.schedule.k == 4
    assert s.discretizer.keywords == {"sigma_threshold": 0.7}
    t = build("fairdarts", **{"regularizers.zero_one.weight": 2.0, "discretizer": "threshold",
                              "discretizer.sigma_threshold": 0.6})
    assert t.regularizers[0].weight == 2.0 and t.discretizer.keywords == {"sigma_threshold": 0.6}
    # a study's params name a list's part by its name in brackets; `search --set` takes the same path (was refused)
    u = build("darts+admm", **{"regularizers[admm].rho": 0.5, "regularizers[admm].lambda_u": 1})
    assert (u.regularizers[0].rho, u.regularizers[0].lambda_u) == (0.5, 1.0)
    with pytest.raises(ValueError, match=r"regularizers\[nope\]\.rho: this search has no regularizers named 'nope'"):
        build("darts+admm", **{"regularizers[nope].rho": 0.5})


@pytest.mark.parametrize("name, options, message", [
    ("darts+admm", {"regularizers.admm.rho": -1}, "regularizer 'admm': rho: expected a number >= 0, got -1"),
    ("darts+admm", {"regularizers.admm.rho": "abc"}, "regularizer 'admm': rho: expected a number >= 0, got 'abc'"),
    ("darts+admm", {"regularizers.admm.lambda_u": 2}, "regularizer 'admm': lambda_u: expected a number in [0, 1], "
                                                       "got 2"),
    ("darts+admm", {"regularizers.admm.period": 1.5}, "regularizer 'admm': period: expected an integer >= 1, got 1.5"),
    ("darts+pr", {"regularizers.proximity.rho": -0.1}, "regularizer 'proximity': rho: expected a number >= 0"),
    ("fairdarts", {"regularizers.zero_one.weight": float("nan")}, "regularizer 'zero_one': weight: expected a number "
                                                                   ">= 0, got nan"),
    ("beta-darts", {"regularizers.beta_decay.max_weight": True}, "regularizer 'beta_decay': max_weight: expected a "
                                                                  "number >= 0, got True"),
    ("snas", {"activation.tau_max": "x"}, "activation 'gumbel': tau_max: expected a number, got 'x'"),  # a TypeError
    ("ddarts", {"w_ab": -1}, "regularizer 'ablation': weight: expected a number >= 0, got -1"),  # D-DARTS' L_AB
])
def test_a_regularizers_value_out_of_its_range_is_refused_naming_the_part_and_option(name, options, message):
    """Before: a negative rho or weight ran a search that pushed the alphas away from the discrete architecture
    (or from 0/1), and 'abc' was "could not convert string to float" without the option's name."""
    with pytest.raises(ValueError, match=re.escape(message)):
        build(name, **options)


def test_a_cells_output_of_its_last_nodes_is_the_genotypes_concat():
    """``multiplier``: the supernet's cells concatenate their last ``multiplier`` nodes, and the genotype says so (its
    concat was every node, a network other than the one searched); more nodes than the cell has are refused (was a
    TypeError inside the supernet's forward)."""
    def darts(**options):
        torch.manual_seed(0)
        return build_searcher("darts", {"C": 4, "layers": 3, **options}, SHAPE)

    s = darts(multiplier=2)
    batches = data(2)
    s.step(batches[0], batches[1])  # the cells' outputs (2 nodes) fit the next cells' preprocessing
    genotype = s.derive()
    assert genotype.normal.concat == genotype.reduce.concat == (4, 5)
    assert darts().derive().normal.concat == (2, 3, 4, 5)  # DARTS' multiplier 4: every node
    with pytest.raises(ValueError, match=r"multiplier: a cell concatenates its last 1 to 4 nodes \(space 'darts' has "
                                         r"4 steps\), got 9"):
        darts(multiplier=9)


def test_an_integral_float_is_an_integer_option():
    assert build("darts+admm", **{"regularizers.admm.period": 10.0}).regularizers[0].period == 10


def test_unrolled_step_reads_momentum_and_weight_decay_from_the_optimizer():
    """A hook that raised the weight decay (R-DARTS ADA) is seen by the second-order step."""
    batches = data(2)
    raised = build(order=2, w_weight_decay=0.1)
    hooked = build(order=2)
    for group in hooked.w_optimizer.param_groups:
        group["weight_decay"] = 0.1
    for s in (raised, hooked):
        s.weight_step(*batches[0])  # a momentum buffer
    (x, y), (xv, yv) = batches
    for a, b in zip(raised.unrolled_grads(x, y, xv, yv), hooked.unrolled_grads(x, y, xv, yv), strict=True):
        assert torch.equal(a, b)
    plain = build(order=2)
    plain.weight_step(*batches[0])
    assert any(not torch.equal(a, b) for a, b in zip(plain.unrolled_grads(x, y, xv, yv),
                                                      hooked.unrolled_grads(x, y, xv, yv), strict=True))


# ----------------------------------------------------------------------------- mixed precision
def _alpha_grads(precision: str, order: int, seed: int = 0) -> list[torch.Tensor]:
    s = build(precision=precision, order=order, C=8, seed=seed)
    (x, y), (xv, yv) = data(2, size=16, seed=seed)
    grads = s.unrolled_grads(x, y, xv, yv) if order == 2 else s.first_order_grads(xv, yv)
    scale = float(s.arch_scaler.scale(torch.ones(())))
    return [g.float() / scale for g in grads]


#: Seeds (supernet and batches) whose alpha gradients are compared together. One draw is not enough: the bf16
#: second-order hypergradient of this tiny supernet is 0.13-0.46 off in relative norm across seeds (its cosine
#: 0.91-0.99), on the batched engine of 2026-12-05 before and after its stride-2 skips became matrix products alike
#: (3 of 8 single seeds beyond 0.3 either way); pooled over 8 seeds, 0.244 and 0.248 (cosine 0.971 and 0.970).
SEEDS = range(8)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_alpha_gradients_match_fp32(precision, order):
    reference = torch.cat([g.flatten() for seed in SEEDS for g in _alpha_grads("fp32", order, seed)])
    low = torch.cat([g.flatten() for seed in SEEDS for g in _alpha_grads(precision, order, seed)])
    assert torch.isfinite(low).all()
    # bf16 keeps 8 bits of mantissa, fp16 11: a few percent per element, the direction kept
    assert (low - reference).norm() / reference.norm() < 0.3
    assert torch.nn.functional.cosine_similarity(low, reference, dim=0) > 0.95


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_search_steps_run_on_cpu(precision, order):
    """fp16 with order 2 used to fail ("Attempted step but _scale is None"): the unrolled
    hypergradient was never scaled."""
    s = build(precision=precision, order=order)
    before = [a.detach().clone() for a in s.arch_parameters()]
    batches = data(2)
    for i in range(3):
        s.step(batches[i % 2], batches[(i + 1) % 2])
    metrics = s.end_epoch()
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    assert any(not torch.equal(b, a) for b, a in zip(before, s.arch_parameters(), strict=True))


def test_mixing_entropy_by_hand():
    from dartboard.searchers.base import mixing_entropy

    uniform, onehot = torch.full((2, 4), 0.25), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert mixing_entropy([uniform]) == pytest.approx(1.0)
    assert mixing_entropy([onehot]) == pytest.approx(0.0, abs=1e-6)
    # sigmoid-style weights are normalised per row: [0.5, 0.5] -> 1; [0.9, 0.1] -> H(0.9, 0.1) / log 2
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert mixing_entropy([torch.tensor([[0.5, 0.5], [0.9, 0.1]])]) == pytest.approx((1.0 + h) / 2)
    assert mixing_entropy([uniform, onehot]) == pytest.approx(2 / 3)  # the mean over all rows


def test_the_weight_optimizer_steps_all_parameters_in_a_few_ops_on_the_cpu():
    """SGD's CPU default is a Python loop, 4 aten ops per parameter tensor; the engine asks for the foreach
    implementation (CUDA's default), the same values to the bit in a handful of ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    searcher = build("darts")
    params = [p for g in searcher.w_optimizer.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.ones_like(p)
    searcher.w_optimizer.step()  # the first step makes the momentum buffers, one tensor each
    with Count():
        searcher.w_optimizer.step()
    assert len(params) > 40 and Count.calls < 20, (len(params), Count.calls)
