"""Bad input through the Python API, as a researcher calling dartboard from a script would give it: each case is
refused before any work, with an error that names the field, the value and what was expected. Before, each of
these ran with another value than the one given, derived an architecture from a diverged search, failed only
after a search or a training had run, or ended in an internal error (an audit of the public entry points)."""

from __future__ import annotations

import math

import pytest
import torch

from dartboard.bench.quality import QualityConfig
from dartboard.errors import MissingFileError, UserInputError
from dartboard.searchers.config import EngineConfig
from dartboard.searchers.discretize import build_discretizer, darts_parse, threshold_parse
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt
from dartboard.spaces.catalog import resolve
from dartboard.spaces.networks import DiscreteNetwork

SHAPE = DataShape(1, 8, 10)
SMALL = {"C": 4, "layers": 3, "stem_multiplier": 1, "epochs": 1}


# ------------------------------------------------------------------ a search's parts and options
@pytest.mark.parametrize("value, shown", [
    ({"zero_one": {"weight": 3}}, "{'zero_one': {'weight': 3}}"),  # was: ZeroOne at weight 10, the 3 dropped
    ("zero_one", "'zero_one'"),  # was: "unknown regularizer 'z'" (the name's letters)
])
def test_regularizers_that_are_not_a_list_are_refused(value, shown):
    with pytest.raises(ValueError, match=r"regularizers: expected a list of names or \{name: \.\.\., options\} "
                                         rf"mappings, such as \[\{{name: zero_one, weight: 10\}}\], got {shown}"):
        build_searcher("fairdarts", {**SMALL, "regularizers": value}, SHAPE)


def test_regularizers_as_a_list_still_build():
    searcher = build_searcher("fairdarts", {**SMALL, "regularizers": [{"name": "zero_one", "weight": 3}]}, SHAPE)
    assert [r.weight for r in searcher.regularizers] == [3]


@pytest.mark.parametrize("options, message", [
    ({"sigma_threshold": 1.5}, "discretizer 'sparse': sigma_threshold: expected a value in [0, 1], got 1.5"),
    ({"sigma_threshold": "high"}, "discretizer 'sparse': sigma_threshold: expected a value in [0, 1], got 'high'"),
    ({"max_inputs_per_node": 0}, "discretizer 'sparse': max_inputs_per_node: expected None or an integer >= 1, "
                                 "got 0"),
])
def test_discretizer_values_are_checked_when_the_search_is_built(options, message):
    # Before: found by derive() after the first epoch (a traceback from `dartboard search`, files left behind).
    with pytest.raises(ValueError) as err:
        build_searcher("ddarts", {**SMALL, "discretizer_options": options}, SHAPE)
    assert str(err.value) == f"searcher 'ddarts': {message}"


@pytest.mark.parametrize("value, message", [
    (0, "inputs_per_node: expected an integer >= 1, got 0"),  # was: cells without edges, a file nothing reads
    (-1, "inputs_per_node: expected an integer >= 1, got -1"),  # was: every edge kept
    ("2", "inputs_per_node: expected an integer >= 1, got '2'"),  # was: TypeError from a slice
])
def test_the_darts_parse_takes_at_least_one_input_per_node(value, message):
    with pytest.raises(ValueError, match=f"discretizer 'darts': {message}"):
        build_discretizer({"name": "darts", "inputs_per_node": value})
    with pytest.raises(ValueError, match=message):
        darts_parse(torch.rand(2, 3), [(0, 2), (1, 2)], [("a", "b", "c")] * 2, inputs_per_node=value)


def test_a_threshold_parse_of_diverged_weights_is_refused_like_the_darts_parse():
    # Before: a NaN weight compared False with the threshold, so a diverged FairDARTS/D-DARTS search derived a cell.
    weights = torch.tensor([[0.9, math.nan], [0.95, 0.1]])
    edges, primitives = [(0, 2), (1, 2)], [("sep_conv_3x3", "skip_connect")] * 2
    with pytest.raises(FloatingPointError, match="architecture weight of 'skip_connect' is nan: the search diverged"):
        threshold_parse(weights, edges, primitives)
    with pytest.raises(FloatingPointError, match="the search diverged"):
        darts_parse(weights, edges, primitives)
    finite = threshold_parse(torch.tensor([[0.9, 0.2], [0.95, 0.1]]), edges, primitives)
    assert [(e.op, e.src) for e in finite.edges] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]


