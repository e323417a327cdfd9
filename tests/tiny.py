"""Tiny training settings shared by the tests: a digits subset, a one-block ViT, few slices."""

TINY = [
    "data.max_train_samples=128",
    "data.max_val_samples=60",
    "train.batch_size=32",
    "loss.num_slices=32",
    "model.proj_hidden_dims=[64]",
    "model.backbone_kwargs.depth=1",
]
