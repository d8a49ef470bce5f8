"""Training outside the search (torch only; never ray, mlflow, optuna or typer).

- ``final``: a genotype's network trained from scratch (the DARTS evaluation protocol);
- ``vit_finetune``: fine-tuning of (pruned) ViTs (DARIO, thesis 6.1.2);
- ``checkpoint``: the weights-only file format of a searcher's full state.
"""
