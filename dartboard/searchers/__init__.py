"""How to search: the DARTS family as composable parts (torch only; never ray or mlflow)."""
