"""scikit-learn's digits through this machine's cache (dartboard/data/digits_cache.py): the same arrays as
scikit-learn's own split, bit for bit; a cache hit reads no scikit-learn; a damaged or unwritable cache is
never an error."""

from __future__ import annotations

import numpy as np
import pytest

from dartboard.data import datasets, digits_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(digits_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _reference(colour: bool):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    if colour:
        x = datasets.colourise(x, y)
    return train_test_split(x, y, test_size=0.2, random_state=datasets.DIGITS_TEST_SEED, stratify=y)


@pytest.mark.parametrize("colour", [False, True])
def test_cached_digits_are_scikit_learns_split_bit_for_bit(cache, colour):
    for _ in range(2):  # the first load writes the cache, the second reads it
        got = datasets._digits_arrays(colour=colour)
        for a, b in zip(_reference(colour), got, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert [p.name for p in cache.iterdir()] == [digits_cache.cache_file(0, 0.2).name]


def test_a_cache_hit_does_not_read_through_scikit_learn(cache, monkeypatch):
    first = digits_cache.digits_split(0, 0.2)

    def refuse(*args):
        raise AssertionError("read through scikit-learn although the cache holds the digits")

    monkeypatch.setattr(digits_cache, "from_sklearn", refuse)
    again = digits_cache.digits_split(0, 0.2)
    assert all(np.array_equal(first[k], again[k]) for k in digits_cache.FIELDS)


def test_a_damaged_cache_file_is_read_through_scikit_learn_and_replaced(cache, caplog):
    path = digits_cache.cache_file(0, 0.2)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz file")
    arrays = digits_cache.digits_split(0, 0.2)
    assert "unreadable" in caplog.text
    assert len(arrays["train_idx"]) + len(arrays["test_idx"]) == len(arrays["target"]) == 1797
    with np.load(path) as f:  # replaced by a whole file
        assert np.array_equal(f["test_idx"], arrays["test_idx"])


def test_an_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    monkeypatch.setenv(digits_cache.CACHE_ENV, str(blocker / "cache"))
    got = datasets._digits_arrays()
    assert all(np.array_equal(a, b) for a, b in zip(_reference(False), got, strict=True))
    assert blocker.read_text().startswith("the cache folder")
