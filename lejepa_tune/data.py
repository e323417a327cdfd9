"""Labelled image datasets: train/val splits of ``(uint8 image (3, S, S), int label)`` pairs.

Three sources, chosen by ``data.dataset``:

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split with a fixed
  seed and stratified by class; ships with an installed package, so it needs no download.
- ``hf:<name>[:<config>]``: a Hugging Face ``datasets`` dataset. ``<name>`` is a directory
  written by ``save_to_disk``, a local data file or directory of data files (parquet, csv,
  json, arrow, or an image folder), or a hub name already in the local cache.
- ``folder:<path>``: ``<path>/train/<class>/*.png`` and ``<path>/val/<class>/*.png``.

Every image is converted to RGB and brought to ``image_size x image_size`` the same way: crop
the centred square of the shorter side, then resize it (bicubic). Square images (digits) are
only resized. Files and Hugging Face rows stay lazy (an image is decoded when it is indexed)
until :func:`as_tensors` decodes a whole split into one uint8 tensor, which is how training
holds them unless ``data.in_memory`` is false.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Subset

from .config import ConfigError, DataConfig

__all__ = ["DatasetError", "DataSplits", "TensorImages", "build_datasets", "as_tensors", "pil_to_uint8"]

_ACCEPTED = "'digits', 'hf:<name>[:<config>]' or 'folder:<path>'"
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
# ``load_dataset`` builder for a single local data file, by suffix.
_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
}


class DatasetError(ConfigError):
    """A dataset that cannot be built (a config problem: ``data.*`` points at nothing usable);
    ``str(err)`` is one line saying what is wrong and how to fix it."""


@dataclass(frozen=True)
class DataSplits:
    """The two splits of one dataset; items are ``(uint8 tensor (3, image_size, image_size), int label)``."""

    train: Dataset
    val: Dataset
    num_classes: int
    name: str


def build_datasets(cfg: DataConfig) -> DataSplits:
    """Builds the train/val splits named by ``cfg.dataset``, capped by ``cfg.max_*_samples``."""
    spec = cfg.dataset
    if spec == "digits":
        train, val, num_classes = _digits(cfg.image_size, cfg.val_fraction, cfg.split_seed)
    elif spec.startswith("hf:") and len(spec) > 3:
        train, val, num_classes = _huggingface(spec, cfg)
    elif spec.startswith("folder:") and len(spec) > 7:
        train, val, num_classes = _image_folder(spec, cfg.image_size)
    else:
        raise DatasetError(f"data.dataset: unknown dataset {spec!r}; expected {_ACCEPTED}")
    return DataSplits(
        train=_first_n(train, cfg.max_train_samples),
        val=_first_n(val, cfg.max_val_samples),
        num_classes=num_classes,
        name=spec,
    )


# ----------------------------------------------------------------------------------------------
# Shared pieces.


def _square_rgb(image: Image.Image, size: int) -> Image.Image:
    """RGB, centre square of the shorter side, resized to ``(size, size)`` (bicubic)."""
    image = image.convert("RGB")
    if image.size == (size, size):
        return image
    # ``fit`` crops to the target aspect ratio *before* resampling, so nothing is stretched.
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> ``uint8 (3, H, W)``."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def _first_n(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items (deterministic), or the whole dataset when ``n`` is None or too big."""
    if n is None or n >= len(dataset):
        return dataset
    if isinstance(dataset, TensorImages):
        return TensorImages(dataset.images[:n], dataset.labels[:n])
    return Subset(dataset, range(n))


