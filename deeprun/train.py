"""The training loop: forward, loss, backward, probes, clip, step. No I/O inside the step.

Per-epoch numbers stay on the device until a logged epoch (every `log.every`
epochs, the last one, and epoch 0 = the model at initialisation); then one host
sync reads them all, checks for divergence, and hands rows to the records.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from .config import ConfigError, lookup
from .data import LOSSES, METRICS, Data
from .probes import LAYER_COLUMNS, Probes

OPTIMIZERS = {
    "sgd": lambda p, lr, c: torch.optim.SGD(p, lr=lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay),
    "adam": lambda p, lr, c: torch.optim.Adam(p, lr=lr, betas=tuple(c.betas), weight_decay=c.weight_decay),
    "adamw": lambda p, lr, c: torch.optim.AdamW(p, lr=lr, betas=tuple(c.betas), weight_decay=c.weight_decay),
    "rmsprop": lambda p, lr, c: torch.optim.RMSprop(p, lr=lr, alpha=c.alpha, momentum=c.momentum, weight_decay=c.weight_decay),
}
SCHEDULERS = {
    "none": lambda opt, c, epochs: None,
    "step": lambda opt, c, epochs: torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma),
    "cosine": lambda opt, c, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=c.eta_min),
    "plateau": lambda opt, c, epochs: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=c.factor, patience=c.patience, min_lr=c.min_lr),
}
EVAL_CHUNK = 8192  # rows per forward pass when evaluating; the first chunk is the probe batch


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov and cfg.optimizer.momentum <= 0:
        raise ConfigError("optimizer.nesterov=true: needs optimizer.momentum > 0")
    return lookup(OPTIMIZERS, cfg.optimizer.name, "optimizer")(model.parameters(), cfg.lr, cfg.optimizer)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    return lookup(SCHEDULERS, cfg.scheduler.name, "scheduler")(optimizer, cfg.scheduler, cfg.epochs)


@dataclass
class History:
    """What the loop has learnt so far; complete up to the last logged epoch."""

    metric: str
    layer_names: list[str]
    epochs: list[dict] = field(default_factory=list)  # rows of epochs.csv
    layers: list[dict] = field(default_factory=list)  # rows of layers.csv
    diverged_epoch: Optional[int] = None


def batches(n: int, batch_size: Optional[int], gen: Optional[torch.Generator], device) -> list[torch.Tensor] | None:
    """Index slices of a seeded permutation; None for full batch. A trailing batch of one
    joins the one before (BatchNorm cannot normalise a single sample)."""
    if batch_size is None or batch_size >= n:
        return None
    order = torch.randperm(n, generator=gen, device="cpu").to(device) if gen is not None else torch.arange(n, device=device)
    starts = list(range(0, n, batch_size))
    if n - starts[-1] == 1:
        starts.pop()
    return [order[s:e] for s, e in zip(starts, starts[1:] + [n])]


def evaluate(model: nn.Module, data: Data, probes: Optional[Probes]) -> tuple[torch.Tensor, torch.Tensor]:
    """(val_loss, val_metric) as device scalars; NaN without a validation set. With `probes`,
    the activations of the first chunk are captured for act_stats."""
    x, y = data.x_val, data.y_val
    if len(x) == 0:
        if probes is not None:  # no validation set: probe the activations on the training set
            with torch.no_grad(), probes.capture():
                model.eval()
                model(data.x_train[:EVAL_CHUNK])
        nan = torch.tensor(math.nan, device=data.x_train.device)
        return nan, nan
    model.eval()
    with torch.no_grad():
        preds = []
        for i, xb in enumerate(x.split(EVAL_CHUNK)):
            with probes.capture() if probes is not None and i == 0 else contextlib.nullcontext():
                preds.append(model(xb))
        pred = torch.cat(preds)
        return LOSSES[data.task](pred, y), METRICS[data.task](pred, y)


def train(model: nn.Module, data: Data, cfg: DictConfig, history: History,
          on_log: Callable[[dict], None] = lambda row: None) -> None:
    """Train `model` on `data` for cfg.epochs, filling `history`; stops early if the loss diverges."""
    loss_fn = LOSSES[data.task]
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    probes = Probes(model, data.x_val if len(data.x_val) else data.x_train)
    history.layer_names = probes.names
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    device = x.device
    pending: list[tuple[int, torch.Tensor, float, float]] = []  # (epoch, device scalars, lr, seconds) awaiting a sync

    def step_epoch(step: bool, probe: bool) -> torch.Tensor:
        """One pass over the training set; with step=False only gradients (epoch 0)."""
        model.train()
        loss_sum = torch.zeros((), device=device)
        slices = batches(n, cfg.batch_size, gen if step else None, device)
        for idx in slices if slices is not None else [None]:
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])  # (B, n_in), (B, n_out)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if probe:
                probes.after_backward()
            if step:
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            loss_sum += loss.detach() * len(xb)
        return loss_sum / n

    for epoch in range(cfg.epochs + 1):
        t0 = time.perf_counter()
        probing = epoch % cfg.log.every == 0 or epoch == cfg.epochs
        if probing:
            probes.start_epoch()
        if epoch == 0:  # the model at initialisation: gradients, no step, BatchNorm statistics kept
            buffers = [b.clone() for b in model.buffers()]
            train_loss = step_epoch(step=False, probe=True)
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        else:
            train_loss = step_epoch(step=True, probe=probing)
        val_loss, val_metric = evaluate(model, data, probes if probing else None)
        lr = optimizer.param_groups[0]["lr"]
        if epoch > 0 and scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss if len(data.x_val) else train_loss)  # host sync: it compares numbers
            else:
                scheduler.step()
        pending.append((epoch, torch.stack([train_loss, val_loss, val_metric]), lr, time.perf_counter() - t0))
        if probing:
            layer_stats = torch.cat([probes.end_epoch(updated=epoch > 0), probes.act_stats()], dim=1)
            if _sync(history, pending, layer_stats, epoch, len(data.x_val) > 0, on_log):
                return
            pending = []


def _sync(history: History, pending: list, layer_stats: torch.Tensor, epoch: int, has_val: bool, on_log) -> bool:
    """Read the pending epochs and the layer stats in one host transfer; True when diverged."""
    flat = torch.cat([torch.stack([p[1] for p in pending]).flatten(), layer_stats.flatten()]).tolist()  # host sync
    k = 3 * len(pending)
    for i, (ep, _, lr, seconds) in enumerate(pending):
        train_loss, val_loss, metric = flat[3 * i: 3 * i + 3]
        row = {"epoch": ep, "train_loss": train_loss, "val_loss": val_loss, history.metric: metric,
               "lr": lr, "seconds": seconds}
        history.epochs.append(row)
        if not math.isfinite(train_loss) or (has_val and not math.isfinite(val_loss)):
            history.diverged_epoch = ep
            break
    width = len(LAYER_COLUMNS)
    for i, name in enumerate(history.layer_names):
        values = flat[k + width * i: k + width * (i + 1)]
        history.layers.append({"epoch": epoch, "layer": i, "name": name, **dict(zip(LAYER_COLUMNS, values))})
    on_log(history.epochs[-1])
    return history.diverged_epoch is not None
