"""A trained network put to use: ``dartboard predict MODEL FILES...`` (image files through the preprocessing
recorded with the model) and ``dartboard evaluate MODEL`` (the test split of the data set the model was trained
on). MODEL is a registered version (``NAME@ALIAS``, ``NAME:VERSION``, ``models:/...``), pulled first so that its
files are verified, or a folder holding a trained network's files (what ``dartboard train`` and ``dartboard pull
--to`` write), read as it is."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dartboard.errors import UserInputError, message_line
from dartboard.model_files import TRAIN_FILE, WEIGHTS_FILE

log = logging.getLogger("dartboard")

#: How many files `predict` reads and classifies in one forward.
PREDICT_BATCH = 256


@dataclass
class LoadedNetwork:
    net: torch.nn.Module
    spec: dict[str, Any]  # network.json
    name: str  # the registered model's name, or the folder as the user gave it
    version: str | None  # the registered version; None for a folder
    recorded_test_acc: float | None  # the test accuracy recorded when it was trained (registry tag or train.json)


def loaded_network(ref: str, uri: str | None, folder: Path) -> LoadedNetwork:
    """The network of ``ref``: a folder's files, or the registered version pulled (verified) into ``folder``."""
    from dartboard.platform.tracking.models import is_folder

    return local_network(ref) if is_folder(ref) else pulled_network(ref, uri, folder)


