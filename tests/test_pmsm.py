"""PMSM (thesis 6.2): the simulator against Eqs 6.13-6.14 by hand, criterion C against a slow
per-sample finite-difference implementation and a closed form, the activation primitives by hand,
genotypes, bad input, and the direction of both searches on data from known teachers."""

import json
import math
from pathlib import Path

import pytest
import torch

from dartboard.data.catalog import DATASETS, SMALL_DATASETS, DataError, load_dataset
from dartboard.data.datasets import make_loader, search_split
from dartboard.data.pmsm import MotorParams, make_splits, simulate, tanh_flux, tanh_jacobian
from dartboard.searchers.base import seed_everything
from dartboard.searchers.loop import run_epoch
from dartboard.searchers.parts.pmsm import FluxCriterion, SearchDiverged, predicted_derivatives
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve
from dartboard.spaces.pmsm import (
    BINARY_FNS,
    UNARY_FNS,
    FluxNet,
    FluxOutput,
    count_parameters,
    guarded_exp,
    mixed_activation,
)
from dartboard.spaces.pmsm_genotype import ActivationSpec, FluxMlpGenotype

SHAPE = DataShape(6, 1, 2)


# ------------------------------------------------------------------ simulator
def test_simulator_derivatives_match_eqs_6_13_6_14_by_hand():
    """Decoupled maps (cross = 0): dI_d/dt = (-R I_d + w lambda_q + v_d) / f2'(I_d), dI_q/dt =
    (-R I_q - w lambda_d + v_q) / f1'(I_q), at a point computed by hand."""
    p = MotorParams(cross=0.0, noise=0.0)
    i_d, i_q, w, v_d, v_q = 0.5, -0.8, 0.6, 0.3, -0.4
    lam_d = 0.7 + 0.5 * math.tanh(0.5)  # lambda_f + L_d0 I_s tanh(I_d / I_s)
    lam_q = 0.9 * math.tanh(-0.8)
    f2p, f1p = 0.5 / math.cosh(0.5) ** 2, 0.9 / math.cosh(-0.8) ** 2
    did = (-0.02 * i_d + w * lam_q + v_d) / f2p
    diq = (-0.02 * i_q - w * lam_d + v_q) / f1p
    x = torch.tensor([[i_d, i_q, w, v_d, v_q, 0.02]], dtype=torch.float64)
    from dartboard.data.pmsm import current_derivatives

    flux = tanh_flux(p)(x[:, :2])
    assert flux[0].tolist() == pytest.approx([lam_d, lam_q], abs=1e-12)
    y = current_derivatives(x, flux, tanh_jacobian(p, x[:, :2]))
    assert y[0].tolist() == pytest.approx([did, diq], rel=1e-12)


def test_cross_saturation_jacobian_is_symmetric_and_matches_autograd():
    p = MotorParams(cross=0.1)
    currents = torch.tensor([[0.3, -1.1], [-1.0, 0.7]], dtype=torch.float64)
    from dartboard.data.pmsm import network_jacobian

    analytic = tanh_jacobian(p, currents)
    assert torch.allclose(analytic, network_jacobian(tanh_flux(p), currents), atol=1e-12)
    assert torch.allclose(analytic[:, 0, 1], analytic[:, 1, 0])  # reciprocity


def test_simulator_is_seeded_fast_registered_and_in_range():
    assert "pmsm" in DATASETS and "pmsm" in SMALL_DATASETS
    splits = load_dataset("pmsm")
    assert len(splits.train) == 4096 and len(splits.val) == 1024 and len(splits.test) == 1024
    x, y = splits.train.tensors
    p = splits.params
    assert x.shape == (4096, 6) and y.shape == (4096, 2)
    assert x[:, :2].abs().max() <= p.I_max
    assert x[:, 2].abs().min() >= p.omega_min and x[:, 2].abs().max() <= p.omega_max
    assert x[:, 3:5].norm(dim=1).max() <= p.V_max + 1e-6
    a, b = simulate(p, 64, 5), simulate(p, 64, 5)
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, simulate(p, 64, 6).y)
    assert not torch.equal(splits.train.tensors[0][:10], splits.test.tensors[0][:10])  # disjoint draws


