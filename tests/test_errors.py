"""User-input errors: which exceptions count as the user's, and the validation wrapper."""

from __future__ import annotations

import pytest

from dartboard.errors import UserInputError, is_user_error, one_line, user_input


def test_only_input_errors_are_user_errors():
    from pydantic import BaseModel, ValidationError

    from dartboard.spaces.genotype import GenotypeError

    class Run(BaseModel):
        batch_size: int

    with pytest.raises(ValidationError) as invalid:
        Run(batch_size="many")
    assert is_user_error(UserInputError("x")) and is_user_error(GenotypeError("x"))
    assert is_user_error(invalid.value)
    assert one_line(invalid.value).startswith("invalid configuration: batch_size: ")
    assert not is_user_error(ValueError("an internal bug")) and not is_user_error(KeyError("k"))


def test_user_input_turns_validation_value_errors_into_user_errors():
    with pytest.raises(UserInputError, match=r"^--config: threshold: expected a value in \[0, 1\], got 2$") as err:
        with user_input("--config"):
            raise ValueError("threshold: expected a value in [0, 1],\n got 2")
    assert isinstance(err.value.__cause__, ValueError)
    with pytest.raises(UserInputError, match="study 'x' does not exist"):
        with user_input():
            raise FileNotFoundError("study 'x' does not exist")


def test_user_input_leaves_other_errors_alone():
    from dartboard.spaces.genotype import GenotypeError

    with pytest.raises(GenotypeError):  # already a user error: unchanged (pydantic's keep their formatting)
        with user_input("genotype"):
            raise GenotypeError("normal.edges[0].op: unknown op")
    with pytest.raises(RuntimeError):
        with user_input():
            raise RuntimeError("a bug")


def test_registry_misses_are_user_errors():
    from dartboard.registries import Registry

    registry = Registry("space")
    registry.add("darts", object())
    with pytest.raises(UserInputError, match="unknown space 'nospace'; known spaces: darts"):
        registry.lookup("nospace")
    with pytest.raises(ValueError) as duplicate:  # registering twice is a bug, not the user's input
        registry.add("darts", object())
    assert not is_user_error(duplicate.value)


def test_a_validators_own_message_reads_as_written():
    from pydantic import BaseModel, ValidationError, field_validator, model_validator

    class Run(BaseModel):
        batch_size: int = 1
        dataset: str = "digits"

        @field_validator("batch_size")
        @classmethod
        def _positive(cls, value: int) -> int:
            if value < 1:
                raise ValueError(f"expected a positive size, got {value}")
            return value

        @model_validator(mode="after")
        def _known(self):
            if self.dataset != "digits":
                raise ValueError(f"dataset: unknown dataset {self.dataset!r}")
            return self

    with pytest.raises(ValidationError) as model_level:
        Run(dataset="foo")
    assert one_line(model_level.value) == "invalid configuration: dataset: unknown dataset 'foo'"
    with pytest.raises(ValidationError) as field_level:
        Run(batch_size=0)
    assert one_line(field_level.value) == "invalid configuration: batch_size: expected a positive size, got 0"


def test_a_mapping_file_parsed_one_way_names_the_file_in_every_error():
    from dartboard.data.catalog import DataError
    from dartboard.user_files import parse_mapping

    assert parse_mapping("a: 1\nb: [2, 3]\n", "f") == {"a": 1, "b": [2, 3]}
    assert parse_mapping("", "f") == {}  # an empty run config is the defaults
    with pytest.raises(UserInputError, match=r"^f: expected a study$"):  # an empty study is none
        parse_mapping("", "f", what="a study", empty_ok=False)
    with pytest.raises(UserInputError, match=r"^f: expected a mapping at the top level$"):
        parse_mapping("- a\n- b\n", "f")
    with pytest.raises(UserInputError, match=r"^f is not valid YAML: while parsing a flow sequence"):
        parse_mapping("a: [1\n", "f")
    with pytest.raises(DataError, match=r"^f is not valid JSON: Expecting property name .* line 1 column 10"):
        parse_mapping('{"a": 1, }', "f", json_syntax=True, error=DataError)


def test_a_number_in_exponent_form_is_a_number_in_every_file_and_set():
    # PyYAML (YAML 1.1) read 1e-4 as the string '1e-4': `--set w_lr=1e-4` was refused as "expected a number > 0,
    # got '1e-4'", and a study's options reached the searcher as strings
    import yaml

    from dartboard.platform.cli.search import parse_set
    from dartboard.user_files import parse_mapping

    text = "a: 1e-4\nb: 5E3\nc: -2e+1\nd: 1.0e-4\ne: [1e-3, 2]\nf: '1e-4'\ng: e5\nh: 3\ni: 1_000\n"
    assert parse_mapping(text, "f") == {"a": 1e-4, "b": 5000.0, "c": -20.0, "d": 1e-4, "e": [1e-3, 2], "f": "1e-4",
                                        "g": "e5", "h": 3, "i": 1000}
    assert parse_set(["w_lr=1e-4", "betas=[5e-1, 0.999]"]) == {"w_lr": 1e-4, "betas": [0.5, 0.999]}
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}  # PyYAML's own loader is left as it is
