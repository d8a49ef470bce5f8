"""The MLflow model registry: a version is a models-from-code pyfunc carrying genotype.json,
network.json and weights.safetensors, tagged with the SHA-256 of each file; pulls verify both the
genotype and the digests before anything is loaded, and nothing is ever unpickled."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

from dartboard.errors import UserInputError, message_line
from dartboard.model_files import (  # noqa: F401  (also read from here)
    FLUX_RESULT_FILE,
    GENOTYPE_FILE,
    NETWORK_FILE,
    PRUNED_WEIGHTS_FILE,
    WEIGHTS_FILE,
)
from dartboard.platform.tracking.runs import client, tracking_uri
from dartboard.streams import stderr_without

log = logging.getLogger("dartboard")

# ---------------------------------------------------------------------------------------------
# Model registry: a version is a models-from-code pyfunc whose artifacts are genotype.json,
# network.json (how to rebuild the network) and weights.safetensors. No file needs unpickling.
# ---------------------------------------------------------------------------------------------

CHAMPION_ALIAS = "champion"
SHA_TAG = "sha256."  # one tag per artifact file: sha256.<file name> = hex digest

_MODEL_CODE = '''"""dartboard network served as an MLflow pyfunc (models-from-code: nothing is pickled).

The network's input is the normalised tensor (N, C, H, W); artifacts/network.json records the
preprocessing ("preprocessing": input size, channels, mean, std) that turns pixels in [0, 1] into it."""
import hashlib
import os

import mlflow.pyfunc
from mlflow.models import set_model

# File name -> SHA-256 of every artifact, written here when the version was registered: a file
# changed in the artifact store afterwards is refused before anything is loaded from it.
EXPECTED_SHA256 = __SHA256__


def verify_artifacts(artifacts):
    by_name = {os.path.basename(path): path for path in artifacts.values()}
    for name, digest in EXPECTED_SHA256.items():
        if name not in by_name:
            raise ValueError(f"{name}: recorded with sha256 {digest} at registration but missing from the model")
        sha = hashlib.sha256()
        with open(by_name[name], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        if sha.hexdigest() != digest:
            raise ValueError(f"{name}: sha256 {sha.hexdigest()} does not match the registered {digest}; "
                             "the file was modified after registration, refusing to load it")


class DartboardNetwork(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        verify_artifacts(context.artifacts)
        from dartboard import network_from_files  # the stable entry point: survives module moves

        self.net = network_from_files(context.artifacts)

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        with torch.no_grad():
            return self.net(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()


set_model(DartboardNetwork())
'''


class ModelIntegrityError(UserInputError):
    """A pulled model that does not match what was registered; it is never loaded."""


def register_model_files(uri: str | None, name: str, run_id: str, files: Mapping[str, str | os.PathLike],
                         tags: Mapping[str, Any], aliases: tuple[str, ...] = ()):
    """Register a version of ``name`` from ``files`` (keys: genotype, network, weights) logged under
    ``run_id``. Tags get the SHA-256 of every file; the genotype is validated first."""
    import tempfile
    from pathlib import Path

    import mlflow

    from dartboard.spaces import genotype as gt
    from dartboard.training.final import sha256_file

    if "genotype" not in files:
        raise ValueError("files: a registered model needs a 'genotype' file")
    gt.load(files["genotype"])  # refuse to register an invalid genotype
    artifacts = {key: str(Path(path).resolve()) for key, path in files.items()}
    all_tags = {k: str(v) for k, v in tags.items()}
    all_tags.update({SHA_TAG + Path(p).name: sha256_file(p) for p in artifacts.values()})
    all_tags["dartboard.kind"] = "network" if "weights" in files else "genotype"
    mlflow.set_tracking_uri(tracking_uri(uri))
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "dartboard_model.py"
        digests = {k[len(SHA_TAG):]: v for k, v in all_tags.items() if k.startswith(SHA_TAG)}
        code.write_text(_MODEL_CODE.replace("__SHA256__", json.dumps(digests, sort_keys=True)))
        # Reopen the run inside its own experiment: a run id from another experiment than the
        # process's active one (set by any earlier set_experiment) is refused by MLflow.
        before = client(uri).get_run(run_id).info
        mlflow.set_experiment(experiment_id=before.experiment_id)
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings(record=True) as caught:
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code), artifacts=artifacts,
                                           pip_requirements=["dartboard", "torch", "safetensors"])
        _warn_again(caught)
        if before.end_time:  # reopening the run to log the model must not rewrite when it ended
            client(uri).set_terminated(run_id, before.status, end_time=before.end_time)
    with stderr_without(*MLFLOW_REGISTRY_LINES):  # the log line below says it, with the aliases
        version = mlflow.register_model(info.model_uri, name, tags=all_tags)
    c = client(uri)
    for alias in aliases:
        c.set_registered_model_alias(name, alias, version.version)
    log.info("registry: %s version %s%s", name, version.version,
             f" (aliases {', '.join(aliases)})" if aliases else "")
    return version


#: What ``mlflow.register_model`` prints itself on success, which dartboard's own ``registry:`` line says with the
#: aliases: not printed twice.
MLFLOW_REGISTRY_LINES = ("Successfully registered model '", "Created version '")


def _warn_again(caught: list[warnings.WarningMessage]) -> None:
    """The warnings of a model's logging, but MLflow's advice to type-hint ``predict``: the model's input is any
    array of images (its network.json says which shape), which no type hint of MLflow's schema inference says.
    (MLflow puts its own filters in front while it logs, so the advice is taken out of the record instead.)"""
    for w in caught:
        if "Add type hints to the `predict` method" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def register_champion(uri: str | None, name: str, run_id: str, model_dir: str | os.PathLike,
                      tags: Mapping[str, Any], alias: str | None = CHAMPION_ALIAS):
    """Register the best trial's folder (genotype.json, network.json, weights.safetensors, whichever
    exist) and point ``alias`` at it (``None``: no alias). Usable as a sweep's best-result hook."""
    from pathlib import Path

    folder = Path(model_dir)
    files = {key: folder / fname for key, fname in (("genotype", GENOTYPE_FILE), ("network", NETWORK_FILE),
                                                     ("weights", WEIGHTS_FILE)) if (folder / fname).is_file()}
    return register_model_files(uri, name, run_id, files, tags, aliases=(alias,) if alias else ())


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS``, ``NAME@ALIAS``, ``NAME:VERSION``, ``models:/NAME/VERSION`` or ``NAME``
    (latest version) -> (name, alias, version)."""
    body = ref[len("models:/"):] if ref.startswith("models:/") else ref
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        version = None
    elif ":" in body or "/" in body:
        name, version = body.rsplit(":" if ":" in body else "/", 1)
        alias = None
        if not version.isdigit():
            raise UserInputError(f"model {ref!r}: version {version!r} is not a number; expected NAME:VERSION")
    else:
        name, alias, version = body, None, None
    if not name:
        raise UserInputError(f"model {ref!r}: expected NAME[@ALIAS|:VERSION]")
    return name, alias, version


def resolve_version(uri: str | None, ref: str):
    from dartboard.platform.checks import check_registry_exists

    name, alias, version = parse_model_ref(ref)
    check_registry_exists(tracking_uri(uri))
    c = client(uri)
    try:
        if alias:
            return c.get_model_version_by_alias(name, alias)
        if version:
            return c.get_model_version(name, version)
        versions = c.search_model_versions(f"name={filter_literal(name)}")
    except Exception as err:  # noqa: BLE001 - MLflow raises RestException/MlflowException
        raise UserInputError(f"model {ref!r} not found in the registry at {tracking_uri(uri)}: "
                         f"{message_line(err)}") from None
    if not versions:
        raise UserInputError(f"model {ref!r}: no registered model named {name!r} at {tracking_uri(uri)}")
    return max(versions, key=lambda v: int(v.version))


def filter_literal(value: str) -> str:
    """``value`` as a string literal of an MLflow search filter (``name=...``): in single quotes, or in double
    quotes when it holds a single quote (a name such as ``it's``); MLflow's filters have no escape for a value
    that holds both."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserInputError(f"{value!r} holds both kinds of quote, which an MLflow registry search cannot name")


def verify_model_dir(folder, tags: Mapping[str, str]) -> None:
    """Refuse a downloaded model: genotype.json must validate, and every file that the version
    recorded a SHA-256 for must exist and match it. Raises ModelIntegrityError / GenotypeError."""
    from pathlib import Path

    from dartboard.spaces import genotype as gt
    from dartboard.training.final import sha256_file

    folder = Path(folder)
    if not (folder / GENOTYPE_FILE).is_file():
        raise ModelIntegrityError(f"{GENOTYPE_FILE}: missing from the downloaded model")
    try:
        gt.load(folder / GENOTYPE_FILE)
    except (gt.GenotypeError, ValueError) as err:
        raise ModelIntegrityError(f"{GENOTYPE_FILE} fails validation, refusing the model: {err}") from None
    recorded = {k[len(SHA_TAG):]: v for k, v in tags.items() if k.startswith(SHA_TAG)}
    if not recorded:
        raise ModelIntegrityError("the model version records no SHA-256 tags; refusing to trust its files")
    for fname, digest in recorded.items():
        path = folder / fname
        if not path.is_file():
            raise ModelIntegrityError(f"{fname}: recorded with sha256 {digest} but missing from the download")
        actual = sha256_file(path)
        if actual != digest:
            raise ModelIntegrityError(f"{fname}: sha256 {actual} does not match the registered {digest}; "
                                      "the file was modified after registration, refusing to load it")


def pull_model(uri: str | None, ref: str, to: str | os.PathLike, replace: bool = False):
    """Download a version's files into ``to`` after verifying them; return (folder, version).
    Nothing is written to ``to`` when verification fails, nor when ``to`` holds other files under the names the pull
    writes (another model's, or the user's own); ``replace``: a cache of this function's own (``load``) takes the
    version the reference names now."""
    import shutil
    import tempfile
    from pathlib import Path

    import mlflow

    version = resolve_version(uri, ref)
    mlflow.set_tracking_uri(tracking_uri(uri))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}",
                                                         dst_path=tmp))
        files = local / "artifacts"
        verify_model_dir(files, version.tags)
        recorded = recorded_files(version.tags)
        extra = sorted(p.name for p in files.rglob("*") if p.is_file() and p.relative_to(files).as_posix()
                       not in recorded)
        for fname in extra:  # put there after registration (or by a writer that bypassed it): never copied
            log.warning("pull: %s is in the stored model of %s version %s but was not recorded at registration; "
                        "not copied", fname, version.name, version.version)
        dest = Path(to)
        if not replace:
            _refuse_overwrite(dest, files, recorded, version)
        dest.mkdir(parents=True, exist_ok=True)
        for fname in sorted(recorded):
            shutil.copy2(files / fname, dest / fname)
    (dest / "model.json").write_text(json.dumps(
        {"name": version.name, "version": version.version, "aliases": list(version.aliases or []),
         "tags": dict(version.tags), "run_id": version.run_id, "not_copied": extra}, indent=2))
    return dest, version


