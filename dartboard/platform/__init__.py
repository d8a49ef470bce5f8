"""Where and when searches run: data, CLI, Ray Train/Tune, Optuna, MLflow."""
