"""The per-process LeJEPA training loop, the same in one process, under ``torchrun`` and inside
a Ray Train worker.

:func:`train` reads top to bottom: set up, then per epoch: schedule, views, forward, loss,
backward, step; then the epoch's measurements (means over ranks, the label-free set, the
online probe, and after the last epoch the labelled evaluation), checkpoint, report. Where the
epochs go (a directory, or Ray) is a :class:`Sink`; the loop does not know which.

Resuming is exact at epoch boundaries: a checkpoint holds the model, projector, probe,
optimiser, and the epoch and step counters, and every random stream of an epoch (the batch
order, the views, dropout) is drawn from a generator seeded by ``(train.seed, epoch, rank)``,
so the epoch after a resume draws what it would have drawn without the interruption.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from . import metrics as M
from .config import Config, OptimConfig, save_config
from .data import DataSplits, TensorImages, as_tensors, build_datasets
from .distributed import all_gather_rows, broadcast_object, mean_over_ranks, shard
from .evaluate import cross_validated_probe, extract_features, knn_accuracy, linear_probe_accuracy
from .labelfree import LabelFreeSet, criteria, embed_views, resampled_objective
from .losses import LeJEPALoss, SIGReg, SpectralRegularizer
from .models import LeJEPAModel, build_model
from .views import MultiViews, build_views, eval_views

__all__ = [
    "TrainingDiverged",
    "Sink",
    "Stream",
    "LocalSink",
    "lr_factor",
    "epoch_batches",
    "stream_seed",
    "resolve_device",
    "describe_device",
    "autocast_dtype",
    "init_distributed",
    "build_loss",
    "build_optimizer",
    "save_checkpoint",
    "load_checkpoint",
    "train",
]

CHECKPOINT_STATE = "state.pt"


class TrainingDiverged(RuntimeError):
    """The LeJEPA loss became NaN or infinite: the trial diverged (after ``epoch`` epochs)."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


class Sink(Protocol):
    """Where a run's epochs go. Every rank calls ``report`` each epoch with the same metrics;
    rank 0 passes the checkpoint it wrote into ``checkpoint_dir()``, the others ``None``.
    ``started_at`` (``time.time()``) is when the run started, for ``time/startup_s``."""

    started_at: float

    def resume_from(self) -> Path | None: ...

    def checkpoint_dir(self) -> Path: ...

    def report(self, metrics: dict[str, float | str], checkpoint: Path | None) -> None: ...

    def progress(self, batches: Iterable, total: int, epoch: int) -> Iterable: ...


# A source of the training batches other than the split itself (Ray Data, in a sweep over data
# that is not held in memory): ``(epoch, per_rank, steps) -> steps batches of per_rank
# (images uint8 (B, 3, H, W), labels (B,))``, this rank's share of the epoch's global batches.
Stream = Callable[[int, int, int], Iterable[tuple[Tensor, Tensor]]]


class LocalSink:
    """``lejepa-tune train`` (one process or ``torchrun``): rank 0 keeps ``metrics.jsonl`` and
    the latest checkpoint in ``output_dir/checkpoint`` (replaced whole, never half-written),
    shows a progress bar per epoch and prints each epoch's metrics."""

    def __init__(self, cfg: Config, verbose: bool = True):
        self.out_dir = Path(cfg.train.output_dir)
        self._resume = Path(cfg.train.resume_from) if cfg.train.resume_from else None
        self.verbose = verbose
        self.rank = int(os.environ.get("RANK", "0"))
        self.started_at = time.time()
        if self.rank == 0:
            save_config(cfg, self.out_dir / "config.yaml")

    def resume_from(self) -> Path | None:
        return self._resume

    def checkpoint_dir(self) -> Path:
        path = self.out_dir / ".checkpoint-new"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def report(self, metrics: dict[str, float | str], checkpoint: Path | None) -> None:
        if self.rank != 0:
            return
        if checkpoint is not None:
            final, old = self.out_dir / "checkpoint", self.out_dir / ".checkpoint-old"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            checkpoint.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.verbose:
            shown = {k: v for k, v in metrics.items() if k not in (M.REFERENCE_CORRECT, M.OBJECTIVE_RESAMPLES, M.DEVICE)}
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()), flush=True)

    def progress(self, batches: Iterable, total: int, epoch: int) -> Iterable:
        if not self.verbose or self.rank != 0 or not sys.stderr.isatty():
            return batches
        from tqdm import tqdm

        return tqdm(batches, total=total, desc=f"epoch {epoch + 1}", leave=False, unit="step")


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


