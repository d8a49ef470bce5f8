"""Bad input of ``dartboard pmsm`` and ``dartboard bench speed | build-table | memory``, from an audit: each is refused
before any work with one line naming the flag, the value and what was expected (``refused_here``: exit 2, no
traceback, nothing left behind). The work functions are replaced by ones that raise ``AssertionError``, so that a
regression fails at once instead of training or timing; where valid input must get through, by one that raises
``Reached`` with what it was given.
"""

from __future__ import annotations

import json
import sys

import pytest
from test_cli_bad_input import refused_here


class Reached(Exception):
    """The work function was called: the input got through every check."""


def never(*args, **kwargs):
    raise AssertionError("the work started: the input should have been refused before it")


def reached(*args, **kwargs):
    raise Reached(args, kwargs)


def run_main(args: list[str]) -> None:
    from dartboard.platform.cli.main import main

    main(args)


# ------------------------------------------------------------------ pmsm compare
@pytest.fixture
def no_comparison(monkeypatch):
    import dartboard.platform.pmsm as pmsm

    monkeypatch.setattr(pmsm, "compare", never)


def genotype_files(folder, *names: str) -> list[str]:
    from dartboard.spaces import genotype as gt
    from dartboard.spaces.catalog import resolve

    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        gt.save(resolve(("pmsm-baseline", "pmsm-thesis")[i % 2]), path)
        paths.append(name)
    return paths


@pytest.mark.parametrize("given, message", [
    (["a=pmsm-baseline", "a=pmsm-thesis"], "genotypes 'a=pmsm-baseline' and 'a=pmsm-thesis' are both named 'a'"),
    (["pmsm-baseline", "pmsm-baseline"], "are both named 'pmsm-baseline'"),
    (None, "genotypes 'runs/x/genotype.json' and 'runs/y/genotype.json' are both named 'genotype'"),
], ids=["same-name", "same-catalog-name", "same-file-stem"])
def test_pmsm_compare_refuses_two_models_of_one_name(given, message, no_comparison, tmp_path, capsys, monkeypatch):
    # Before: the second replaced the first in a dict, and one model was compared without a word.
    given = given or genotype_files(tmp_path, "runs/x/genotype.json", "runs/y/genotype.json")
    line = refused_here(["pmsm", "compare", *given, "--epochs", "1"], tmp_path, capsys, monkeypatch)
    assert message in line and "NAME=GENOTYPE" in line, line


def test_pmsm_compare_takes_two_files_named_apart(tmp_path, monkeypatch):
    import dartboard.platform.pmsm as pmsm

    monkeypatch.setattr(pmsm, "compare", reached)
    files = genotype_files(tmp_path, "runs/x/genotype.json", "runs/y/genotype.json")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Reached) as got:
        run_main(["pmsm", "compare", f"x={files[0]}", f"y={files[1]}", "--seeds", "3,1", "--epochs", "1"])
    (models, seeds, _out), kwargs = got.value.args
    assert list(models) == ["x", "y"] and seeds == [3, 1] and kwargs["epochs"] == 1


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,0"], "error: --seeds: expected distinct seeds, got '0,0' (seed 0 more than once)"),
    (["--seeds", "2,1,2,1"], "error: --seeds: expected distinct seeds, got '2,1,2,1' (seed 1, 2 more than once)"),
    (["--lr", "-1"], "error: --lr: expected a finite number > 0, got -1.0"),
    (["--lr", "nan"], "error: --lr: expected a finite number > 0, got nan"),
    (["--lr", "inf"], "error: --lr: expected a finite number > 0, got inf"),
    (["--epochs", "0"], "error: --epochs: expected an integer >= 1, got 0"),
], ids=["seed-twice", "seeds-twice", "lr-negative", "lr-nan", "lr-inf", "epochs-0"])
def test_pmsm_compare_refuses_bad_seeds_and_training_values_before_training(args, message, no_comparison, tmp_path,
                                                                            capsys, monkeypatch):
    # Before: --seeds 0,0 trained twice and reported "over 2 seeds"; --lr -1 ended in a traceback.
    line = refused_here(["pmsm", "compare", "pmsm-baseline", *args], tmp_path, capsys, monkeypatch)
    assert line == message, line


