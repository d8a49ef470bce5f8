"""Study configs without a cluster: option paths (nested options inside lists and mappings), their
validation (every error names the parameter), the samplers, and the shipped outer-hyperparameter
studies (D-DARTS, constrained DARTS, FairDARTS)."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from dartboard.platform.config import SearchRunConfig, StudyConfig
from dartboard.platform.ray.options import parse_path, set_option
from dartboard.platform.ray.runner import STUDIES_DIR, load_study
from dartboard.platform.ray.samplers import StudySpace
from dartboard.platform.ray.space import check_study, grid_param_space, trial_run_config, validate_study
from dartboard.searchers.registry import DataShape, build_searcher, get_searcher_spec


def test_option_paths_parse_and_set_nested_values_on_copies():
    assert parse_path("regularizers[admm].rho") == [("regularizers", "admm"), ("rho", None)]
    assert parse_path("regularizers[0].rho") == [("regularizers", 0), ("rho", None)]
    assert parse_path("discretizer_options.sigma_threshold") == [("discretizer_options", None),
                                                                  ("sigma_threshold", None)]
    defaults = {"regularizers": ["zero_one", {"name": "admm", "period": 5}]}
    out = set_option({"C": 4}, "regularizers[admm].rho", 0.3, defaults)
    assert out == {"C": 4, "regularizers": ["zero_one", {"name": "admm", "period": 5, "rho": 0.3}]}
    assert defaults == {"regularizers": ["zero_one", {"name": "admm", "period": 5}]}  # never mutated
    out = set_option(out, "regularizers[zero_one].weight", 2.0, defaults)
    assert out["regularizers"][0] == {"name": "zero_one", "weight": 2.0}
    assert set_option({}, "discretizer_options.sigma_threshold", 0.7, {}) == {
        "discretizer_options": {"sigma_threshold": 0.7}}
    assert set_option({"discretizer_options": {"max_ops": 1}}, "discretizer_options.sigma_threshold", 0.7, {}) == {
        "discretizer_options": {"max_ops": 1, "sigma_threshold": 0.7}}


@pytest.mark.parametrize("path, message", [
    ("regularizers[l1].weight", r"params.regularizers\[l1\].weight: regularizers has no element named 'l1'"),
    ("regularizers[5].weight", r"params.regularizers\[5\].weight: regularizers has 1 element\(s\), no index 5"),
    ("regularizers[admm]", r"params.regularizers\[admm\]: a path must end in an option name"),
    ("arch_lr.x", r"params.arch_lr.x: 'arch_lr' is float 0.1, not a mapping"),
    ("a..b", r"params.a..b: '' is not NAME or NAME\[selector\]"),
    ("C.x", r"params.C.x: 'C' is int 4, not a mapping"),
])
def test_bad_option_paths_name_the_parameter(path, message):
    with pytest.raises(ValueError, match=message):
        set_option({"arch_lr": 0.1, "C": 4}, path, 1.0, {"regularizers": [{"name": "admm"}]})


def _study(**kw) -> StudyConfig:
    base = {"name": "t", "searcher": "darts+admm", "epochs": 2, "options": {"C": 4, "layers": 3},
            "params": {"regularizers[admm].rho": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
    return StudyConfig(**{**base, **kw})


def test_nested_parameter_reaches_the_regularizer_and_leaves_the_preset_alone():
    cfg = _study()
    validate_study(cfg)
    run = SearchRunConfig(**trial_run_config(cfg, {"regularizers[admm].rho": 0.37}))
    assert run.options["regularizers"] == [{"name": "admm", "rho": 0.37}]
    assert get_searcher_spec("darts+admm").defaults["regularizers"] == [{"name": "admm"}]
    searcher = build_searcher(run.searcher, run.searcher_options(), DataShape(1, 8, 10))
    (admm,) = [r for r in searcher.regularizers if type(r).__name__ == "Admm"]
    assert admm.rho == pytest.approx(0.37)


def test_validation_names_the_parameter():
    with pytest.raises(ValueError, match=r"variants.darts\+admm: searcher 'darts\+admm' refuses the study's options "
                                         r"\(regularizers\[admm\].rhoo=0.01\): searcher 'darts\+admm': "
                                         r"regularizer 'admm' has no option 'rhoo'"):
        validate_study(_study(params={"regularizers[admm].rhoo": {"type": "uniform", "low": 0.01, "high": 1.0}}))
    with pytest.raises(ValueError, match=r"params.regularizers\[proximity\].rho: regularizers has no element named "
                                         r"'proximity' \(its elements: admm\)"):
        validate_study(_study(params={"regularizers[proximity].rho": {"type": "uniform", "low": 0.01, "high": 1.0}}))
    with pytest.raises(ValueError, match=r"params.foo.bar: searcher 'darts\+admm' has no hyperparameter 'foo'"):
        validate_study(_study(params={"foo.bar": {"type": "uniform", "low": 0.0, "high": 1.0}}))
    # the highest value is tried too: a threshold above 1 fails before any trial starts
    # (refused by the searcher's build since the discretizer's values are checked there, naming the discretizer)
    with pytest.raises(ValueError, match=r"discretizer_options.sigma_threshold=1.5\): searcher 'ddarts': discretizer "
                                         r"'sparse': sigma_threshold: expected a value in \[0, 1\], got 1.5"):
        validate_study(_study(searcher="ddarts", params={"discretizer_options.sigma_threshold": {
            "type": "uniform", "low": 0.5, "high": 1.5}}))
    with pytest.raises(ValueError, match=r"params.regularizers\[admm\].rho: the grid sampler takes 'choice'"):
        validate_study(_study(sampler="grid"))
    with pytest.raises(ValueError, match=r"params.variant: list variants in 'variants'"):
        validate_study(_study(params={"variant": {"type": "choice", "values": ["a"]}}))
    with pytest.raises(ValueError, match=r"params.x.when.variant: 'nope' is not one of the study's variants"):
        validate_study(_study(params={"x": {"type": "choice", "values": [1], "when": {"variant": "nope"}}}))
    with pytest.raises(ValidationError, match="give either 'searcher' \\(names\\) or 'variants'"):
        _study(variants=[{"name": "a", "searcher": "darts"}])
    # the sweep's search space written as `space:`, which names the cell space: said so, not "a valid string"
    with pytest.raises(ValidationError, match="space\n.*expected the name of a cell space .* the outer hyperparameters "
                                              "to sample, with their distributions, go under params:"):
        _study(space={"w_lr": {"type": "loguniform", "low": 0.01, "high": 0.1}})


def test_grid_is_variants_x_seeds_x_choices():
    cfg = StudyConfig(name="g", sampler="grid", seeds=[0, 1], variants=[
        {"name": "a", "searcher": "darts"}, {"name": "b", "searcher": "darts+pr"}],
        params={"C": {"type": "choice", "values": [4, 6]}})
    validate_study(cfg)
    space = grid_param_space(cfg)
    assert space["variant"] == {"grid_search": ["a", "b"]} and space["seed"] == {"grid_search": [0, 1]}
    assert space["C"] == {"grid_search": [4, 6]}
    run = SearchRunConfig(**trial_run_config(cfg, {"variant": "b", "seed": 1, "C": 6}))
    assert run.searcher == "darts+pr" and run.seed == 1 and run.options["C"] == 6


@pytest.mark.parametrize("name", ["ddarts-outer", "constrained-darts-outer", "fairdarts-outer"])
def test_outer_hyperparameter_studies_are_valid_and_use_the_derived_objective(name):
    cfg = load_study(name)
    validate_study(cfg)
    assert cfg.objective.kind == "derived" and cfg.dataset == "digits" and cfg.sampler == "tpe"


def test_constrained_study_samples_each_variants_own_parameters():
    import optuna

    cfg = load_study("constrained-darts-outer")
    space = StudySpace({k: v.model_dump() for k, v in cfg.params.items()}, {v.name: v.searcher for v in cfg.variants})
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(10):
        t = opt.ask()
        space(t)
        seen.add(t.params["variant"])
        nested = sorted(k for k in t.params if k != "variant")
        if t.params["variant"] == "darts+pr":
            assert nested == ["regularizers[proximity].rho"]
        else:
            assert nested == ["regularizers[admm].lambda_u", "regularizers[admm].rho"]
        run = SearchRunConfig(**trial_run_config(cfg, t.params))
        (reg,) = run.options["regularizers"]
        assert {k: v for k, v in reg.items() if k != "name"} == {k.split(".")[-1]: v for k, v in t.params.items()
                                                                 if k != "variant"}
        opt.tell(t, 0.5)
    assert seen == {"darts+pr", "darts+admm"}


def test_the_checks_run_while_ray_starts_and_a_refused_study_writes_nothing(tmp_path, monkeypatch):
    """run_study starts Ray in the background while this thread checks the study (the searcher registry's
    torch import, then the dry build: a searcher and its optimizers); a study the checks refuse raises their
    error, writes no study file and stops the Ray it started, once that start is over."""
    import threading

    import ray

    from dartboard.platform.ray import runner

    ray_starting, checked = threading.Event(), threading.Event()
    events = []

    def init_ray(cfg):  # Ray's start begins first and ends only once the checks ran: both at once, or a timeout
        ray_starting.set()
        assert checked.wait(10), "the checks did not run while Ray started"
        events.append("ray started")
        return True

    def check_study(cfg, new=True):
        assert ray_starting.wait(10), "the checks ran before Ray started"
        events.append("checked")
        checked.set()

    def dry_build(cfg):
        raise ValueError("variants.t: searcher refuses the study's options (dry build)")

    monkeypatch.setattr(runner, "init_ray", init_ray)
    monkeypatch.setattr(runner, "check_study", check_study)
    monkeypatch.setattr(runner, "dry_build", dry_build)
    monkeypatch.setattr(ray, "shutdown", lambda: events.append("ray stopped"))
    out = tmp_path / "study"
    with pytest.raises(ValueError, match=r"refuses the study's options \(dry build\)"):
        runner.run_study(_study(), run_dir=str(out))
    assert not (out / "study.yaml").exists()
    assert events == ["checked", "ray started", "ray stopped"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a niceness per thread is Linux's")
def test_the_checks_yield_the_cores_to_rays_start_and_their_error_reaches_the_caller(tmp_path, monkeypatch):
    """The study's checks run in a thread of their own at a lower CPU priority (Ray's start gets the cores
    first); the thread's niceness ends with it, the caller's is unchanged, and a check's error is raised in the
    caller with its own type and message."""
    import os
    import threading

    import ray

    from dartboard.platform.ray import runner

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before, seen = niceness(), {}

    def check_study(cfg, new=True):
        seen["thread"], seen["niceness"] = threading.current_thread(), niceness()

    def dry_build(cfg):
        raise ValueError("variants.t: searcher refuses the study's options (dry build)")

    monkeypatch.setattr(runner, "init_ray", lambda cfg: True)
    monkeypatch.setattr(runner, "check_study", check_study)
    monkeypatch.setattr(runner, "dry_build", dry_build)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(ValueError, match=r"refuses the study's options \(dry build\)"):
        runner.run_study(_study(), run_dir=str(tmp_path / "study"))
    assert seen["thread"] is not threading.main_thread() and not seen["thread"].is_alive()
    assert seen["niceness"] == min(before + runner.CHECKS_NICENESS, 19)
    assert niceness() == before

    monkeypatch.setattr(runner, "dry_build", lambda cfg: None)
    monkeypatch.setattr(runner, "_warm_tune_imports", lambda: None)
    monkeypatch.setattr(runner, "_tracked", lambda cfg, run_dir, *rest: run_dir)
    out = str(tmp_path / "study2")
    assert runner.run_study(_study(), run_dir=out) == out  # the checks' result (the run directory) comes back


def test_the_thread_that_started_ray_lives_until_ray_is_stopped(tmp_path, monkeypatch):
    """Ray's processes die with the thread that forked them (Linux's parent-death signal follows the thread):
    the thread that ran ``init_ray`` must still be alive while the study runs, and end once Ray is stopped."""
    import threading

    import ray

    from dartboard.platform.ray import runner

    seen = {}

    def init_ray(cfg):
        seen["thread"] = threading.current_thread()
        return True

    def tracked(cfg, run_dir, resume, tracker, report, hooks):
        seen["alive while the study runs"] = seen["thread"].is_alive()
        return "result"

    monkeypatch.setattr(runner, "init_ray", init_ray)
    monkeypatch.setattr(runner, "_tracked", tracked)
    monkeypatch.setattr(runner, "dry_build", lambda cfg: None)
    monkeypatch.setattr(runner, "_warm_tune_imports", lambda: None)
    monkeypatch.setattr(ray, "shutdown", lambda: seen.setdefault("alive when Ray stops", seen["thread"].is_alive()))
    assert runner.run_study(_study(), run_dir=str(tmp_path / "study")) == "result"
    assert seen["thread"] is not threading.main_thread()
    assert seen["alive while the study runs"] and seen["alive when Ray stops"]
    assert not seen["thread"].is_alive()


@pytest.mark.parametrize("change, message", [
    ({}, None),
    ({"resources": {"workers": 1, "gpus_per_worker": 0}}, "cuda_graph: the trials need a GPU"),
    ({"resources": {"workers": 2, "gpus_per_worker": 1}}, "cuda_graph: one worker only"),
    ({"searcher": "darts+fimt"}, "cuda_graph: the step cannot be captured in a CUDA graph: schedule FimtSchedule"),
])
def test_a_study_with_cuda_graph_is_checked_on_the_cpu(change, message):
    """The dry build runs on the CPU: it builds the searcher without the graph, then checks what a GPU
    trial would refuse (its resources, its parts) before any trial starts."""
    cfg = _study(**{"searcher": "darts", "params": {}, "sampler": "grid",
                    "options": {"C": 4, "layers": 3, "cuda_graph": True},
                    "resources": {"workers": 1, "gpus_per_worker": 1}, **change})
    if message is None:
        validate_study(cfg)
    else:
        with pytest.raises(ValueError, match=message):
            validate_study(cfg)


@pytest.mark.parametrize("path", sorted(STUDIES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_study_passes_the_checks_its_command_runs_before_any_trial(path):
    """What `dartboard sweep NAME` / `dartboard ablate NAME` check while Ray starts: the study's validation and each
    variant's searcher built and derived with every parameter at its low and its high end."""
    from dartboard.platform.ray.space import dry_build

    cfg = load_study(path.stem)
    check_study(cfg)
    dry_build(cfg)


