"""The training loop, for E >= 1 members at once: forward, per-member loss, backward, probes, clip, step.

A solo run is E = 1 and trains its own model; E > 1 members (jobs of a sweep that build the same
shapes, stack.group_key) train as one stacked model, each with its own weights, seed, batches,
dropout masks and optimiser settings. Nothing mixes members: member e's numbers are its solo run's.

Per-epoch numbers stay on the device until a logged epoch (every `log.every` epochs, the last one,
and epoch 0); then one host sync reads them all, checks each member for divergence, and hands rows
to the records. Epoch 0 is the model at initialisation, measured by a pass of its own (no step).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from .config import ConfigError, lookup
from .data import Data
from .models import count_params
from .probes import Logged, Probes, member_norms
from .stack import member_dropout, member_state, stack

# torch picks a loop per parameter for SGD and RMSprop off CUDA; foreach (one call for all of them)
# is several times faster on small nets and fused (one kernel per parameter) on Adam (docs/benchmarks.md)
FOREACH_LIMIT = 1 << 20
FUSED_ABOVE = {"adam": 0, "adamw": 0, "sgd": FOREACH_LIMIT}  # parameters above which fused is the fastest
OPTIMIZERS = {
    "sgd": lambda p, c, how: torch.optim.SGD(p, momentum=c.momentum, nesterov=c.nesterov, **how),
    "adam": lambda p, c, how: torch.optim.Adam(p, betas=tuple(c.betas), **how),
    "adamw": lambda p, c, how: torch.optim.AdamW(p, betas=tuple(c.betas), **how),
    "rmsprop": lambda p, c, how: torch.optim.RMSprop(p, alpha=c.alpha, momentum=c.momentum, **how),
}
MEMBER_OPTIONS = ("lr", "momentum", "weight_decay", "nesterov")  # per param group: a member's own
SCHEDULERS = {
    "none": lambda opt, c, epochs: None,
    "step": lambda opt, c, epochs: torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma),
    "cosine": lambda opt, c, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=c.eta_min),
    "plateau": lambda opt, c, epochs: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=c.factor, patience=c.patience, min_lr=c.min_lr),
}
EVAL_CHUNK = 8192  # rows per forward pass when evaluating; the first chunk is the probe batch
MEMBER_LOSS = {  # (E, B, ...) predictions -> (E,) losses: each member's mean over its own batch
    "regression": lambda pred, y: F.mse_loss(pred, y, reduction="none").mean(_all_but_first(pred)),  # MSE, not 0.5 MSE
    "binary": lambda pred, y: F.binary_cross_entropy_with_logits(pred, y, reduction="none").mean(_all_but_first(pred)),
    "multiclass": lambda pred, y: F.cross_entropy(pred.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1),
}


def _all_but_first(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.dim()))


@dataclass
class History:
    """What the loop has learnt of one member so far: every epoch up to the last logged one (after
    a Ctrl-C, up to the last finished one)."""

    metric: str
    epochs: list[dict] = field(default_factory=list)  # rows of epochs.csv
    logged: list[Logged] = field(default_factory=list)  # the layer statistics of each logged epoch, raw
    probes: Optional[Probes] = None  # makes `logged` into the rows of layers.csv
    member: int = 0  # its place in the stack
    diverged_epoch: Optional[int] = None
    state: Optional[dict] = None  # its weights when found diverged: what its model ends with

    def layers(self) -> dict | list:
        """The columns of layers.csv (empty before the first logged epoch)."""
        return self.probes.table(self.logged, self.member) if self.logged else []


class Solo(nn.Module):
    """A plain model as a stack of one: (1, B, ...) in, (1, B, ...) out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[0]).unsqueeze(0)


