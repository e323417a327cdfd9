"""lejepa-tune: label-free hyperparameter search for LeJEPA self-supervised pretraining."""

__version__ = "0.1.0"
