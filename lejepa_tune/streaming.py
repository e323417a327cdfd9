"""The training split streamed by Ray Data, for sweeps over data too large to decode into memory
(``data.in_memory: false``): a trial hands Ray Train a ``ray.data.Dataset`` of the split, Ray
Train splits it into one stream per worker, and each worker reads its share of every epoch's
global batches from ``ray.train.get_dataset_shard``.

Images are decoded exactly as :mod:`lejepa_tune.data` decodes them (the split's own items), by
Ray Data tasks that reserve no CPU: like the DataLoader processes they replace, they share the
cores of the workers that reserved them, so a cluster full of trials cannot leave them waiting.
Each epoch visits the blocks in a new order and shuffles rows in a buffer; which rows a rank
gets varies between runs, so a run resumed from a checkpoint trains on the same data in another
order (the in-memory path resumes bit for bit).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import ray.data
import torch
from torch.utils.data import Dataset

__all__ = ["TRAIN", "split_dataset", "epoch_stream"]

TRAIN = "train"  # the dataset's name for Ray Train
_BLOCK_ROWS = 64  # rows per block: the unit of decoding, and of the per-epoch block shuffle


class _Decode:
    """``{"index": (n,)}`` -> ``{"image": uint8 (n, 3, S, S), "label": int64 (n,)}``, reading the
    split's own items."""

    def __init__(self, split: Dataset):
        self.split = split

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [self.split[int(i)] for i in batch["index"]]
        images = np.stack([np.asarray(image, dtype=np.uint8) for image, _ in items])
        return {"image": images, "label": np.asarray([label for _, label in items], dtype=np.int64)}


def split_dataset(split: Dataset) -> ray.data.Dataset:
    """The split as a lazy Ray Dataset: its indices, decoded into images and labels when read,
    in blocks whose order is shuffled again at every epoch."""
    indices = ray.data.from_items([{"index": i} for i in range(len(split))], override_num_blocks=max(1, -(-len(split) // _BLOCK_ROWS)))
    stream = indices.randomize_block_order().map_batches(_Decode(split), batch_size=_BLOCK_ROWS, num_cpus=0, batch_format="numpy")
    # Tune's table is the sweep's progress display: no progress bars or start-up lines from
    # every epoch's execution (the context travels with the dataset to where it executes).
    stream.context.enable_progress_bars = False
    stream.context.print_on_execution_start = False
    return stream


def epoch_stream(shard: Any, per_rank: int, steps: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of ``per_rank`` ``(images uint8, labels)`` from this worker's shard (a
    ``ray.data.DataIterator``) for one epoch; rows are shuffled in a buffer of a few batches."""
    batches = shard.iter_torch_batches(batch_size=per_rank, drop_last=True, local_shuffle_buffer_size=4 * per_rank, local_shuffle_seed=seed, device="cpu")
    for step, batch in enumerate(batches):
        if step == steps:  # every rank takes the same number of steps
            break
        yield batch["image"], batch["label"]