class TensorImages(Dataset):
    """A whole split decoded: ``images uint8 (N, 3, S, S)`` and ``labels int64 (N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def as_tensors(dataset: Dataset, num_workers: int = 0, batch_size: int = 256) -> TensorImages:
    """Decodes every image of ``dataset`` once, in ``num_workers`` processes, into one tensor."""
    if isinstance(dataset, TensorImages):
        return dataset
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    images, labels = zip(*((x, torch.as_tensor(y)) for x, y in loader)) if len(dataset) else ((), ())
    if not images:
        raise DatasetError("data.dataset: the split holds no images")
    return TensorImages(torch.cat(images), torch.cat(labels))


# ----------------------------------------------------------------------------------------------
# digits


def _digits(size: int, val_fraction: float, seed: int) -> tuple[Dataset, Dataset, int]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are counts 0..16 of a 4x4 block; stretch them to the usual 0..255.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    labels = digits.target.astype(np.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, random_state=seed, stratify=labels
    )
    images = torch.stack([pil_to_uint8(_square_rgb(Image.fromarray(p), size)) for p in pixels])  # (1797, 3, S, S)
    targets = torch.from_numpy(labels)

    def subset(idx: np.ndarray) -> TensorImages:
        index = torch.from_numpy(idx)
        return TensorImages(images[index], targets[index])

    return subset(train_idx), subset(val_idx), 10


# ----------------------------------------------------------------------------------------------
# folder:<path>


def _image_folder(spec: str, size: int) -> tuple[Dataset, Dataset, int]:
    root = Path(spec[len("folder:"):]).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.dataset: {spec!r}: no such directory (expected {root}/train and {root}/val)")
    split_dirs = {}
    for split, names in (("train", ("train",)), ("val", ("val", "validation"))):
        found = [root / n for n in names if (root / n).is_dir()]
        if not found:
            raise DatasetError(
                f"data.dataset: {spec!r}: missing the {split}/ subdirectory "
                f"(expected {root}/{split}/<class>/<image>)"
            )
        split_dirs[split] = found[0]

    # One mapping for both splits: a class index must mean the same thing in train and val.
    classes = sorted(d.name for d in split_dirs["train"].iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"data.dataset: {spec!r}: {split_dirs['train']} has no class subdirectories")
    val_classes = {d.name for d in split_dirs["val"].iterdir() if d.is_dir() and not d.name.startswith(".")}
    unknown = sorted(val_classes - set(classes))
    if unknown:
        raise DatasetError(f"data.dataset: {spec!r}: val classes {unknown} do not appear in train")
    index = {name: i for i, name in enumerate(classes)}

    splits = []
    for split, directory in split_dirs.items():
        files = [
            (path, index[path.parent.name])
            for name in sorted(index)
            if (directory / name).is_dir()
            for path in sorted((directory / name).iterdir())
            if path.suffix.lower() in _IMAGE_SUFFIXES and not path.name.startswith(".")
        ]
        if not files:
            raise DatasetError(f"data.dataset: {spec!r}: no images found under {directory}/<class>/")
        splits.append(_ImageFiles([p for p, _ in files], [y for _, y in files], size))
    return splits[0], splits[1], len(classes)


class _ImageFiles(Dataset):
    """Image files decoded on access."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: int):
        self.paths = list(paths)
        self.labels = list(labels)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            return pil_to_uint8(_square_rgb(image, self.size)), self.labels[index]


