"""A DARIO-pruned ViT as a registered model version, like every other model: the gates genotype
(``genotype.json``: the timm model name, its create kwargs, the blocks and heads kept) and the pruned
model's own weights (``weights.safetensors``), each with its SHA-256; tags record the parameter counts
and the throughput before and after pruning. ``dartboard pull`` / ``dartboard.load`` rebuild the
physically smaller timm model from the genotype and load the weights (nothing is downloaded)."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dartboard.platform.tracking.models import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE, register_model_files


def default_pruned_name(model_name: str) -> str:
    return f"dario-{model_name}"


def pruned_tags(params_original: int, params_pruned: int, throughput: Mapping[str, float] | None,
                genotype: Any) -> dict[str, Any]:
    """Parameter counts (and their ratio), throughput before/after (``throughput.*``), what was kept."""
    tags: dict[str, Any] = {"genotype": genotype.model, "params_original": params_original,
                            "params_pruned": params_pruned, "params_ratio": f"{params_pruned / params_original:.6g}",
                            "blocks_kept": ",".join(map(str, genotype.blocks_kept)), "dartboard.pruned": "dario"}
    for key, value in (throughput or {}).items():
        if isinstance(value, int | float) and math.isfinite(value):
            tags[f"throughput.{key}"] = f"{value:.6g}"
    return tags


def register_pruned(uri: str | None, name: str, run_id: str, pruned: Any, genotype: Any, *, params_original: int,
                    params_pruned: int, throughput: Mapping[str, float] | None = None,
                    extra_tags: Mapping[str, Any] = (), alias: str | None = None,
                    network: Mapping[str, Any] | None = None):
    """Register ``pruned`` (with its gates ``genotype``) as a version of ``name`` under the run ``run_id``; with
    ``network`` (the network.json of a pruned ViT fine-tuned on an image folder) its data, preprocessing and test
    accuracy too, so that the version is predicted with and evaluated as a trained network is."""
    from safetensors.torch import save_file

    from dartboard.spaces.genotype import save

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save(genotype, folder / GENOTYPE_FILE)
        save_file({k: v.detach().cpu().contiguous() for k, v in pruned.state_dict().items()},
                  str(folder / WEIGHTS_FILE))
        files = {"genotype": folder / GENOTYPE_FILE, "weights": folder / WEIGHTS_FILE}
        tags = {**pruned_tags(params_original, params_pruned, throughput, genotype), **dict(extra_tags)}
        if network is not None:
            (folder / NETWORK_FILE).write_text(json.dumps(dict(network), indent=2))
            files["network"] = folder / NETWORK_FILE
            tags["metric.test_acc"] = network["test_acc"]
        return register_model_files(uri, name, run_id, files, tags, aliases=(alias,) if alias else ())
