"""The checks made before a sweep or a run starts: against timm and the data, for every trial a
sweep can run (the corners of its searched ranges), each error one line naming file and key."""

from __future__ import annotations

import dataclasses

import pytest

from lejepa_tune.config import ConfigError, LabelFreeConfig, config_from_dict
from lejepa_tune.data import DatasetError
from lejepa_tune.preflight import check_sweep, check_trainable
from lejepa_tune.search_space import sweep_spec_from_dict

DATA = {"max_train_samples": 100, "max_val_samples": 20}


def spec(search, base=None):
    return sweep_spec_from_dict({"name": "s", "base": {"data": DATA, "train": {"batch_size": 32}, "labelfree": {"num_images": 64}, **(base or {})},
                                 "search": search}, source="space.yaml")


def test_a_trainable_config_gets_its_splits_built_once_per_data_config():
    built = {}
    cfg = config_from_dict({"data": DATA, "train": {"batch_size": 32}, "labelfree": {"num_images": 64}})
    splits = check_trainable(cfg, built)
    assert (len(splits.train), len(splits.val)) == (100, 20)
    assert check_trainable(config_from_dict({"data": DATA, "train": {"batch_size": 100}, "labelfree": {"num_images": 64}}), built) is splits
    assert list(built) == [cfg.data]


@pytest.mark.parametrize("key,value,message", [
    ("model.backbone", "vit_nonexistent", "model.backbone: 'vit_nonexistent' is not a timm model (see timm.list_models())"),
    ("train.batch_size", 101, "train.batch_size: 101 exceeds the 100 training images of 'digits' (data.max_train_samples: 100)"),
    ("labelfree.num_images", 128, "labelfree.num_images: 128 exceeds the 100 training images of 'digits' (data.max_train_samples: 100)"),
])
def test_an_untrainable_config_is_one_line_naming_its_key(key, value, message):
    section, name = key.split(".")
    cfg = config_from_dict({"data": DATA, "train": {"batch_size": 32}, "labelfree": {"num_images": 64}, section: {name: value}})
    with pytest.raises(ConfigError) as err:
        check_trainable(cfg)
    assert str(err.value) == message


@pytest.mark.parametrize("model,views,message", [
    ({}, {"n_local": 2, "local_size": 16},
     "views.local_size: vit_tiny_patch16_224 does not take 16x16 views (Input height (16) doesn't match model (32).); "
     "built with model.backbone_kwargs.dynamic_img_size: true, it takes other sizes"),
    ({"backbone_kwargs": {"img_size": 32, "patch_size": 8, "dynamic_img_size": True}}, {"n_local": 2, "local_size": 12},
     "views.local_size: vit_tiny_patch16_224 does not take 12x12 views (Input height (12) should be divisible by patch size (8).)"),
    ({"backbone": "convnext_atto", "backbone_kwargs": {}}, {"global_size": 16},
     "views.global_size: convnext_atto does not take 16x16 views (Calculated padded input size per channel: (1 x 1). "
     "Kernel size: (2 x 2). Kernel size can't be greater than actual input size)"),
    ({"backbone_kwargs": {"img_size": 32, "no_such_keyword": 1}}, {},
     "model.backbone_kwargs: vit_tiny_patch16_224: VisionTransformer.__init__() got an unexpected keyword argument 'no_such_keyword'"),
])
def test_views_the_backbone_cannot_take_are_one_line_naming_their_key(model, views, message):
    """Checked on the meta device before anything trains: a ViT built for one size, a patch that
    does not divide the views, a CNN whose kernels exceed them, a keyword the model lacks."""
    cfg = config_from_dict({"data": DATA, "train": {"batch_size": 32}, "labelfree": {"num_images": 64}, "model": model, "views": views})
    with pytest.raises(ConfigError) as err:
        check_trainable(cfg)
    assert str(err.value) == message


@pytest.mark.parametrize("model,views", [
    ({"backbone_kwargs": {"img_size": 32, "patch_size": 8, "dynamic_img_size": True}}, {"n_local": 2, "local_size": 16}),
    ({"backbone": "resnet18", "backbone_kwargs": {}}, {"global_size": 8, "n_local": 2, "local_size": 4}),
])
def test_views_the_backbone_takes_pass(model, views):
    cfg = config_from_dict({"data": DATA, "train": {"batch_size": 32}, "labelfree": {"num_images": 64}, "model": model, "views": views})
    assert len(check_trainable(cfg).train) == 100


def test_missing_data_is_a_dataset_error_naming_its_key(tmp_path):
    cfg = config_from_dict({"data": {"dataset": f"folder:{tmp_path / 'nowhere'}"}})
    with pytest.raises(DatasetError, match=r"^data\.dataset: "):
        check_trainable(cfg)


