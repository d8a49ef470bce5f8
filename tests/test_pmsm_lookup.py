"""A trained PMSM flux model as the look-up a controller evaluates: ``FluxLookup`` (currents -> flux and differential
inductances by forward-mode written out) against ``vmap(jacrev)`` of the network for every primitive of the activation
space, the clamps included; `dartboard export` of a flux model's folder and of its registered version (ONNX,
TorchScript, pt2) computes the rows `dartboard pmsm flux` writes; `pmsm flux` and `info` take the registered version
and the folder."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import torch
from test_cli_contract import run_main

from dartboard.spaces.pmsm import BINARY_FNS, UNARY_FNS, FluxNet
from dartboard.spaces.pmsm_genotype import ActivationSpec, FluxMlpGenotype
from dartboard.spaces.pmsm_lookup import COLUMNS, FluxLookup


def _by_jacrev(net: FluxNet, currents: torch.Tensor) -> torch.Tensor:
    """The obviously correct columns: the network's own flux and its vmap(jacrev) Jacobian (rows lambda_d, lambda_q;
    columns I_d, I_q)."""
    out = net(torch.cat([currents, torch.zeros(len(currents), 4, dtype=currents.dtype)], 1))
    jac = out.jac
    return torch.cat([out.flux, jac[:, 0, :1], jac[:, 0, 1:], jac[:, 1, :1], jac[:, 1, 1:]], 1).detach()


@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
@pytest.mark.parametrize("binary", list(BINARY_FNS))
def test_the_lookup_equals_the_networks_jacobian_for_every_activation(binary, decoupled):
    torch.manual_seed(0)
    for unary1, unary2 in itertools.product(UNARY_FNS, UNARY_FNS):  # unary1 == unary2: max and min tie everywhere
        genotype = FluxMlpGenotype(hidden_layers=2, width=5, activation=ActivationSpec(binary, unary1, unary2),
                                   decoupled=decoupled)
        net = FluxNet(genotype).double().eval()
        currents = 1.5 * torch.randn(9, 2, dtype=torch.float64)
        with torch.no_grad():
            got = FluxLookup(net)(currents)
        assert got.shape == (9, len(COLUMNS))
        torch.testing.assert_close(got, _by_jacrev(net, currents), rtol=1e-12, atol=1e-12,
                                   msg=lambda m, a=(binary, unary1, unary2): f"{a}: {m}")


@pytest.mark.parametrize("activation", [("prod", "square", "square"), ("add", "exp", "x"), ("max", "exp", "square"),
                                        ("prod", "exp", "cos")])
def test_the_lookup_follows_the_clamps_of_exp_and_of_the_activation(activation):
    """Inputs large enough that exp runs at min(x, 10) and the activation is clamped to +-1e4: both pass no
    derivative there, in the network's autograd and in the look-up (exp(10) cos(x) is where exp's own guard shows:
    under the clamp where |cos x| < 0.45)."""
    torch.manual_seed(1)
    net = FluxNet(FluxMlpGenotype(hidden_layers=1, width=4, activation=ActivationSpec(*activation))).double().eval()
    currents = 40 * torch.randn(64, 2, dtype=torch.float64)
    hidden = net.net.hidden[0](currents)
    assert (hidden.abs() > 12).any()  # past exp's guard, and x^4 / exp(10) past the clamp
    with torch.no_grad():
        got = FluxLookup(net)(currents)
    torch.testing.assert_close(got, _by_jacrev(net, currents), rtol=1e-12, atol=1e-9)


def test_the_binary_derivatives_are_torchs_backward_ties_included():
    """d B(u1, u2) = dB/du1 du1 + dB/du2 du2 against autograd, on random values and on exact ties u1 = u2 (where
    torch's max and min share the derivative half and half) with slopes du1 != du2."""
    from dartboard.spaces.pmsm_lookup import BINARY_DERIVATIVES

    torch.manual_seed(2)
    u1 = torch.randn(40, dtype=torch.float64)
    u2 = torch.cat([torch.randn(20, dtype=torch.float64), u1[20:]])  # the last 20 tie
    d1, d2 = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    for name, fn in BINARY_FNS.items():
        a, b = u1.clone().requires_grad_(), u2.clone().requires_grad_()
        ga, gb = torch.autograd.grad(fn(a, b).sum(), (a, b), allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(BINARY_DERIVATIVES[name](u1, u2, d1, d2), ga * d1 + gb * d2, msg=name)


def _rows(path) -> tuple[torch.Tensor, torch.Tensor]:
    """(currents, the other columns) of a `pmsm flux` CSV."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        values = torch.tensor([[float(v) for v in row] for row in reader])
    assert header == ["I_d", "I_q", *COLUMNS]
    return values[:, :2], values[:, 2:]


def _run_exported(fmt: str, path, currents: torch.Tensor) -> torch.Tensor:
    from dartboard.platform.export import run_exported

    return torch.as_tensor(run_exported(fmt, path, currents))


@pytest.mark.mlflow
def test_an_exported_flux_model_computes_the_flux_table_of_pmsm_flux(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "motor.json").write_text(json.dumps({"n_train": 256, "n_val": 64, "n_test": 64}))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code, out, err = run_main(["pmsm", "compare", "thesis=pmsm-thesis", "--seeds", "0", "--epochs", "1",
                               "--batch-size", "64", "--data-root", "motor.json", "--out", "cmp", "--tracking-uri",
                               uri], capsys)
    assert code == 0, err[-3000:]
    folder = tmp_path / "cmp" / "models" / "thesis" / "seed0"
    code, out, err = run_main(["pmsm", "flux", str(folder), "--points", "5", "--out", "table.csv"], capsys)
    assert code == 0, err
    currents, expected = _rows(tmp_path / "table.csv")
    # the registered version's table: the same rows, by default in NAME-vVERSION-flux_map.csv of the current folder
    code, out, err = run_main(["pmsm", "flux", "pmsm-thesis:1", "--points", "5", "--tracking-uri", uri], capsys)
    assert code == 0, err
    assert (tmp_path / "pmsm-thesis-v1-flux_map.csv").read_text() == (tmp_path / "table.csv").read_text()
    for source, name, fmt in ((str(folder), "f.onnx", "onnx"), ("pmsm-thesis:1", "r.pt", "torchscript"),
                              (str(folder), "f.pt2", "pt2")):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime")
        extra = ["--tracking-uri", uri] if source.endswith(":1") else []
        code, out, err = run_main(["export", source, "--out", name, *extra], capsys)
        assert code == 0, err
        assert "output [N, 6]: lambda_d, lambda_q, L_dd, L_dq, L_qd, L_qq" in out
        # what a controller computes with the file alone, on the table's currents (another batch size than traced)
        torch.testing.assert_close(_run_exported(fmt, tmp_path / name, currents), expected, rtol=1e-5, atol=1e-5)
    code, out, err = run_main(["info", str(folder), "--json"], capsys)
    assert code == 0, err
    sized = json.loads(out)
    genotype = FluxMlpGenotype(hidden_layers=3, width=16, activation=ActivationSpec("add", "exp", "max0"))
    assert sized["architecture"] == genotype.describe()  # pmsm-thesis: 3 layers of 16, exp(x) + max(x, 0)
    assert sized["parameters"] == (2 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 2 + 2)


def test_export_and_pmsm_flux_refuse_what_is_not_a_trained_flux_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["export", "pmsm-baseline", "--weights", "w.safetensors", "--out", "m.onnx"], capsys)
    assert code == 2 and "error: genotype 'pmsm-baseline' is a PMSM flux model's; export its trained model" in err
    code, out, err = run_main(["pmsm", "flux", "pmsm-baseline:1", "--points", "1"], capsys)
    assert code == 2 and "points: expected an integer >= 2" in err  # before the registry is asked
    (tmp_path / "folder").mkdir()
    code, out, err = run_main(["pmsm", "flux", "folder", "--tracking-uri", "sqlite:///x.db"], capsys)
    assert code == 2 and "drop --tracking-uri" in err
    assert not list(tmp_path.glob("*.onnx")) and not (tmp_path / "x.db").exists()
