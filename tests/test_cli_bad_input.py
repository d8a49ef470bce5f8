"""Bad input tried as a new user would, through the installed ``dartboard`` console script (``refused``) or,
where the input is refused before any work, through the same ``main`` in this process (``refused_here``, one
case of each kind through the script too): each case exits 2 with one line naming the problem, no traceback,
and leaves nothing behind in the folder it ran in (each runs in an empty folder that the test lists before and
after).

An unreachable tracking server must fail before any work: without the connection check MLflow
retries for minutes (250-316 s measured), far past the subprocess timeout of these tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from test_cli_contract import console_script, env_for, run_here

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there
TIMEOUT_S = 180  # far below MLflow's minutes of retries, far above a loaded machine's torch import


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def refused(args: list[str], cwd: Path) -> str:
    """Run ``dartboard ARGS`` in ``cwd``; assert the contract for bad input; return the error line."""
    before = listing(cwd)
    env = env_for(OMP_NUM_THREADS="1")
    # The default tracking URI, as a user's shell has it: MLflow's set_tracking_uri, called by earlier tests in this
    # process, exports MLFLOW_TRACKING_URI to os.environ (and so to the command).
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([console_script(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert listing(cwd) == before, "something was left behind"
    return lines[0]


def refused_here(args: list[str], cwd: Path, capsys, monkeypatch) -> str:
    """:func:`refused` in this process: the ``main`` that the console script runs, without a new interpreter (2-4 s
    of start-up and imports each). For input refused before any work, where nothing of the process is left set."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = listing(cwd)
    code, err = run_here(args, capsys)
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert listing(cwd) == before, "something was left behind"
    return lines[0]


def darts_cell(edges: list[list], concat: list[int]) -> dict:
    return {"edges": edges, "concat": concat}


def genotype_file(folder: Path, normal: dict) -> str:
    reduce = darts_cell([["max_pool_3x3", 0, 2], ["skip_connect", 1, 2]], [2])
    path = folder / "geno.json"
    path.write_text(json.dumps({"schema": "dartboard.genotype", "version": 1, "kind": "darts",
                                "normal": normal, "reduce": reduce}))
    return path.name


# ------------------------------------------------------------------ a tracking server that is down
@pytest.mark.parametrize("args", [
    ["search", "--tracking-uri", UNREACHABLE, "--out", "run"],
    ["models", "list", "--tracking-uri", UNREACHABLE],
    ["pull", "digits-darts@champion", "--to", "got", "--tracking-uri", UNREACHABLE],
], ids=["search", "models-list", "pull"])
def test_an_unreachable_tracking_server_is_one_line_naming_the_uri(args, tmp_path):
    line = refused(args, tmp_path)
    assert f"cannot reach the MLflow tracking server at {UNREACHABLE}" in line


# ------------------------------------------------------------------ a file store, which MLflow 3 no longer opens
FILE_STORE = "is a file store (a folder of runs), which MLflow 3 no longer opens; use a database such as "


@pytest.mark.parametrize("args", [
    ["search", "--tracking-uri", "./mlruns", "--out", "run"],
    ["train", "darts-v2", "--tracking-uri", "file:./mlruns", "--out", "trained"],
    ["models", "list", "--tracking-uri", "mlruns"],
    ["pull", "digits-darts@champion", "--to", "got", "--tracking-uri", "./mlruns"],
    ["evaluate", "digits-darts@champion", "--tracking-uri", "./mlruns"],
], ids=["search", "train", "models-list", "pull", "evaluate"])
def test_a_file_store_is_one_line_naming_the_switch_that_opens_it(args, tmp_path, capsys, monkeypatch):
    # MLflow 3 raises its own MlflowException (a traceback) wherever the command first opens the store
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert FILE_STORE in line and "or set MLFLOW_ALLOW_FILE_STORE=true to open it anyway" in line


def test_a_sweep_refuses_a_file_store_too(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert FILE_STORE in refused(["sweep", "--tracking-uri", "./mlruns"], tmp_path)


@pytest.mark.parametrize("allowed, refused_", [("true", False), ("1", False), ("TRUE", False), ("false", True),
                                               ("", True)])
def test_mlflows_own_switch_opens_a_file_store(allowed, refused_, monkeypatch):
    from dartboard.errors import UserInputError
    from dartboard.platform.checks import check_tracking_server

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allowed)
    for uri in ("./mlruns", "file:///tmp/mlruns", "/abs/mlruns"):
        if refused_:
            with pytest.raises(UserInputError, match=re.escape(FILE_STORE)):
                check_tracking_server(uri)
        else:
            check_tracking_server(uri)
    check_tracking_server("sqlite:///mlflow.db")  # a database is never a file store


