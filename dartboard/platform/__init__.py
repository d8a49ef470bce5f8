"""Where and when searches run: CLI, Ray Train/Tune, Optuna, MLflow."""