def _refuse_overwrite(dest: Any, files: Any, names: set[str], version: Any) -> None:
    """A pull loses no data: a file in ``dest`` under a name it writes, with other bytes than the version's, and a
    ``model.json`` of another version are refused by name (the same version pulled again is no change)."""
    differ = [n for n in sorted(names) if (dest / n).is_file() and (dest / n).read_bytes() != (files / n).read_bytes()]
    record = dest / "model.json"
    if record.is_file():
        try:
            old = json.loads(record.read_text())
            same = (old.get("name"), str(old.get("version"))) == (version.name, str(version.version))
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            differ.append("model.json")
    if differ:
        raise UserInputError(f"--to: {str(dest)!r} already holds {', '.join(differ)}, other than {version.name} "
                             f"version {version.version}'s; pull into an empty folder, or move them away first "
                             f"(nothing was written)")


def recorded_files(tags: Mapping[str, str]) -> set[str]:
    """The file names a version recorded a SHA-256 for at registration."""
    return {k[len(SHA_TAG):] for k in tags if k.startswith(SHA_TAG)}


def build_from_files(files: Mapping[str, str | os.PathLike]):
    """Rebuild a registered network from its files (see :func:`dartboard.training.final.network_from_files`)."""
    from dartboard.training.final import network_from_files

    return network_from_files(files)