# ------------------------------------------------------------------ pmsm search
@pytest.mark.parametrize("args, message", [
    (["--set-activation", "epochs=0"], "error: --set-activation: searcher 'pmsm-activation': epochs: expected an "
                                       "integer >= 1, got 0"),
    (["--set-activation", "nosuch=1"], "error: --set-activation: searcher 'pmsm-activation': unknown option "
                                       "'nosuch'"),
    (["--set-depth", "space=pmsm-depth-decoupled", "--set-activation", "layers=0"],
     "error: --set-activation: searcher 'pmsm-activation': layers: expected an integer >= 1, got 0"),
    (["--set-depth", "epochs=0"], "error: --set-depth: searcher 'pmsm-depth': epochs: expected an integer >= 1"),
    (["--tracking-uri", "http://127.0.0.1:9"], "error: --no-mlflow: the searches log to no tracking server; drop "
                                               "--tracking-uri"),
], ids=["step2-epochs-0", "step2-unknown-option", "step2-after-decoupled", "step1-epochs-0", "tracking-uri"])
def test_pmsm_search_checks_both_steps_options_before_step_1(args, message, tmp_path, capsys, monkeypatch):
    # Before: a bad option of step 2 was found after the whole of step 1's search (38 s).
    import dartboard.platform.pmsm as pmsm

    monkeypatch.setattr(pmsm, "run_two_step", never)
    line = refused_here(["pmsm", "search", "--no-mlflow", "--out", "run", *args], tmp_path, capsys, monkeypatch)
    assert line.startswith(message), line


@pytest.mark.parametrize("args", [
    [], ["--set-depth", "space=pmsm-depth-decoupled"], ["--set-depth", "layers=2", "--set-activation", "epochs=1"],
], ids=["defaults", "decoupled", "options"])
def test_pmsm_search_passes_valid_options_through_the_check(args, tmp_path, monkeypatch):
    import dartboard.platform.pmsm as pmsm

    monkeypatch.setattr(pmsm, "run_two_step", reached)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Reached) as got:
        run_main(["pmsm", "search", "--no-mlflow", "--out", "run", *args])
    _, kwargs = got.value.args
    if args[-1:] == ["epochs=1"]:
        assert kwargs["depth_options"] == {"layers": 2} and kwargs["activation_options"] == {"epochs": 1}
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ bench speed
SMALL_SPEED = ["--channels", "4", "--layers", "3", "--input-size", "8", "--batch", "2"]


def test_bench_speed_checks_every_order_before_timing(tmp_path, capsys, monkeypatch):
    # Before: only the first order (1) was built before timing; ddarts' order 2 ended in a traceback after it.
    from dartboard.bench import speed

    monkeypatch.setattr(speed, "run", never)
    line = refused_here(["bench", "speed", "--presets", "ddarts", *SMALL_SPEED], tmp_path, capsys, monkeypatch)
    assert line.startswith("error: preset 'ddarts' at order 2 on engine 'reference': ") and "got order 2" in line


def test_bench_speed_builds_each_preset_order_and_engine_before_timing(monkeypatch):
    from dartboard.bench import speed

    built = []
    monkeypatch.setattr(speed, "build", lambda preset, engine, order, setting: built.append((preset, order, engine)))
    monkeypatch.setattr(speed, "run", reached)
    with pytest.raises(Reached):
        run_main(["bench", "speed", "--presets", "darts,fairdarts", "--engines", "reference,batched", "--orders",
                  "1,2", *SMALL_SPEED])
    assert sorted(built) == sorted((p, o, e) for p in ("darts", "fairdarts") for o in (1, 2)
                                   for e in ("reference", "batched"))


# ------------------------------------------------------------------ bench build-table
@pytest.fixture
def no_training(monkeypatch):
    from dartboard.bench import table

    monkeypatch.setattr(table, "train_entry", never)
    monkeypatch.setattr(table, "load_dataset", never)


def table_file(folder, epochs: int = 8) -> None:
    from dartboard.bench.table import TableProtocol, _protocol_dict

    (folder / "t.json").write_text(json.dumps({"space": "tiny81", "protocol": _protocol_dict(TableProtocol(
        epochs=epochs)), "entries": []}))


