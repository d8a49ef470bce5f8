"""Names of the environment variables dartboard sets for Ray's processes (read by ``session.worker_env``
and ``trainer.DartboardTrainer``; a module of its own so that neither imports the other)."""

#: Set for every process of a job on a private local instance that ``session.init_ray`` started:
#: ``trainer.DartboardTrainer`` leaves out the actors that only a cluster needs.
PRIVATE_INSTANCE_ENV = "DARTBOARD_PRIVATE_RAY"
#: Ray Train's metrics switch; the user's setting reaches the trials' trainers.
TRAIN_METRICS_ENV = "RAY_TRAIN_METRICS_ENABLED"
