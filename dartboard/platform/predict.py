"""A registered network put to use: ``dartboard predict NAME@ALIAS FILES...`` (image files through the
preprocessing recorded with the model) and ``dartboard evaluate NAME@ALIAS`` (the test split of the
data set the model was trained on). Both pull the version first, so its files are verified."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dartboard.errors import UserInputError

log = logging.getLogger("dartboard")


@dataclass
class PulledNetwork:
    net: torch.nn.Module
    spec: dict[str, Any]
    version: Any


def pulled_network(ref: str, uri: str | None, folder: Path) -> PulledNetwork:
    """The verified network of ``ref``, pulled into ``folder``; refuses a genotype-only version."""
    from dartboard.platform.tracking.models import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE, pull_model
    from dartboard.training.final import network_from_files

    folder, version = pull_model(uri, ref, folder)
    files = {"genotype": folder / GENOTYPE_FILE, "network": folder / NETWORK_FILE, "weights": folder / WEIGHTS_FILE}
    if not files["network"].is_file() or not files["weights"].is_file():
        raise UserInputError(f"model {ref!r}: version {version.version} holds a genotype only (no trained "
                             "weights); train it first (dartboard train) or use a study with final_training")
    spec = json.loads(files["network"].read_text())
    return PulledNetwork(network_from_files(files).eval(), spec, version)


def model_preprocessing(spec: dict[str, Any], ref: str):
    """The preprocessing recorded in network.json; for a version registered before it was recorded, the
    one of its data set when that loads without a local folder (digits), else an error."""
    from dartboard.data.catalog import DATASETS, load_dataset
    from dartboard.data.preprocess import Preprocessing, preprocessing_of

    if spec.get("preprocessing"):
        return Preprocessing.from_dict(spec["preprocessing"], where=f"model {ref!r}: network.json preprocessing")
    dataset = spec.get("dataset")
    pre = None
    if dataset in DATASETS:
        try:
            pre = preprocessing_of(load_dataset(dataset).info)
        except UserInputError:
            pre = None
    if pre is None:
        raise UserInputError(f"model {ref!r}: network.json records no preprocessing (registered before it was "
                             f"recorded) and data set {dataset!r} does not say how it normalises its images")
    log.warning("model %s records no preprocessing; using the current normalisation of %s", ref, dataset)
    return pre


@torch.no_grad()
def predict_files(ref: str, files: list[str], uri: str | None = None) -> list[dict[str, Any]]:
    """Class and probabilities of every file, after the model's recorded preprocessing."""
    from dartboard.data.preprocess import load_inputs

    if not files:
        raise UserInputError("FILES: expected at least one image file (PNG/JPEG or NPY)")
    with tempfile.TemporaryDirectory(prefix="dartboard-predict-") as tmp:
        model = pulled_network(ref, uri, Path(tmp) / "model")
    pre = model_preprocessing(model.spec, ref)
    batch = load_inputs(files, pre)
    probabilities = torch.softmax(_logits(model.net(batch)), dim=1)
    return [{"file": str(path), "class": int(p.argmax()), "confidence": float(p.max()),
             "probabilities": [round(float(v), 6) for v in p]} for path, p in zip(files, probabilities, strict=True)]


def evaluate_model(ref: str, uri: str | None = None, data_root: str | None = None, batch_size: int = 256
                   ) -> dict[str, Any]:
    """Accuracy and loss of the model on the test split of the data set it records."""
    from dartboard.data.catalog import check_data_root, load_dataset
    from dartboard.data.datasets import make_loader
    from dartboard.data.preprocess import preprocessing_of
    from dartboard.training.final import evaluate

    with tempfile.TemporaryDirectory(prefix="dartboard-evaluate-") as tmp:
        model = pulled_network(ref, uri, Path(tmp) / "model")
    dataset = model.spec.get("dataset")
    if not dataset:
        raise UserInputError(f"model {ref!r}: network.json names no data set to evaluate on")
    check_data_root(dataset, data_root, decided_by=f"model {ref!r} is evaluated on the data set it was trained on")
    splits = load_dataset(dataset, data_root, int(model.spec["input_size"]))
    now, recorded = preprocessing_of(splits.info), model.spec.get("preprocessing")
    if recorded and now is not None and now.to_dict() != recorded:
        log.warning("model %s was trained on %s normalised with %s; the data set now loads with %s", ref, dataset,
                    recorded, now.to_dict())
    loader = make_loader(splits.test, batch_size, shuffle=False, seed=0)
    acc, loss = evaluate(_LogitsOnly(model.net), loader, torch.device("cpu"))
    registered = model.version.tags.get("metric.test_acc")
    return {"model": model.version.name, "version": model.version.version, "dataset": dataset,
            "test_samples": len(splits.test), "test_acc": acc, "test_loss": loss,
            "registered_test_acc": float(registered) if registered is not None else None}


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # (logits, auxiliary logits) from an auxiliary head


class _LogitsOnly(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.net(x))