def pulled_network(ref: str, uri: str | None, folder: Path) -> LoadedNetwork:
    """The verified network of ``ref``, pulled into ``folder``; refuses a genotype-only version."""
    from dartboard.platform.tracking.models import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE, pull_model

    folder, version = pull_model(uri, ref, folder)
    _not_a_flux_model(ref, folder)
    if not (folder / NETWORK_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise UserInputError(f"model {ref!r}: version {version.version} holds a genotype only (no trained "
                             f"weights); train it first (dartboard train {ref}) or use a study with final_training")
    net, spec = network_of_files(folder / GENOTYPE_FILE, folder / WEIGHTS_FILE, folder / NETWORK_FILE)
    recorded = version.tags.get("metric.test_acc")
    return LoadedNetwork(net.eval(), spec, version.name, version.version,
                         float(recorded) if recorded is not None else None)


def local_network(ref: str) -> LoadedNetwork:
    """The trained network in the folder ``ref`` (genotype.json, network.json, weights.safetensors; a pruned ViT
    fine-tuned on an image folder: model.safetensors, as `dartboard prune --data-root` writes it)."""
    from dartboard.model_files import PRUNED_WEIGHTS_FILE
    from dartboard.platform.tracking.models import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE, check_model_folder

    _not_a_flux_model(ref, Path(ref))
    pruned = not (Path(ref) / WEIGHTS_FILE).is_file() and (Path(ref) / PRUNED_WEIGHTS_FILE).is_file()
    weights = PRUNED_WEIGHTS_FILE if pruned else WEIGHTS_FILE
    folder = check_model_folder(ref, (GENOTYPE_FILE, NETWORK_FILE, weights))
    net, spec = network_of_files(folder / GENOTYPE_FILE, folder / weights, folder / NETWORK_FILE,
                                 (f"model {ref!r}", f"model {ref!r}"))
    if pruned:
        return LoadedNetwork(net.eval(), spec, ref, None, spec.get("test_acc"))
    return LoadedNetwork(net.eval(), spec, ref, None, _recorded_test_acc(folder))


def _not_a_flux_model(ref: str, folder: Path) -> None:
    """A PMSM flux model (``pmsm compare``'s, or its registered version) maps currents to flux linkages: no images
    to predict or evaluate on; said so, with the commands that use it."""
    from dartboard.model_files import is_flux_model

    if is_flux_model(folder):
        raise UserInputError(f"model {ref!r} is a PMSM flux model (currents to flux linkages), not an image "
                             f"classifier: `dartboard pmsm flux` writes its flux map as a look-up table, `dartboard "
                             f"pmsm compare` measures it, `dartboard export` writes it as a file that computes its "
                             f"flux and inductances, dartboard.load returns it")


def _recorded_test_acc(folder: Path) -> float | None:
    """The test accuracy the folder's files record for its weights: a pulled version's tag (model.json), else the
    training's own (train.json). A record whose weights digest differs from the folder's weights (a pulled network
    trained again in place) is not theirs and is passed over."""
    from dartboard.training.final import sha256_file

    weights = folder / WEIGHTS_FILE
    digest = sha256_file(weights) if weights.is_file() else None
    for name, read, digest_of in (
            ("model.json", lambda d: d.get("tags", {}).get("metric.test_acc"),
             lambda d: d.get("tags", {}).get(f"sha256.{WEIGHTS_FILE}")),
            (TRAIN_FILE, lambda d: d.get("test_acc"), lambda d: d.get("weights_sha256"))):
        try:
            record = json.loads((folder / name).read_text())
            value, recorded_digest = read(record), digest_of(record)
        except (OSError, ValueError, AttributeError):
            continue
        if recorded_digest is not None and digest is not None and recorded_digest != digest:
            continue
        if isinstance(value, int | float | str):
            try:
                return float(value)
            except ValueError:
                continue
    return None


def network_of_files(genotype: Path, weights: Path, network: Path, labels: tuple[str, str] = ("--weights", "--network")
                     ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(network, network.json) rebuilt from a trained network's files; files that do not fit one another are
    refused, named by ``labels`` (how the user gave the weights and network.json)."""
    from safetensors import SafetensorError

    from dartboard.training.final import network_from_files

    try:
        spec = json.loads(network.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"{labels[1]}: {str(network)!r} is not a network.json ({err})") from None
    try:
        net = network_from_files({"genotype": genotype, "network": network, "weights": weights})
    except (SafetensorError, RuntimeError, KeyError) as err:
        raise UserInputError(f"{labels[0]}: {str(weights)!r} is not the trained weights of this network "
                             f"({message_line(err)})") \
            from None
    return net, spec


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
        raise UserInputError(f"model {ref!r}: network.json records no preprocessing (written before dartboard "
                             f"recorded it) and data set {dataset!r} does not say how it normalises its images")
    log.warning("model %s records no preprocessing; using the current normalisation of %s", ref, dataset)
    return pre


@torch.no_grad()
def predict_files(ref: str, files: list[str], uri: str | None = None) -> list[dict[str, Any]]:
    """Class and probabilities of every file, after the model's recorded preprocessing."""
    from dartboard.data.preprocess import load_inputs

    if not files:
        raise UserInputError("FILES: expected at least one image file (PNG/JPEG or NPY)")
    with tempfile.TemporaryDirectory(prefix="dartboard-predict-") as tmp:
        model = loaded_network(ref, uri, Path(tmp) / "model")
    pre = model_preprocessing(model.spec, ref)
    # read and classified PREDICT_BATCH files at a time: a shell glob of a test set's thousands of files in one
    # forward would hold every image's activations at once (eval mode: the chunks' outputs are the one batch's)
    probabilities = torch.cat([torch.softmax(_logits(model.net(load_inputs(files[i:i + PREDICT_BATCH], pre))), dim=1)
                               for i in range(0, len(files), PREDICT_BATCH)])
    names = class_names(model.spec, ref)
    rows = []
    for path, p in zip(files, probabilities, strict=True):
        c = int(p.argmax())
        rows.append({"file": str(path), "class": c, **({"label": names[c]} if names else {}),
                     "confidence": float(p[c]), "probabilities": [round(float(v), 6) for v in p]})
    return rows


def class_names(spec: dict[str, Any], ref: str) -> list[str]:
    """The class names network.json records in label order (an image folder's class folders, CIFAR's names);
    empty for a network trained before they were recorded, or on data whose labels are their own names (digits)."""
    names = spec.get("classes")
    if names is None:
        return []
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
            and len(names) == int(spec.get("num_classes", -1))):
        raise UserInputError(f"model {ref!r}: network.json classes: expected {spec.get('num_classes')} class names, "
                             f"got {names!r}")
    return names


def evaluate_model(ref: str, uri: str | None = None, data_root: str | None = None, batch_size: int = 256
                   ) -> dict[str, Any]:
    """Accuracy and loss of the model on the test split of the data set it records."""
    from dartboard.data.catalog import check_data_root
    from dartboard.data.datasets import make_loader
    from dartboard.data.preprocess import preprocessing_of
    from dartboard.training.final import evaluate

    with tempfile.TemporaryDirectory(prefix="dartboard-evaluate-") as tmp:
        model = loaded_network(ref, uri, Path(tmp) / "model")
    dataset = model.spec.get("dataset")
    if not dataset:
        raise UserInputError(f"model {ref!r}: network.json names no data set to evaluate on")
    check_data_root(dataset, data_root, decided_by=f"model {ref!r} is evaluated on the data set it was trained on")
    data_root = data_root or _recorded_root(ref, model.spec)
    splits = _test_data(model.spec, dataset, data_root)
    test = _labelled_as_trained(splits, model.spec, ref)
    now, recorded = preprocessing_of(splits.info), model.spec.get("preprocessing")
    if recorded and now is not None and now.to_dict() != recorded:
        log.warning("model %s was trained on %s normalised with %s; the data set now loads with %s", ref, dataset,
                    recorded, now.to_dict())
    loader = make_loader(test, batch_size, shuffle=False, seed=0)
    acc, loss = evaluate(_LogitsOnly(model.net), loader, torch.device("cpu"))
    return {"model": model.name, "version": model.version, "dataset": dataset, "data_root": data_root,
            "test_samples": len(test),
            "test_acc": acc, "test_loss": loss, "recorded_test_acc": model.recorded_test_acc,
            # the same figure under its earlier name (a registered version's tag), for scripts that read it
            "registered_test_acc": model.recorded_test_acc if model.version is not None else None}


def _labelled_as_trained(splits: Any, spec: dict[str, Any], ref: str) -> Any:
    """The test split with the network's labels. A folder's labels are its class folders' order: a class added or
    renamed since the training moves them (an IndexError, or an accuracy against other classes). Where network.json
    names the classes, the test images are relabelled by their class's name, and a class the network does not know
    is refused; else the class counts must agree."""
    trained, now = class_names(spec, ref), list(splits.info.classes or ())
    if not trained or not now:
        if splits.info.num_classes != int(spec.get("num_classes", splits.info.num_classes)):
            raise UserInputError(f"model {ref!r} was trained on {spec['num_classes']} classes; the {splits.info.name} "
                                 f"data has {splits.info.num_classes} now")
        return splits.test
    if now == trained:
        return splits.test
    targets = getattr(splits.test, "targets", None)
    present = sorted({now[int(t)] for t in targets}) if targets is not None else now
    unknown = [c for c in present if c not in trained]
    if unknown:
        raise UserInputError(f"model {ref!r}: the test split's class folder(s) {', '.join(map(repr, unknown))} are "
                             f"not classes of the network (it was trained on {', '.join(trained)})")
    return _Relabelled(splits.test, [trained.index(c) if c in trained else -1 for c in now])


class _Relabelled(torch.utils.data.Dataset):
    """``data`` with each label ``y`` replaced by ``label[y]``."""

    def __init__(self, data: Any, label: list[int]):
        self.data, self.label = data, label

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y = self.data[i]
        return x, self.label[int(y)]


def _test_data(spec: dict[str, Any], dataset: str, data_root: str | None):
    """The splits of ``dataset`` as the network saw them: an image folder normalised as network.json records (a
    pruned ViT's own statistics; the folder loader's default for a network ``dartboard train`` trained)."""
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import image_folder

    size, recorded = int(spec["input_size"]), spec.get("preprocessing")
    if dataset == "imagefolder" and recorded:
        return image_folder(data_root, size, dataset, tuple(recorded["mean"]), tuple(recorded["std"]))
    return load_dataset(dataset, data_root, size)


def _recorded_root(ref: str, spec: dict[str, Any]) -> str | None:
    """The data folder the model was trained on (its network.json), where it is still there."""
    root = spec.get("data_root")
    if not isinstance(root, str):
        return None
    if "://" not in root and not Path(root).exists():
        raise UserInputError(f"model {ref!r} was trained on {spec['dataset']} from {root!r} (its network.json), which "
                             f"is not on this machine; give the data's folder with --data-root")
    return root


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # (logits, auxiliary logits) from an auxiliary head


class _LogitsOnly(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.net(x))