def stream_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a random stream of one epoch: the views' (``rank`` 0, shared by all ranks)
    or one rank's dropout."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank + 1


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> Tensor:
    """``(steps, batch_size // world)`` image indices this rank trains on in ``epoch``.

    One seeded permutation per epoch, the same on every rank, cut into global batches (the
    incomplete last one dropped: SIGReg's ``N`` stays fixed); rank ``r`` takes the ``r``-th
    slice of each. The ranks' slices of a step make up exactly the batch one process would see.
    """
    if batch_size % world:
        raise ValueError(f"train.batch_size: {batch_size} is not divisible by the {world} processes")
    steps = n // batch_size
    if steps < 1:
        raise ValueError(f"train.batch_size: {batch_size} exceeds the {n} training images")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)[: steps * batch_size].view(steps, batch_size)
    per_rank = batch_size // world
    return perm[:, rank * per_rank : (rank + 1) * per_rank]


def resolve_device(preference: str) -> torch.device:
    """``auto``: the CUDA device of this process (``LOCAL_RANK``) when there is one, else CPU."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def describe_device(device: torch.device) -> str:
    """What trains on ``device``, as ``metrics.DEVICE`` reports it: the GPU's name, or the
    instruction set of PyTorch's CPU kernels and the processor's name."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.backends.cpu.get_cpu_capability()}): {_processor_name()}"


@functools.cache
def _processor_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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
        {"params": [*model.probe.parameters()], "lr": cfg.probe_lr, "weight_decay": cfg.probe_weight_decay, "base_lr": cfg.probe_lr},
    ]
    # On CUDA the fused kernel: one launch per step for all parameters, not several per tensor.
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    return torch.optim.AdamW(groups, fused=fused)


@dataclass
class _Run:
    """What the loop works with, set up once."""

    cfg: Config
    device: torch.device
    amp: torch.dtype | None
    rank: int
    world: int
    splits: DataSplits
    train_set: Dataset
    model: LeJEPAModel
    views: MultiViews
    lfset: LabelFreeSet
    stream: Stream | None = None
    # The decoded training split on the GPU (images, labels), when it fits: see _device_copy.
    on_device: tuple[Tensor, Tensor] | None = None


