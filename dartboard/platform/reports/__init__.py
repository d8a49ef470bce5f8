"""Tables and plots of finished studies (pure functions of the trials' results; no Ray, no MLflow)."""