def test_every_value_of_a_choice_is_tried_before_any_trial():
    # an inner value of a choice (neither first nor last) that the searcher refuses fails the checks too
    choice = {"C": {"type": "choice", "values": [4, 0, 6]}}
    with pytest.raises(ValueError, match=r"refuses the study's options \(C=0\): searcher 'darts': C: expected an "
                                         r"integer >= 1, got 0"):
        validate_study(_study(searcher="darts", params=choice))
    validate_study(_study(searcher="darts", params={"C": {"type": "choice", "values": [4, 5, 6]}}))


def test_set_changes_a_study_key_and_reaches_into_its_mappings():
    # `dartboard sweep STUDY --set epochs=1 --set options.C=4`: a shipped study run shorter or smaller without copying
    # its YAML (before: only --storage and --num-samples could be changed).
    from dartboard.platform.ray.options import set_study_key

    base = load_study("ddarts-outer")
    cfg = load_study("ddarts-outer", {"num_samples": 2},
                     {"epochs": 1, "options.C": 4, "scheduler.type": "fifo", "final_training": None})
    assert cfg.epochs == 1 and cfg.num_samples == 2 and cfg.final_training is None
    assert cfg.options == {**base.options, "C": 4}  # the study's other options kept
    assert cfg.scheduler.type == "fifo" and cfg.scheduler.metric == base.scheduler.metric
    study = {"seeds": [0, 1], "options": {"C": 2}}
    set_study_key(study, "resources.workers", 2)  # a mapping the study does not have is made
    assert study["resources"] == {"workers": 2}
    with pytest.raises(ValueError, match=r"--set seeds.0: seeds is a list in the study, not a mapping; set it whole"):
        set_study_key(study, "seeds.0", 3)
    with pytest.raises(ValueError, match=r"--set 'options\.': expected a study key, or a dotted path"):
        set_study_key(study, "options.", 3)
    with pytest.raises(ValidationError, match="epochs"):
        load_study("digits", settings={"epochs": 0})


