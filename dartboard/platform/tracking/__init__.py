"""MLflow: runs of searches and studies (``runs``), the model registry with verified pull/load
(``models``), and the study tracker that gives every study kind one parent/child layout and one
champion registration (``study``)."""
