import pytest
from pydantic import ValidationError

from dartboard.platform.config import DIGITS_SEARCH_DEFAULTS, SearchRunConfig


def test_digits_profile_and_user_options():
    opts = SearchRunConfig().searcher_options()
    assert {k: opts[k] for k in DIGITS_SEARCH_DEFAULTS} == DIGITS_SEARCH_DEFAULTS
    assert SearchRunConfig(options={"C": 16}).searcher_options()["C"] == 16
    assert "layers" not in SearchRunConfig(dataset="cifar10").searcher_options()


def test_space_supernet_settings_apply_under_user_options():
    opts = SearchRunConfig(options={"space": "tiny81"}).searcher_options()
    assert (opts["steps"], opts["multiplier"], opts["layers"], list(opts["reductions"])) == (1, 1, 2, [1])
    assert SearchRunConfig(options={"space": "tiny81", "C": 4}).searcher_options()["C"] == 4


def test_dartopti_keeps_the_cell_count_of_its_start():
    assert "layers" not in SearchRunConfig(searcher="dartopti").searcher_options()


def test_bad_values_are_named():
    with pytest.raises(ValidationError, match="batch_size"):
        SearchRunConfig(batch_size=0)
    with pytest.raises(ValidationError, match="device"):
        SearchRunConfig(device="tpu")
    with pytest.raises(ValidationError, match="colour"):
        SearchRunConfig(colour=1)
    with pytest.raises(ValueError, match="unknown searcher"):
        SearchRunConfig(searcher="dorts").searcher_options()