@pytest.mark.parametrize("field, value, message", [
    ("omega_min", 0.0, "omega_min: expected a number > 0"),
    ("L_d0", -1.0, "L_d0: expected a number > 0"),
    ("R", float("nan"), "R: expected a number >= 0"),
    ("cross", 0.5, "singular inside the current box"),
    ("n_train", 0, "n_train: expected an integer >= 1"),
])
def test_simulator_parameter_out_of_range_is_one_clear_error(field, value, message):
    with pytest.raises(DataError, match=message):
        MotorParams(**{field: value})


def test_motor_file_via_data_root(tmp_path):
    f = tmp_path / "motor.json"
    f.write_text('{"R": 0.05, "n_train": 256, "n_val": 64, "n_test": 64}')
    splits = load_dataset("pmsm", str(f))
    assert splits.params.R == 0.05 and len(splits.train) == 256
    f.write_text('{"resistance": 1}')
    with pytest.raises(DataError, match="unknown motor parameter 'resistance'"):
        load_dataset("pmsm", str(f))
    f.write_text('{"R": 0.05,}')  # a parse error is the file's, named with its place (was JSONDecodeError)
    with pytest.raises(DataError, match=r"'.*motor.json' is not valid JSON: Expecting property name .* column 12"):
        load_dataset("pmsm", str(f))
    y = tmp_path / "motor.yaml"
    y.write_text("R: [0.05\n")
    with pytest.raises(DataError, match=r"'.*motor.yaml' is not valid YAML: while parsing a flow sequence"):
        load_dataset("pmsm", str(y))


# ------------------------------------------------------------------ criterion C
def _linear_output(x, L, lam_f):
    """A linear flux model lambda = L I + (lam_f, 0): constant Jacobian L."""
    flux = x[:, :2] @ L.T + torch.tensor([lam_f, 0.0], dtype=x.dtype)
    return FluxOutput(flux, L.expand(x.shape[0], 2, 2), x)


def test_criterion_closed_form_for_a_linear_flux_model():
    """With lambda = L I + lambda_f the Jacobian is L and dI/dt_hat = L^-1 (-R I + w (lambda_q, -lambda_d) + v):
    the true linear motor gives C = 0, and C of another L is the mean of the hand-computed errors."""
    torch.manual_seed(0)
    p = MotorParams(noise=0.0)
    from dartboard.data.pmsm import sample_operating_points

    x = sample_operating_points(p, 32, torch.Generator().manual_seed(0))
    L = torch.tensor([[0.4, 0.05], [0.05, 0.8]], dtype=torch.float64)
    true = _linear_output(x, L, 0.7)
    y, _ = predicted_derivatives(true)
    crit = FluxCriterion()
    assert float(crit.loss(true, y)) == pytest.approx(0.0, abs=1e-20)
    # hand: a diagonal L' = diag(a, b) with lambda_f' = f:
    # dI_d = (-R I_d + w b I_q + v_d) / a, dI_q = (-R I_q - w (a I_d + f) + v_q) / b
    a, b, f = 0.5, 0.9, 0.6
    other = _linear_output(x, torch.tensor([[a, 0.0], [0.0, b]], dtype=torch.float64), f)
    i_d, i_q, w, v_d, v_q, r = x.unbind(1)
    hand = torch.stack([(-r * i_d + w * b * i_q + v_d) / a, (-r * i_q - w * (a * i_d + f) + v_q) / b], 1)
    assert float(crit.loss(other, y)) == pytest.approx(float(((hand - y) ** 2).mean()), rel=1e-5)


