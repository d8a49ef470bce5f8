"""dartboard: differentiable neural architecture search (the DARTS family), from laptop to Ray cluster.

``spaces`` says what can be searched, ``searchers`` how (pure PyTorch), ``platform``
where and when (Ray, Optuna, MLflow, the CLI). Importing dartboard imports torch only.
"""

__version__ = "0.1.0"