def test_every_corner_of_a_sweep_is_checked():
    check_sweep(spec({"train.batch_size": {"type": "choice", "values": [32, 100]}}))
    # Only the largest batch with the smallest data cap fails: one corner of four.
    corner = spec({"train.batch_size": {"type": "choice", "values": [16, 64]},
                   "data.max_train_samples": {"type": "choice", "values": [50, 200]}}, base={"labelfree": {"num_images": 32}})
    with pytest.raises(ConfigError) as err:
        check_sweep(corner)
    assert str(err.value) == "space.yaml: search.train.batch_size: 64 exceeds the 50 training images of 'digits' (data.max_train_samples: 50)"


def test_a_sweep_searching_local_views_is_checked_with_them():
    with pytest.raises(ConfigError) as err:
        check_sweep(spec({"views.n_local": {"type": "choice", "values": [0, 2]}}, base={"views": {"local_size": 16}}))
    assert str(err.value).startswith("space.yaml: base.views.local_size: vit_tiny_patch16_224 does not take 16x16 views")
    check_sweep(spec({"views.n_local": {"type": "choice", "values": [0, 2]}},
                     base={"views": {"local_size": 16}, "model": {"backbone_kwargs": {"img_size": 32, "patch_size": 8, "dynamic_img_size": True}}}))


def test_a_base_key_failing_in_some_trials_names_the_searched_keys_behind_it():
    # The base's label-free set of 64 images does not fit the 50 images of one searched value,
    # which the message already names; a searched image size it does not name is added.
    with pytest.raises(ConfigError) as err:
        check_sweep(spec({"data.max_train_samples": {"type": "choice", "values": [50, 200]},
                          "data.image_size": {"type": "choice", "values": [16, 32]}}))
    message = str(err.value)
    assert message.startswith("space.yaml: base.labelfree.num_images: 64 exceeds the 50 training images")
    assert message.endswith(" (in trials with data.image_size=16)")


def test_a_label_free_set_small_for_the_backbones_width_is_warned_of_with_the_size_it_needs():
    """The objective whitens by the within-image covariance of the label-free views: with fewer
    samples of it than twice the backbone's width it is biased upwards (experiments/objective_bias.py)."""
    from pathlib import Path

    from lejepa_tune.preflight import labelfree_width_note
    from lejepa_tune.search_space import load_sweep_spec

    assert labelfree_width_note(config_from_dict({})) is None  # 256 images, 2 views, 96 features
    assert labelfree_width_note(config_from_dict({"labelfree": {"num_images": 192}})) is None
    small = labelfree_width_note(config_from_dict({"labelfree": {"num_images": 191}}))
    assert small == ("labelfree.num_images: 191 images with 2 views give 191 within-image samples for the 96 features of "
                     "vit_tiny_patch16_224, fewer than twice as many: the objective is biased upwards (most by directions of pure "
                     "view noise); set labelfree.num_images to at least 192")
    three_views = labelfree_width_note(config_from_dict({"labelfree": {"num_images": 40, "num_views": 3}}))
    assert three_views.endswith("set labelfree.num_images to at least 96") and "singular" in three_views
    # The shipped ViT-S space sets a set large enough for its 384 features; the default would not be.
    vits = load_sweep_spec(str(Path(__file__).resolve().parents[1] / "search_spaces" / "imagenette_vits8.yaml"), [])
    assert labelfree_width_note(vits.base) is None
    assert "for the 384 features of vit_small_patch8_224" in labelfree_width_note(dataclasses.replace(vits.base, labelfree=LabelFreeConfig()))


def test_a_sweep_that_searches_the_width_is_warned_of_its_widest_trials_and_validate_prints_it(tmp_path, capsys):
    """The note is made for every trial a sweep can run, not only for its base: a base of 96
    features has enough label-free images (256 of 2 views), its searched width of 192 does not.
    `lejepa-tune validate` prints it as a warning naming the file, and exits 0."""
    import yaml

    from lejepa_tune.cli import main
    from lejepa_tune.preflight import sweep_width_note

    base = {"data": {"max_train_samples": 300, "max_val_samples": 20}, "labelfree": {"num_images": 256}}
    assert sweep_width_note(sweep_spec_from_dict({"name": "s", "base": base, "search": {}})) is None
    widths = {"model.backbone_kwargs.embed_dim": {"type": "choice", "values": [96, 192]}}
    note = sweep_width_note(sweep_spec_from_dict({"name": "s", "base": base, "search": widths}))
    assert note.startswith("labelfree.num_images: 256 images with 2 views give 256 within-image samples for the 192 features of ")
    assert note.endswith("set labelfree.num_images to at least 384 (in trials with model.backbone_kwargs.embed_dim=192)")
    # Of two searched sizes of the set, the smaller is the one named.
    sizes = {"labelfree.num_images": {"type": "choice", "values": [150, 256]}}
    note = sweep_width_note(sweep_spec_from_dict({"name": "s", "base": base, "search": sizes}))
    assert note.startswith("labelfree.num_images: 150 images") and note.endswith("at least 192 (in trials with labelfree.num_images=150)")

    space = tmp_path / "wide.yaml"
    space.write_text(yaml.safe_dump({"name": "wide", "base": base, "search": widths}))
    assert main(["validate", str(space)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {space}: labelfree.num_images: 256 images" in err and "(in trials with model.backbone_kwargs.embed_dim=192)" in err