@pytest.mark.parametrize("args, content, message", [
    (["--epochs", "1"], "table", "error: --out: 't.json' holds a table made with another protocol (epochs 8 there, "
                                 "1 here)"),
    ([], "{bad", "error: --out: 't.json' is not a table file that can be resumed"),
    ([], "[1, 2]", "error: --out: 't.json' is not a table that `dartboard bench build-table` writes"),
    (["--threads", "0"], None, "error: --threads: expected >= 1, got 0"),
    (["--offset", "100"], None, "error: --offset: expected an integer in [0, 80] (the start among the 81 entries to "
                                "build), got 100"),
    (["--offset", "-5"], None, "error: --offset: expected an integer in [0, 80]"),
    (["--offset", "81", "--reverse"], None, "error: --offset: expected an integer in [0, 80]"),
    (["--seeds", "1,1"], None, "error: --seeds: expected distinct seeds, got '1,1' (seed 1 more than once)"),
    (["--seeds", ""], None, "error: --seeds: expected comma-separated integers"),
], ids=["other-protocol", "corrupt", "not-a-table", "threads-0", "offset-past", "offset-negative", "offset-81",
        "seeds-twice", "seeds-empty"])
def test_bench_build_table_refuses_before_training(args, content, message, no_training, tmp_path, capsys,
                                                   monkeypatch):
    # Before: a traceback after loading the data (another protocol, a corrupt file, --threads 0); an offset past the
    # entries wrapped around them; --seeds 1,1 trained every member twice with one seed.
    if content == "table":
        table_file(tmp_path)
    elif content is not None:
        (tmp_path / "t.json").write_text(content)
    line = refused_here(["bench", "build-table", "--out", "t.json", *args], tmp_path, capsys, monkeypatch)
    assert line.startswith(message), line


def test_the_library_checks_the_table_file_and_offset_before_training(no_training, tmp_path):
    from dartboard.bench.table import TableProtocol, build_table
    from dartboard.errors import UserInputError

    table_file(tmp_path)
    with pytest.raises(UserInputError, match=r"^out: .* holds a table made with another protocol"):
        build_table(TableProtocol(epochs=1), tmp_path / "t.json")
    with pytest.raises(UserInputError, match=r"^offset: expected an integer in \[0, 80\]"):
        build_table(TableProtocol(), tmp_path / "new.json", offset=81)
    for bad in ({"seeds": (1, 1)}, {"threads": 0}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}: "):
            TableProtocol(**bad)


@pytest.mark.parametrize("argv, recorded", [
    (["--offset", "40", "--out", "t.json", "--reverse", "--epochs", "2"],
     "dartboard bench build-table --out t.json --epochs 2"),
    (["--out", "t.json", "--offset=3", "--seeds", "0,1", "--space", "tiny81"],
     "dartboard bench build-table --out t.json --seeds 0,1 --space tiny81"),
], ids=["offset-first", "offset-equals"])
def test_bench_build_table_records_the_whole_command_but_where_it_starts(argv, recorded, tmp_path, monkeypatch):
    # Before: the command was cut at " --offset", dropping every flag after it.
    from dartboard.bench import table

    monkeypatch.setattr(table, "build_table", reached)
    monkeypatch.chdir(tmp_path)
    args = ["bench", "build-table", *argv]
    monkeypatch.setattr(sys, "argv", ["dartboard", *args])
    with pytest.raises(Reached) as got:
        run_main(args)
    assert got.value.args[1]["command"] == recorded


def test_an_offset_into_tiny625_is_taken(tmp_path, monkeypatch):
    from dartboard.bench import table

    monkeypatch.setattr(table, "build_table", reached)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Reached) as got:
        run_main(["bench", "build-table", "--space", "tiny625", "--out", "t.json", "--offset", "624"])
    assert got.value.args[1]["offset"] == 624


