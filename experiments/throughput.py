"""Training throughput, three ways side by side in one run (these machines are shared and noisy,
so only ratios taken together mean anything):

* ceiling: backbone + projector forward/backward and the optimiser step on views made once
  beforehand (no augmentation at all);
* lejepa-tune: the trainer's own epoch (``lejepa_tune.train.train``): batched augmentation of
  the uint8 dataset on the training device, forward/backward, step (``time/epoch_s``, which
  covers the training steps; the per-epoch label-free set and online probe are timed apart);
* reference: a loop written the way the LeJEPA minimal example writes it: torchvision v2
  transforms per image in a DataLoader worker, the model, the same loss and optimiser.

All three train the same model on the same data with the same views; the rounds alternate
(ceiling, trainer, reference, ceiling, ...) and the medians are reported.

    python experiments/throughput.py                 # the README's table (~5 min on 2 cores)
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
from lejepa_tune.losses import LeJEPALoss, SIGReg
from lejepa_tune.models import build_model
from lejepa_tune.report import format_table
from lejepa_tune.train import LocalSink, build_optimizer, train
from lejepa_tune.views import blur_kernel_size

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


def _step(model, opt, loss_fn, views, y, step: int) -> None:
    """One training step of the reference loop and the ceiling: the LeJEPA loss and the probe's
    cross-entropy on ``(V, B, 3, S, S)`` views, backward, optimiser step."""
    _, proj, logits = model(views)
    out = loss_fn(proj, step)
    probe = F.cross_entropy(logits.flatten(0, 1), y.repeat(views.shape[0]))
    opt.zero_grad(set_to_none=True)
    (out.loss + probe).backward()
    opt.step()


def reference_epoch(cfg, images, labels, steps: int) -> float:
    """Views per second of the minimal example's loop (per-image transforms in 1 worker)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    opt = build_optimizer(model, cfg.optim)
    loss_fn = LeJEPALoss(cfg.loss.lam, SIGReg(cfg.loss.num_slices), n_global=cfg.views.n_global)
    loader = DataLoader(PerImageViews(images, labels, cfg), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, persistent_workers=False)
    model.train()
    it = iter(loader)
    vs, y = next(it)  # the worker's start-up is not the loop's throughput
    start, done = time.perf_counter(), 0
    for step in range(steps):
        views = vs.transpose(0, 1)  # (V, B, 3, S, S)
        _step(model, opt, loss_fn, views, y, step)
        done += views.shape[0] * views.shape[1]
        if step + 1 < steps:
            vs, y = next(it)
    return done / (time.perf_counter() - start)


def ceiling(cfg, steps: int) -> float:
    """Views per second of the model alone: forward/backward and step on ready tensors."""
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    opt = build_optimizer(model, cfg.optim)
    loss_fn = LeJEPALoss(cfg.loss.lam, SIGReg(cfg.loss.num_slices), n_global=cfg.views.n_global)
    views = torch.randn(cfg.views.n_global, cfg.train.batch_size, 3, cfg.views.global_size, cfg.views.global_size)
    y = torch.randint(0, 10, (cfg.train.batch_size,))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        _step(model, opt, loss_fn, views, y, step)
    return steps * views.shape[0] * views.shape[1] / (time.perf_counter() - start)


def trainer(cfg, out: Path) -> float:
    """Views per second of lejepa-tune's own epoch (its training steps, from ``time/epoch_s``)."""
    reports = []

    class Keep(LocalSink):
        def report(self, metrics, checkpoint):
            reports.append(metrics)

    train(cfg, Keep(cfg, verbose=False))
    images = (len(build_datasets(cfg.data).train) // cfg.train.batch_size) * cfg.train.batch_size
    return images * cfg.views.n_global / reports[-1]["time/epoch_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for all three (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="lejepa_throughput_"))
    overrides = [*SETTINGS, *(SMOKE if args.smoke_test else []), "train.epochs=1", f"train.output_dir={out / 'trainer'}"]
    cfg = load_config(None, overrides)
    splits = build_datasets(cfg.data)
    steps = len(splits.train) // cfg.train.batch_size
    rounds = 1 if args.smoke_test else args.rounds
    results: dict[str, list[float]] = {"ceiling": [], "lejepa-tune": [], "reference": []}
    for r in range(rounds + 1):  # round 0 warms up (first calls, allocator) and is not counted
        measured = {
            "ceiling": ceiling(cfg, steps),
            "lejepa-tune": trainer(cfg, out),
            "reference": reference_epoch(cfg, splits.train.images, splits.train.labels, steps),
        }
        for k, v in measured.items():
            if r > 0:
                results[k].append(v)
    median = {k: statistics.median(v) for k, v in results.items()}
    print("settings: " + " ".join(overrides[:-1]))
    print(f"torch threads: {args.threads}; {steps} steps of {cfg.train.batch_size} images x {cfg.views.n_global} views per measurement; "
          f"{rounds} rounds after one warm-up round, medians\n")
    rows = [[k, f"{median[k]:.0f}", " ".join(f"{x:.0f}" for x in v)] for k, v in results.items()]
    print(format_table(["loop", "views/s (median)", "views/s per round"], rows))
    print(f"\nlejepa-tune / ceiling = {median['lejepa-tune'] / median['ceiling']:.2f}")
    print(f"lejepa-tune / reference = {median['lejepa-tune'] / median['reference']:.2f}")


if __name__ == "__main__":
    main()