@pytest.mark.parametrize("options, message", [
    ({"node_bn": "no"}, "node_bn: expected true or false, got 'no'"),  # was: node BN on ("no" is truthy)
    ({"single_level": "false"}, "single_level: expected true or false, got 'false'"),  # was: single-level steps
    ({"arch_betas": [0.5]}, r"arch_betas: expected two numbers in \[0, 1\) such as \[0.5, 0.999\], got \[0.5\]"),
    ({"arch_betas": 3}, r"arch_betas: expected two numbers in \[0, 1\) such as \[0.5, 0.999\], got 3"),
    ({"arch_betas": (2, 5)}, r"arch_betas: expected two numbers in \[0, 1\) such as \[0.5, 0.999\], got \(2, 5\)"),
    ({"reductions": ["a"]}, r"reductions: expected a list of cell positions \(integers\), got \['a'\]"),
    ({"order": "2"}, "order: expected 1 or 2, got '2'"),
    ({"w_lr": math.nan}, "w_lr: expected a number > 0, got nan"),  # was: accepted (nan <= 0 is False)
    ({"grad_clip": math.inf}, "grad_clip: expected a number > 0, got inf"),
    ({"arch_lr": math.nan}, "arch_lr: expected a number >= 0, got nan"),
    ({"warmup_epochs": True}, "warmup_epochs: expected an integer >= 0, got True"),
])
def test_engine_options_of_the_wrong_kind_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**options)


def test_build_searcher_takes_none_for_defaults_and_refuses_other_options_and_devices():
    assert build_searcher("darts", None, SHAPE).config.C == 16  # was: TypeError from dict(None)
    with pytest.raises(ValueError, match=r"searcher 'darts': options: expected a mapping of option names to values, "
                                         r"got \[1\]"):
        build_searcher("darts", [1], SHAPE)
    with pytest.raises(ValueError, match="searcher 'darts': device: expected cpu, cuda, cuda:N or mps, got 'gpu'"):
        build_searcher("darts", SMALL, SHAPE, "gpu")  # was: torch's RuntimeError
    assert build_searcher("darts", SMALL, SHAPE, torch.device("cpu")).config.device == "cpu"


def test_engine_options_of_the_right_kind_are_kept():
    cfg = EngineConfig(arch_betas=[0.5, 0.9], reductions=[1, 2], layers=4, node_bn=True)
    assert cfg.arch_betas == (0.5, 0.9) and cfg.reductions == (1, 2) and cfg.node_bn is True


# ------------------------------------------------------------------ genotypes and networks
@pytest.mark.parametrize("given", ["dict", "name"])
def test_a_network_of_a_dict_or_a_name_says_how_to_read_it(given):
    g = resolve("darts-v2")
    value = gt.to_dict(g) if given == "dict" else "darts-v2"
    with pytest.raises(gt.GenotypeError, match="genotype: a cell network is built from a darts or cells genotype, "
                                               f"got a {type(value).__name__}, not a genotype"):
        DiscreteNetwork(value, C=4, layers=3)  # was: AttributeError: 'dict' object has no attribute 'cells'
    with pytest.raises(gt.GenotypeError, match="not a genotype: dict"):
        gt.to_dict(gt.to_dict(g))  # was: AttributeError from gt.save


def test_a_network_of_another_kind_of_genotype_names_the_kind():
    with pytest.raises(gt.GenotypeError, match="got a 'flux_mlp' genotype"):
        DiscreteNetwork(resolve("pmsm-thesis"), C=4, layers=3)


