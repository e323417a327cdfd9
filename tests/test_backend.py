"""The torch backend of a trial's Ray Train run: a real two-rank process group on a real local
Ray, set up by a controller that does not import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import ray.data
import ray.train

from lejepa_tune.backend import TorchConfig, process_group_backend, torch_trainer
from lejepa_tune.worker import train_worker


@pytest.mark.slow
def test_two_ranks_join_one_gloo_process_group_and_all_reduce(local_ray, tmp_path):
    # Defined here, so that Ray pickles it by value: the workers cannot import the tests.
    def check_rank(config: dict) -> None:
        import torch
        import torch.distributed as dist

        rank = ray.train.get_context().get_world_rank()
        total = torch.tensor([rank + 1.0])
        dist.all_reduce(total)
        seen = {"world_size": dist.get_world_size(), "backend": dist.get_backend(), "sum": total.item(),
                "env": [os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")]}
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps(seen))

    trainer = torch_trainer(
        check_rank,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="ranks", storage_path=str(tmp_path / "storage")),
    )
    assert trainer.fit().error is None
    # Both ranks' values summed across the group, by gloo on CPUs, rendezvous at rank 0's address.
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, seen in enumerate(ranks):
        assert seen["world_size"] == 2 and seen["backend"] == "gloo" and seen["sum"] == 3.0
        assert seen["env"][:3] == [str(rank), "2", str(rank)]  # one node: local rank = rank
    assert ranks[0]["env"][3] == ranks[1]["env"][3]


def test_ray_trains_controller_unpickles_the_run_without_importing_torch():
    """The controller gets the train function and the backend config pickled, and sets the
    process group up from them: the workers import torch, when they run (the trial's own
    process: test_trial.py)."""
    trainer = torch_trainer(train_worker, train_loop_config={}, scaling_config=ray.train.ScalingConfig(num_workers=2))
    pickled = ray.cloudpickle.dumps((trainer._get_train_func(), trainer.backend_config))
    load = "import pickle, sys; fn, config = pickle.loads(sys.stdin.buffer.read()); print(type(config).__name__, 'torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", load], input=pickled, capture_output=True, check=True)
    assert loaded.stdout.decode().split() == ["TorchConfig", "False"]


def test_a_run_leaves_out_the_dataset_manager_without_datasets_and_the_cleaner_when_told(tmp_path):
    """Ray Train's datasets callback (a DatasetManager actor per run, Ray Data's context sent to
    every worker) only where the run has Ray Datasets: the streamed data of test_streaming.py;
    its placement-group cleaner (a detached actor per run) unless the run is told it needs none."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    def callbacks(**kwargs) -> list[str]:
        trainer = torch_trainer(train_worker, train_loop_config={}, scaling_config=ray.train.ScalingConfig(num_workers=2),
                                run_config=ray.train.RunConfig(name="callbacks", storage_path=str(tmp_path)), **kwargs)
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    without, with_data = callbacks(), callbacks(datasets={"train": lambda: ray.data.range(4)})
    assert DatasetsCallback.__name__ not in without and DatasetsCallback.__name__ in with_data
    # Nothing else is left out: the backend, the placement-group cleaner, the user callbacks.
    assert sorted(with_data) == sorted([*without, DatasetsCallback.__name__])
    assert PlacementGroupCleanerCallback.__name__ in without
    no_cleaner = callbacks(placement_group_cleaner=False)
    assert sorted(without) == sorted([*no_cleaner, PlacementGroupCleanerCallback.__name__])


def test_the_config_reads_as_ray_train_expects():
    config = TorchConfig()
    assert config.backend is None and config.framework.value == "torch"
    assert config.to_dict() == {"backend": None, "init_method": "env", "timeout_s": 1800}
    assert config.backend_cls.share_cuda_visible_devices


def test_workers_with_a_gpu_join_by_nccl_and_cpu_workers_by_gloo():
    assert process_group_backend({"CPU": 1}) == "gloo"
    assert process_group_backend({"CPU": 1, "GPU": 0}) == "gloo"
    assert process_group_backend({"CPU": 1, "GPU": 1}) == "nccl"
    assert process_group_backend({"GPU": 0.5}) == "nccl"