def _slow_criterion(model, x, y, form, h=1e-6):
    """Per sample: Jacobian by central finite differences, numpy-free 2x2 inverse, squared error."""
    total = 0.0
    for k in range(x.shape[0]):
        i = x[k, :2].clone()
        lam = model(i[None])[0]
        jac = torch.zeros(2, 2, dtype=x.dtype)
        for c in range(2):
            e = torch.zeros(2, dtype=x.dtype)
            e[c] = h
            jac[:, c] = (model((i + e)[None])[0] - model((i - e)[None])[0]) / (2 * h)
        i_d, i_q, w, v_d, v_q, r = x[k].tolist()
        if form == "physical":
            rhs = torch.tensor([-r * i_d + w * lam[1] + v_d, -r * i_q - w * lam[0] + v_q], dtype=x.dtype)
        else:  # Eq 6.15-6.16 as printed: M = (lq, ld), J_M rows (dlq/dIq, dld/dIq), (dlq/dId, dld/dId)
            rhs = torch.tensor([-r * i_d + w * lam[1] + v_d, -r * i_q + w * lam[0] + v_q], dtype=x.dtype)
            jac = torch.tensor([[jac[1, 1], jac[0, 1]], [jac[1, 0], jac[0, 0]]], dtype=x.dtype)
        det = jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]
        inv = torch.tensor([[jac[1, 1], -jac[0, 1]], [-jac[1, 0], jac[0, 0]]], dtype=x.dtype) / det
        total += float(((inv @ rhs - y[k]) ** 2).sum())
    return total / (2 * x.shape[0])


@pytest.mark.parametrize("form", ["physical", "thesis"])
def test_criterion_matches_slow_finite_difference_implementation(form):
    torch.manual_seed(1)
    net = FluxNet(FluxMlpGenotype(2, 8, ActivationSpec.named("tanh"))).double()
    with torch.no_grad():  # a well-conditioned map: add a diagonal linear part
        net.net.out.weight.mul_(0.1)
    def model(i):
        return net.flux(i) + i @ torch.tensor([[0.5, 0.0], [0.0, 0.8]], dtype=torch.float64)
    from dartboard.spaces.pmsm import flux_and_jacobian

    s = simulate(MotorParams(noise=0.0), 16, 3)
    out = flux_and_jacobian(model, s.x)
    fast = float(FluxCriterion(form=form).loss(out, s.y).detach())
    assert fast == pytest.approx(_slow_criterion(model, s.x, s.y, form), rel=1e-6)


def test_thesis_literal_form_misfits_the_true_motor():
    """The true flux map reproduces the measured derivatives in the physical form only (module docs)."""
    p = MotorParams(noise=0.0)
    s = simulate(p, 256, 0)
    out = FluxOutput(s.flux, s.jacobian, s.x)
    assert float(FluxCriterion("physical").loss(out, s.y)) < 1e-10  # (computed in float32)
    assert float(FluxCriterion("thesis").loss(out, s.y)) > 0.1


def test_singular_jacobian_is_guarded_and_counted():
    x = simulate(MotorParams(), 4, 0).x
    jac = torch.zeros(4, 2, 2, dtype=torch.float64)
    jac[1] = torch.eye(2)
    out = FluxOutput(torch.zeros(4, 2, dtype=torch.float64), jac, x)
    crit = FluxCriterion(det_floor=1e-3)
    loss = crit.loss(out, torch.zeros(4, 2))
    assert torch.isfinite(loss)
    singular, n = crit.metrics(out, torch.zeros(4, 2))["singular"]
    assert int(singular) == 3 and n == 4
    with pytest.raises(ValueError, match="form"):
        FluxCriterion(form="literal")