@pytest.mark.parametrize("size, message", [
    ({"C": 0}, "C: expected an integer >= 1, got 0"),  # was: torch's "groups must be a positive integer"
    ({"C": "4"}, "C: expected an integer >= 1, got '4'"),
    ({"num_classes": 0}, "num_classes: expected an integer >= 1, got 0"),
])
def test_a_network_of_no_size_is_refused_by_name(size, message):
    with pytest.raises(ValueError, match=message):
        DiscreteNetwork(resolve("darts-v2"), **{"C": 4, "layers": 3, **size})



@pytest.mark.parametrize("size, message", [
    ({"C": 100_000}, "C: expected an integer <= 1024 (the largest network dartboard builds), got 100000"),
    ({"layers": 101}, "layers: expected an integer <= 100 "),
    ({"steps": 33}, "steps: expected an integer <= 32 "),
])
def test_a_supernet_beyond_the_network_limits_is_refused_before_it_is_built(size, message):
    # before: C=100000 asked the allocator for 120 GB and failed with its RuntimeError and a traceback
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_searcher("darts", {**SMALL, **size}, SHAPE)
    assert build_searcher("darts", {**SMALL, "C": 4}, SHAPE).config.C == 4


@pytest.mark.parametrize("momentum", [1.0, 2])
def test_a_weight_step_that_diverges_is_refused(momentum):
    # a momentum of 1 or more keeps every gradient forever
    with pytest.raises(ValueError, match=rf"w_momentum: expected a number in \[0, 1\), got {momentum!r}"):
        build_searcher("darts", {**SMALL, "w_momentum": momentum}, SHAPE)
    assert build_searcher("darts", {**SMALL, "w_momentum": 0.99}, SHAPE)
    assert build_searcher("darts", {**SMALL, "w_lr": 1e-6}, SHAPE)  # below w_lr_min: a study may sweep it there

@pytest.mark.parametrize("reader, what", [(gt.load, "genotype file"), ("config", "config file")])
def test_a_folder_given_for_a_file_is_named_as_a_folder(reader, what, tmp_path):
    from dartboard.platform.config import load_yaml

    read = load_yaml if reader == "config" else reader
    with pytest.raises(ValueError, match=f"{what} '{tmp_path}' is a folder, not a file"):
        read(tmp_path)
    with pytest.raises(ValueError, match=f"{what} '{tmp_path / 'absent'}' does not exist"):
        read(tmp_path / "absent")


def test_a_missing_file_is_a_user_error_that_is_still_a_file_not_found_error(tmp_path):
    from dartboard.errors import is_user_error

    try:
        from dartboard.platform.config import load_yaml

        load_yaml(tmp_path / "absent.yaml")
    except MissingFileError as err:
        assert isinstance(err, FileNotFoundError) and isinstance(err, UserInputError) and is_user_error(err)
    else:
        pytest.fail("no error")


def test_an_empty_study_file_is_refused_not_read_as_the_default_study(tmp_path):
    from dartboard.platform.sweep import load_study

    (tmp_path / "study.yaml").write_text("# to do\n")
    with pytest.raises(UserInputError, match=r"config file '.*study.yaml': expected a study \(a mapping at the top "
                                             r"level\)"):
        load_study(str(tmp_path / "study.yaml"))


# ------------------------------------------------------------------ studies
@pytest.mark.parametrize("metric, mode", [("val_acc", "max"), ("objective", "max"), ("val_loss", "min"),
                                          ("val_error", "min"), ("tiny81_regret", "min")])
def test_asha_keeps_the_better_trials_whatever_the_metric_is_called(metric, mode):
    # Before: every metric not ending in "loss" was maximised, val_error and regrets included.
    from dartboard.platform.config import StudyConfig
    from dartboard.platform.ray.space import make_scheduler

    cfg = StudyConfig(searcher="darts", scheduler={"metric": metric})
    assert cfg.scheduler.mode == mode and make_scheduler(cfg)._mode == mode
    told = StudyConfig(searcher="darts", scheduler={"metric": metric, "mode": "min"})
    assert make_scheduler(told)._mode == "min"


