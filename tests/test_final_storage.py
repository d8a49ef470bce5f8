"""The final training's storage is checked on the driver before Ray starts, for a local folder and for a
URI alike (file:// here; s3:// and gs:// go through the same pyarrow filesystem): a checkpoint of another
training is one clear error that names it, and nothing is written into the output folder."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")

from dartboard.errors import UserInputError  # noqa: E402
from dartboard.platform.ray.final_job import RUN_NAME, job_identity, train_on_ray  # noqa: E402
from dartboard.platform.ray.storage import run_checkpoints  # noqa: E402
from dartboard.spaces import genotype as gt  # noqa: E402
from dartboard.spaces.catalog import resolve  # noqa: E402
from dartboard.training.final import TrainConfig  # noqa: E402


def _store(root, name: str, progress: dict | None) -> None:
    folder = root / RUN_NAME / name
    folder.mkdir(parents=True)
    if progress is not None:
        (folder / "progress.json").write_text(json.dumps(progress))


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-uri"])
def test_a_checkpoint_of_another_genotype_is_refused_before_ray_starts(tmp_path, as_uri):
    from dataclasses import asdict

    import ray

    store = tmp_path / "store"
    cfg = TrainConfig(channels=4, layers=3, epochs=1)
    train = {k: v for k, v in asdict(cfg).items() if k != "device"}
    other = job_identity(gt.to_dict(resolve("darts-v2")), train, "digits")  # the same settings, darts-v2
    _store(store, "checkpoint_000000", None)  # no progress record: skipped, not an error
    _store(store, "checkpoint_000001", {"history": [], "identity": other})
    storage = f"file://{store}" if as_uri else str(store)
    assert [w.rsplit("/", 1)[-1] for w, _ in run_checkpoints(f"{storage}/{RUN_NAME}")] == ["checkpoint_000001"]
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=r"checkpoint .*checkpoint_000001: it belongs to another training "
                                             r"\(genotype differ\)"):
        train_on_ray(resolve("darts-v1"), cfg, "digits", None, out, workers=1, storage=storage)
    assert not ray.is_initialized() and not out.exists()


def test_an_empty_or_unreadable_store_has_no_checkpoints(tmp_path):
    assert run_checkpoints(str(tmp_path / "nothing")) == []
    assert run_checkpoints(f"file://{tmp_path}/nothing") == []
    assert run_checkpoints("nosuchscheme://bucket/x") == []


def test_a_checkpoint_of_another_input_size_is_refused_and_an_older_one_reads_as_32_px():
    from dataclasses import asdict

    from dartboard.platform.ray.final_job import check_identity

    train = {k: v for k, v in asdict(TrainConfig(channels=4, layers=3, epochs=1)).items() if k != "device"}
    genotype = gt.to_dict(resolve("darts-v2"))
    at_224 = job_identity(genotype, train, "imagenet", 224)
    with pytest.raises(UserInputError, match=r"\(image_size differ\)"):
        check_identity("ckpt", job_identity(genotype, train, "imagenet", 64), at_224)
    check_identity("ckpt", at_224, job_identity(genotype, train, "imagenet", 224))  # the same training
    older = {k: v for k, v in job_identity(genotype, train, "digits").items() if k != "image_size"}
    check_identity("ckpt", older, job_identity(genotype, train, "digits"))  # recorded before the size was
    with pytest.raises(UserInputError, match=r"\(image_size differ\)"):
        check_identity("ckpt", older, job_identity(genotype, train, "digits", 64))


def test_publishing_keeps_the_folders_own_file_of_the_same_genotype(tmp_path):
    """A Ray Train job's model files go into --out; a genotype.json there that holds the trained genotype (a
    search's folder trained in place, laid out its own way) is kept byte for byte, and the other files replaced."""
    from dartboard.platform.ray.final_job import MODEL_FILES, _publish

    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"
    gt.save(resolve("darts-v2"), checkpoint / "genotype.json")
    for name in MODEL_FILES:
        if name != "genotype.json":
            (checkpoint / name).write_text(f"the job's {name}")
    out.mkdir()
    own = json.dumps(gt.to_dict(resolve("darts-v2")), indent=4, sort_keys=True)
    (out / "genotype.json").write_text(own)
    (out / "weights.safetensors").write_text("an older training's weights")
    _publish(checkpoint, out)
    assert (out / "genotype.json").read_text() == own
    assert (out / "weights.safetensors").read_text() == "the job's weights.safetensors"
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES)  # no partial file left
    (out / "genotype.json").write_text(json.dumps(gt.to_dict(resolve("darts-v1"))))  # another genotype: replaced
    _publish(checkpoint, out)
    assert gt.load(out / "genotype.json") == resolve("darts-v2")