# ------------------------------------------------------------------ bench memory
def gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "error: --batch: expected an integer >= 1, got 0"),
    (["--batch", "-4"], "error: --batch: expected an integer >= 1, got -4"),
    (["--C", "0"], "error: --C: expected an integer >= 1, got 0"),
    (["--layers", "0"], "error: --layers: expected an integer >= 1, got 0"),
    (["--input-size", "4"], "error: --input-size: expected an integer >= 8, got 4"),
    (["--steps", "0"], "error: --steps: expected an integer >= 1, got 0"),
    (["--device", "tpu"], "error: --device: expected auto, cpu or cuda[:N] (the peak is measured by the torch "
                          "profiler on the CPU or by torch.cuda), got 'tpu'"),
    (["--device", "mps"], "error: --device: expected auto, cpu or cuda[:N]"),
    (["--device", "cuda"], "error: --device: 'cuda' was asked for but no CUDA GPU is available"),
], ids=["batch-0", "batch-negative", "C-0", "layers-0", "input-size-4", "steps-0", "device-tpu", "device-mps",
        "cuda-without-gpu"])
def test_bench_memory_refuses_bad_options_before_measuring(args, message, tmp_path, capsys, monkeypatch):
    # Before: tracebacks from inside the first measurement, and --steps 0 printed "nan ... OVER" with exit 0.
    from dartboard.bench import memory

    if args == ["--device", "cuda"] and gpu():
        pytest.skip("a GPU is there")
    monkeypatch.setattr(memory, "run", never)
    line = refused_here(["bench", "memory", *args], tmp_path, capsys, monkeypatch)
    assert line.startswith(message), line


def test_bench_memory_builds_every_variant_before_measuring(monkeypatch):
    from dartboard.bench import memory

    built = []
    monkeypatch.setattr(memory, "build", lambda searcher, options, setting: built.append((searcher, options)))
    monkeypatch.setattr(memory, "run", reached)
    with pytest.raises(Reached):
        run_main(["bench", "memory", "--C", "2", "--layers", "3", "--input-size", "8", "--device", "cpu"])
    assert built == [(v["searcher"], v["options"]) for v in memory.VARIANTS.values()]


def test_the_memory_library_refuses_zero_steps(monkeypatch):
    from dartboard.bench import memory

    monkeypatch.setattr(memory, "run_variant", never)
    with pytest.raises(ValueError, match=r"^steps: expected an integer >= 1, got 0"):
        memory.run(memory.Setting(steps=0))


@pytest.mark.parametrize("command", ["memory", "speed"])
def test_a_gpu_index_that_is_not_there_is_refused(command, tmp_path, capsys, monkeypatch):
    import torch

    from dartboard.bench import memory, speed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one GPU, cuda:0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(memory, "build", never)
    monkeypatch.setattr(speed, "build", never)
    line = refused_here(["bench", command, "--device", "cuda:3"], tmp_path, capsys, monkeypatch)
    assert line == "error: --device: expected cuda:0 to cuda:0 (1 CUDA GPU(s) here), got 'cuda:3'", line


# ------------------------------------------------------------------ counts in words


@pytest.mark.parametrize("epochs, workers, said", [
    (1, 1, "1 epoch, 1 trial at once"),
    (3, 2, "3 epochs, 2 trials at once"),
])
def test_bench_quality_says_its_epochs_and_trials_in_words(epochs, workers, said, tmp_path, monkeypatch, caplog):
    # Before: "1 epochs, 1 trials at once".
    import logging

    import dartboard.platform.quality as quality

    monkeypatch.setattr(quality, "run_quality", reached)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="dartboard"), pytest.raises(Reached):
        run_main(["bench", "quality", "--no-mlflow", "--searchers", "darts", "--seeds", "0",
                  "--epochs", str(epochs), "--workers", str(workers)])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bench quality:")]
    assert lines and lines[0].endswith(said), lines


@pytest.mark.parametrize("n_seeds, epochs, said", [
    (1, 1, "(mean +- std over 1 seed, 1 epoch of Adam each, per-unit values)"),
    (3, 150, "(mean +- std over 3 seeds, 150 epochs of Adam each, per-unit values)"),
])
def test_the_pmsm_tables_note_counts_seeds_and_epochs_in_words(n_seeds, epochs, said):
    # Before: "over 1 seeds, 1 epochs of Adam each".
    from dartboard.platform.pmsm import markdown_table

    assert markdown_table([], n_seeds, epochs).splitlines()[-1] == said


@pytest.mark.parametrize("n, noun, said", [(0, "seed", "0 seeds"), (1, "seed", "1 seed"), (2, "trial", "2 trials")])
def test_counted_says_a_number_of_things(n, noun, said):
    from dartboard.platform.progress import counted

    assert counted(n, noun) == said
