"""Config loading: defaults <- YAML <- --set, validated once, errors naming file and key path."""

from __future__ import annotations

import pickle

import pytest

from lejepa_tune.config import Config, ConfigError, config_from_dict, load_config, save_config


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_yaml_and_overrides_compose(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.01}\nviews: {global_scale: [0.5, 1.0]}\n")
    cfg = load_config(path, ["loss.lam=0.2", "model.backbone_kwargs.depth=2", "train.epochs=3"])
    assert cfg.optim.lr == 0.01
    assert cfg.views.global_scale == (0.5, 1.0)
    assert cfg.loss.lam == 0.2
    assert cfg.model.backbone_kwargs["depth"] == 2
    assert cfg.model.backbone_kwargs["embed_dim"] == Config().model.backbone_kwargs["embed_dim"]  # merged, not replaced
    assert cfg.train.epochs == 3
    assert cfg.optim.weight_decay == Config().optim.weight_decay  # untouched default


def test_config_is_frozen_and_picklable():
    cfg = load_config()
    with pytest.raises(Exception):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.model.backbone_kwargs["depth"] = 9  # type: ignore[index]
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(None, ["loss.lam=0.3", "views.n_local=2"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "text,key,fragment",
    [
        ("optim: {lrr: 0.1}\n", "optim.lrr", "unknown key"),
        ("optimizer: {lr: 0.1}\n", "optimizer", "unknown key"),
        ("optim: {lr: fast}\n", "optim.lr", "expected a number"),
        ("optim: {lr: -1}\n", "optim.lr", "> 0"),
        ("loss: {lam: 1.5}\n", "loss.lam", "[0, 1]"),
        ("loss: {regularizer: svd}\n", "loss.regularizer", "'sigreg'"),
        ("train: {epochs: 2.5}\n", "train.epochs", "integer"),
        ("views: {global_scale: [0.9, 0.2]}\n", "views.global_scale", "lo <= hi"),
        ("views: {n_local: 2, local_size: 64}\n", "views.local_size", "must not exceed"),
        ("views: {n_global: 1}\n", "views.n_global", "needs at least two (views.n_global 1 + views.n_local 0)"),
        ("train: {save_checkpoint: 1}\n", "train.save_checkpoint", "true or false"),
        ("optim: 3\n", "optim", "mapping"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}")
    assert fragment in message
    assert "\n" not in message


def test_malformed_yaml_and_missing_file(tmp_path):
    path = write(tmp_path, "optim: {lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: malformed YAML \(line \d+, column \d+\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_bad_overrides_name_the_key():
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"optim\.lr\.x: is not a section|optim\.lr: is not a section"):
        load_config(None, ["optim.lr.x=1"])


def test_config_from_dict_reports_source():
    with pytest.raises(ConfigError, match=r"^somewhere: eval\.knn_k"):
        config_from_dict({"eval": {"knn_k": 0}}, "somewhere")


def test_exponent_floats_are_numbers_in_yaml_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "optim: {lr: 1e-3, weight_decay: 5E-2}\n"), ["optim.probe_lr=2e-4"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.probe_lr) == (1e-3, 5e-2, 2e-4)
