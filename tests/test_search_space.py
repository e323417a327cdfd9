"""Search-space YAML: validation with file and key in every error, and Optuna distributions."""

from __future__ import annotations

import optuna
import pytest

from lejepa_tune.cli import main
from lejepa_tune.config import ConfigError
from lejepa_tune.search_space import Distribution, load_sweep_spec, trial_config

GOOD = """
name: test_sweep
base:
  train: {epochs: 2}
search:
  loss.lam: {type: loguniform, low: 0.01, high: 0.5}
  optim.lr: {type: uniform, low: 0.0005, high: 0.005}
  model.proj_dim: {type: qint, low: 16, high: 64, step: 16}
  views.n_global: {type: choice, values: [2, 4]}
  train.batch_size: {type: qint, low: 32, high: 64, step: 2}
  eval.knn_k: {type: int, low: 10, high: 20}
tune: {num_samples: 3, scheduler: asha}
resources: {num_workers: 2, cpus_per_worker: 1}
"""


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_space_parses_to_optuna_distributions(tmp_path):
    spec = load_sweep_spec(write(tmp_path, GOOD))
    assert spec.name == "test_sweep" and spec.base.train.epochs == 2
    assert spec.tune.num_samples == 3 and spec.tune.scheduler == "asha" and spec.tune.metric == "labelfree/objective"
    assert spec.resources.num_workers == 2 and spec.resources.gpus_per_worker == "auto"
    d = {k: v.to_optuna() for k, v in spec.search.items()}
    assert d["loss.lam"] == optuna.distributions.FloatDistribution(0.01, 0.5, log=True)
    assert d["optim.lr"] == optuna.distributions.FloatDistribution(0.0005, 0.005)
    assert d["model.proj_dim"] == optuna.distributions.IntDistribution(16, 64, step=16)
    assert d["views.n_global"] == optuna.distributions.CategoricalDistribution([2, 4])
    assert d["train.batch_size"] == optuna.distributions.IntDistribution(32, 64, step=2)
    assert d["eval.knn_k"] == optuna.distributions.IntDistribution(10, 20)
    cfg = trial_config(spec, {"loss.lam": 0.1, "views.n_global": 4})
    assert cfg.loss.lam == 0.1 and cfg.views.n_global == 4 and cfg.train.epochs == 2


def test_base_can_be_a_path_relative_to_the_space(tmp_path):
    (tmp_path / "configs").mkdir()
    write(tmp_path, "optim: {lr: 0.004}\n", "configs/base.yaml")
    spec = load_sweep_spec(write(tmp_path, "name: s\nbase: configs/base.yaml\nsearch: {}\n"))
    assert spec.base.optim.lr == 0.004


def test_overrides_route_to_sweep_or_base(tmp_path):
    spec = load_sweep_spec(write(tmp_path, GOOD), ["tune.num_samples=5", "train.epochs=1", "base.loss.num_slices=32"])
    assert spec.tune.num_samples == 5
    assert spec.base.train.epochs == 1 and spec.base.loss.num_slices == 32


def test_overrides_set_a_distribution_or_one_of_its_fields(tmp_path):
    spec = load_sweep_spec(write(tmp_path, GOOD), [
        "search.loss.lam.high=0.2",  # one field; the search keys themselves hold dots
        "search.optim.lr={type: choice, values: [0.001, 0.002]}",  # a whole distribution
        "search.views.n_global=null",  # no longer searched
        "search.model.backbone_kwargs.depth={type: int, low: 2, high: 4}",  # a new one
    ])
    assert spec.search["loss.lam"] == Distribution("loguniform", low=0.01, high=0.2)
    assert spec.search["optim.lr"].values == (0.001, 0.002)
    assert "views.n_global" not in spec.search
    assert trial_config(spec, {"model.backbone_kwargs.depth": 3}).model.backbone_kwargs["depth"] == 3


def test_points_to_evaluate_may_hold_any_value_the_search_proposes(tmp_path):
    text = """
name: s
search:
  views.global_scale: {type: choice, values: [[0.3, 1.0], [0.5, 1.0]]}
  model.proj_dim: {type: qint, low: 16, high: 64, step: 16}
  loss.lam: {type: uniform, low: 0.01, high: 0.5}
tune:
  points_to_evaluate: [{views.global_scale: [0.5, 1.0], model.proj_dim: 48, loss.lam: 0.5}]
"""
    spec = load_sweep_spec(write(tmp_path, text))
    assert spec.tune.points_to_evaluate[0]["model.proj_dim"] == 48


def test_interacting_searched_keys_are_checked_together(tmp_path):
    """Each key alone is fine; together, at their extremes, they are not."""
    text = """
name: s
base: {views: {n_local: 2, global_size: 64}}
search:
  views.local_size: {type: choice, values: [16, 48]}
  views.global_size: {type: int, low: 32, high: 64}
"""
    with pytest.raises(ConfigError, match=r"search\.views\.local_size: trials with views\.local_size=48, views\.global_size=32"):
        load_sweep_spec(write(tmp_path, text))
    assert load_sweep_spec(write(tmp_path, text.replace("low: 32", "low: 48"))).search["views.global_size"].low == 48