def is_folder(ref: str) -> bool:
    """A folder of model files rather than a registry reference: registered names hold no ``/`` (MLflow refuses
    them), so a path with one is a folder, as is any existing folder."""
    from pathlib import Path

    return not ref.startswith("models:/") and ("/" in ref or Path(ref).is_dir())


def check_model_folder(ref: str, needed: tuple[str, ...]):
    """The folder ``ref`` as a Path, when it holds the ``needed`` files of a model; else one error naming what
    is missing."""
    from pathlib import Path

    folder = Path(ref)
    if not folder.is_dir():
        raise UserInputError(f"model {ref!r}: no such folder (a trained network's folder, or NAME@ALIAS / "
                             f"NAME:VERSION of a registered one)")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing and (folder / "ssl_weights.pt").is_file():  # `dartboard train` of an mlp genotype (NASiam heads)
        raise UserInputError(f"model {ref!r}: the folder holds a backbone pretrained with NASiam heads "
                             f"(ssl_weights.pt, its held-out probe and kNN metrics in ssl_metrics.json), not a trained "
                             f"classifier ({', '.join(missing)} missing)")
    if missing:
        what = "no trained network" if len(needed) > 1 else "no model"
        raise UserInputError(f"model {ref!r}: the folder holds {what} ({', '.join(missing)} missing); "
                             f"`dartboard train` and `dartboard pull --to` write one")
    return folder


