"""MLflow tracking and model registry.

Tracking: a study is a parent run and each trial a child run (params, per-epoch metrics,
artifacts), created with the client API so that any process can log; runs are always ended.
Registry: a version is a models-from-code pyfunc carrying genotype.json, network.json and
weights.safetensors, tagged with the SHA-256 of each file; pulls verify both the genotype
and the digests before anything is loaded, and nothing is ever unpickled.

MLflow is imported inside the functions only: the rest of dartboard imports without it.
Default backend: a local sqlite file (``sqlite:///mlflow.db``); ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` selects a server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from dartboard.errors import UserInputError

log = logging.getLogger("dartboard")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup_mlflow(uri: str | None, experiment: str):
    """Point MLflow at ``uri`` and make sure ``experiment`` exists (once, on the driver)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    exp = mlflow.set_experiment(experiment)
    return mlflow, exp


def flat_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(f"{key}.", v))
        else:
            out[key] = str(v)[:500]
    return out


def log_search_run(cfg, result) -> str:
    """One MLflow run for a local search: params, per-epoch metrics, genotype and pictures."""
    mlflow, _ = setup_mlflow(cfg.tracking_uri, cfg.experiment)
    with mlflow.start_run(run_name=f"search-{cfg.searcher}-{cfg.dataset}-s{cfg.seed}") as run:
        mlflow.set_tags({"dartboard.kind": "search", "searcher": cfg.searcher, "dataset": cfg.dataset,
                         "seed": str(cfg.seed)})
        mlflow.log_params(flat_params("", {"searcher": cfg.searcher, "dataset": cfg.dataset, "seed": cfg.seed,
                                           "batch_size": cfg.batch_size, **cfg.searcher_options()}))
        for step, metrics in enumerate(result.history):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        mlflow.log_metric("search_seconds", result.seconds)
        for path in result.artifacts.values():
            mlflow.log_artifact(str(path))
        log.info("mlflow: run %s in %s", run.info.run_id, tracking_uri(cfg.tracking_uri))
        return run.info.run_id


def log_train_run(uri: str | None, experiment: str, genotype_path: str, params: Mapping[str, Any], result,
                  out_dir) -> str:
    mlflow, _ = setup_mlflow(uri, experiment)
    with mlflow.start_run(run_name="train") as run:
        mlflow.set_tags({"dartboard.kind": "train"})
        mlflow.log_params(flat_params("", {"genotype": genotype_path, **params}))
        mlflow.log_metrics({"test_acc": result.test_acc, "test_loss": result.test_loss,
                            "parameters": float(result.parameters), "train_seconds": result.seconds})
        if out_dir is not None:
            mlflow.log_artifacts(str(out_dir))
        return run.info.run_id


# ---------------------------------------------------------------------------------------------
# Studies: a parent run per study, a child run per trial (client API: safe from any process).
# ---------------------------------------------------------------------------------------------

TRIAL_TAG = "dartboard.trial"  # identifies a trial's child run inside its parent (idempotent logging)
RUN_DIR_TAG = "dartboard.run_dir"  # a sweep's parent run: its run directory (a resumed sweep reopens it)


def client(uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(uri))


def ensure_experiment(uri: str | None, experiment: str) -> str:
    """Create ``experiment`` once (on the driver, before any trial starts); return its id."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(experiment)
    except Exception:  # noqa: BLE001 - created meanwhile by another driver: read it back
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def start_parent_run(uri: str | None, experiment: str, run_name: str, params: Mapping[str, Any],
                     tags: Mapping[str, str], run_id: str | None = None) -> str:
    """Open (or, with ``run_id``, reopen) a study's parent run; end it with :func:`end_run`."""
    c = client(uri)
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        return run_id
    run = c.create_run(ensure_experiment(uri, experiment), run_name=run_name,
                       tags={"dartboard.kind": "study", **tags})
    for key, value in flat_params("", params).items():
        c.log_param(run.info.run_id, key, value)
    return run.info.run_id