@pytest.mark.parametrize(
    "text,key,fragment",
    [
        ("name: s\nsearch:\n  optim.lrr: {type: uniform, low: 0.1, high: 0.2}\n", "search.optim.lrr", "unknown key"),
        ("name: s\nsearch:\n  loss.lam: {type: uniform, low: 0.5, high: 0.1}\n", "search.loss.lam", "impossible range"),
        ("name: s\nsearch:\n  loss.lam: {type: loguniform, low: 0, high: 0.1}\n", "search.loss.lam.low", "low > 0"),
        ("name: s\nsearch:\n  loss.lam: {type: uniform, low: 0.1, high: 1.5}\n", "search.loss.lam", "1.5 is not a valid value"),
        ("name: s\nsearch:\n  loss.lam: {type: gaussian, low: 0.1, high: 0.5}\n", "search.loss.lam.type", "expected one of"),
        ("name: s\nsearch:\n  loss.lam: {type: uniform, low: 0.1, hi: 0.5}\n", "search.loss.lam.hi", "unknown key"),
        ("name: s\nsearch:\n  views.n_global: {type: choice, values: []}\n", "search.views.n_global.values", "non-empty"),
        ("name: s\nsearch:\n  model.proj_dim: {type: qint, low: 16, high: 60, step: 16}\n", "search.model.proj_dim", "multiple of step"),
        ("name: s\ntune: {num_samples: 0}\n", "tune.num_samples", "> 0"),
        ("name: s\ntune: {schedular: asha}\n", "tune.schedular", "unknown key"),
        ("name: s\ntune: {scheduler: hyperband}\n", "tune.scheduler", "'asha'"),
        ("name: s\ntune: {searcher: bohb}\n", "tune.searcher", "'random'"),
        ("name: s\ntune: {cohorts: 0, scheduler: sha}\n", "tune.cohorts", "> 0"),
        ("name: s\ntune: {cohorts: 2, scheduler: asha}\n", "tune.cohorts", "need tune.scheduler: sha (got asha"),
        ("name: s\ntune: {cohorts: 2}\n", "tune.cohorts", "need tune.scheduler: sha (got none"),
        ("name: s\ntune: {cohorts: 4, num_samples: 3, scheduler: sha}\n", "tune.cohorts", "at most one cohort per trial"),
        ("name: s\nresources: {num_workers: -1}\n", "resources.num_workers", "> 0"),
        ("name: s\nsearches: {}\n", "searches", "unknown key"),
        ("search: {}\n", "name", "non-empty name"),
        ("name: s\nbase: {optim: {lr: -1}}\n", "base.optim.lr", "> 0"),
    ],
)
def test_bad_spaces_name_file_and_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep_spec(path)
    message = str(err.value)
    assert message.startswith(str(path)) and f": {key}" in message and fragment in message, message
    assert "\n" not in message


def test_missing_base_file_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_sweep_spec(write(tmp_path, "name: s\nbase: nope.yaml\n"))
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_sweep_spec(write(tmp_path, "name: s\nsearch: {loss.lam: {type: uniform\n"))


def test_validate_command(tmp_path, capsys):
    """(Bad spaces: tests/test_cli.py.)"""
    assert main(["validate", str(write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "loss.lam: loguniform [0.01, 0.5]" in out and "model.proj_dim: qint [16, 64] step 16" in out
    # grace period 1, reduction factor 2 (the defaults) on 2 epochs: the one rung is after epoch 1
    assert out.splitlines()[-1] == ("  searcher: tpe on labelfree/objective (max); ASHA may stop a trial after epoch 1 of 2 "
                                    "(tune.grace_period 1, tune.reduction_factor 2)")
    assert "tune.searcher" not in capsys.readouterr().err
    sha = write(tmp_path, GOOD.replace("scheduler: asha", "scheduler: sha"))
    assert main(["validate", str(sha)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == (
        "  searcher: tpe on labelfree/objective (max); synchronous successive halving: after epoch 1 of 2, the best 1/2 of all trials go "
        "on (each as soon as it is certain to be among them) and the others stop once all have reached it "
        "(tune.grace_period 1, tune.reduction_factor 2)")
    # TPE learns from ended trials, and under sha none ends before the last is proposed.
    assert err.strip() == (f"warning: {sha}: tune.searcher: tpe with tune.scheduler: sha: no trial ends before all 3 are proposed, so TPE "
                           "proposes them as random search would (its start-up draws); with tune.cohorts: 2 or more, TPE proposes each later "
                           "cohort from the trials the earlier ones stopped")
    assert main(["validate", str(write(tmp_path, GOOD.replace("scheduler: asha", "scheduler: sha, searcher: random")))]) == 0
    assert "tune.searcher" not in capsys.readouterr().err
    # In cohorts, TPE proposes the later cohorts from the trials the first stopped: no warning.
    assert main(["validate", str(write(tmp_path, GOOD.replace("{num_samples: 3, scheduler: asha}", "{num_samples: 5, scheduler: sha, cohorts: 2}")))]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == (
        "  searcher: tpe on labelfree/objective (max); synchronous successive halving in 2 cohorts of 2 to 3 trials, one after another: "
        "after epoch 1 of 2, the best 1/2 of each cohort go on (each as soon as it is certain to be among them) and the others stop "
        "once the cohort has reached it (tune.grace_period 1, tune.reduction_factor 2, tune.cohorts 2)")
    assert "tune.searcher" not in err


def test_shipped_search_spaces_validate(capsys):
    """Every shipped space validates, but for data this machine does not hold."""
    import pathlib

    spaces = sorted(pathlib.Path(__file__).resolve().parents[1].joinpath("search_spaces").glob("*.yaml"))
    assert {p.name for p in spaces} >= {"lambda_sweep.yaml", "full_sweep.yaml", "imagenette_vits8.yaml"}
    for path in spaces:
        code, err = main(["validate", str(path)]), capsys.readouterr().err
        # Imagenette comes from the Hugging Face hub, and nothing is downloaded: where it is not
        # cached, only the data check may fail (the space and its backbone passed before it).
        if code == 2 and "base.data.dataset: 'hf:" in err and "nor in the Hugging Face cache" in err:
            continue
        assert code == 0, err