def test_a_metric_whose_name_says_no_direction_needs_a_mode():
    from pydantic import ValidationError

    from dartboard.platform.config import StudyConfig

    with pytest.raises(ValidationError, match="mode: say min or max for the metric 'z_std'"):
        StudyConfig(searcher="darts", scheduler={"metric": "z_std"})
    assert StudyConfig(searcher="darts", scheduler={"type": "fifo", "metric": "z_std"}).scheduler.mode is None


@pytest.mark.parametrize("options, message", [
    ({"searchers": []}, "searchers: expected at least one searcher besides 'random'"),  # was: UnboundLocalError
    ({"searchers": ["random"]}, "searchers: expected at least one searcher besides 'random'"),
    ({"searchers": "darts"}, "searchers: expected a list of searcher names, got 'darts'"),  # was: unknown 'd'
    ({"seeds": 3}, "seeds: expected a list of distinct integers >= 0, got 3"),
    ({"seeds": [1, 1]}, r"seeds: expected a list of distinct integers >= 0, got \[1, 1\]"),
    ({"epochs": "5"}, r"epochs: expected >= 1 \(an integer\), got '5'"),
    ({"batch_size": 0}, r"batch_size: expected >= 1 \(an integer\), got 0"),
    ({"train_fraction": 1.5}, r"train_fraction: expected a number in \(0, 1\), got 1.5"),
    ({"parse": "dart"}, "parse: expected 'darts'"),
    ({"options": [1]}, r"options: expected a mapping of searcher options, got \[1\]"),
])
def test_a_quality_benchmark_config_is_checked_when_made(options, message):
    with pytest.raises(ValueError, match=message):
        QualityConfig(**options)


def test_a_refused_quality_benchmark_writes_nothing(tmp_path):
    # Before: quality_config.json was written, then the study refused the benchmark.
    from pydantic import ValidationError

    from dartboard.platform.quality import run_quality

    cfg = QualityConfig(searchers=["darts"], batch_size=64)
    cfg.batch_size = 0  # past QualityConfig's own checks, as a stored file edited by hand would be
    with pytest.raises(ValidationError):
        run_quality(cfg, tmp_path / "out", mlflow=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ PMSM
@pytest.mark.parametrize("models, seeds, message", [
    ({"a": "pmsm-thesis", "b": "darts-v2"}, [0], "models: expected flux_mlp genotypes; 'b' is 'darts'"),
    ({"a": "pmsm-thesis"}, [], r"seeds: expected a non-empty list of integers, got \[\]"),
    ({}, [0], "models: expected a mapping of names to flux_mlp genotypes, got {}"),
])
def test_a_pmsm_comparison_checks_every_model_before_training_any(models, seeds, message, tmp_path, monkeypatch):
    # Before: "a" was trained on every seed, then "b" failed, and runs.csv was never written.
    import dartboard.training.pmsm as training

    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained before the input was checked")

    monkeypatch.setattr(training, "train_flux_model", no_training)
    from dartboard.platform.pmsm import compare

    with pytest.raises(UserInputError, match=message):
        compare({name: resolve(g) for name, g in models.items()}, seeds, tmp_path / "out", epochs=1)
    assert not (tmp_path / "out").exists()


def test_a_pmsm_two_step_search_checks_step_twos_options_before_step_one(tmp_path, monkeypatch):
    # Before: a misspelt option of step 2 was refused only after step 1's whole search.
    import dartboard.platform.run as run

    def no_search(*args, **kwargs):
        raise AssertionError("step 1 searched before step 2's options were checked")

    monkeypatch.setattr(run, "run_search_job", no_search)
    from dartboard.platform.pmsm import run_two_step

    with pytest.raises(UserInputError, match="activation_options: .*unknown option 'epoch'"):
        run_two_step(tmp_path / "out", activation_options={"epoch": 1})
    with pytest.raises(UserInputError, match="depth_options: .*unknown option 'layerz'"):
        run_two_step(tmp_path / "out", depth_options={"layerz": 2})
