"""The per-process LeJEPA training loop, the same in one process, under ``torchrun`` and inside
a Ray Train worker.

:func:`train` reads top to bottom: data, model, optimiser, then per epoch: schedule, forward,
loss, backward, step, metrics (all-reduced over ranks), checkpoint, report. At the end the
frozen encoder is evaluated (linear probe, kNN, RankMe). Everything that is not the loop lives
in small helpers below it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .config import Config, OptimConfig, save_config
from .data import build_datasets
from .evaluate import extract_features, knn_accuracy, linear_probe_accuracy, rankme
from .losses import LeJEPALoss, SIGReg, SpectralRegularizer
from .models import LeJEPAModel, build_model
from .views import EvalDataset, ViewDataset, build_views, eval_transform

__all__ = [
    "TrainingDiverged",
    "Reporter",
    "lr_factor",
    "resolve_device",
    "autocast_dtype",
    "init_distributed",
    "build_loss",
    "build_optimizer",
    "evaluate_encoder",
    "save_checkpoint",
    "train",
]



class TrainingDiverged(RuntimeError):
    """The LeJEPA loss became NaN or infinite: the trial diverged."""


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """The learning-rate multiplier at ``step`` (0-based): linear warmup from ``1/warmup`` to 1
    over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps`` (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(preference: str) -> torch.device:
    """``auto``: the CUDA device of this process (``LOCAL_RANK``) when there is one, else CPU."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA, none (fp32) on CPU, where bf16 matmuls are many times slower."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """Joins the process group ``torchrun`` describes (env ``WORLD_SIZE``/``RANK``) unless one
    exists (Ray Train creates its own). Returns ``(rank, world_size, created_here)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def build_loss(cfg: Config) -> LeJEPALoss:
    if cfg.loss.regularizer == "sigreg":
        reg: nn.Module = SIGReg(cfg.loss.num_slices, cfg.loss.num_knots, cfg.loss.t_max, seed=cfg.train.seed)
    else:
        reg = SpectralRegularizer()
    return LeJEPALoss(cfg.loss.lam, reg, n_global=cfg.views.n_global)


def build_optimizer(model: LeJEPAModel, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW, one group for backbone + projector and one for the online probe."""
    encoder_params = [*model.backbone.parameters(), *model.projector.parameters()]
    groups = [
        {"params": encoder_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": model.probe.parameters(), "lr": cfg.probe_lr, "weight_decay": cfg.probe_weight_decay, "base_lr": cfg.probe_lr},
    ]
    return torch.optim.AdamW(groups)


def train(cfg: Config, report: Reporter | None = None, device: torch.device | None = None, verbose: bool = True) -> dict[str, float]:
    """Trains LeJEPA as configured; returns the last metrics (with ``eval/*`` when enabled).

    ``report(metrics, checkpoint_dir)`` is called once per epoch on every rank with metrics
    averaged over ranks (with ``epochs = 0``, once, with the evaluation of the untrained model).
    Rank 0 also appends them to ``metrics.jsonl`` and, if ``verbose``, prints them.
    """
    device = device or resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the device NCCL collectives of this process use
    rank, world, created_group = init_distributed(device)
    amp = autocast_dtype(cfg.train.precision, device)
    out_dir = Path(cfg.train.output_dir)
    if rank == 0:
        save_config(cfg, out_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank

    splits = build_datasets(cfg.data)
    loader, sampler = _train_loader(cfg, ViewDataset(splits.train, build_views(cfg.views)), rank, world)
    model = build_model(cfg.model, splits.num_classes).to(device)
    ddp = _wrap_ddp(model, device) if world > 1 else model
    criterion = build_loss(cfg).to(device)
    opt = build_optimizer(model, cfg.optim)
    steps_per_epoch = len(loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    keys = ("train/loss", "train/inv", f"train/{cfg.loss.regularizer}", "train/probe_loss")
    metrics: dict[str, float] = {}
    step = 0

    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        ddp.train()
        sums = torch.zeros(len(keys), dtype=torch.float64)
        for global_views, local_views, labels in loader:
            factor = lr_factor(step, total_steps, warmup_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
            global_views = global_views.to(device, non_blocking=True)
            local_views = local_views.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)

            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                _, proj, logits = ddp(global_views, local_views)
                out = criterion(proj, step)
                # The probe sees detached embeddings: its loss trains the probe only.
                probe_loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.repeat(cfg.views.n_global))
            opt.zero_grad(set_to_none=True)
            (out.loss + probe_loss).backward()
            opt.step()
            step += 1
            sums += torch.stack([out.loss, out.invariance, out.regularizer, probe_loss]).detach().double().cpu()

        local = sums / steps_per_epoch
        metrics = dict(zip(keys, _mean_over_ranks(local, world).tolist()))
        if world > 1:  # what this rank computed, next to what all ranks agreed on
            _log_rank(out_dir, rank, epoch + 1, dict(zip(keys, local.tolist())), metrics)
        if not math.isfinite(metrics["train/loss"]):
            raise TrainingDiverged(
                f"train/loss is {metrics['train/loss']} after epoch {epoch + 1} "
                f"(loss.lam={cfg.loss.lam}, optim.lr={cfg.optim.lr}): the run diverged"
            )
        metrics["online/acc"] = _online_accuracy(model, splits.val, cfg, device, amp, rank, world)
        metrics.update({"epoch": epoch + 1, "train/lr": cfg.optim.lr * factor, "time/epoch_s": time.perf_counter() - t0})
        last = epoch + 1 == cfg.train.epochs
        if last and cfg.eval.enabled:
            metrics.update(_evaluate_on_rank0(model, splits, cfg, device, amp, rank, world))
        ckpt = None
        if cfg.train.save_checkpoint and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            ckpt = save_checkpoint(model, cfg, out_dir / "checkpoint", metrics) if rank == 0 else None
        _log(metrics, out_dir, rank, verbose)
        if report is not None:
            report(metrics, ckpt)

    if cfg.train.epochs == 0:  # the untrained baseline: evaluation only
        metrics = {"epoch": 0}
        if cfg.eval.enabled:
            metrics.update(_evaluate_on_rank0(model, splits, cfg, device, amp, rank, world))
        ckpt = save_checkpoint(model, cfg, out_dir / "checkpoint", metrics) if rank == 0 and cfg.train.save_checkpoint else None
        _log(metrics, out_dir, rank, verbose)
        if report is not None:
            report(metrics, ckpt)
    if created_group:
        dist.destroy_process_group()
    return metrics


# ----------------------------------------------------------------------------------------------
# Helpers of the loop.


def _train_loader(cfg: Config, dataset: ViewDataset, rank: int, world: int) -> tuple[DataLoader, DistributedSampler]:
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size: {cfg.train.batch_size} is not divisible by the {world} processes")
    per_rank = cfg.train.batch_size // world
    if len(dataset) < cfg.train.batch_size:
        raise ValueError(f"train.batch_size: {cfg.train.batch_size} exceeds the {len(dataset)} training images")
    # Also used with world == 1: one code path, and an epoch-seeded shuffle that is the same
    # whatever the number of processes.
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed, drop_last=True)
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,  # equal batches on every rank, every step: SIGReg's N is fixed
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.data.num_workers > 0,
    )
    return loader, sampler


def _wrap_ddp(model: LeJEPAModel, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        # Batch-norm layers of the backbone (ResNets) then see the global batch too. The
        # projector's GlobalBatchNorm1d already does, on any device.
        model.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _mean_over_ranks(values: torch.Tensor, world: int) -> torch.Tensor:
    """The float64 mean over ranks of a CPU tensor (itself when not distributed)."""
    if world == 1:
        return values
    # A copy: `.to()` returns `values` itself when nothing changes, and the collective below
    # works in place.
    buf = values.to(_collective_device(), dtype=torch.float64, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)  # in place: the c10d collective, no autograd
    return buf.cpu() / world


def _broadcast_from_rank0(values: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return values
    buf = values.to(_collective_device(), copy=True)
    dist.broadcast(buf, src=0)
    return buf.cpu()


def _eval_loader(dataset, cfg: Config) -> DataLoader:
    transform = eval_transform(cfg.views.global_size, cfg.views.mean, cfg.views.std)
    return DataLoader(EvalDataset(dataset, transform), batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers)


@torch.no_grad()
def _online_accuracy(model: LeJEPAModel, val, cfg: Config, device, amp, rank: int, world: int) -> float:
    """Top-1 accuracy of the online probe on the validation split (a monitor only)."""
    correct = torch.zeros(2, dtype=torch.float64)
    if rank == 0:
        was_training = model.training
        model.eval()
        for images, labels in _eval_loader(val, cfg):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model.probe(model.backbone(images.to(device)))
            correct += torch.tensor([(logits.argmax(1).cpu() == labels).sum().item(), len(labels)], dtype=torch.float64)
        model.train(was_training)
    correct = _broadcast_from_rank0(correct, world)  # rank 0's count, on every rank
    return float(correct[0] / correct[1])


def evaluate_encoder(model: LeJEPAModel, splits, cfg: Config, device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """Frozen-feature evaluation of the backbone: ``eval/linear_acc`` and ``eval/knn_acc``
    (labels used to *measure* only), and label-free signals: ``eval/rankme``, the effective
    rank of the LeJEPA embeddings (projector outputs, what SIGReg shapes), ``eval/rankme_backbone``,
    that of the backbone features, and ``eval/embed_std``, the embeddings' mean per-coordinate
    standard deviation."""
    train_x, train_y = extract_features(model.backbone, _eval_loader(splits.train, cfg), device, amp)
    val_x, val_y = extract_features(model.backbone, _eval_loader(splits.val, cfg), device, amp)
    # The embeddings from the features already extracted: no second pass of the backbone.
    val_z, _ = extract_features(model.projector, DataLoader(TensorDataset(val_x, val_y), batch_size=cfg.eval.batch_size), device, amp)
    return {
        "eval/linear_acc": linear_probe_accuracy(train_x, train_y, val_x, val_y, max_iter=cfg.eval.linear_max_iter, seed=cfg.train.seed),
        "eval/knn_acc": knn_accuracy(train_x, train_y, val_x, val_y, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, num_classes=splits.num_classes),
        "eval/rankme": rankme(val_z),
        "eval/rankme_backbone": rankme(val_x),
        # RankMe is scale-free; this is not: ~0 when the embeddings collapse to a point.
        "eval/embed_std": float(val_z.std(dim=0).mean()),
    }


def _evaluate_on_rank0(model: LeJEPAModel, splits, cfg: Config, device, amp, rank: int, world: int) -> dict[str, float]:
    result = [evaluate_encoder(model, splits, cfg, device, amp) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(result, src=0)
    return result[0]


def save_checkpoint(model: LeJEPAModel, cfg: Config, directory: Path, metrics: dict[str, float]) -> Path:
    """Writes ``encoder.pt`` (the timm backbone's state dict), ``projector.pt``, ``probe.pt``,
    ``config.yaml`` and ``metrics.json`` into ``directory`` (replacing a previous checkpoint)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.backbone.state_dict(), directory / "encoder.pt")
    torch.save(model.projector.state_dict(), directory / "projector.pt")
    torch.save(model.probe.state_dict(), directory / "probe.pt")
    save_config(cfg, directory / "config.yaml")
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return directory


def _log_rank(out_dir: Path, rank: int, epoch: int, local: dict[str, float], reduced: dict[str, float]) -> None:
    path = out_dir / "ranks" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"epoch": epoch, "local": local, "reduced": reduced}) + "\n")


def _log(metrics: dict[str, float], out_dir: Path, rank: int, verbose: bool) -> None:
    if rank != 0:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    if verbose:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()), flush=True)
