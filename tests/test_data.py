"""Dataset loaders on real data: the bundled digits, and small datasets the tests write."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from lejepa_tune.config import DataConfig
from lejepa_tune.data import DatasetError, DataSplits, TensorImages, as_tensors, build_datasets

# One solid colour per class, so a loaded image tells which class it was written as.
COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


@pytest.fixture(autouse=True)
def offline_isolated_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, and ``load_dataset`` caches under tmp_path instead of the home directory."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def solid(label: int, size: tuple[int, int] = (20, 12), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, COLORS[label]).convert(mode)


def dominant_class(image: torch.Tensor) -> int:
    """The class whose colour channel is brightest on average."""
    return int(image.double().mean(dim=(1, 2)).argmax())


def check_items(dataset, size: int, labels: list[int]) -> None:
    assert [dataset[i][1] for i in range(len(dataset))] == labels
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (3, size, size)
        assert isinstance(label, int) and dominant_class(image) == label
    decoded = as_tensors(dataset)
    assert decoded.images.shape == (len(labels), 3, size, size) and decoded.labels.tolist() == labels


# ----------------------------------------------------------------------------------------------
# digits


def test_digits_split_sizes_labels_and_images():
    splits = build_datasets(DataConfig(dataset="digits", image_size=16, val_fraction=0.2, split_seed=0))
    assert isinstance(splits, DataSplits) and splits.name == "digits" and splits.num_classes == 10
    assert len(splits.train) + len(splits.val) == 1797
    assert len(splits.val) == 360  # ceil(0.2 * 1797), sklearn's rounding for the test part

    assert isinstance(splits.train, TensorImages) and splits.train.images.shape == (1437, 3, 16, 16)
    image, label = splits.train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert image.max() > 200  # 0..16 was stretched to 0..255
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])

    train_labels = [splits.train[i][1] for i in range(len(splits.train))]
    val_labels = [splits.val[i][1] for i in range(len(splits.val))]
    assert set(train_labels) == set(val_labels) == set(range(10))
    # Stratified: every class holds ~20% of its images out (the digits classes have 174..183).
    total = Counter(train_labels) + Counter(val_labels)
    for c, count in Counter(val_labels).items():
        assert abs(count - 0.2 * total[c]) <= 1


def test_digits_split_is_seeded_and_deterministic():
    def fingerprint(seed: int) -> tuple:
        splits = build_datasets(DataConfig(dataset="digits", image_size=8, split_seed=seed))
        return tuple(splits.val[i][0].numpy().tobytes() for i in range(len(splits.val)))

    assert fingerprint(0) == fingerprint(0)
    assert fingerprint(0) != fingerprint(1)


def test_caps_take_the_first_items():
    full = build_datasets(DataConfig(dataset="digits", image_size=8))
    capped = build_datasets(DataConfig(dataset="digits", image_size=8, max_train_samples=10, max_val_samples=5))
    assert (len(capped.train), len(capped.val)) == (10, 5)
    assert [capped.train[i][1] for i in range(10)] == [full.train[i][1] for i in range(10)]
    assert torch.equal(capped.val[4][0], full.val[4][0])
    # A cap larger than the split is no cap.
    big = build_datasets(DataConfig(dataset="digits", image_size=8, max_val_samples=10_000))
    assert len(big.val) == len(full.val)


# ----------------------------------------------------------------------------------------------
# hf:<...>


def hf_split(labels: list[int], names: list[str] | None = None) -> datasets.Dataset:
    label_feature = datasets.ClassLabel(names=names) if names else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature, "caption": datasets.Value("string")})
    # Non-square and of different sizes: the loader must crop and resize them all alike.
    images = [solid(y, size=(20 + i, 12)) for i, y in enumerate(labels)]
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels, "caption": [f"item {i}" for i in range(len(labels))]}, features=features
    )


@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    path = tmp_path / "saved"
    names = ["red", "green", "blue", "unused"]
    datasets.DatasetDict(train=hf_split([0, 1, 2, 0, 1], names), validation=hf_split([2, 0], names)).save_to_disk(path)
    return path


def test_hf_saved_dataset_dict(saved_dict: Path):
    splits = build_datasets(DataConfig(dataset=f"hf:{saved_dict}", image_size=10))
    assert splits.num_classes == 4  # from the ClassLabel, not from the labels seen
    check_items(splits.train, 10, [0, 1, 2, 0, 1])
    check_items(splits.val, 10, [2, 0])


def test_hf_caps_and_split_names(saved_dict: Path):
    cfg = DataConfig(dataset=f"hf:{saved_dict}", image_size=6, train_split="validation", val_split="train",
                     max_train_samples=1, max_val_samples=3)
    splits = build_datasets(cfg)
    check_items(splits.train, 6, [2])
    check_items(splits.val, 6, [0, 1, 2])


def test_hf_lone_saved_dataset_is_the_train_split(tmp_path: Path):
    hf_split([1, 0, 1]).save_to_disk(tmp_path / "lone")
    splits = build_datasets(DataConfig(dataset=f"hf:{tmp_path / 'lone'}", image_size=8, val_split="train"))
    assert splits.num_classes == 2  # integer labels: max + 1
    check_items(splits.val, 8, [1, 0, 1])
    with pytest.raises(DatasetError, match=r"data\.val_split: .* no split 'validation'; it has \['train'\]"):
        build_datasets(DataConfig(dataset=f"hf:{tmp_path / 'lone'}"))


def test_hf_parquet_file_with_array_images(tmp_path: Path):
    # Pixels stored as nested lists (H, W, 3) of uint8, not as an Image feature.
    pixels = [np.asarray(solid(y, size=(9, 7))).tolist() for y in (2, 1, 0, 2)]
    path = tmp_path / "pixels.parquet"
    datasets.Dataset.from_dict({"pixels": pixels, "target": [2, 1, 0, 2]}).to_parquet(path)
    cfg = DataConfig(dataset=f"hf:{path}", image_size=5, image_column="pixels", label_column="target",
                     val_split="train")
    splits = build_datasets(cfg)
    assert splits.num_classes == 3
    check_items(splits.train, 5, [2, 1, 0, 2])


def test_hf_image_folder_directory(tmp_path: Path):
    root = tmp_path / "imagefolder"
    for split, labels in (("train", [0, 1, 2, 2]), ("val", [1, 0])):
        for i, y in enumerate(labels):
            (root / split / ["red", "green", "blue"][y]).mkdir(parents=True, exist_ok=True)
            solid(y).save(root / split / ["red", "green", "blue"][y] / f"{i}.png")
    splits = build_datasets(DataConfig(dataset=f"hf:{root}", image_size=8))
    assert splits.num_classes == 3  # imagefolder's ClassLabel from the sorted class directories
    names = ["blue", "green", "red"]  # sorted: blue=0, green=1, red=2
    train = [splits.train[i] for i in range(len(splits.train))]
    assert sorted(names[y] for _, y in train) == sorted(["red", "green", "blue", "blue"])
    for image, y in train + [splits.val[i] for i in range(len(splits.val))]:
        assert image.shape == (3, 8, 8) and ["red", "green", "blue"][dominant_class(image)] == names[y]


def test_hf_missing_column_and_split_name_what_exists(saved_dict: Path):
    with pytest.raises(DatasetError, match=r"data\.image_column: .*no column 'img'; it has \['image', 'label', 'caption'\]"):
        build_datasets(DataConfig(dataset=f"hf:{saved_dict}", image_column="img"))
    with pytest.raises(DatasetError, match=r"data\.label_column: .*no column 'y'"):
        build_datasets(DataConfig(dataset=f"hf:{saved_dict}", label_column="y"))
    with pytest.raises(DatasetError, match=r"data\.train_split: .*no split 'training'; it has \['train', 'validation'\]"):
        build_datasets(DataConfig(dataset=f"hf:{saved_dict}", train_split="training"))
    with pytest.raises(DatasetError, match=r"data\.label_column: 'caption' .* expected integer class indices"):
        build_datasets(DataConfig(dataset=f"hf:{saved_dict}", label_column="caption"))


def test_hf_uncached_hub_name_fails_fast_with_a_fix():
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(dataset="hf:lejepa-tune-tests/no-such-dataset:default"))
    assert time.monotonic() - start < 10  # offline: no connection attempts or retries
    message = str(info.value)
    assert "\n" not in message
    assert "neither a local path nor in the Hugging Face cache" in message
    assert "save_to_disk(DIR)" in message and "'hf:DIR'" in message and "HF_DATASETS_CACHE" in message


def test_hf_missing_local_path(tmp_path: Path):
    with pytest.raises(DatasetError, match="no such file or directory"):
        build_datasets(DataConfig(dataset=f"hf:{tmp_path / 'nowhere'}"))


# ----------------------------------------------------------------------------------------------
# folder:<path>


def write_folder(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """``{"train": {"red": 2, ...}, ...}`` -> that many solid images of the class colour."""
    for split, counts in layout.items():
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                solid(["red", "green", "blue"].index(name), size=(15, 30)).save(root / split / name / f"{i}.png")


def test_folder_dataset(tmp_path: Path):
    # val lacks "green": the class index must still come from train's sorted class names.
    write_folder(tmp_path, {"train": {"red": 2, "green": 1, "blue": 1}, "val": {"red": 1, "blue": 2}})
    (tmp_path / "train" / "red" / "notes.txt").write_text("not an image")
    splits = build_datasets(DataConfig(dataset=f"folder:{tmp_path}", image_size=12))
    assert splits.num_classes == 3 and splits.name == f"folder:{tmp_path}"
    names = ["blue", "green", "red"]
    assert [names[splits.train[i][1]] for i in range(len(splits.train))] == ["blue", "green", "red", "red"]
    assert [names[splits.val[i][1]] for i in range(len(splits.val))] == ["blue", "blue", "red"]
    for image, y in [splits.train[i] for i in range(4)] + [splits.val[i] for i in range(3)]:
        assert image.dtype == torch.uint8 and image.shape == (3, 12, 12)
        assert ["red", "green", "blue"][dominant_class(image)] == names[y]


def test_folder_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="no such directory"):
        build_datasets(DataConfig(dataset=f"folder:{tmp_path / 'nowhere'}"))
    write_folder(tmp_path, {"train": {"red": 1}})
    with pytest.raises(DatasetError, match="missing the val/ subdirectory"):
        build_datasets(DataConfig(dataset=f"folder:{tmp_path}"))
    write_folder(tmp_path, {"val": {"green": 1}})
    with pytest.raises(DatasetError, match=r"val classes \['green'\] do not appear in train"):
        build_datasets(DataConfig(dataset=f"folder:{tmp_path}"))


# ----------------------------------------------------------------------------------------------
# the spec itself


@pytest.mark.parametrize("spec", ["cifar10", "hf:", "folder:", "Digits", "imagefolder:/data"])
def test_unknown_spec_lists_the_accepted_forms(spec: str):
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(dataset=spec))
    message = str(info.value)
    assert message.startswith("data.dataset: unknown dataset")
    assert "'digits'" in message and "'hf:<name>[:<config>]'" in message and "'folder:<path>'" in message
