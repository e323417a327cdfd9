"""The training split streamed by Ray Data (``data.in_memory: false`` in a sweep), on a real
local Ray: the images decoded as the split decodes them, equal and disjoint shares for the
ranks at every epoch, and a 2-worker trial that trains from the stream."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import ray
from PIL import Image
from ray.util.state import list_actors
from tiny import TINY_BASE

from lejepa_tune.config import DataConfig
from lejepa_tune.data import as_tensors, build_datasets
from lejepa_tune.metrics import OBJECTIVE
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.streaming import epoch_stream, split_dataset
from lejepa_tune.sweep import run_sweep

pytestmark = pytest.mark.slow

N_TRAIN = 80


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder of distinct noise images (so that every row can be told apart)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", 24)):
        for i in range(n):
            directory = root / split / f"class{i % 3}"
            directory.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(directory / f"{i}.png")
    return root


def rows_of(images, labels) -> list[bytes]:
    return sorted(bytes(np.asarray(x).tobytes()) + bytes([int(y)]) for x, y in zip(images, labels))


def test_the_stream_holds_the_images_the_split_decodes(local_ray, folder):
    split = build_datasets(DataConfig(dataset=f"folder:{folder}", image_size=16)).train
    rows = split_dataset(split).take_all()
    decoded = as_tensors(split)
    assert rows_of([r["image"] for r in rows], [r["label"] for r in rows]) == rows_of(decoded.images, decoded.labels)


def test_two_ranks_take_equal_disjoint_shares_in_a_new_order_every_epoch(local_ray, folder):
    split = build_datasets(DataConfig(dataset=f"folder:{folder}", image_size=16)).train
    shards = split_dataset(split).streaming_split(2, equal=True)  # as Ray Train splits it
    per_rank, steps = 8, N_TRAIN // 16
    taken: dict[int, list[list[bytes]]] = {}

    def consume(rank: int) -> None:  # the ranks read their shares concurrently, as workers do
        taken[rank] = [[bytes(x.numpy().tobytes()) for images, _ in epoch_stream(shards[rank], per_rank, steps, seed=epoch) for x in images]
                       for epoch in range(2)]

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for epoch in range(2):
        both = taken[0][epoch] + taken[1][epoch]
        assert len(taken[0][epoch]) == len(taken[1][epoch]) == per_rank * steps
        assert len(set(both)) == len(both)  # no image twice in one epoch
    assert taken[0][0] + taken[1][0] != taken[0][1] + taken[1][1]


def test_a_two_worker_trial_trains_from_the_stream(local_ray, folder, tmp_path, mlflow_uri):
    base = {**TINY_BASE, "data": {"dataset": f"folder:{folder}", "image_size": 32, "in_memory": False}, "labelfree": {"num_images": 32},
            "eval": {"enabled": False}}
    address = ray.get_runtime_context().gcs_address
    before = len(list_actors(address=address, filters=[("class_name", "=", "SplitCoordinator")]))
    spec = sweep_spec_from_dict({"name": "streamed", "base": base, "search": {}, "tune": {"num_samples": 1}, "resources": {"num_workers": 2}})
    records = run_sweep(spec, storage_path=str(tmp_path / "sweeps"), tracking_uri=mlflow_uri, verbose=0)
    (trial,) = records.trials
    assert trial.status == "completed" and math.isfinite(trial.metrics[OBJECTIVE])
    # Ray Train split a stream for the trial's two workers.
    assert len(list_actors(address=address, filters=[("class_name", "=", "SplitCoordinator")])) == before + 1