def build_optimizer(cfgs: list[DictConfig], net: nn.Module, stacked: bool):
    """One torch optimiser for all members, with a param group per run of members of equal
    MEMBER_OPTIONS (api.run_group orders them so). A group holds views of its members' rows of each
    stacked parameter; `bind()` points their .grad at the rows of the new gradients after each backward
    (a no-op with one group, which holds the parameters themselves). Returns (optimizer, bind, groups)
    with groups[e] the param group of member e."""
    c = cfgs[0].optimizer
    if c.name == "sgd" and any(m.optimizer.nesterov and m.optimizer.momentum <= 0 for m in cfgs):
        raise ConfigError("optimizer.nesterov=true: needs optimizer.momentum > 0")
    options = [member_options(m) for m in cfgs]
    runs: list[tuple[int, int]] = []  # [start, stop) of each run of equal options
    for e, o in enumerate(options):
        if runs and options[runs[-1][0]] == o:
            runs[-1] = (runs[-1][0], e + 1)
        else:
            runs.append((e, e + 1))
    params = [p for p in net.parameters() if p.requires_grad]
    how = implementation(c.name, count_params(net) // len(cfgs))  # a member's size: a solo run's choice
    make = lookup(OPTIMIZERS, c.name, "optimizer")
    if len(runs) == 1:
        return make([{"params": params, **options[0]}], c, how), lambda: None, [0] * len(cfgs)
    views = [[p.detach()[a:b] for p in params] for a, b in runs]
    groups = [{"params": v, **options[a]} for v, (a, b) in zip(views, runs)]

    def bind() -> None:
        for v, (a, b) in zip(views, runs):
            for view, p in zip(v, params):
                view.grad = p.grad[a:b]
    return make(groups, c, how), bind, [i for i, (a, b) in enumerate(runs) for _ in range(a, b)]


def member_options(cfg: DictConfig) -> dict:
    """A member's own optimiser settings (MEMBER_OPTIONS its optimiser has): its param group's keys."""
    return {"lr": cfg.lr, **{k: cfg.optimizer[k] for k in MEMBER_OPTIONS[1:] if k in cfg.optimizer}}


def implementation(name: str, params: int) -> dict:
    """The keyword that picks torch's fastest implementation of optimiser `name` for `params` parameters."""
    if params > FUSED_ABOVE.get(name, math.inf):
        return {"fused": True}
    return {"foreach": True} if params <= FOREACH_LIMIT else {}


def clip_members(params: list[torch.Tensor], max_norms: list[Optional[float]], stacked: bool) -> None:
    """Each member's gradients scaled to a global norm of at most its grad_clip, as torch's
    clip_grad_norm_ does for one model."""
    if not stacked:
        nn.utils.clip_grad_norm_(params, max_norms[0])
        return
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(member_norms(grads, len(max_norms)), dim=0)  # (E,)
    limit = torch.tensor([math.inf if m is None else m for m in max_norms], device=total.device)
    scale = (limit / (total + 1e-6)).clamp_(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


def member_batches(n: int, batch_size: Optional[int], gens: list[torch.Generator], device) -> list[torch.Tensor] | None:
    """(E, B) row indices of each batch, from each member's own seeded permutation; None for full
    batch. A trailing batch of one joins the one before (BatchNorm cannot normalise a single sample)."""
    if batch_size is None or batch_size >= n:
        return None
    order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
    starts = list(range(0, n, batch_size))
    if n - starts[-1] == 1:
        starts.pop()
    return [order[:, s:e] for s, e in zip(starts, starts[1:] + [n])]


class Validation:
    """Validation loss and metric of every member. The device computes a few raw numbers per epoch;
    the host finishes them when it syncs (R^2 and RMSE from per-column squared errors)."""

    def __init__(self, data: Data):
        self.data = data
        self.regression = data.task == "regression"
        self.size = 0 if len(data.x_val) == 0 else data.n_out if self.regression else 2
        if self.regression and self.size:  # per-column variance of the targets: R^2's denominator
            self.var = data.y_val.var(0, unbiased=False).tolist()
        # per-column std that data.scale_target divided the targets by: RMSE back in the target's units
        self.std = data.y_scale[1] if data.y_scale is not None else [1.0] * data.n_out

    def raw(self, pred: torch.Tensor) -> torch.Tensor:
        """(E, size) device tensor from (E, N, ...) predictions: per-column MSE (regression), or [loss, accuracy]."""
        y = self.data.y_val.expand(len(pred), *self.data.y_val.shape)
        if self.regression:
            return F.mse_loss(pred, y, reduction="none").mean(1)
        loss = MEMBER_LOSS[self.data.task](pred, y)
        labels = (pred > 0).to(y.dtype) if self.data.task == "binary" else pred.argmax(-1)
        return torch.stack([loss, (labels == y).flatten(1).float().mean(1)], 1)

    def finish(self, values: list[float]) -> dict:
        """One member's val_loss, metric (val_r2 / val_accuracy) and, for regression, val_rmse (the mean over
        target columns of sqrt(MSE_j) * std_j, in the target's own units); NaN without a validation set."""
        metric = self.data.metric
        if not self.size:
            return {"val_loss": math.nan, metric: math.nan, **({"val_rmse": math.nan} if self.regression else {})}
        if not self.regression:
            return {"val_loss": values[0], metric: values[1]}
        r2 = 1 - sum(e / v if v > 0 else math.nan for e, v in zip(values, self.var)) / len(values)
        rmse = sum(math.sqrt(e) * s for e, s in zip(values, self.std)) / len(values)
        return {"val_loss": sum(values) / len(values), metric: r2, "val_rmse": rmse}


def evaluate(net: nn.Module, data: Data, validation: Validation, members: int, probes: Optional[Probes]) -> torch.Tensor:
    """validation.raw() of every member on the validation set; with `probes`, the activations of the
    first chunk (the training set's, without a validation set) are captured for probes.collect."""
    net.eval()
    with torch.no_grad():
        x = data.x_val if validation.size else data.x_train[:EVAL_CHUNK]
        preds = []
        for i, xb in enumerate(x.split(EVAL_CHUNK) if len(x) > EVAL_CHUNK else [x]):
            with probes.capture() if probes is not None and i == 0 else contextlib.nullcontext():
                preds.append(net(xb.expand(members, *xb.shape)))
        if not validation.size:
            return x.new_empty(members, 0)
        return validation.raw(torch.cat(preds, 1) if len(preds) > 1 else preds[0])


def train(models: list[nn.Module], data: Data, cfgs: list[DictConfig], histories: list[History],
          on_log: Callable[[int, dict], None] = lambda member, row: None) -> None:
    """Train E >= 1 models built alike (each by build_model from its own cfg) on `data` for cfgs[0].epochs,
    filling each member's History; each model ends with its trained weights (a diverged one's, as they
    were when it diverged). E = 1 trains the model itself; E > 1 a stacked copy of all of them."""
    cfg, n_members = cfgs[0], len(models)
    dropout_gens = [torch.Generator(data.x_train.device).manual_seed(c.seed) for c in cfgs]
    stacked = n_members > 1
    net = stack(models, dropout_gens) if stacked else Solo(member_dropout(models[0], dropout_gens[0]))
    optimizer, bind_grads, groups = build_optimizer(cfgs, net, stacked)
    scheduler = lookup(SCHEDULERS, cfg.scheduler.name, "scheduler")(optimizer, cfg.scheduler, cfg.epochs)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    params = [p for p in net.parameters() if p.requires_grad]
    member_loss = MEMBER_LOSS[data.task]
    validation = Validation(data)
    probe_x = data.x_val if len(data.x_val) else data.x_train
    probes = Probes(net if stacked else models[0], probe_x.expand(n_members, *probe_x.shape) if stacked else probe_x,
                    n_members if stacked else None)
    for e, h in enumerate(histories):
        h.probes, h.member = probes, e
    shuffles = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    clips = [c.grad_clip for c in cfgs]
    clipping = any(c is not None for c in clips)
    epochs, every, batch_size = cfg.epochs, cfg.log.every, cfg.batch_size  # plain numbers: a config lookup costs a kernel's time
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    pending: list[tuple] = []  # (epoch, train losses (E,), validation.raw() (E, size), lrs, seconds) awaiting a sync

    every_x, every_y = x.expand(n_members, *x.shape), y.expand(n_members, *y.shape)  # views: full batch
    ones = torch.ones(n_members, device=x.device)

    def step(xb: torch.Tensor, yb: torch.Tensor, probing: bool, update: bool = True) -> torch.Tensor:
        for p in params:
            p.grad = None
        losses = member_loss(net(xb), yb)  # (E,)
        losses.backward(ones)  # the gradient of their sum: members share no weights, each gets its own loss's
        bind_grads()
        if probing:
            probes.after_backward()
        if update:
            if clipping:
                clip_members(params, clips, stacked)
            optimizer.step()
        return losses.detach()

    try:
        for epoch in range(epochs + 1):
            t0 = time.perf_counter()
            probing = epoch % every == 0 or epoch == epochs
            if probing:
                probes.start_epoch()
            net.train()
            if epoch == 0:  # at initialisation: the first batch's loss and gradient, no step, buffers kept
                buffers = [b.clone() for b in net.buffers()]
                first = slice(0, batch_size)
                train_loss = step(every_x[:, first], every_y[:, first], probing, update=False)
                for b, saved in zip(net.buffers(), buffers):
                    b.copy_(saved)
            elif (batches := member_batches(n, batch_size, shuffles, x.device)) is None:
                train_loss = step(every_x, every_y, probing)
            else:  # the mean over samples, not over batches: a short last batch weighs less
                train_loss = sum(step(x[idx], y[idx], probing) * (idx.shape[1] / n) for idx in batches)
            val_raw = evaluate(net, data, validation, n_members, probes if probing else None)
            lrs = [g["lr"] for g in optimizer.param_groups]
            if epoch > 0 and scheduler is not None:
                if plateau:  # one member (why_alone): a host sync, it compares numbers
                    values = validation.finish(val_raw[0].tolist())
                    scheduler.step(values["val_loss"] if validation.size else train_loss.item())
                else:
                    scheduler.step()
            pending.append((epoch, train_loss, val_raw, [lrs[g] for g in groups], time.perf_counter() - t0))
            if probing:
                _sync(histories, pending, probes, validation, net if stacked else None, on_log)
                pending = []
                if all(h.diverged_epoch is not None for h in histories):
                    break
    except KeyboardInterrupt:  # the epochs finished since the last logged one are kept too
        _read_epochs(histories, pending, validation)
        raise
    finally:
        if stacked:  # each member's trained weights back into its own model
            for model, h in zip(models, histories):
                model.load_state_dict(h.state if h.state is not None else member_state(net, h.member))


def _sync(histories: list[History], pending: list, probes: Probes, validation: Validation,
          stacked: Optional[nn.Module], on_log) -> None:
    """Read the pending epochs and the layer stats in one host transfer; a member whose loss
    stopped being finite is marked diverged: its records stop there, and its weights as they are now
    are what its model ends with (in a stack its rows are still computed, never read again)."""
    live = [h for h in histories if h.diverged_epoch is None]
    flat = _read_epochs(live, pending, validation, probes.collect())
    logged = pending[-1][0]
    stats = probes.logged(logged, flat[len(pending) * len(histories) * (1 + validation.size):])
    for h in live:
        if h.diverged_epoch is None or h.diverged_epoch == logged:  # else: stats of a run already lost
            h.logged.append(stats)
        if h.diverged_epoch is not None and stacked is not None:
            h.state = member_state(stacked, h.member)
        if h.epochs:
            on_log(h.member, h.epochs[-1])


def _read_epochs(histories: list[History], pending: list, validation: Validation,
                 more: list[torch.Tensor] = ()) -> list[float]:
    """Append the pending epochs' rows to each member's history, reading them with `more` device
    numbers in one host sync (all the numbers, returned); a member stops at its first non-finite
    training loss."""
    if not pending:
        return []
    flat = torch.cat([torch.stack([p[1] for p in pending]).flatten(), *(p[2].flatten() for p in pending),
                      *more]).tolist()  # host sync
    e, k = len(pending[0][1]), validation.size
    for h in histories:
        done = h.epochs[-1]["epoch"] if h.epochs else -1  # after a Ctrl-C: _sync may have read some already
        for i, (epoch, _, _, lrs, seconds) in enumerate(pending):
            if h.diverged_epoch is not None or epoch <= done:
                continue
            train_loss = flat[i * e + h.member]
            at = len(pending) * e + (i * e + h.member) * k
            h.epochs.append({"epoch": epoch, "train_loss": train_loss, **validation.finish(flat[at:at + k]),
                             "lr": lrs[h.member], "seconds": seconds / e})  # its share of the stack's time
            if not math.isfinite(train_loss):  # not val_loss: BatchNorm's fresh running statistics can overflow it early
                h.diverged_epoch = epoch
    return flat
