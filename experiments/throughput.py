"""Training throughput, three ways side by side in one run (these machines are shared and noisy,
so only ratios taken together mean anything):

* ceiling: backbone + projector forward/backward and the optimiser step on views made once
  beforehand (no augmentation at all);
* lejepa-tune: the trainer's own epoch (``lejepa_tune.train.train``): batched augmentation of
  the uint8 dataset on the training device, forward/backward, step (``time/epoch_s``, which
  covers the training steps; the per-epoch label-free set and online probe are timed apart);
* augmentation alone: the trainer's batched views and nothing else (where its time goes);
* reference: a loop written the way the LeJEPA minimal example writes it: torchvision v2
  transforms per image in a DataLoader worker, the model, the same loss and optimiser.

All three train the same model on the same data with the same views; the rounds alternate
(ceiling, trainer, reference, ceiling, ...) and the medians are reported.

On a GPU all three run there, under bf16 autocast (the trainer's choice on CUDA); the reference
still makes its views in one DataLoader worker on the CPU, as the minimal example does.

    python experiments/throughput.py                 # the README's table (~5 min on 2 cores)
    python experiments/throughput.py --epochs 20     # on a GPU: 220 steps a measurement
    python experiments/throughput.py --gpu-size 96 --epochs 4   # ViT-S/8 at 96 px, batch 256
    python experiments/throughput.py --smoke-test    # tiny, for CI
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lejepa_tune.config import load_config
from lejepa_tune.data import build_datasets
from lejepa_tune.models import build_model
from lejepa_tune.report import format_table
from lejepa_tune.train import LocalSink, autocast_dtype, build_loss, build_optimizer, resolve_device, train
from lejepa_tune.views import blur_kernel_size, build_views

# The settings of the measurement in the issue that asked for this benchmark: digits at 16 px,
# a ViT of width 96 (4 blocks, 3 heads, patch 4), projector 2048-2048-16, batch 128, 4 global
# views, the official natural-image augmentations, 1 data-loader worker.
SETTINGS = [
    "data.image_size=16", "views.global_size=16", "views.n_global=4", "views.global_scale=[0.08,1.0]",
    "views.jitter_prob=0.8", "views.jitter_strength=[0.8,0.8,0.8,0.2]", "views.grayscale_prob=0.2",
    "views.blur_prob=0.5", "views.solarize_prob=0.2", "views.hflip_prob=0.5",
    "model.backbone_kwargs.img_size=16", "model.backbone_kwargs.patch_size=4", "model.backbone_kwargs.embed_dim=96",
    "model.backbone_kwargs.depth=4", "model.backbone_kwargs.num_heads=3",
    "model.proj_hidden_dims=[2048,2048]", "model.proj_dim=16", "train.batch_size=128", "data.num_workers=1",
    "train.save_checkpoint=false", "eval.enabled=false",
]


def gpu_settings(size: int) -> list[str]:
    """A GPU-sized setting to put beside those: ViT-S/8 (width 384, 12 blocks, 6 heads) on the
    digits scaled to ``size`` px (96: 145 tokens a view; 224, ImageNet's size: 785), batch 256,
    4 global views, where the model, not the launch of small kernels, sets the pace."""
    return [
        f"data.image_size={size}", f"views.global_size={size}", f"model.backbone_kwargs.img_size={size}",
        "model.backbone_kwargs.patch_size=8", "model.backbone_kwargs.embed_dim=384", "model.backbone_kwargs.depth=12",
        "model.backbone_kwargs.num_heads=6", "model.proj_dim=64", "train.batch_size=256",
    ]


SMOKE = ["data.max_train_samples=256", "data.max_val_samples=60", "train.batch_size=64", "labelfree.num_images=64", "model.proj_hidden_dims=[256]"]


class PerImageViews(Dataset):
    """The minimal example's dataset: every view of every image made by torchvision v2 on the
    PIL image, in a DataLoader worker."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg):
        self.images, self.labels, self.n = images, labels, cfg.views.n_global
        v = cfg.views
        self.aug = v2.Compose([
            v2.RandomResizedCrop(v.global_size, scale=tuple(v.global_scale)),
            v2.RandomApply([v2.ColorJitter(*v.jitter_strength)], p=v.jitter_prob),
            v2.RandomGrayscale(p=v.grayscale_prob),
            v2.RandomApply([v2.GaussianBlur(kernel_size=blur_kernel_size(v.global_size), sigma=(0.1, 2.0))], p=v.blur_prob),
            v2.RandomApply([v2.RandomSolarize(threshold=128)], p=v.solarize_prob),
            v2.RandomHorizontalFlip(p=v.hflip_prob),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(v.mean), std=list(v.std)),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = v2.functional.to_pil_image(self.images[i])
        return torch.stack([self.aug(img) for _ in range(self.n)]), int(self.labels[i])


def _setup(cfg, device):
    """The model, optimiser and loss of the reference loop and the ceiling, as the trainer
    builds them (same seed, device and precision)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, 10).to(device)
    opt = build_optimizer(model, cfg.optim)
    loss_fn = build_loss(cfg).to(device)
    model.train()
    return model, opt, loss_fn


def _step(model, opt, loss_fn, views, y, step: int, amp) -> None:
    """One training step of the reference loop and the ceiling: the LeJEPA loss and the probe's
    cross-entropy on ``(V, B, 3, S, S)`` views, backward, optimiser step."""
    with torch.autocast(views.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        _, proj, logits = model(views)
        out = loss_fn(proj, step)
        probe = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(views.shape[0]))
    opt.zero_grad(set_to_none=True)
    (out.loss + probe).backward()
    opt.step()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_epoch(cfg, images, labels, steps: int, device, amp) -> float:
    """Views per second of the minimal example's loop (per-image transforms in 1 worker),
    passing over the data as often as ``steps`` needs."""
    model, opt, loss_fn = _setup(cfg, device)
    loader = DataLoader(PerImageViews(images, labels, cfg), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                        pin_memory=device.type == "cuda")

    def batches():
        while True:
            yield from loader

    it = batches()
    vs, y = next(it)  # the worker's start-up is not the loop's throughput
    _sync(device)
    start, done = time.perf_counter(), 0
    for step in range(steps):
        views = vs.to(device, non_blocking=True).transpose(0, 1)  # (V, B, 3, S, S)
        _step(model, opt, loss_fn, views, y.to(device, non_blocking=True), step, amp)
        done += views.shape[0] * views.shape[1]
        if step + 1 < steps:
            vs, y = next(it)
    _sync(device)
    return done / (time.perf_counter() - start)


def ceiling(cfg, steps: int, device, amp) -> float:
    """Views per second of the model alone: forward/backward and step on ready tensors."""
    model, opt, loss_fn = _setup(cfg, device)
    views = torch.randn(cfg.views.n_global, cfg.train.batch_size, 3, cfg.views.global_size, cfg.views.global_size, device=device)
    y = torch.randint(0, 10, (cfg.train.batch_size,), device=device)
    _sync(device)
    start = time.perf_counter()
    for step in range(steps):
        _step(model, opt, loss_fn, views, y, step, amp)
    _sync(device)
    return steps * views.shape[0] * views.shape[1] / (time.perf_counter() - start)


def augmentation(cfg, images: torch.Tensor, steps: int, device) -> float:
    """Views per second of the trainer's batched augmentation alone (parameters drawn on the
    CPU, views made on the device), on the uint8 split held where the trainer holds it."""
    views = build_views(cfg.views)
    images = images.to(device)
    gen = torch.Generator().manual_seed(0)
    rows = torch.randperm(images.shape[0], generator=gen)[: cfg.train.batch_size]
    batch = images[rows]
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        views(batch, gen)
    _sync(device)
    return steps * cfg.train.batch_size * cfg.views.n_global / (time.perf_counter() - start)


def augmentation_ops(cfg, images: torch.Tensor) -> tuple[int, int]:
    """The ATen operations one step's augmentation calls (on the CPU), and how many of them only
    make views of a tensor (no work, no kernel on a GPU): on a GPU each of the others is a kernel
    the host launches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[bool] = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(func.is_view)
            return func(*args, **(kwargs or {}))

    with Count():
        build_views(cfg.views)(images[: cfg.train.batch_size], torch.Generator().manual_seed(0))
    return len(calls), sum(calls)


def trainer(cfg, splits, device) -> float:
    """Views per second of lejepa-tune's own epochs (their training steps, from ``time/epoch_s``,
    which ends with the epoch's one read of the device), on the splits decoded once."""
    reports = []

    class Keep(LocalSink):
        def report(self, metrics, checkpoint):
            reports.append(metrics)

    train(cfg, Keep(cfg, verbose=False), device=device, data=splits)
    images = (len(splits.train) // cfg.train.batch_size) * cfg.train.batch_size
    return len(reports) * images * cfg.views.n_global / sum(r["time/epoch_s"] for r in reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="epochs (passes over the data) per measurement")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="for all three (auto: CUDA when there is one)")
    parser.add_argument("--gpu-size", type=int, default=None, metavar="PX", help="ViT-S/8 at PX px, batch 256 (a GPU setting) instead of the issue's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override, after the settings")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for all three (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_throughput_"))
    overrides = [*SETTINGS, *(gpu_settings(args.gpu_size) if args.gpu_size else []), *(SMOKE if args.smoke_test else []), *args.set,
                 f"train.device={args.device}", f"train.epochs={args.epochs}", f"train.output_dir={out / 'trainer'}"]
    cfg = load_config(None, overrides)
    try:
        device = resolve_device(cfg.train.device)
    except RuntimeError as err:  # --device cuda where there is none
        parser.error(str(err))
    amp = autocast_dtype(cfg.train.precision, device)
    splits = build_datasets(cfg.data)
    steps = args.epochs * (len(splits.train) // cfg.train.batch_size)
    rounds = 1 if args.smoke_test else args.rounds
    results: dict[str, list[float]] = {"ceiling": [], "lejepa-tune": [], "reference": [], "augmentation alone": []}
    for r in range(rounds + 1):  # round 0 warms up (first calls, allocator) and is not counted
        measured = {
            "ceiling": ceiling(cfg, steps, device, amp),
            "lejepa-tune": trainer(cfg, splits, device),
            "reference": reference_epoch(cfg, splits.train.images, splits.train.labels, steps, device, amp),
            "augmentation alone": augmentation(cfg, splits.train.images, steps, device),
        }
        for k, v in measured.items():
            if r > 0:
                results[k].append(v)
        # Each round as it ends, so that a run cut short still shows what it measured.
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: " + ", ".join(f"{k} {v:.0f}" for k, v in measured.items()) + " views/s", flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} torch threads"
    print("settings: " + " ".join(overrides[:-1]))
    print(f"device: {where}; precision: {amp or torch.float32}; {steps} steps of {cfg.train.batch_size} images x "
          f"{cfg.views.n_global} views per measurement; {rounds} rounds after one warm-up round, medians\n")
    rows = [[k, f"{median[k]:.0f}", " ".join(f"{x:.0f}" for x in v)] for k, v in results.items()]
    print(format_table(["loop", "views/s (median)", "views/s per round"], rows))
    ops, views_only = augmentation_ops(cfg, splits.train.images)
    print(f"\none step's augmentation: {ops} ATen operations, {views_only} of them views of a tensor")
    print(f"lejepa-tune / ceiling = {median['lejepa-tune'] / median['ceiling']:.2f}")
    print(f"lejepa-tune / reference = {median['lejepa-tune'] / median['reference']:.2f}")


if __name__ == "__main__":
    main()