# ----------------------------------------------------------------------------------------------
# hf:<name>[:<config>]


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forces Hugging Face offline mode for the duration, whatever the environment says.

    The tool never downloads at run time. Without this, an uncached hub name sends requests
    that on a machine without network fail only after connection timeouts and retries. Both
    flags are read at call time (the environment variables only at import time).
    """
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _parse_hf_spec(spec: str) -> tuple[str, Path | None, str | None]:
    """``hf:<name>[:<config>]`` -> ``(name, local path or None, config or None)``."""
    rest = spec[len("hf:"):]
    if Path(rest).expanduser().exists():  # a path may itself contain ':'
        return rest, Path(rest).expanduser(), None
    name, _, config = rest.partition(":")
    path = Path(name).expanduser()
    if path.exists():
        return name, path, config or None
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise DatasetError(f"data.dataset: {spec!r}: no such file or directory {name!r}")
    return name, None, config or None


def _load_hf(spec: str) -> Any:
    """The ``datasets.DatasetDict`` or ``datasets.Dataset`` that ``spec`` names."""
    import datasets

    name, path, config = _parse_hf_spec(spec)
    with _hub_offline():
        if path is not None:
            saved = path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())
            if saved or path.is_file():
                if config is not None:
                    raise DatasetError(f"data.dataset: {spec!r}: {name} has no configurations; drop ':{config}'")
                if saved:
                    return datasets.load_from_disk(str(path))
                builder = _FILE_BUILDERS.get(path.suffix.lower())
                if builder is None:
                    raise DatasetError(
                        f"data.dataset: {spec!r}: unsupported file type {path.suffix!r}; "
                        f"expected one of {sorted(_FILE_BUILDERS)} or a directory"
                    )
                return datasets.load_dataset(builder, data_files={"train": str(path)})
            # A directory of data files or images: ``datasets`` picks the builder from the
            # file types and the splits from file/directory names (train, validation/val, test).
            try:
                return datasets.load_dataset(str(path), config)
            except (ValueError, FileNotFoundError) as err:
                raise DatasetError(f"data.dataset: {spec!r}: cannot load {path} with datasets: {_first_line(err)}") from err
        try:
            return datasets.load_dataset(name, config)
        except (ConnectionError, FileNotFoundError) as err:
            # Offline, an uncached hub name surfaces as one of these (which one depends on
            # the datasets version); the fix is the same.
            raise DatasetError(
                f"data.dataset: {spec!r}: {name!r} is neither a local path nor in the Hugging Face "
                f"cache, and nothing is downloaded at run time; on a machine with network run "
                f"datasets.load_dataset({name!r}{', ' + repr(config) if config else ''}).save_to_disk(DIR) "
                f"and set data.dataset to 'hf:DIR', or point HF_DATASETS_CACHE at a cache that "
                f"holds it ({_first_line(err)})"
            ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _huggingface(spec: str, cfg: DataConfig) -> tuple[Dataset, Dataset, int]:
    import datasets

    loaded = _load_hf(spec)
    # A lone ``Dataset`` (saved alone or read from one file) is the single split "train".
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
    chosen = {}
    for key, split in (("data.train_split", cfg.train_split), ("data.val_split", cfg.val_split)):
        if split not in splits:
            raise DatasetError(f"{key}: {spec!r} has no split {split!r}; it has {sorted(splits)}")
        chosen[key] = splits[split]

    train, val = chosen["data.train_split"], chosen["data.val_split"]
    for key, column in (("data.image_column", cfg.image_column), ("data.label_column", cfg.label_column)):
        for split, ds in ((cfg.train_split, train), (cfg.val_split, val)):
            if column not in ds.column_names:
                raise DatasetError(
                    f"{key}: split {split!r} of {spec!r} has no column {column!r}; it has {ds.column_names}"
                )

    label_feature = train.features[cfg.label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        num_classes = label_feature.num_classes
    elif isinstance(label_feature, datasets.Value) and label_feature.dtype.startswith(("int", "uint")):
        num_classes = 1 + max(max(ds[cfg.label_column]) for ds in (train, val) if len(ds))
    else:
        raise DatasetError(
            f"data.label_column: {cfg.label_column!r} of {spec!r} is {label_feature}, expected integer "
            f"class indices or a ClassLabel (convert with Dataset.class_encode_column)"
        )
    return (
        _HFImages(train, cfg.image_column, cfg.label_column, cfg.image_size),
        _HFImages(val, cfg.image_column, cfg.label_column, cfg.image_size),
        int(num_classes),
    )


class _HFImages(Dataset):
    """A ``datasets.Dataset`` read lazily: each row's image is decoded when it is indexed."""

    def __init__(self, hf_dataset: Any, image_column: str, label_column: str, size: int):
        # Only the two columns are read, so other (possibly large) columns are never decoded.
        self.data = hf_dataset.select_columns([image_column, label_column])
        self.image_column = image_column
        self.label_column = label_column
        self.size = size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.data[int(index)]
        return pil_to_uint8(_square_rgb(_to_pil(row[self.image_column]), self.size)), int(row[self.label_column])


def _to_pil(value: Any) -> Image.Image:
    """A PIL image from an ``Image`` feature value, a dict of encoded bytes, or a pixel array.

    Arrays are ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in {1, 3, 4}; floats are taken
    to be in [0, 1], integers in [0, 255].
    """
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes") is not None:  # an undecoded Image feature
        import io

        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    array = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise DatasetError(f"data.image_column: cannot read an image from an array of shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = array * 255.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))