def train(cfg: Config, sink: Sink | None = None, device: torch.device | None = None, data: DataSplits | None = None,
          stream: Stream | None = None) -> dict[str, float | str]:
    """Trains LeJEPA as configured; returns the last epoch's metrics (with ``eval/*`` after the
    last epoch when ``eval.enabled``). ``data`` (the decoded splits) saves loading them again;
    ``stream`` (with ``data.in_memory: false``) supplies the training batches instead of the
    split, which still gives the label-free set and the evaluation.

    Every epoch, on every rank, ``sink.report(metrics, checkpoint)`` gets the same metrics
    (means over ranks). With ``train.epochs = 0`` the untrained model is measured once.
    """
    device = device or resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the device NCCL collectives of this process use
    rank, world, created_group = init_distributed(device)
    where = describe_device(device)  # reported with every epoch
    sink = sink or LocalSink(cfg)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    splits = data or build_datasets(cfg.data)
    train_set = as_tensors(splits.train, cfg.data.num_workers) if cfg.data.in_memory else splits.train
    run = _Run(
        cfg, device, autocast_dtype(cfg.train.precision, device), rank, world, splits, train_set,
        build_model(cfg.model, splits.num_classes).to(device), build_views(cfg.views),
        LabelFreeSet(train_set, cfg.labelfree, cfg.views), stream, _device_copy(train_set, device),
    )
    model = run.model
    criterion = build_loss(cfg).to(device)
    opt = build_optimizer(model, cfg.optim)
    steps_per_epoch = epoch_batches(len(train_set), cfg.train.batch_size, world, rank, cfg.train.seed, 0).shape[0]
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    start_epoch, step, metrics = 0, 0, {}
    if (resume := sink.resume_from()) is not None:
        start_epoch, step, metrics = load_checkpoint(resume, model, opt, cfg)
    ddp = _wrap_ddp(model, device) if world > 1 else model
    keys = (M.LOSS, M.INV, M.regularizer_key(cfg.loss.regularizer), M.PROBE_LOSS)

    first_step_at = None
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        # The views' parameters are drawn for the global batch, alike on every rank (each keeps
        # its slice); dropout and drop-path differ per rank.
        gen = torch.Generator().manual_seed(stream_seed(cfg.train.seed, epoch, 0))
        torch.manual_seed(stream_seed(cfg.train.seed, epoch, rank))
        ddp.train()
        # Summed on the device and read once per epoch: a read per step would make the host wait
        # for the GPU every step instead of queueing the next one.
        sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
        for images, labels in sink.progress(_batches(run, epoch), steps_per_epoch, epoch):
            first_step_at = first_step_at or time.time()
            factor = lr_factor(step, total_steps, warmup_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
            global_views, local_views = run.views(images, gen, (rank, world))  # (Vg, B, 3, G, G), (Vl, B, 3, L, L)

            with torch.autocast(device.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
                _, proj, logits = ddp(global_views, local_views)
                out = criterion(proj, step)
                # The probe sees detached embeddings: its loss trains the probe only.
                probe_loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.repeat(cfg.views.n_global))
            opt.zero_grad(set_to_none=True)
            (out.loss + probe_loss).backward()
            opt.step()
            step += 1
            sums += torch.stack([out.loss, out.invariance, out.regularizer, probe_loss]).detach().double()

        metrics = dict(zip(keys, mean_over_ranks(sums.cpu() / steps_per_epoch).tolist()))
        if not math.isfinite(metrics[M.LOSS]):
            raise TrainingDiverged(
                f"train/loss is {metrics[M.LOSS]} after epoch {epoch + 1} "
                f"(loss.lam={cfg.loss.lam}, optim.lr={cfg.optim.lr}): the run diverged",
                epoch + 1,
            )
        metrics[M.SCALED_LOSS] = M.scaled_loss(metrics[M.LOSS], cfg.loss.lam, cfg.labelfree.alpha)
        metrics.update({M.EPOCH: epoch + 1, M.LR: cfg.optim.lr * factor, M.EPOCH_TIME: time.perf_counter() - t0})
        metrics[M.STARTUP_TIME] = first_step_at - sink.started_at  # the same every epoch
        metrics[M.DEVICE] = where
        metrics.update(_measure(run, last=epoch + 1 == cfg.train.epochs))
        _report(run, sink, _headline_first(metrics), epoch + 1, step, opt)

    if cfg.train.epochs == 0:  # the untrained baseline: measurements only
        metrics = {M.EPOCH: 0, M.DEVICE: where, **_measure(run, last=True)}
        _report(run, sink, metrics, 0, 0, opt)

    if created_group:
        dist.destroy_process_group()
    return metrics


# ----------------------------------------------------------------------------------------------
# The epoch's batches, measurements and checkpoint.


def _batches(run: _Run, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images uint8 (B, 3, H, W), labels (B,))`` on the device, for each step of ``epoch``."""
    cfg = run.cfg
    index = epoch_batches(len(run.train_set), cfg.train.batch_size, run.world, run.rank, cfg.train.seed, epoch)
    if run.stream is not None:
        taken = 0
        for images, labels in run.stream(epoch, index.shape[1], index.shape[0]):
            taken += 1
            yield images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        if taken != index.shape[0]:  # the other ranks would wait for this one's collectives
            raise RuntimeError(f"the data stream of rank {run.rank} gave {taken} batches in epoch {epoch + 1}, not {index.shape[0]}")
        return
    if isinstance(run.train_set, TensorImages):
        images, labels = run.on_device or (run.train_set.images, run.train_set.labels)
        for rows in index:
            yield images[rows].to(run.device, non_blocking=True), labels[rows].to(run.device, non_blocking=True)
        return
    # Decoded on the fly in DataLoader processes (data.in_memory: false): the same batches.
    loader = DataLoader(run.train_set, batch_sampler=index.tolist(), num_workers=cfg.data.num_workers, pin_memory=run.device.type == "cuda")
    for images, labels in loader:
        yield images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)


def _device_copy(train_set: Dataset, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """The decoded training split copied to the GPU once, when it takes under a quarter of the
    free memory there: each step's batch is then gathered on the device, not sent over. ``None``
    on CPU, for splits decoded on the fly, and for splits too large."""
    if device.type != "cuda" or not isinstance(train_set, TensorImages):
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if train_set.images.nbytes > free // 4:
        return None
    return train_set.images.to(device), train_set.labels.to(device)


def _measure(run: _Run, last: bool) -> dict[str, float | str]:
    """The label-free set (every epoch), the online probe, and after the last epoch the
    objective on resamples of the label-free images and the labelled evaluation of the frozen
    encoder."""
    t0 = time.perf_counter()
    lf = run.cfg.labelfree
    features = embed_views(run.model, run.lfset, run.device, run.amp, run.cfg.eval.batch_size)
    out: dict[str, float | str] = dict(criteria(features))
    if last and lf.resamples:
        out[M.OBJECTIVE_RESAMPLES] = M.pack_floats(resampled_objective(features, lf.resamples, lf.seed))
    out[M.LABELFREE_TIME] = time.perf_counter() - t0
    out[M.ONLINE_ACC] = _online_accuracy(run)
    if last and run.cfg.eval.enabled:
        out.update(_evaluate(run))
    return out


def _embed(run: _Run, split: Dataset) -> Tensor:
    """Backbone features ``(N, D)`` of the evaluation views of a whole split, each rank
    embedding its share, gathered on every rank."""
    cfg = run.cfg
    rows = list(shard(len(split)))
    size, mean, std = cfg.views.global_size, cfg.views.mean, cfg.views.std
    step = cfg.eval.batch_size

    def batches() -> Iterator[Tensor]:
        for i in range(0, len(rows), step):
            chunk = rows[i : i + step]
            images = split.images[chunk] if isinstance(split, TensorImages) else torch.stack([split[r][0] for r in chunk])
            yield eval_views(images.to(run.device), size, mean, std)

    local = extract_features(run.model.backbone, batches(), run.device, run.amp) if rows else torch.empty(0, run.model.embed_dim)
    return all_gather_rows(local, len(split))


def _labels(split: Dataset) -> Tensor:
    if isinstance(split, TensorImages):
        return split.labels
    return torch.tensor([split[i][1] for i in range(len(split))])


@torch.no_grad()
def _online_accuracy(run: _Run) -> float:
    """Top-1 accuracy of the online probe on the validation split (a monitor only)."""
    feats = _embed(run, run.splits.val)
    was_training = run.model.probe.training
    run.model.probe.eval()
    logits = run.model.probe(feats.to(run.device)).cpu()
    run.model.probe.train(was_training)
    return float((logits.argmax(1) == _labels(run.splits.val)).double().mean())


def _evaluate(run: _Run) -> dict[str, float | str]:
    """Frozen-feature evaluation of the backbone (labels used to *measure* only): the linear
    probe (train -> validation split), kNN, and the reference: the probe cross-validated over
    the labelled images of both splits."""
    cfg, splits = run.cfg, run.splits
    train_x, val_x = _embed(run, splits.train), _embed(run, splits.val)
    train_y, val_y = _labels(splits.train), _labels(splits.val)
    result = None
    if run.rank == 0:  # the probes are fit once; the other ranks wait for seconds, not minutes
        all_x, all_y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])
        if len(all_y) > cfg.eval.reference_max_images:
            keep = torch.randperm(len(all_y), generator=torch.Generator().manual_seed(cfg.train.seed))[: cfg.eval.reference_max_images]
            all_x, all_y = all_x[keep], all_y[keep]
        ref_acc, correct = cross_validated_probe(all_x, all_y, folds=cfg.eval.reference_folds, seed=cfg.train.seed, max_iter=cfg.eval.linear_max_iter)
        result = {
            M.LINEAR_ACC: linear_probe_accuracy(train_x, train_y, val_x, val_y, max_iter=cfg.eval.linear_max_iter, seed=cfg.train.seed),
            M.KNN_ACC: knn_accuracy(train_x, train_y, val_x, val_y, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, num_classes=splits.num_classes),
            M.REFERENCE_ACC: ref_acc,
            M.REFERENCE_CORRECT: M.pack_bits(correct.numpy()),
        }
    return broadcast_object(result)


def _headline_first(metrics: dict[str, float | str]) -> dict[str, float | str]:
    """The same metrics, the objective and the loss first: progress tables show the first few."""
    first = [k for k in (M.OBJECTIVE, M.LOSS, M.SCALED_LOSS) if k in metrics]
    return {**{k: metrics[k] for k in first}, **metrics}


def _report(run: _Run, sink: Sink, metrics: dict[str, float | str], epoch: int, step: int, opt: torch.optim.Optimizer) -> None:
    cfg = run.cfg
    due = cfg.train.save_checkpoint and (epoch == cfg.train.epochs or epoch % cfg.train.checkpoint_every == 0)
    checkpoint = save_checkpoint(sink.checkpoint_dir(), run.model, opt, cfg, epoch, step, metrics) if due and run.rank == 0 else None
    sink.report(metrics, checkpoint)


def _wrap_ddp(model: LeJEPAModel, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        # Batch-norm layers of the backbone (ResNets) then see the global batch too. The
        # projector's GlobalBatchNorm1d already does, on any device.
        model.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(directory: Path, model: LeJEPAModel, opt: torch.optim.Optimizer, cfg: Config, epoch: int, step: int, metrics: dict) -> Path:
    """Writes into ``directory``: ``encoder.pt`` (the timm backbone's state dict) and
    ``projector.pt`` (what an export needs), ``state.pt`` (model with probe, optimiser, epoch
    and step: what resuming needs), ``config.yaml`` and ``metrics.json`` (with the other files'
    sizes, :func:`lejepa_tune.metrics.read_checkpoint_metrics`)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.backbone.state_dict(), directory / "encoder.pt")
    torch.save(model.projector.state_dict(), directory / "projector.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step}, directory / CHECKPOINT_STATE)
    save_config(cfg, directory / "config.yaml")
    files = {name: (directory / name).stat().st_size for name in ("encoder.pt", "projector.pt", CHECKPOINT_STATE, "config.yaml")}
    (directory / "metrics.json").write_text(M.checkpoint_metrics_text(metrics, files))  # last: with the others' sizes
    return directory


def load_checkpoint(directory: str | Path, model: LeJEPAModel, opt: torch.optim.Optimizer, cfg: Config) -> tuple[int, int, dict]:
    """Restores ``model`` and ``opt`` from a checkpoint; returns ``(epoch, step, metrics)``,
    the epochs and steps already done and that epoch's metrics."""
    directory = Path(directory)
    if not (directory / CHECKPOINT_STATE).is_file():
        raise ValueError(f"train.resume_from: {directory} holds no {CHECKPOINT_STATE} (not a checkpoint of lejepa-tune)")
    state = torch.load(directory / CHECKPOINT_STATE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    metrics = M.read_checkpoint_metrics((directory / "metrics.json").read_text())[0] if (directory / "metrics.json").is_file() else {}
    return int(state["epoch"]), int(state["step"]), metrics