# ------------------------------------------------------------------ activation primitives
def test_unary_binary_primitives_and_mixed_activation_by_hand():
    x = torch.tensor([-2.0, 0.5])
    hand = {"max0": [0.0, 0.5], "min0": [-2.0, 0.0], "exp": [math.exp(-2), math.exp(0.5)],
            "tanh": [math.tanh(-2), math.tanh(0.5)], "x": [-2.0, 0.5], "abs": [2.0, 0.5],
            "sin": [math.sin(-2), math.sin(0.5)], "cos": [math.cos(-2), math.cos(0.5)], "one": [1.0, 1.0],
            "square": [4.0, 0.25]}
    for name, fn in UNARY_FNS.items():
        assert fn(x).tolist() == pytest.approx(hand[name], rel=1e-6), name
    a, b = torch.tensor([1.0, -3.0]), torch.tensor([2.0, 4.0])
    hand_b = {"add": [3.0, 1.0], "prod": [2.0, -12.0], "sub": [-1.0, -7.0], "max": [2.0, 4.0], "min": [1.0, -3.0],
              "mask": [1.0, -3.0]}
    for name, fn in BINARY_FNS.items():
        assert fn(a, b).tolist() == pytest.approx(hand_b[name]), name
    # one-hot weights give exactly exp(x) + max(x, 0); mixed weights the hand mixture
    onehot = lambda k, n: torch.nn.functional.one_hot(torch.tensor(k), n).float()  # noqa: E731
    out = mixed_activation(x, onehot(0, 6), onehot(2, 10), onehot(0, 10))
    assert out.tolist() == pytest.approx([math.exp(-2) + 0.0, math.exp(0.5) + 0.5], rel=1e-6)
    wb = torch.zeros(6)
    wb[0], wb[1] = 0.25, 0.75  # 0.25 add + 0.75 prod
    w1, w2 = torch.zeros(10), torch.zeros(10)
    w1[4], w1[8] = 0.5, 0.5  # 0.5 x + 0.5 * 1
    w2[9] = 1.0  # x^2
    u1, u2 = 0.5 * x + 0.5, x * x
    assert mixed_activation(x, wb, w1, w2).tolist() == pytest.approx((0.25 * (u1 + u2) + 0.75 * u1 * u2).tolist())


def test_exp_is_guarded_against_overflow():
    y = guarded_exp(torch.tensor([1e4, 0.0]))
    assert torch.isfinite(y).all() and float(y[1]) == 1.0
    big = torch.full((3,), 1e6)
    assert torch.isfinite(mixed_activation(big, torch.ones(6) / 6, torch.ones(10) / 10, torch.ones(10) / 10)).all()


# ------------------------------------------------------------------ genotypes
def test_a_formula_with_one_unary_twice_is_reduced_and_still_the_activation():
    """min(u, u) = max(u, u) = u and u - u = 0, checked against the activation the network computes."""
    from dartboard.spaces.pmsm import activation_fn

    x = torch.linspace(-3.0, 3.0, 61)
    reduced = {"max(x, 0)": torch.relu(x), "0": torch.zeros_like(x), "tanh(x)": torch.tanh(x)}
    cases = {("min", "max0"): "max(x, 0)", ("max", "max0"): "max(x, 0)", ("sub", "tanh"): "0",
             ("max", "tanh"): "tanh(x)", ("add", "tanh"): "tanh(x) + tanh(x)"}
    for (binary, unary), formula in cases.items():
        spec = ActivationSpec(binary, unary, unary)
        assert spec.formula() == formula, (binary, unary)
        if formula in reduced:
            assert torch.allclose(activation_fn(spec)(x), reduced[formula]), (binary, unary)
    assert ActivationSpec("min", "max0", "tanh").formula() == "min(max(x, 0), tanh(x))"  # two unaries: as composed


def test_flux_genotype_json_round_trip_and_schema_errors():
    g = FluxMlpGenotype(3, 16, ActivationSpec("add", "exp", "max0"), meta={"a": 1})
    back = gt.loads(gt.dumps(g))
    assert back == g and back.activation.formula() == "exp(x) + max(x, 0)"
    base = gt.to_dict(g)
    for change, message in [({"hidden_layers": 0}, "hidden_layers: expected an integer"),
                            ({"activation": {"binary": "xor", "unary1": "x", "unary2": "x"}}, "activation.binary"),
                            ({"activation": "gelu"}, "unknown activation 'gelu'"),
                            ({"depth": 3}, "unknown field 'depth'"),
                            ({"decoupled": "no"}, "decoupled: expected true or false")]:
        with pytest.raises(gt.GenotypeError, match=message):
            gt.from_dict({**base, **change})
    assert gt.from_dict({**base, "activation": "tanh"}).activation == ActivationSpec("mask", "tanh", "x")


