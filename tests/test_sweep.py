"""Real sweeps on a real local Ray: Tune trials launching Ray Train TorchTrainers, a real
Optuna study in SQLite, a real MLflow backend (SQLite file). Tiny settings: digits subsets,
one epoch, a one-layer ViT."""

from __future__ import annotations

import json

import optuna
import pytest
import ray
import ray.tune
import timm
import torch
from mlflow.tracking import MlflowClient

from lejepa_tune.cli import main
from lejepa_tune.config import load_config
from lejepa_tune.search_space import sweep_spec_from_dict
from lejepa_tune.sweep import load_trials_csv, run_sweep

pytestmark = pytest.mark.slow

TINY_BASE = {
    "data": {"max_train_samples": 128, "max_val_samples": 60},
    "model": {"backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3}, "proj_hidden_dims": [64]},
    "train": {"epochs": 1, "batch_size": 32},
    "loss": {"num_slices": 32},
    "eval": {"linear_max_iter": 100},
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def make_spec(name, search, tune=None, resources=None, base=None):
    return sweep_spec_from_dict({"name": name, "base": {**TINY_BASE, **(base or {})}, "search": search, "tune": tune or {}, "resources": resources or {}})


def test_two_trial_sweep_lands_in_tune_mlflow_and_optuna(local_ray, tmp_path, capsys):
    spec = make_spec("two_trials", {"loss.lam": {"type": "loguniform", "low": 0.01, "high": 0.5}}, {"num_samples": 2, "seed": 0})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(spec, storage_path=tmp_path / "sweeps", tracking_uri=uri, include_dashboard=False, verbose=0)

    # Tune: both trials finished with the label-free metric, also in Tune's own records.
    assert [t.status for t in result.trials] == ["completed", "completed"]
    analysis = ray.tune.ExperimentAnalysis(str(result.sweep_dir / "tune"))
    frame = analysis.dataframe()
    assert len(frame) == 2 and frame["train/loss"].notna().all()
    for t in result.trials:  # the λ-corrected loss, per epoch, for search and scheduling
        assert t.metrics["train/scaled_loss"] == pytest.approx(t.metrics["train/loss"] / t.params["loss.lam"] ** 0.4)
    lams = sorted(t.params["loss.lam"] for t in result.trials)
    assert lams[0] != lams[1] and 0.01 <= lams[0] <= lams[1] <= 0.5

    # MLflow: one parent, two nested children with params, per-epoch loss and final eval.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("two_trials")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lejepa_tune.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("lejepa_tune.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert float(child.data.params["loss.lam"]) in lams
        assert child.data.params["train.epochs"] == "1"
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert [m.step for m in history] == [1]
        assert 0.0 <= child.data.metrics["eval/linear_acc"] <= 1.0
        assert "checkpoint" in [a.path for a in client.list_artifacts(child.info.run_id)]

    # Optuna: the study lives in the sweep directory and holds two finished trials.
    study = optuna.load_study(study_name="two_trials", storage=f"sqlite:///{result.sweep_dir / 'optuna.db'}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 2
    assert sorted(t.params["loss.lam"] for t in finished) == pytest.approx(lams)
    assert sorted(t.value for t in finished) == pytest.approx(sorted(t.metrics["train/loss"] for t in result.trials))

    # The sweep's own table reads back.
    assert {t.trial_id for t in load_trials_csv(result.sweep_dir / "trials.csv")} == {t.trial_id for t in result.trials}

    # Label-free selection on the parent run: agreement metrics and the plots.
    parent = client.get_run(parent.info.run_id)
    for criterion in ("loss", "scaled_loss", "yardstick"):
        assert parent.data.metrics[f"selection/{criterion}/n"] == 2
        assert f"selection/{criterion}/regret" in parent.data.metrics
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "selection")]
    assert "selection/report.html" in artifacts and "selection/selection_loss.png" in artifacts
    assert parent.data.tags["lejepa_tune.criterion"] == "scaled_loss"  # only λ varies
    assert parent.data.tags["lejepa_tune.choice"] in {t.trial_id for t in result.trials}

    # `lejepa-tune report` (by experiment name) prints them; `select` exports the pick.
    assert main(["report", "two_trials", "--tracking-uri", uri, "--output-dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "default criterion: scaled_loss" in out and "yardstick" in out and (tmp_path / "rep" / "report.html").is_file()
    assert main(["select", str(result.sweep_dir), "--criterion", "loss", "--export", str(tmp_path / "chosen")]) == 0
    chosen = json.loads((tmp_path / "chosen" / "selection.json").read_text())
    best_loss = min(result.trials, key=lambda t: t.metrics["train/loss"])
    assert chosen["trial_id"] == best_loss.trial_id and chosen["criterion"] == "loss"
    cfg = load_config(tmp_path / "chosen" / "config.yaml")
    encoder = timm.create_model(cfg.model.backbone, num_classes=0, **cfg.model.backbone_kwargs)
    encoder.load_state_dict(torch.load(tmp_path / "chosen" / "encoder.pt"))


def test_two_worker_trial_reports_what_each_rank_computed(local_ray, tmp_path):
    spec = make_spec("two_workers", {"loss.lam": {"type": "uniform", "low": 0.1, "high": 0.2}}, {"num_samples": 1}, {"num_workers": 2, "cpus_per_worker": 1})
    result = run_sweep(spec, storage_path=tmp_path / "sweeps", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", include_dashboard=False, verbose=0)
    (trial,) = result.trials
    assert trial.status == "completed"
    ranks = [json.loads((result.sweep_dir / "trials" / trial.trial_id / "ranks" / f"rank{r}.jsonl").read_text()) for r in range(2)]
    reported = trial.metrics["train/loss"]
    # Each rank saw half of the batch and computed its own loss...
    assert ranks[0]["local"]["train/loss"] != pytest.approx(ranks[1]["local"]["train/loss"], rel=1e-9)
    # ...and Tune got the value both ranks agreed on: the mean over ranks.
    for r in ranks:
        assert r["reduced"]["train/loss"] == pytest.approx(reported, rel=1e-12)
    assert reported == pytest.approx((ranks[0]["local"]["train/loss"] + ranks[1]["local"]["train/loss"]) / 2, rel=1e-12)


def test_a_diverging_trial_fails_alone(local_ray, tmp_path):
    spec = make_spec(
        "diverging",
        {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e30}},
        {"num_samples": 2, "points_to_evaluate": [{"optim.lr": 1e30}, {"optim.lr": 1e-3}], "max_concurrent_trials": 1},
        base={"optim": {"warmup_epochs": 0}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(spec, storage_path=tmp_path / "sweeps", tracking_uri=uri, include_dashboard=False, verbose=0)
    by_lr = {t.params["optim.lr"]: t for t in result.trials}
    assert by_lr[1e30].status == "error" and "diverged" in (by_lr[1e30].error or "")
    assert by_lr[1e-3].status == "completed" and "eval/linear_acc" in by_lr[1e-3].metrics
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("diverging").experiment_id], "tags.`lejepa_tune.role` = 'trial'")
    status = {float(r.data.params["optim.lr"]): r.info.status for r in runs}
    assert status == {1e30: "FAILED", 1e-3: "FINISHED"}
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "diverged" in failed.data.tags["lejepa_tune.error"]