# ------------------------------------------------------------------ a registry that is not there
@pytest.mark.parametrize("args", [
    ["pull", "digits-darts@champion", "--to", "got"],
    ["models", "list"],
    ["predict", "digits-darts@champion", "digit.png"],
    ["export", "models:/digits-darts@champion", "--format", "onnx", "--out", "net.onnx"],
], ids=["pull", "models-list", "predict", "export"])
def test_reading_a_registry_file_that_does_not_exist_names_it_and_creates_none(args, tmp_path, capsys, monkeypatch):
    # MLflow creates an empty sqlite registry on its first connection: the command would leave an mlflow.db
    # behind (which `refused` checks) and then report the model as missing from it.
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert "no MLflow registry at sqlite:///mlflow.db: mlflow.db in " in line and "does not exist" in line


@pytest.mark.parametrize("uri, path", [
    ("sqlite:///mlflow.db", "mlflow.db"), ("sqlite:///runs/m.db", "runs/m.db"), ("sqlite:////abs/m.db", "/abs/m.db"),
    ("sqlite:///m.db?mode=ro", "m.db"), ("sqlite://", None), ("sqlite:///:memory:", None),
    ("http://127.0.0.1:5000", None), ("file:./mlruns", None), ("postgresql://u@h/db", None),
])
def test_the_registry_file_of_a_tracking_uri(uri, path):
    from dartboard.platform.checks import sqlite_file

    assert sqlite_file(uri) == (Path(path) if path else None)


def test_the_python_api_does_not_create_a_registry_either(tmp_path, monkeypatch):
    from dartboard.errors import UserInputError
    from dartboard.platform.tracking.models import load

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserInputError, match=r"no MLflow registry at sqlite:////.*/absent\.db: .*absent\.db does not"):
        load("digits-darts@champion", uri=f"sqlite:///{tmp_path / 'absent.db'}")
    assert listing(tmp_path) == set()


# ------------------------------------------------------------------ --resume of a folder that is no study's
@pytest.mark.parametrize("command, study_file, message", [
    ("sweep", None, "resume: cannot read '{dir}/study.yaml': is it a study run directory?"),
    ("ablate", None, "resume: cannot read '{dir}/study.yaml': is it a study run directory?"),
    ("sweep", "name: [x\n", "resume: '{dir}/study.yaml' is not valid YAML: while parsing a flow sequence"),
    ("ablate", "- a list\n", "resume: '{dir}/study.yaml': expected a study (a mapping at the top level)"),
    ("sweep", "max_concurrent: 0\n", "invalid configuration: max_concurrent: Input should be greater than or equal"),
])
def test_resuming_a_folder_that_is_no_study_run_is_one_line(command, study_file, message, tmp_path, capsys,
                                                            monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    if study_file is not None:
        (folder / "study.yaml").write_text(study_file)
    line = refused_here([command, "--resume", "run", "--no-mlflow"], tmp_path, capsys, monkeypatch)
    assert message.format(dir=folder) in line


@pytest.mark.ray  # checked while the study's Ray instance starts (the checks run beside it)
def test_resuming_a_study_that_never_reached_tune_is_one_line(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "study.yaml").write_text("name: never-started\nsearcher: darts\n")
    line = refused(["sweep", "--resume", "run", "--no-mlflow"], tmp_path)
    assert f"resume: '{folder}' holds no Tune experiment to resume" in line


# ------------------------------------------------------------------ dartboard prune's model and checkpoint
@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "junk.safetensors"], "--checkpoint: the demo trains its own small ViT on digits and would "
                                           "ignore it"),
    (["--register", "mine"], "--register: registering needs MLflow"),
    (["--out", "junk.pt/pruned"], "--out: cannot write to 'junk.pt/pruned'"),
    (["--mlflow-uri", UNREACHABLE], f"--tracking-uri: cannot reach the MLflow tracking server at {UNREACHABLE}"),
    (["--tracking-uri", UNREACHABLE], f"--tracking-uri: cannot reach the MLflow tracking server at {UNREACHABLE}"),
    (["--tracking-uri", "./mlruns"], "--tracking-uri: './mlruns' is a file store (a folder of runs)"),
    (["no_such_vit"], "model: 'no_such_vit' is not a timm model"),
    (["vit_tiny_patch16_224", "--model-kwargs", '{"img_size": "x"}'],
     "model: timm's 'vit_tiny_patch16_224' does not take {'img_size': 'x'}: TypeError"),
    (["vit_tiny_patch16_224", "--checkpoint", "junk.safetensors"],
     "checkpoint: 'junk.safetensors' is not a safetensors file"),
    (["vit_tiny_patch16_224", "--checkpoint", "junk.pt"], "checkpoint: 'junk.pt' is not a torch file of tensors"),
    (["--no-mlflow", "--tracking-uri", UNREACHABLE], "--no-mlflow: the pruned ViT is logged to no tracking server and "
                                                     "registered nowhere; drop --tracking-uri"),
    (["--no-mlflow", "--register", "mine"], "drop --register"),
], ids=["demo-checkpoint", "register-no-mlflow", "out", "mlflow-down", "tracking-uri-down", "tracking-uri-file-store",
      "model", "model-kwargs", "safetensors", "pt", "no-mlflow-uri", "no-mlflow-register"])