def find_study_run(uri: str | None, experiment: str, run_dir: str) -> str | None:
    """The parent run of the sweep stored in ``run_dir``, if one was opened before (a driver crash)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    escaped = run_dir.replace("'", "\\'")
    runs = c.search_runs([exp.experiment_id],
                         f"tags.`{RUN_DIR_TAG}` = '{escaped}' and tags.`dartboard.kind` = 'study'")
    return runs[0].info.run_id if runs else None


def end_run(uri: str | None, run_id: str, failed: bool = False) -> None:
    client(uri).set_terminated(run_id, "FAILED" if failed else "FINISHED")


def find_child_run(uri: str | None, parent_id: str, key: str):
    c = client(uri)
    parent = c.get_run(parent_id)
    runs = c.search_runs([parent.info.experiment_id],
                         f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{TRIAL_TAG}` = '{key}'")
    return runs[0] if runs else None


def log_child_run(uri: str | None, parent_id: str, key: str, params: Mapping[str, Any],
                  history: list[Mapping[str, float]], metrics: Mapping[str, float],
                  artifacts: list[str | os.PathLike], tags: Mapping[str, str] | None = None) -> str:
    """One trial as a child run: params, per-epoch metrics (step = epoch), final metrics and
    artifacts. Logged once: a second call for the same ``key`` returns the existing run."""
    existing = find_child_run(uri, parent_id, key)
    if existing is not None:
        return existing.info.run_id
    from mlflow.entities import Metric

    c = client(uri)
    parent = c.get_run(parent_id)
    run = c.create_run(parent.info.experiment_id, run_name=key,
                       tags={"mlflow.parentRunId": parent_id, TRIAL_TAG: key, "dartboard.kind": "trial",
                             **(tags or {})})
    rid, failed = run.info.run_id, True
    try:
        for k, v in flat_params("", params).items():
            c.log_param(rid, k, v)
        now = int(__import__("time").time() * 1000)
        points = [Metric(k, float(v), now, step) for step, m in enumerate(history) for k, v in m.items()
                  if _is_number(v)]
        points += [Metric(k, float(v), now, len(history)) for k, v in metrics.items() if _is_number(v)]
        for start in range(0, len(points), 900):  # the REST API takes at most 1000 metrics per batch
            c.log_batch(rid, metrics=points[start:start + 900])
        for path in artifacts:
            c.log_artifact(rid, str(path))
        failed = False
    finally:
        c.set_terminated(rid, "FAILED" if failed else "FINISHED")
    return rid


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# ---------------------------------------------------------------------------------------------
# Model registry: a version is a models-from-code pyfunc whose artifacts are genotype.json,
# network.json (how to rebuild the network) and weights.safetensors. No file needs unpickling.
# ---------------------------------------------------------------------------------------------

CHAMPION_ALIAS = "champion"
GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE = "genotype.json", "network.json", "weights.safetensors"
SHA_TAG = "sha256."  # one tag per artifact file: sha256.<file name> = hex digest

_MODEL_CODE = '''"""dartboard network served as an MLflow pyfunc (models-from-code: nothing is pickled)."""
import mlflow.pyfunc
from mlflow.models import set_model


class DartboardNetwork(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dartboard.platform.registry import build_from_files

        self.net = build_from_files(context.artifacts)

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
        code.write_text(_MODEL_CODE)
        # Reopen the run inside its own experiment: a run id from another experiment than the
        # process's active one (set by any earlier set_experiment) is refused by MLflow.
        mlflow.set_experiment(experiment_id=client(uri).get_run(run_id).info.experiment_id)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code), artifacts=artifacts,
                                           pip_requirements=["dartboard", "torch", "safetensors"])
    version = mlflow.register_model(info.model_uri, name, tags=all_tags)
    c = client(uri)
    for alias in aliases:
        c.set_registered_model_alias(name, alias, version.version)
    log.info("registry: %s version %s%s", name, version.version,
             f" (aliases {', '.join(aliases)})" if aliases else "")
    return version


def register_champion(uri: str | None, name: str, run_id: str, model_dir: str | os.PathLike,
                      tags: Mapping[str, Any], alias: str = CHAMPION_ALIAS):
    """Register the best trial's folder (genotype.json, network.json, weights.safetensors, whichever
    exist) and point ``alias`` at it. Usable as a sweep's best-result hook."""
    from pathlib import Path

    folder = Path(model_dir)
    files = {key: folder / fname for key, fname in (("genotype", GENOTYPE_FILE), ("network", NETWORK_FILE),
                                                     ("weights", WEIGHTS_FILE)) if (folder / fname).is_file()}
    return register_model_files(uri, name, run_id, files, tags, aliases=(alias,))


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
    name, alias, version = parse_model_ref(ref)
    c = client(uri)
    try:
        if alias:
            return c.get_model_version_by_alias(name, alias)
        if version:
            return c.get_model_version(name, version)
        versions = c.search_model_versions(f"name='{name}'")
    except Exception as err:  # noqa: BLE001 - MLflow raises RestException/MlflowException
        raise UserInputError(f"model {ref!r} not found in the registry at {tracking_uri(uri)}: "
                         f"{str(err).splitlines()[0]}") from None
    if not versions:
        raise UserInputError(f"model {ref!r}: no registered model named {name!r} at {tracking_uri(uri)}")
    return max(versions, key=lambda v: int(v.version))


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


def pull_model(uri: str | None, ref: str, to: str | os.PathLike):
    """Download a version's files into ``to`` after verifying them; return (folder, version).
    Nothing is written to ``to`` when verification fails."""
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
        dest = Path(to)
        dest.mkdir(parents=True, exist_ok=True)
        for path in files.iterdir():
            if path.is_file():
                shutil.copy2(path, dest / path.name)
    (dest / "model.json").write_text(__import__("json").dumps(
        {"name": version.name, "version": version.version, "aliases": list(version.aliases or []),
         "tags": dict(version.tags), "run_id": version.run_id}, indent=2))
    return dest, version