@pytest.mark.parametrize("args, message", [
    (["sweep", "digits", "--set", "storage=x", "--storage", "y"],
     "error: --set: --storage given both as a flag and with --set; give each once"),
    (["ablate", "ablation_maile_table1", "--set", "ray_num_cpus=2", "--num-cpus", "2"],
     "error: --set: --num-cpus given both as a flag and with --set; give each once"),
    (["sweep", "--resume", "runs/x", "--set", "epochs=1"],
     "error: --resume: the sweep resumes with the study, storage and Ray address it started with; drop --set"),
    (["ablate", "--resume", "runs/x", "--set", "epochs=1"], "error: --set: epochs: a resumed study keeps what its "
                                                             "trials ran with; only its report (report.metrics, "
                                                             "report.size_metric, report.rank_metric, "
                                                             "report.rank_mode) may change"),
    (["sweep", "digits", "--set", "epochs"], "error: --set 'epochs': expected KEY=VALUE"),
    (["sweep", "digits", "--set", "nope=1"], "error: invalid configuration: nope: Extra inputs are not permitted"),
], ids=["sweep-both", "ablate-both", "sweep-resume", "ablate-resume", "no-value", "unknown-key"])
def test_set_on_a_study_command_is_refused_in_one_line_where_it_cannot_apply(args, message, tmp_path, capsys,
                                                                             monkeypatch):
    from test_cli_bad_input import refused_here

    assert refused_here(args, tmp_path, capsys, monkeypatch) == message


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_sampler_with_nothing_to_sample_is_refused_before_any_trial(sampler):
    """With no params a tpe or random draw is only a variant: more than one trial would repeat a configuration and
    its seed, and give the same result again."""
    study = {"searcher": ["darts", "fairdarts"], "params": {}, "sampler": sampler, "options": {"C": 4, "layers": 3}}
    with pytest.raises(ValueError, match=rf"sampler: with no params, the '{sampler}' sampler draws only the variant; "
                                         r"its 3 trials would repeat one configuration .* sampler: grid"):
        validate_study(_study(**study, num_samples=3))
    validate_study(_study(**study, num_samples=1))  # one draw repeats nothing
    check_study(_study(**study, num_samples=3), new=False)  # a study that ran before the check is resumed as it was
    validate_study(_study(**{**study, "sampler": "grid"}))  # each variant once