def load(ref: str, uri: str | None = None, cache_dir: str | os.PathLike | None = None):
    """``dartboard.load("models:/NAME@champion")``: verified pull, then a ready network in eval
    mode (or the Genotype when the version holds no weights). ``ref`` may also be a folder of a model's files
    (what ``dartboard train``, ``dartboard pull --to``, ``dartboard prune --out`` and ``dartboard pmsm compare``
    write), read as it is."""
    import tempfile
    from pathlib import Path

    local = is_folder(ref)
    if local:
        if uri is not None or cache_dir is not None:
            raise UserInputError(f"load: {ref!r} is a folder of model files, read without a registry or a cache; "
                                 f"give neither tracking_uri nor cache_dir")
        if (Path(ref) / FLUX_RESULT_FILE).is_file() and not (Path(ref) / GENOTYPE_FILE).is_file():
            from dartboard.training.pmsm import load_flux_model  # a flux model `dartboard pmsm compare` trained

            return load_flux_model(ref)[0]
        folder = check_model_folder(ref, (GENOTYPE_FILE,))
    else:
        from dartboard.platform.checks import check_tracking_server

        check_tracking_server(tracking_uri(uri), "load: tracking_uri")  # a file store, a server that is down
        folder = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="dartboard-model-"))
        folder, _ = pull_model(uri, ref, folder, replace=True)  # its cache: the version the reference names now
    files = {k: folder / f for k, f in (("genotype", GENOTYPE_FILE), ("network", NETWORK_FILE),
                                        ("weights", WEIGHTS_FILE)) if (folder / f).is_file()}
    if local and "weights" not in files and (folder / PRUNED_WEIGHTS_FILE).is_file():
        files["weights"] = folder / PRUNED_WEIGHTS_FILE  # a pruned ViT as `dartboard prune --out` writes it
    return build_from_files(files)


def network_spec(train_cfg, info, dataset: str, data_root: str | None = None) -> dict[str, Any]:
    """Contents of network.json: everything needed to rebuild a trained network, the preprocessing (input size,
    channels, normalisation) its inputs need (``dartboard predict`` applies it), and the folder of the data it was
    trained on, where it read one (``dartboard evaluate`` reads its test split there by default)."""
    from dartboard.data.catalog import absolute_root
    from dartboard.data.preprocess import preprocessing_of

    pre = preprocessing_of(info)
    return {"channels": train_cfg.channels, "layers": train_cfg.layers, "auxiliary": train_cfg.auxiliary,
            "stem": getattr(train_cfg, "stem", "auto"),
            "in_channels": info.in_channels, "input_size": info.input_size, "num_classes": info.num_classes,
            "dataset": dataset, "preprocessing": pre.to_dict() if pre is not None else None,
            **({"classes": list(info.classes)} if info.classes else {}),
            **({"data_root": absolute_root(data_root)} if data_root is not None else {})}
