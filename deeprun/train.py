"""The training loop: forward, loss, backward, probes, clip, step. No I/O inside the step.

Per-epoch numbers stay on the device until a logged epoch (every `log.every`
epochs, the last one, and epoch 0); then one host sync reads them all, checks
for divergence, and hands rows to the records.

Epoch 0 is the model at initialisation: the gradient and loss of epoch 1's first
batch (the whole training set when full batch), taken without a step; epoch 1
then steps with that gradient instead of computing it again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from .config import ConfigError, lookup
from .data import LOSSES, Data
from .models import MODE_FREE, count_params
from .probes import Logged, Probes

# Torch steps an optimiser in one of three ways; deeprun picks the fastest it measured (torch 2.13,
# CPU): `fused` (one kernel per parameter, no temporaries; its own float rounding) for Adam and
# AdamW at any size (a quarter of the default loop's time on a 100 x 256 resnet, a third of
# foreach's on seed 001's model D) and for SGD on big nets; `foreach` (one call for all parameters)
# for SGD and RMSprop on nets up to FOREACH_LIMIT parameters, where torch's default off CUDA is a
# loop per parameter (a quarter of SGD's step on model D; the loop's numbers exactly). A big net
# without a fused kernel keeps torch's default: foreach's parameter-sized temporaries cost it more
# than they save.
FOREACH_LIMIT = 1 << 20
FUSED_ABOVE = {"adam": 0, "adamw": 0, "sgd": FOREACH_LIMIT}  # parameters above which fused is the fastest
OPTIMIZERS = {
    "sgd": lambda p, lr, c, how: torch.optim.SGD(p, lr=lr, momentum=c.momentum, nesterov=c.nesterov,
                                                 weight_decay=c.weight_decay, **how),
    "adam": lambda p, lr, c, how: torch.optim.Adam(p, lr=lr, betas=tuple(c.betas), weight_decay=c.weight_decay, **how),
    "adamw": lambda p, lr, c, how: torch.optim.AdamW(p, lr=lr, betas=tuple(c.betas), weight_decay=c.weight_decay,
                                                     **how),
    "rmsprop": lambda p, lr, c, how: torch.optim.RMSprop(p, lr=lr, alpha=c.alpha, momentum=c.momentum,
                                                         weight_decay=c.weight_decay, **how),
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
    make = lookup(OPTIMIZERS, cfg.optimizer.name, "optimizer")
    return make(model.parameters(), cfg.lr, cfg.optimizer, implementation(cfg.optimizer.name, count_params(model)))


def implementation(name: str, params: int) -> dict:
    """The keyword that picks torch's fastest implementation of optimiser `name` for a net of
    `params` parameters (see FUSED_ABOVE)."""
    if params > FUSED_ABOVE.get(name, math.inf):
        return {"fused": True}
    return {"foreach": True} if params <= FOREACH_LIMIT else {}


def clear_grads(params: list[torch.Tensor]) -> None:
    """optimizer.zero_grad(set_to_none=True) without its profiler bookkeeping: a tenth of its time
    (4 us against 40 us on seed 001's model D, whose epoch is under a millisecond)."""
    for p in params:
        p.grad = None


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    return lookup(SCHEDULERS, cfg.scheduler.name, "scheduler")(optimizer, cfg.scheduler, cfg.epochs)


@dataclass
class History:
    """What the loop has learnt so far: every epoch up to the last logged one (after a Ctrl-C, up
    to the last finished one)."""

    metric: str
    epochs: list[dict] = field(default_factory=list)  # rows of epochs.csv
    logged: list[Logged] = field(default_factory=list)  # the layer statistics of each logged epoch, raw
    probes: Optional[Probes] = None  # makes `logged` into the rows of layers.csv
    diverged_epoch: Optional[int] = None

    def layers(self) -> dict | list:
        """The columns of layers.csv (empty before the first logged epoch)."""
        return self.probes.table(self.logged) if self.logged else []


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


class Validation:
    """Validation loss and metric. The device computes a few raw numbers per epoch; the host
    finishes them when it syncs (R^2 and RMSE from per-column squared errors cost no extra kernels)."""

    def __init__(self, data: Data):
        self.data = data
        self.regression = data.task == "regression"
        self.size = 0 if len(data.x_val) == 0 else data.n_out if self.regression else 2
        if self.regression and self.size:  # per-column variance of the targets: R^2's denominator
            self.var = data.y_val.var(0, unbiased=False).tolist()
        # per-column std that data.scale_target divided the targets by: RMSE back in the target's units
        self.std = data.y_scale[1] if data.y_scale is not None else [1.0] * data.n_out

    def more(self, values: list[float]) -> dict:
        """Regression's extra column from raw(): val_rmse, the mean over target columns of
        sqrt(MSE_j) * std_j, in the target's own units (std_j = 1 when the targets are not scaled)."""
        if not self.regression:
            return {}
        if not self.size:
            return {"val_rmse": math.nan}
        return {"val_rmse": sum(math.sqrt(e) * s for e, s in zip(values, self.std)) / len(values)}

    def raw(self, pred: torch.Tensor) -> torch.Tensor:
        """(size,) device tensor: per-column MSE (regression), or [loss, accuracy]."""
        y = self.data.y_val
        if self.regression:
            return F.mse_loss(pred, y, reduction="none").mean(0)
        loss = LOSSES[self.data.task](pred, y)
        labels = (pred > 0).to(y.dtype) if self.data.task == "binary" else pred.argmax(-1)
        return torch.stack([loss, (labels == y).float().mean()])

    def finish(self, values: list[float]) -> tuple[float, float]:
        """(val_loss, val_metric) from raw(); NaN without a validation set."""
        if not self.size:
            return math.nan, math.nan
        if not self.regression:
            return values[0], values[1]
        r2 = 1 - sum(e / v if v > 0 else math.nan for e, v in zip(values, self.var)) / len(values)
        return sum(values) / len(values), r2


def needs_mode_switch(model: nn.Module) -> bool:
    """False when every module is one whose forward ignores train/eval mode: then the switch, which
    walks every module twice an epoch (a seventh of an epoch of seed 001's model D), is skipped."""
    return not all(type(m) in MODE_FREE for m in model.modules())


def evaluate(model: nn.Module, data: Data, validation: Validation, probes: Optional[Probes],
             switch: bool = True) -> torch.Tensor:
    """validation.raw() of the model on the validation set; with `probes`, the activations of
    the first chunk (the training set's, without a validation set) are captured for probes.collect."""
    if switch:
        model.eval()
    with torch.no_grad():
        if not validation.size:
            if probes is not None:
                probes.forward(data.x_train[:EVAL_CHUNK])
            return data.x_train.new_empty(0)
        x = data.x_val
        preds = []
        for i, xb in enumerate(x.split(EVAL_CHUNK) if len(x) > EVAL_CHUNK else [x]):
            preds.append(probes.forward(xb) if probes is not None and i == 0 else model(xb))
        return validation.raw(torch.cat(preds) if len(preds) > 1 else preds[0])


def train(model: nn.Module, data: Data, cfg: DictConfig, history: History,
          on_log: Callable[[dict], None] = lambda row: None) -> None:
    """Train `model` on `data` for cfg.epochs, filling `history`; stops early if the loss diverges."""
    loss_fn = LOSSES[data.task]
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    probes = history.probes = Probes(model, data.x_val if len(data.x_val) else data.x_train)
    # plain Python numbers: a config lookup costs more than a small kernel launch
    epochs, every, batch_size, grad_clip = cfg.epochs, cfg.log.every, cfg.batch_size, cfg.grad_clip
    validation = Validation(data)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    pending: list[tuple] = []  # (epoch, train loss, validation.raw(), lr, seconds) awaiting a sync

    switch = needs_mode_switch(model)
    slices = batches(n, batch_size, gen, x.device)  # epoch 1's batches; None: full batch
    batch_weights = None if slices is None else torch.tensor([len(i) / n for i in slices], device=x.device)
    carried: Optional[torch.Tensor] = None  # epoch 1's first loss, its gradient left on the weights by epoch 0
    moved: list[torch.Tensor] = []  # the buffers (BatchNorm statistics) as epoch 0's forward pass left them

    def step_epoch(slices: Optional[list[torch.Tensor]], step: bool, probe: bool) -> torch.Tensor:
        """One pass over `slices` (mean loss); with step=False only gradients (epoch 0)."""
        nonlocal carried
        if switch:
            model.train()
        losses = []
        for idx in slices if slices is not None else [None]:
            if carried is not None:  # epoch 0 already took this batch's loss and gradient, at these weights
                loss, carried = carried, None
            else:
                xb, yb = (x, y) if idx is None else (x[idx], y[idx])  # (B, n_in), (B, n_out)
                clear_grads(params)
                loss = loss_fn(model(xb), yb)
                loss.backward()
            if probe:
                probes.after_backward()
            if step:
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
            losses.append(loss.detach())
        if len(losses) == 1:
            return losses[0]
        return (torch.stack(losses) * batch_weights).sum()  # the mean over samples, not over batches

    probing = False
    try:
        for epoch in range(epochs + 1):
            t0 = time.perf_counter()
            probed = probing  # the epoch before was probed: no step since its collect
            probing = epoch % every == 0 or epoch == epochs
            if probing:
                probes.start_epoch(unchanged=probed)
            if epoch == 0:
                # The model at initialisation: the loss and gradient of epoch 1's first batch, no step.
                # Epoch 1 steps with them rather than computing them again. The forward pass moved
                # BatchNorm's running statistics: epoch 0 is validated with the initial ones, epoch 1
                # gets the moved ones back.
                initial = [b.clone() for b in model.buffers()]
                carried = train_loss = step_epoch(None if slices is None else slices[:1], step=False, probe=True)
                moved = [b.clone() for b in model.buffers()]
                for b, saved in zip(model.buffers(), initial):
                    b.copy_(saved)
            else:
                if epoch == 1:
                    for b, saved in zip(model.buffers(), moved):
                        b.copy_(saved)
                else:
                    slices = batches(n, batch_size, gen, x.device)
                train_loss = step_epoch(slices, step=True, probe=probing)
            val_raw = evaluate(model, data, validation, probes if probing else None, switch)
            lr = optimizer.param_groups[0]["lr"]
            if epoch > 0 and scheduler is not None:
                if plateau:  # host sync: it compares numbers
                    val_loss = validation.finish(val_raw.tolist())[0]
                    scheduler.step(val_loss if validation.size else train_loss.item())
                else:
                    scheduler.step()
            pending.append((epoch, train_loss, val_raw, lr, time.perf_counter() - t0))
            if probing:
                if _sync(history, pending, probes, validation, on_log):
                    return
                pending = []
    except KeyboardInterrupt:  # the epochs finished since the last logged one are kept too
        done = history.epochs[-1]["epoch"] if history.epochs else -1  # _sync may have read some already
        _read_epochs(history, [p for p in pending if p[0] > done], validation)
        raise


def _sync(history: History, pending: list, probes: Probes, validation: Validation, on_log) -> bool:
    """Read the pending epochs and the layer stats in one host transfer; True when diverged."""
    flat = _read_epochs(history, pending, validation, probes.collect())
    logged = pending[-1][0]
    if history.diverged_epoch is None or history.diverged_epoch == logged:  # else: stats of a run already lost
        history.logged.append(probes.logged(logged, flat[len(pending) * (1 + validation.size):]))
    on_log(history.epochs[-1])
    return history.diverged_epoch is not None


def _read_epochs(history: History, pending: list, validation: Validation,
                 more: Sequence[torch.Tensor] = ()) -> list[float]:
    """Append the pending epochs' rows to history, reading them with `more` device numbers in one
    host sync (the numbers, all of them, returned); stops at the first non-finite training loss."""
    if not pending:
        return []
    flat = torch.cat([torch.stack([p[1] for p in pending]), *(p[2] for p in pending), *more]).tolist()  # host sync
    k = len(pending)
    for (epoch, _, _, lr, seconds), train_loss in zip(pending, flat):
        val_loss, metric = validation.finish(flat[k:k + validation.size])
        more = validation.more(flat[k:k + validation.size])  # val_rmse (regression)
        k += validation.size
        history.epochs.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                               history.metric: metric, **more, "lr": lr, "seconds": seconds})
        if not math.isfinite(train_loss):  # not val_loss: BatchNorm's fresh running statistics can overflow it early
            history.diverged_epoch = epoch
            break
    return flat
