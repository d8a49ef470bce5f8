"""The names of the files dartboard writes in a folder: a search's output (the genotype), a trained network's
(genotype, network record, weights, training record), a registered model version's. One place, so that every
reader and writer agrees; no imports, so that any layer may use them."""

GENOTYPE_FILE = "genotype.json"  # the architecture: JSON with a schema (spaces.genotype)
NETWORK_FILE = "network.json"  # a trained network's size, input and preprocessing (tracking.models.network_spec)
WEIGHTS_FILE = "weights.safetensors"  # its weights
TRAIN_FILE = "train.json"  # the training's config, results and per-epoch history (training.final)
PRUNED_WEIGHTS_FILE = "model.safetensors"  # a pruned ViT's weights (`dartboard prune`, beside its gates genotype)
FLUX_RESULT_FILE = "result.json"  # a trained flux model's genotype, figures, config and data box (`pmsm compare`)


def is_flux_model(folder) -> bool:
    """A folder holding a trained PMSM flux model (``pmsm compare``'s ``OUT/models/NAME/seedN``, or its registered
    version pulled): its result.json and weights."""
    from pathlib import Path

    return (Path(folder) / FLUX_RESULT_FILE).is_file() and (Path(folder) / WEIGHTS_FILE).is_file()