def test_flux_genotype_refused_by_image_network_commands():
    from dartboard.data.catalog import load_dataset as load
    from dartboard.spaces.catalog import resolve
    from dartboard.training.final import TrainConfig, build_network

    with pytest.raises(gt.GenotypeError, match="'flux_mlp' genotype is not a cell network"):
        build_network(resolve("pmsm-baseline"), TrainConfig(), load("digits"))
    with pytest.raises(gt.GenotypeError, match="not a PMSM flux model"):
        FluxNet(resolve("darts-v2"))


def test_info_shows_a_flux_genotype():
    from dartboard.platform.cli.info import network_info

    info = network_info("pmsm-thesis", 36, 20, False, "cifar10")
    assert info["parameters"] == 2 * 16 + 16 + 2 * (16 * 16 + 16) + 16 * 2 + 2
    assert info["activation"] == "exp(x) + max(x, 0)"


# ------------------------------------------------------------------ supernets and searches
def test_supernets_forward_derive_and_refuse_a_wrong_grouping():
    x, y = load_dataset("pmsm").train.tensors
    for searcher in ("pmsm-depth", "pmsm-activation"):
        s = build_searcher(searcher, {"epochs": 1}, SHAPE)
        out = s.forward(x[:8], s.group_weights())
        assert out.flux.shape == (8, 2) and out.jac.shape == (8, 2, 2)
        assert torch.isfinite(s.objective.loss(out, y[:8]))
        g = s.derive()
        assert isinstance(g, FluxMlpGenotype) and gt.loads(gt.dumps(g)) == g
    with pytest.raises(ValueError, match="grouping"):
        build_searcher("pmsm-activation", {"grouping": "normal_reduce"}, SHAPE)
    with pytest.raises(ValueError, match="w_optimizer adam is first order only"):
        build_searcher("pmsm-depth", {"order": 2}, SHAPE)
    with pytest.raises(ValueError, match="flux_criterion' needs a PMSM flux space"):
        build_searcher("darts", {"objective": "flux_criterion"}, SHAPE)
    with pytest.raises(ValueError, match="objective 'flux_criterion': det_floor: expected a number > 0, got -1"):
        build_searcher("pmsm-depth", {"objective.det_floor": -1}, SHAPE)  # the part named once, by its registry


def test_depth_supernet_derives_by_argmax_identity_layers_vanish():
    s = build_searcher("pmsm-depth", {"layers": 4}, SHAPE)
    with torch.no_grad():
        s.arch[0].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    g = s.derive()
    assert g.hidden_layers == 3 and g.meta["mixed_layers"] == ["linear_tanh", "identity", "linear_tanh", "identity"]


def test_finite_guard_stops_a_nan_search():
    s = build_searcher("pmsm-depth", {"epochs": 1}, SHAPE)
    x, y = load_dataset("pmsm").train.tensors
    s.step((x[:16], y[:16] * float("nan")), (x[16:32], y[16:32]))
    with pytest.raises(SearchDiverged, match="train_loss became nan"):
        s.end_epoch()


def _search(searcher, splits, options):
    seed_everything(0)
    s = build_searcher(searcher, options, SHAPE)
    tr, va = search_split(splits.train, 0)
    tl = make_loader(tr, 64, shuffle=True, seed=0, drop_last=True)
    vl = make_loader(va, 64, shuffle=True, seed=1, drop_last=True)
    for _ in range(s.epochs):
        run_epoch(s, tl, vl)
    return s


