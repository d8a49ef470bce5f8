import pytest
import torch

from dartboard.data.catalog import DataError, load_dataset
from dartboard.data.datasets import search_split


def test_digits_is_bundled_and_split():
    splits = load_dataset("digits")
    assert splits.info.in_channels == 1 and splits.info.input_size == 8 and splits.info.num_classes == 10
    assert len(splits.train) + len(splits.test) == 1797
    x, y = splits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= int(y) < 10


def test_search_split_is_seeded_and_disjoint():
    train = load_dataset("digits").train
    a1, b1 = search_split(train, seed=3)
    a2, _ = search_split(train, seed=3)
    a3, _ = search_split(train, seed=4)
    assert a1.indices == a2.indices and a1.indices != a3.indices
    assert not set(a1.indices) & set(b1.indices) and len(a1) + len(b1) == len(train)
    a, b = search_split(train, seed=0, fraction=10 / 11)
    assert abs(len(a) / len(train) - 10 / 11) < 0.01


def test_missing_cifar_says_how_to_provide_it(tmp_path):
    with pytest.raises(DataError, match="never downloads") as got:
        load_dataset("cifar10", str(tmp_path))
    assert f"looked for 'cifar-10-batches-py' under {str(tmp_path)!r}" in str(got.value)
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        (tmp_path / folder).mkdir()  # the extracted folder given itself: its parent is the root
        with pytest.raises(DataError, match=rf"{name}: --data-root '.*{folder}' is the '{folder}' folder itself; "
                                            rf"pass the folder that holds it: {str(tmp_path)!r}"):
            load_dataset(name, str(tmp_path / folder))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet", "imagefolder"])
def test_a_dataset_without_a_data_root_says_none_was_given(name):
    # Before: "looked for 'cifar-10-batches-py' under None", "folder None does not exist".
    with pytest.raises(DataError, match="(never downloads|nothing is downloaded)") as got:
        load_dataset(name, None)
    assert "no --data-root given" in str(got.value) and "None" not in str(got.value)


def test_a_missing_image_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="nothing is downloaded") as got:
        load_dataset("imagefolder", str(tmp_path / "nosuch"))
    assert f"folder {str(tmp_path / 'nosuch')!r} does not exist" in str(got.value)


def test_imagefolder_needs_train_and_test(tmp_path):
    with pytest.raises(DataError, match="train/ and test/"):
        load_dataset("imagefolder", str(tmp_path))
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"train/ and test/ \(or val/\) subfolders, one folder per class; '.*val' "
                                        rf"is a split itself: pass the folder that holds it, {str(tmp_path)!r}"):
        load_dataset("imagenet", str(tmp_path / "val"))


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
