"""dartboard: differentiable neural architecture search (the DARTS family), from laptop to Ray cluster.

``spaces`` says what can be searched, ``searchers`` how (pure PyTorch), ``platform``
where and when (Ray, Optuna, MLflow, the CLI). Importing dartboard imports torch only.
"""

__version__ = "0.1.0"


def load(model_uri: str, tracking_uri: str | None = None, cache_dir: str | None = None):
    """A registered model, verified and ready: ``dartboard.load("models:/NAME@champion")`` returns the
    network in eval mode (or the Genotype for a genotype-only version). Imports MLflow lazily. A folder of a
    model's files (``dartboard.load("runs/my-search")``: what ``dartboard train`` and ``dartboard pull --to``
    write) is read as it is, without MLflow."""
    from dartboard.platform.tracking.models import load as _load

    return _load(model_uri, tracking_uri, cache_dir)


def network_from_files(files):
    """The network (eval mode) of a registered model's files ``{"genotype": ..., "network": ...,
    "weights": ...}``; the genotype alone without network and weights. The stable entry point of
    the registry's MLflow pyfunc code (torch only)."""
    from dartboard.training.final import network_from_files as _build

    return _build(files)

