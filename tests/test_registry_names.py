"""Registered model names that MLflow allows but a naive search filter breaks on (a quote), and registries of more
than one page (100 models): `dartboard models list / show` and the version lookup of pull, predict and evaluate,
on a real sqlite registry."""

from __future__ import annotations

import pytest
from test_cli_contract import run_main as _cli

from dartboard.errors import UserInputError

pytest.importorskip("mlflow")
QUOTED = ("it's", 'a"b')
BOTH = "x'y\"z"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("names")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    c = MlflowClient(uri)
    for name in (*QUOTED, BOTH, *(f"m{i:03d}" for i in range(101))):
        c.create_registered_model(name)
    for name in QUOTED:
        for _ in range(2):
            c.create_model_version(name, source=str(folder))
    return uri


def test_filter_literals():
    from dartboard.platform.tracking.models import filter_literal

    assert filter_literal("digits-net") == "'digits-net'"
    assert filter_literal("it's") == '"it\'s"'
    assert filter_literal('a"b') == "'a\"b'"
    with pytest.raises(UserInputError, match="holds both kinds of quote"):
        filter_literal(BOTH)


def test_models_list_shows_every_model_of_every_page(registry, capsys):
    code, out, err = _cli(["models", "list", "--tracking-uri", registry], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 104  # before: the first page only (100), or a traceback at the first quoted name
    for name in QUOTED:
        assert [line.split()[1:5] for line in lines if line.startswith(f"{name} ")] == [["versions", "2", "latest",
                                                                                         "v2"]]
    assert any(line.startswith(f"{BOTH} ") for line in lines)


@pytest.mark.parametrize("name", QUOTED)
def test_models_show_and_the_version_lookup_of_a_quoted_name(registry, name, capsys):
    from dartboard.platform.tracking.models import resolve_version

    code, out, err = _cli(["models", "show", name, "--tracking-uri", registry], capsys)
    assert code == 0, err  # before, for it's: MlflowException "Invalid clause(s) in filter string" (a traceback)
    assert [line.split()[:2] for line in out.splitlines() if not line.startswith(" ")] == [[name, "v1"], [name, "v2"]]
    assert int(resolve_version(registry, name).version) == 2  # pull, predict, evaluate and export of NAME: the latest


def test_a_name_with_both_quotes_is_one_line(registry, capsys):
    code, _, err = _cli(["models", "show", BOTH, "--tracking-uri", registry], capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {BOTH!r} holds both kinds of quote, which an MLflow "
                                                      f"registry search cannot name"]


def test_models_show_prints_aliases_and_shows_the_version_a_reference_names(tmp_path, capsys):
    """A version search leaves the aliases out: `models show NAME` printed none (`models list` did); and
    `models show NAME@ALIAS` said "no registered model of that name"."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    c.create_registered_model("net")
    for _ in range(3):
        c.create_model_version("net", source=str(tmp_path))
    c.set_registered_model_alias("net", "champion", "2")
    c.set_registered_model_alias("net", "baseline", "2")

    def heads(*args: str) -> list[str]:
        code, out, err = _cli(["models", "show", *args, "--tracking-uri", uri], capsys)
        assert code == 0, err
        return [" ".join(line.split()[:-2]) for line in out.splitlines() if not line.startswith(" ")]

    assert heads("net") == ["net v1", "net v2 @baseline @champion", "net v3"]
    assert heads("net@champion") == heads("net:2") == ["net v2 @baseline @champion"]
    for ref, said in (("net@best", "model 'net@best': net has no alias 'best'"),
                      ("net:7", "model 'net:7': net has no version 7")):
        code, _, err = _cli(["models", "show", ref, "--tracking-uri", uri], capsys)
        assert code == 2 and err.strip() == f"error: {said}", err