def build_from_files(files: Mapping[str, str | os.PathLike]):
    """Rebuild a network from genotype.json + network.json + weights (loaded without unpickling)."""
    import json
    from pathlib import Path

    from dartboard.spaces import genotype as gt
    from dartboard.training.final import TrainConfig, load_network

    genotype = gt.load(files["genotype"])
    if "network" not in files or "weights" not in files:
        return genotype
    spec = json.loads(Path(files["network"]).read_text())
    cfg = TrainConfig(channels=int(spec["channels"]), layers=int(spec["layers"]),
                      auxiliary=bool(spec.get("auxiliary", False)))
    info = _ShapeInfo(int(spec["in_channels"]), int(spec["input_size"]), int(spec["num_classes"]))
    return load_network(genotype, files["weights"], cfg, info).eval()


class _ShapeInfo:
    def __init__(self, in_channels: int, input_size: int, num_classes: int):
        self.in_channels, self.input_size, self.num_classes = in_channels, input_size, num_classes


def load(ref: str, uri: str | None = None, cache_dir: str | os.PathLike | None = None):
    """``dartboard.load("models:/NAME@champion")``: verified pull, then a ready network in eval
    mode (or the Genotype when the version holds no weights)."""
    import tempfile
    from pathlib import Path

    folder = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="dartboard-model-"))
    folder, _ = pull_model(uri, ref, folder)
    files = {k: folder / f for k, f in (("genotype", GENOTYPE_FILE), ("network", NETWORK_FILE),
                                        ("weights", WEIGHTS_FILE)) if (folder / f).is_file()}
    return build_from_files(files)


def network_spec(train_cfg, info, dataset: str) -> dict[str, Any]:
    """Contents of network.json: everything needed to rebuild a trained network."""
    return {"channels": train_cfg.channels, "layers": train_cfg.layers, "auxiliary": train_cfg.auxiliary,
            "in_channels": info.in_channels, "input_size": info.input_size, "num_classes": info.num_classes,
            "dataset": dataset}


class SweepTracker:
    """A sweep hook (``sweep.SWEEP_CALLBACKS`` or ``run_sweep(callbacks=[...])``): the study is a parent
    run, each finished trial a child run (config, final metrics, genotype.json); at the end the best
    trial's genotype is registered as ``register_as`` with alias ``champion``."""

    def __init__(self, uri: str | None = None, experiment: str = "dartboard-sweeps", register_as: str | None = None):
        self.uri, self.experiment, self.register_as = uri, experiment, register_as
        self.parent: str | None = None
        self.children: dict[str, str] = {}

    def __call__(self, event: str, payload: Mapping[str, Any]) -> None:
        import json
        import tempfile
        from pathlib import Path

        if self.parent is None:
            # A resumed sweep (same run directory) reopens its parent run: one study, one parent.
            run_dir = str(payload.get("run_dir"))
            self.parent = start_parent_run(self.uri, self.experiment, f"sweep-{payload.get('study')}",
                                           {"run_dir": run_dir},
                                           {"study": str(payload.get("study")), RUN_DIR_TAG: run_dir},
                                           run_id=find_study_run(self.uri, self.experiment, run_dir))
        if event == "trial":
            with tempfile.TemporaryDirectory() as tmp:
                files = []
                if payload.get("genotype"):
                    files.append(Path(tmp) / GENOTYPE_FILE)
                    files[0].write_text(json.dumps(payload["genotype"]))
                self.children[payload["trial_id"]] = log_child_run(
                    self.uri, self.parent, str(payload["trial_id"]), payload.get("config", {}), [],
                    dict(payload.get("metrics", {})), files, {"status": str(payload.get("status")),
                                                              "study": str(payload.get("study"))})
            return
        best = payload.get("best")
        try:
            if best and self.register_as and best.get("genotype"):
                self._register(payload, best)
        finally:
            end_run(self.uri, self.parent)

    def _register(self, payload: Mapping[str, Any], best: Mapping[str, Any]) -> None:
        import json
        import tempfile
        from pathlib import Path

        run_id = self.children.get(best["trial_id"]) or self.parent
        config = best.get("config", {})
        tags = {"study": payload.get("study"), "trial": best["trial_id"],
                "searcher": config.get("searcher", payload.get("searcher", "")), "space": config.get("space", ""),
                "dataset": config.get("dataset", payload.get("dataset", "")), "seed": config.get("seed", ""),
                "metric.objective": best.get("objective")}
        final = best.get("final")
        if final:  # the sweep trained the champion: register genotype, network spec and weights
            tags.update({"metric.test_acc": final["test_acc"], "metric.parameters": final["parameters"]})
            register_champion(self.uri, self.register_as, run_id, final["dir"], tags)
            return
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / GENOTYPE_FILE).write_text(json.dumps(best["genotype"]))
            register_champion(self.uri, self.register_as, run_id, tmp, tags)