def test_prune_refuses_what_it_cannot_use_before_the_search(args, message, tmp_path, capsys, monkeypatch):
    # Before: the demo ran for minutes ignoring the checkpoint; a model, its arguments or a checkpoint it could not
    # use ended in a traceback; --out and the server were found out only after the search.
    (tmp_path / "junk.safetensors").write_text("not a checkpoint")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    line = refused_here(["prune", *args, "--n", "1", "--k", "1"], tmp_path, capsys, monkeypatch)
    assert message in line


# ------------------------------------------------------------------ a study its checks refuse
@pytest.mark.ray  # the study's checks run while its Ray instance starts
@pytest.mark.parametrize("command, study, message", [
    ("sweep", "searcher: nope\n", "error: searcher: unknown searcher 'nope'; known searchers: "),
    ("ablate", "variants: [{name: a, searcher: darts}, {name: b, searcher: nope}]\n",
     "error: variants.b.searcher: unknown searcher 'nope'"),
    ("sweep", "searcher: darts\nparams: {discretizer.sigma_threshold: {type: uniform, low: 0.1, high: 0.2}}\n",
     "error: variants.darts: searcher 'darts' refuses the study's options (discretizer.sigma_threshold=0.1)"),
], ids=["sweep-searcher", "ablate-variant", "sweep-dry-build"])  # an unknown option: check_study's path, as the first
def test_a_study_its_checks_refuse_is_one_line_and_leaves_no_run(command, study, message, tmp_path):
    # Before: these came out of the checks that run beside Ray's start as a traceback with exit 1.
    (tmp_path / "study.yaml").write_text("name: refused\n" + study)
    line = refused([command, "study.yaml", "--no-mlflow"], tmp_path)
    assert line.startswith(message), line


# ------------------------------------------------------------------ files that are not what a flag expects
@pytest.mark.parametrize("args, content, message", [
    (["pmsm", "search", "--no-mlflow", "--data-root", "given.json"], '{"R": 0.05,}',
     "pmsm: 'given.json' is not valid JSON: Expecting property name"),
    (["bench", "quality", "--no-mlflow", "--table", "given.json"], '{"space": "tiny81"}',
     "table 'given.json': missing 'protocol' and 'entries'; a table is what `dartboard bench build-table` writes"),
    (["bench", "quality", "--no-mlflow", "--table", "given.json"], "[1, 2]",
     "table 'given.json': space: expected a table of 'tiny81', 'tiny625', got 'list'"),
    (["bench", "quality", "--no-mlflow", "--rescore", "given.json"], '{"space": "tiny81"}',
     "quality file 'given.json': no config and records; expected the quality.json that `dartboard bench quality`"),
    (["bench", "quality", "--no-mlflow", "--rescore", "given.json"], '{"config": {"epochs": 1, "nosuch": 2}, '
                                                                     '"records": []}',
     "quality file 'given.json': its config is not a bench quality config"),
    (["bench", "quality", "--no-mlflow", "--rescore", "given.json"], "{bad",
     "quality file 'given.json' is not JSON: Expecting property name"),
], ids=["pmsm-motor", "quality-table-keys", "quality-table-list", "rescore-keys", "rescore-config", "rescore-json"])
def test_a_file_that_is_not_what_the_flag_expects_is_one_line(args, content, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "given.json").write_text(content)
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert message in line