def _teacher(hidden, activation, scale, coupling, seed=0):
    """A flux map L I + lambda_f + coupling * MLP(I) from a random teacher MLP (well conditioned)."""
    torch.manual_seed(seed)
    net = FluxNet(FluxMlpGenotype(hidden, 16, activation)).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(scale)
    L = torch.tensor([[0.5, 0.0], [0.0, 0.9]], dtype=torch.float64)
    offset = torch.tensor([0.7, 0.0], dtype=torch.float64)
    return lambda i: (coupling * net.flux(i) if coupling else 0.0) + i @ L.T + offset


def test_depth_search_prefers_more_layers_on_a_target_that_needs_depth():
    """Linear flux (constant inductances, Eq 6.11) vs a 4-hidden-layer tanh teacher: the depth
    search keeps more Linear layers (argmax and expected count) on the deep target."""
    p = MotorParams(n_train=4096, n_val=64, n_test=64, noise=0.0)
    options = {"epochs": 12, "warmup_epochs": 4}
    linear = _search("pmsm-depth", make_splits(p, _teacher(1, ActivationSpec.named("tanh"), 1.0, 0.0)), options)
    deep = _search("pmsm-depth", make_splits(p, _teacher(4, ActivationSpec.named("tanh"), 2.5, 0.1)), options)
    expected = [float(s.group_weights()[0][:, 0].sum()) for s in (linear, deep)]
    assert expected[1] > expected[0] + 0.2, expected
    assert deep.derive().hidden_layers > linear.derive().hidden_layers


def test_activation_search_moves_toward_the_teachers_activation():
    """Data from a 2-hidden-layer tanh teacher: the weight of tanh among the unary functions rises
    above uniform (1/10) and tanh is derived (README, PMSM: how close it gets)."""
    p = MotorParams(n_train=4096, n_val=64, n_test=64, noise=0.0)
    s = _search("pmsm-activation", make_splits(p, _teacher(2, ActivationSpec.named("tanh"), 1.5, 0.3)),
                {"epochs": 10, "warmup_epochs": 3, "layers": 2, "w_lr": 0.01, "arch_lr": 0.01})
    tanh = list(UNARY_FNS).index("tanh")
    weights = [w.detach()[0] for w in s.group_weights()]
    assert max(float(weights[1][tanh]), float(weights[2][tanh])) > 0.13, weights
    act = s.derive().activation
    assert "tanh" in (act.unary1, act.unary2), act


def test_compare_reports_a_model_whose_every_run_diverged_without_nan(tmp_path, monkeypatch, caplog):
    import logging

    import dartboard.training.pmsm as training
    from dartboard.platform.pmsm import compare

    real = training.train_flux_model

    def diverging(genotype, splits, cfg, out):  # the model named "bad" diverges on every seed
        if "bad" in Path(out).parts:
            raise training.TrainingDiverged("training: criterion C became nan in epoch 1")
        return real(genotype, splits, cfg, out)

    monkeypatch.setattr(training, "train_flux_model", diverging)
    base = resolve("pmsm-baseline")
    with caplog.at_level(logging.INFO, logger="dartboard"):
        result = compare({"ok": base, "bad": base}, [0, 1], tmp_path, epochs=1)
    ok, bad = (line for line in result["table"].splitlines() if line.startswith(("| ok ", "| bad ")))
    assert "nan" not in result["table"] and bad.endswith("| n/a | n/a | n/a | n/a | n/a | n/a | 2/2 |"), bad
    cells = [c.strip() for c in ok.strip("|").split("|")]  # model, architecture, 4 figures, parameters, s, diverged
    assert all(" +- " in c for c in cells[2:6]) and cells[6] == str(count_parameters(FluxNet(base))), ok
    assert cells[8] == "0/2", ok
    summary = json.loads((tmp_path / "comparison.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary["summary"][1]["criterion_test"] == [None, None]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ok seed ")]
    assert len(said) == 2 and said[0].startswith("ok seed 0: criterion C (test) ") and " parameters, " in said[0]
    assert not any(r.getMessage().startswith("bad seed ") and r.levelno == logging.INFO for r in caplog.records)