def test_two_variants_that_are_the_same_search_are_refused_on_the_grid():
    """A copied variant whose options were not changed: the grid would run the same trials twice."""
    variants = [{"name": "a", "searcher": "darts", "options": {"C": 4}}, {"name": "b", "searcher": "darts",
                                                                          "options": {"C": 4}}]
    base = {"searcher": None, "variants": variants, "sampler": "grid", "seeds": [0, 1], "options": {"layers": 3},
            "params": {}}
    with pytest.raises(ValueError, match="variants: 'a' and 'b' are the same search \\(searcher 'darts', the same "
                                         "options\\): the grid would run their trials twice"):
        check_study(_study(**base))
    check_study(_study(**base), new=False)  # a study that ran before the check is resumed as it was
    other = [variants[0], {**variants[1], "options": {"C": 6}}]
    check_study(_study(**{**base, "variants": other}))  # other options
    given_by_the_study = [{**variants[0], "options": {}}, variants[1]]
    with pytest.raises(ValueError, match="variants: 'a' and 'b' are the same search"):
        check_study(_study(**{**base, "variants": given_by_the_study, "options": {"layers": 3, "C": 4}}))
    both = {"arch_lr": {"type": "choice", "values": [0.001, 0.01]}}  # the grid's params are every variant's
    with pytest.raises(ValueError, match="variants: 'a' and 'b' are the same search"):
        check_study(_study(**{**base, "params": both}))