@pytest.mark.parametrize("args, message", [
    (["bench", "quality", "--resume", "empty"], "error: resume: 'empty' is no `dartboard bench quality` output "
                                                "folder or study run directory"),
    (["bench", "quality", "--resume", "empty", "--searchers", "darts"],
     "error: --resume: the benchmark's searchers, seeds, table, parse and Ray address are read"),
    (["bench", "quality", "--resume", "empty", "--own-parse"], "error: --resume: the benchmark's searchers, seeds, "
                                                               "table, parse and Ray address are read"),
], ids=["not-a-benchmark", "with-new-options", "with-own-parse"])
def test_resuming_a_quality_benchmark_is_refused_before_ray(args, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    line = refused_here([*args, "--no-mlflow"], tmp_path, capsys, monkeypatch)
    assert line.startswith(message), line


# ------------------------------------------------------------------ options that --resume or --rescore decide
@pytest.mark.parametrize("args, message", [
    (["search", "--resume", "run", "--seed", "0"],
     "error: --resume: the search resumes with the config it started with; drop --seed, --no-mlflow"),
    (["sweep", "--resume", "run", "--storage", "elsewhere", "--num-samples", "3"],
     "error: --resume: the sweep resumes with the study, storage and Ray address it started with; drop --storage, "
     "--num-samples"),
    (["sweep", "--resume", "run", "--address", "auto"], "error: --resume: the sweep resumes with the study, storage "
                                                        "and Ray address it started with; drop --address"),
    (["ablate", "--resume", "run", "--out", "other", "--num-cpus", "0"],
     "error: --resume: the study resumes in its run directory with the storage and Ray it started with; drop --out, "
     "--num-cpus"),
    (["bench", "quality", "--resume", "run", "--epochs", "20", "--seeds", "0,1,2"],
     "error: --resume: the benchmark's searchers, seeds, table, parse and Ray address are read from the run; give "
     "either --resume or a new benchmark's options, not both; drop --seeds, --epochs"),
    (["bench", "quality", "--resume", "run", "--workers", "2", "--out", "runs/bench-quality"],
     "error: --resume: the benchmark's searchers, seeds, table, parse and Ray address are read from the run; give "
     "either --resume or a new benchmark's options, not both; drop --workers, --out"),
    (["bench", "quality", "--rescore", "quality.json", "--seeds", "0", "--no-random", "--out", "x"],
     "error: --rescore: rescoring runs no search and writes next to the quality file it rescores; drop --seeds, "
     "--no-random, --out"),
], ids=["search-seed-0", "sweep-storage-samples", "sweep-address", "ablate-out-cpus", "quality-default-values",
        "quality-workers-out", "rescore"])
def test_options_that_resume_or_rescore_decide_are_refused_by_name(args, message, tmp_path, capsys, monkeypatch):
    # Before: each was ignored without a word (the quality benchmark's given its default value could not be told
    # from its default; the search's --seed 0 was falsy), and the run went on with the stored values.
    (tmp_path / "run").mkdir()
    (tmp_path / "quality.json").write_text("{}")
    line = refused_here([*args, "--no-mlflow"], tmp_path, capsys, monkeypatch)
    assert line == message, line


# ------------------------------------------------------------------ flags that another flag makes unused
@pytest.mark.parametrize("args, message", [
    (["search", "--set", "image_size=8", "--set", "batch_size=4", "--set", "train_fraction=0.3", "--no-mlflow"],
     "error: --set: image_size, batch_size, train_fraction are settings of the run, not options of the searcher; "
     "give --image-size, --batch-size, train_fraction: in the --config file"),
    (["search", "--epochs", "3", "--set", "epochs=2"],
     "error: --set: --epochs given both as a flag and with --set; give each once"),  # was: --set won unseen
    (["search", "--no-mlflow", "--tracking-uri", "http://127.0.0.1:5000"],
     "error: --no-mlflow: the search logs to no tracking server; drop --tracking-uri"),
    (["sweep", "--no-mlflow", "--promote"], "error: --no-mlflow: the sweep logs to no tracking server and registers "
                                            "no champion; drop --promote"),
    (["ablate", "study.yaml", "--no-mlflow", "--tracking-uri", "sqlite:///m.db"],
     "error: --no-mlflow: the study logs to no tracking server and registers no champion; drop --tracking-uri"),
    (["ablate", "study.yaml", "--no-mlflow", "--address", "auto", "--num-cpus", "2"],
     "error: --address: the study joins a running cluster, whose CPUs are its own; drop --num-cpus"),
    (["ablate", "study.yaml", "--no-mlflow", "--out", "run", "--storage", "elsewhere"],
     "error: --out: the study's run directory is the folder given, in no storage; drop --storage"),
    (["prune", "vit_tiny_patch16_224", "--demo"], "error: --demo: the demo trains its own small ViT on digits and "
                                                  "would ignore 'vit_tiny_patch16_224'; give either --demo or the timm "
                                                  "model to prune"),
    (["prune", "vit_tiny_patch16_224", "--finetune-epochs", "3", "--batch-size", "4"],
     "error: --data-root: a named model is fine-tuned on an image folder: add --data-root FOLDER (train/ and test/, "
     "one folder per class); without one it is pruned, saved and registered as it is; drop --finetune-epochs, "
     "--batch-size"),
    (["prune", "--finetune", "all"], "error: the demo: it fine-tunes with its own settings (--finetune-epochs sets its "
                                     "epochs); drop --finetune"),
    (["prune", "--data-root", "."], "error: --data-root: the demo trains and fine-tunes its own small ViT on digits "
                                    "and would ignore the folder; name the timm model to prune (dartboard prune MODEL "
                                    "--checkpoint FILE --data-root FOLDER)"),
    (["prune", "--threshold", "2"], "error: threshold: expected a value in (0, 1), got 2.0"),  # was: a traceback
    (["bench", "quality", "--no-mlflow", "--tracking-uri", "sqlite:///m.db"],
     "error: --no-mlflow: the benchmark logs to no tracking server; drop --tracking-uri"),
    (["bench", "quality", "--no-mlflow", "--searchers", "darts,dario"],  # was: a traceback
     "error: searcher 'dario' cannot search tiny81: it has no option C, layers, multiplier, reductions, space, steps"),
], ids=["search-set-run-setting", "search-set-and-flag", "search-no-mlflow", "sweep-no-mlflow", "ablate-no-mlflow",
        "ablate-address-cpus", "ablate-out-storage", "prune-demo-and-model", "prune-finetune-named",
        "prune-demo-finetune", "prune-demo-folder", "prune-demo-threshold", "quality-no-mlflow", "quality-dario"])
def test_a_flag_that_another_makes_unused_is_refused_by_name(args, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "study.yaml").write_text("name: s\nsearcher: [darts, fairdarts]\nseeds: [0]\nsampler: grid\n")
    _no_work(monkeypatch)
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert line == message, line


def _no_work(monkeypatch) -> None:
    """A regression that lets the command start its work fails at once instead of running it."""
    import dartboard.platform.ablation as ablation
    import dartboard.platform.dario_demo as dario_demo
    import dartboard.platform.dario_run as dario_run
    import dartboard.platform.quality as quality
    import dartboard.platform.run as run
    import dartboard.platform.sweep as sweep

    def work(*args, **kwargs):
        raise AssertionError("the command started its work instead of refusing the flags")

    for module, name in ((run, "run_search_job"), (sweep, "run_sweep"), (ablation, "run_ablation"),
                         (dario_demo, "run_demo"), (dario_run, "prune_model"), (quality, "run_quality")):
        monkeypatch.setattr(module, name, work)


def test_retrieve_refuses_a_threshold_no_cosine_reaches_and_a_seed_folders_do_not_use(tmp_path, capsys, monkeypatch):
    from dartboard.platform.cli.main import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:  # was: mAP 0.0000 and exit 0
        main(["retrieve", "w.pt", "--tau", "5"])
    assert done.value.code == 2 and "Invalid value for '--tau'" in capsys.readouterr().err
    (tmp_path / "q").mkdir()
    (tmp_path / "g").mkdir()
    weights = _mlp_weights(tmp_path)
    line = refused_here(["retrieve", weights, "--query", "q", "--gallery", "g", "--seed", "3"], tmp_path, capsys,
                        monkeypatch)
    assert line == ("error: --query: folders are ranked as they are (the seed splits the pretraining data only); "
                    "drop --seed")
    for folder, group in (("q", "one"), ("g", "one"), ("g", "empty")):  # a gallery group without an image
        (tmp_path / folder / group).mkdir()
        if group == "one":
            (tmp_path / folder / group / "x.npy").write_text("no picture type a folder reads")
    (tmp_path / "q" / "one" / "x.png").write_bytes(b"")
    line = refused_here(["retrieve", weights, "--query", "q", "--gallery", "g"], tmp_path, capsys, monkeypatch)
    assert re.fullmatch(r"error: --gallery: 'g': class folder\(s\) 'empty', 'one' hold no image file \(.jpg, .*\); "
                        r"each class needs at least one image, or remove its folder", line), line


def _mlp_weights(folder: Path) -> str:
    """The smallest weights file `dartboard train` writes for an mlp genotype (an untrained head network)."""
    import torch

    from dartboard.spaces.genotype import MlpGenotype, to_dict
    from dartboard.training import ssl_eval as E

    genotype = MlpGenotype({"projector": ("linear_relu",), "predictor": ()}, {"framework": "simsiam"})
    net, _ = E.head_network(genotype, 1, 4)
    path = folder / "w.pt"
    torch.save({"genotype": to_dict(genotype), "in_channels": 1, "C": 4, "framework": "simsiam", "input_size": 8,
                "state_dict": net.state_dict()}, path)
    return path.name


def test_a_study_folder_or_storage_that_cannot_be_used_is_a_user_error(tmp_path):
    # Before: plain ValueErrors, printed by `ablate --out` / `sweep --storage` as tracebacks.
    from dartboard.errors import UserInputError
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray import storage as st
    from dartboard.platform.ray.runner import _new_run_dir

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / st.STUDY_FILE).write_text("name: s\n")
    with pytest.raises(UserInputError, match=f"out: '{tmp_path / 'run'}' already holds a study; continue it with "
                                             "--resume"):
        _new_run_dir(StudyConfig(searcher="darts"), str(tmp_path / "run"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UserInputError, match=f"storage: '{tmp_path / 'file' / 'below'}' is not writable"):
        st.check_storage(str(tmp_path / "file" / "below"))


# ------------------------------------------------------------------ a Ray cluster that is not there
@pytest.mark.parametrize("args, message", [
    (["sweep", "--address", "127.0.0.1:9"], "error: --address: cannot reach a Ray cluster at 127.0.0.1:9"),
    (["sweep", "--address", "headnode"], "error: --address: expected HOST:PORT of a Ray cluster's head"),
], ids=["host-port", "no-port"])
def test_a_ray_address_that_answers_nothing_is_one_line_in_seconds(args, message, tmp_path):
    # Ray itself retries such an address for minutes, a warning every 5 s (past this test's subprocess timeout).
    # Nothing is left behind either: the storage's write probe removes the folders it made.
    line = refused([*args, "--no-mlflow"], tmp_path)
    assert line.startswith(message), line


@pytest.mark.parametrize("address, message", [
    ("ray://127.0.0.1:9", "cannot reach a Ray cluster at ray://127.0.0.1:9"),
    ("127.0.0.1:x", "'127.0.0.1:x' is not a valid address"),
    ("ray://headnode", "expected HOST:PORT of a Ray cluster's head, ray://HOST:PORT or auto, got 'ray://headnode'"),
])
def test_the_forms_of_a_ray_address(address, message):
    from dartboard.errors import UserInputError
    from dartboard.platform.checks import check_ray_address

    with pytest.raises(UserInputError, match=re.escape(f"--address: {message}")):
        check_ray_address(address)
    check_ray_address("auto")  # Ray's to resolve
    check_ray_address("local")


# ------------------------------------------------------------------ output folders that cannot be written
@pytest.mark.parametrize("args", [
    ["search", "--out", "afile/run", "--no-mlflow"],
    ["search", "--out", "afile", "--no-mlflow"],
    ["train", "darts-v2", "--out", "afile/weights", "--no-mlflow"],
    ["pull", "digits-darts@champion", "--to", "afile/got"],
    ["distance", "darts-v1", "darts-v2", "--out", "afile/heatmap.png"],
], ids=["search-under-a-file", "search-onto-a-file", "train", "pull", "distance"])
def test_an_unwritable_output_is_refused_before_work(args, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("a file, not a folder")
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert line.startswith(("error: --out: ", "error: --to: ")) and "afile" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_the_search(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = refused(["search", "--out", "locked/run", "--no-mlflow"], tmp_path)
    finally:
        locked.chmod(0o700)
    assert "--out: cannot write to 'locked/run'" in line


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("args, message", [
    (["search", "--set", "C=abc", "--no-mlflow", "--out", "run"], "C: expected an integer >= 1, got 'abc'"),
    (["info", "darts-v2", "--channels", "-5"], "channels: expected an integer in [2, 1024], got -5"),
    (["info", "darts-v2", "--layers", "5000"], "layers: expected an integer in [1, 100], got 5000"),
    (["train", "darts-v2", "--drop-path", "2.0", "--no-mlflow"], "--drop-path: expected a probability in [0, 1)"),
    (["bench", "speed", "--batch", "0"], "--batch: expected an integer >= 1, got 0"),
    (["train", "darts-v2", "--device", "gpu", "--no-mlflow"], "error: device: expected auto, cpu, cuda[:N] or mps, "
                                                              "got 'gpu'"),
], ids=["set-C-abc", "info-channels", "info-layers", "train-drop-path", "bench-batch", "train-device"])
def test_a_bad_value_is_one_line_naming_it(args, message, tmp_path, capsys, monkeypatch):
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert message in line


@pytest.mark.parametrize("args, message", [
    (["prune", "vit_tiny_patch16_224", "--device", "gpu"], "error: device: expected auto, cpu, cuda[:N] or mps"),
    (["prune", "--device", "cuda"], "error: --device: the demo runs on the CPU, got 'cuda'"),
    (["train", "darts-v2", "--image-size", "64", "--no-mlflow"], "error: --image-size: 'digits' has images of one "
                                                                 "size, which it would ignore"),
    (["train", "darts-v2", "--image-size", "0", "--no-mlflow"], "error: --image-size: expected a positive integer"),
    (["distance", "darts-v1", "darts-v2", "--out", "m.txt"], "error: --out: 'm.txt': a heatmap is written as an "
                                                             "image, not 'txt'; use one of "),
    # a folder for data made in memory was ignored: the search or training ran on digits
    (["search", "--data-root", "cifar", "--no-mlflow"], "error: invalid configuration: data_root (--data-root): "
                                                        "dataset 'digits' is made in memory and reads no folder, so "
                                                        "'cifar' would be ignored"),
    (["train", "darts-v2", "--data-root", "cifar"], "error: data_root (--data-root): dataset 'digits' is made in "
                                                    "memory and reads no folder"),  # and no mlflow.db is made
    # pydantic's "Value error, " and an empty field before a model validator's own message
    (["search", "--dataset", "nosuch", "--no-mlflow"], "error: invalid configuration: dataset: unknown dataset "
                                                       "'nosuch'; expected one of digits"),
], ids=["prune-device", "prune-demo-device", "train-image-size-ignored", "train-image-size-0", "distance-format",
        "search-data-root-ignored", "train-data-root-ignored", "search-unknown-dataset"])
def test_a_bad_value_is_one_line_naming_it_here(args, message, tmp_path, capsys, monkeypatch):
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    assert message in line


@pytest.mark.parametrize("args, files", [
    (["pull", "digits-darts@champion", "--to", "got"], {}),
    (["prune", "vit_tiny_patch16_224", "--checkpoint", "junk.pt"], {"junk.pt": "not a checkpoint"}),
    (["bench", "quality", "--no-mlflow", "--rescore", "given.json"], {"given.json": "{bad"}),
    (["info", "darts-v2", "--channels", "-5"], {}),
    (["distance", "darts-v1", "darts-v2", "--out", "afile/heatmap.png"], {"afile": "a file, not a folder"}),
    (["info", "geno.json"], {"geno.json": '{"schema": "dartboard.genotype", "version": 1, "kind": "darts", '
                                          '"normal": {"edges": [["sep_conv_3x3", 0, 2]], "concat": []}, '
                                          '"reduce": {"edges": [["max_pool_3x3", 0, 2]], "concat": [2]}}'}),
], ids=["registry", "prune-checkpoint", "rescore", "value", "unwritable-output", "genotype-file"])
def test_the_console_script_refuses_as_main_does(args, files, tmp_path, capsys, monkeypatch):
    # The cases above that run in this process (refused_here), one of each kind, through the installed script too.
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert refused(args, tmp_path) == refused_here(args, tmp_path, capsys, monkeypatch)


def test_a_genotype_with_an_empty_concat_is_refused(tmp_path, capsys, monkeypatch):
    name = genotype_file(tmp_path, darts_cell([["sep_conv_3x3", 0, 2], ["skip_connect", 1, 2]], []))
    line = refused_here(["info", name, "--layers", "3"], tmp_path, capsys, monkeypatch)
    assert "normal.concat: expected a non-empty list" in line


@pytest.mark.parametrize("args", [["info", "geno.json"], ["train", "geno.json", "--no-mlflow"],
                                  ["distance", "geno.json", "darts-v2"], ["evaluate", "model"]],
                         ids=["info", "train", "distance", "evaluate-folder"])
def test_a_broken_genotype_file_is_named(args, tmp_path, capsys, monkeypatch):
    # before: "error: not valid JSON: ..." without the file (a command may read several)
    (tmp_path / "geno.json").write_text("{")
    (tmp_path / "model").mkdir()
    for name, text in (("genotype.json", "{"), ("network.json", "{}"), ("weights.safetensors", "")):
        (tmp_path / "model" / name).write_text(text)
    line = refused_here(args, tmp_path, capsys, monkeypatch)
    where = "model/genotype.json" if args[0] == "evaluate" else "geno.json"
    assert line.startswith(f"error: genotype file '{where}': not valid JSON: Expecting property name"), line


def test_a_genotype_with_thousands_of_edges_is_refused_up_front_with_the_limit(tmp_path, capsys, monkeypatch):
    edges = [["sep_conv_3x3", src, dst] for dst in range(2, 80) for src in range(dst)]  # 3,237 edges
    name = genotype_file(tmp_path, darts_cell(edges, [79]))
    line = refused_here(["info", name], tmp_path, capsys, monkeypatch)
    assert f"normal.edges: {len(edges)} edges; at most 64 per cell" in line


# ------------------------------------------------------------------ the genotype limits (in process)
@pytest.mark.parametrize("change, message", [
    (lambda d: d["normal"].update(edges=[["sep_conv_3x3", 0, 40], ["skip_connect", 1, 40]], concat=[40]),
     "normal.edges: node 40 makes 39 intermediate nodes; at most 32 are supported"),
    (lambda d: d["reduce"].update(n_inputs=3), "reduce.n_inputs: expected 2"),
    (lambda d: d["normal"].update(concat=[]), "normal.concat: expected a non-empty list"),
])
def test_genotype_sizes_and_shapes_are_checked_when_read(change, message):
    from dartboard.spaces import genotype as gt

    data = gt.to_dict(gt.loads(json.dumps({"schema": "dartboard.genotype", "version": 1, "kind": "darts",
                                           "normal": darts_cell([["sep_conv_3x3", 0, 2]], [2]),
                                           "reduce": darts_cell([["max_pool_3x3", 1, 2]], [2])})))
    change(data)
    with pytest.raises(gt.GenotypeError, match=message.replace("[", r"\[")):
        gt.from_dict(data)


def test_a_cells_genotype_of_more_than_100_cells_is_refused():
    from dartboard.spaces import genotype as gt

    cell = {"edges": [["sep_conv_3x3", 0, 2]], "concat": [2]}
    data = {"schema": "dartboard.genotype", "version": 1, "kind": "cells", "cells": [cell] * 101, "reductions": []}
    with pytest.raises(gt.GenotypeError, match="cells: 101 cells; at most 100 are supported"):
        gt.from_dict(data)
    data["cells"] = [cell] * 100
    assert len(gt.from_dict(data).cells) == 100


@pytest.mark.parametrize("genotype, message", [
    ("pmsm-thesis", "genotype 'pmsm-thesis' is of kind 'flux_mlp'; train takes darts, cells, colornas or mlp "
                    "genotypes: a PMSM flux model is trained by `dartboard pmsm compare NAME=GENOTYPE`"),
    ("gates.json", "genotype 'gates.json' is of kind 'gates'; train takes darts, cells, colornas or mlp genotypes: "
                   "a pruned ViT (DARIO's gates) is made, and fine-tuned on an image folder, by `dartboard prune MODEL "
                   "--checkpoint FILE --data-root FOLDER`"),
], ids=["flux", "gates"])
def test_train_refuses_a_genotype_it_does_not_train_before_any_work(genotype, message, tmp_path, capsys,
                                                                    monkeypatch):
    # without --no-mlflow: no mlflow.db (and no MLflow experiment or run) may be left behind
    (tmp_path / "gates.json").write_text(json.dumps({"schema": "dartboard.genotype", "version": 1, "kind": "gates",
                                                     "model": "vit_tiny_patch16_224", "blocks_kept": [0, 2],
                                                     "heads_kept": {}, "n_blocks": 3, "n_heads": 2}))
    assert message in refused_here(["train", genotype, "--epochs", "1"], tmp_path, capsys, monkeypatch)


@pytest.mark.skipif(__import__("torch").backends.mps.is_available(), reason="this machine has Apple's MPS")
@pytest.mark.parametrize("args", [["search", "--out", "run"], ["train", "darts-v2"]], ids=["search", "train"])
def test_an_mps_device_without_mps_is_one_line(args, tmp_path, capsys, monkeypatch):
    # before: "RuntimeError: PyTorch is not linked with support for mps devices", a traceback at the first tensor moved
    line = refused_here([*args, "--device", "mps", "--epochs", "1", "--no-mlflow"], tmp_path, capsys, monkeypatch)
    assert line == ("error: device: 'mps' was asked for but Apple's MPS is not available here (it needs a Mac with "
                    "Apple silicon and a PyTorch build with MPS)")
