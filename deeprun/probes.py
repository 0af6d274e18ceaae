"""Per-layer probes of E members at once, accumulated on the device; the host reads them once per logged epoch.

Definitions (docs/records.md, layers.csv): a *layer* is each module holding a weight matrix or
kernel, in forward order. `grad_norm` is the L2 norm of its weight gradient before clipping,
averaged over the epoch's optimiser steps; `weight_norm` is ||W|| at the epoch's end;
`update_ratio` is ||W_after - W_before|| / ||W_before|| over the epoch; the activation numbers
come from the output of the activation that follows the layer, on the probe batch (the
validation set, else the training set): `act_mean`, `act_std` over all its values;
`dead_frac` = share of units never positive on any probe sample (ReLU family);
`saturated_frac` = share of unit-sample pairs in the flat tails (tanh |a| > 0.99, sigmoid
a < 0.01 or a > 0.99).

Every tensor here has the member first: a stacked weight is (E, ...), an activation (E, B, ...);
a solo model's have no member dimension and are read as E = 1. Each reduction runs once per layer
(or per group of same-shaped activations) and gives every member's number.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .config import ACTIVATION_TABLE
from .models import ACTIVATIONS, WEIGHT_LAYERS
from .records import LAYER_COLUMNS

# dead_frac's activations (config.ACTIVATION_TABLE), and torch's other ReLU relatives a user's own model may use
RELU_FAMILY = (*(ACTIVATIONS[name] for name, a in ACTIVATION_TABLE.items() if a.dead_frac),
               nn.ReLU6, nn.PReLU, nn.CELU, nn.RReLU)
ACTIVATION_MODULES = (*RELU_FAMILY, *(ACTIVATIONS[name] for name, a in ACTIVATION_TABLE.items() if not a.dead_frac))


def _tail(low: float, high: float):
    if low == -high:  # symmetric (tanh): one comparison of |a|
        return lambda a: a.abs() > high
    return lambda a: (a < low) | (a > high)


TAILS = {name: _tail(*a.tails) for name, a in ACTIVATION_TABLE.items() if a.tails}  # saturated_frac, by activation
_TAIL_MODULES = {ACTIVATIONS[name]: name for name in TAILS}
BIG = 1 << 20  # values above which a pass's activations are reduced as they come (`Reduced`), a net's weights normed in place


def _kind(module: nn.Module) -> str:
    """Which fraction a layer's activation reports: dead (ReLU family), tanh or sigmoid (saturated), plain."""
    if isinstance(module, RELU_FAMILY):
        return "dead"
    return _TAIL_MODULES.get(type(module), "plain")


def norm_plan(tensors: list[torch.Tensor]) -> tuple[list[list[int]], torch.Tensor | None]:
    """How member_norms reduces these tensors: on a small net, indices of tensors of one shape (stacked and
    normed by one kernel: a deep net's layers share a shape, and a kernel each would cost more than the work),
    and the index that puts the groups' norms back in the tensors' order (None: already in it)."""
    small = sum(t.numel() for t in tensors) <= BIG  # a big net's tensors are normed in place: stacking copies them
    by_shape: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        by_shape.setdefault(tuple(t.shape) if small else (i,), []).append(i)
    order = [i for idx in by_shape.values() for i in idx]
    inverse = None if order == list(range(len(tensors))) else torch.tensor(np.argsort(order), device=tensors[0].device)
    return list(by_shape.values()), inverse


def member_norms(tensors: list[torch.Tensor], members: int | None, plan=None) -> torch.Tensor:
    """(len(tensors), E): each tensor's L2 norm per member (`members` None: solo tensors, E = 1);
    `plan`: norm_plan(tensors), made once for tensors whose shapes do not change."""
    groups, inverse = plan or norm_plan(tensors)
    stacked = [tensors[idx[0]].unsqueeze(0) if len(idx) == 1 else torch.stack([tensors[i] for i in idx]) for idx in groups]
    norms = torch.cat([torch.linalg.vector_norm(s.reshape(len(s), members or 1, -1), dim=2) for s in stacked])
    return norms if inverse is None else norms[inverse]


class Reduced(NamedTuple):
    """A big activation's statistics, taken as it leaves the forward pass: keeping a deep, wide net's
    activations to the read would hold them all in memory at once (and stacking them, twice)."""

    shape: tuple  # (E, B, C, ...)
    total: torch.Tensor  # (E,) sum
    root: torch.Tensor  # (E,) L2 norm
    peak: torch.Tensor  # (E, C) each unit's largest value
    tail: torch.Tensor  # (E,) count in its own kind's flat tails (tanh / sigmoid), else 0


def activation_stats(s: torch.Tensor, kinds) -> list[torch.Tensor]:
    """For G same-shaped activations stacked as (G, E, B, C, ...): sum (G, E), root of the sum of squares
    (G, E) (the host makes mean and std of them), each unit's largest value (G, E, C; <= 0: never positive
    on any sample) and, for each of tanh / sigmoid in `kinds`, tail counts (G, E)."""
    s = s.flatten(4) if s.dim() > 4 else s  # (G, E, B, C[, H*W])
    over, per_unit = tuple(range(2, s.dim())), (2, 4) if s.dim() > 4 else 2
    stats = [s.sum(over), torch.linalg.vector_norm(s, dim=over), s.amax(per_unit)]
    return stats + [tail(s).sum(over).float() for kind, tail in TAILS.items() if kind in kinds]


class Logged(NamedTuple):
    """One logged epoch's raw numbers as `Probes.collect` laid them out, read to the host."""

    epoch: int
    steps: int  # optimiser steps the gradient norms were summed over
    updated: bool  # whether W_before is from an earlier epoch (not at epoch 0)
    shapes: tuple  # the kept activations' shapes, which say how to read the numbers
    raw: np.ndarray


class Probes:
    """Gradient, weight and activation statistics of each weight layer of `model`, for its E members.

    `members`: E for a stacked model, None for a solo one."""

    def __init__(self, model: nn.Module, probe_x: torch.Tensor, members: int | None = None):
        self.model, self.members = model, members
        self.size = members or 1
        order, acts, calls, self._per_sample = self._trace(probe_x[:, :2] if members else probe_x[:2])
        self.names = list(order)
        self.weights = [m.weight for m in order.values()]
        # the activation call that first follows each layer: (its index among a pass's activation calls,
        # its kind, the layer's index); one module may be called after several layers
        self.acts = [(k, kind, layer) for k, (kind, layer) in acts.items()]
        self._act_modules = list({m: None for m in self.model.modules() if isinstance(m, ACTIVATION_MODULES)})
        self._calls = calls
        self._before = [w.detach().clone() for w in self.weights]  # W at the start of the probed epoch
        self._device = self.weights[0].device if self.weights else probe_x.device
        self._plans = (norm_plan(self.weights), norm_plan(self.weights * 3)) if self.weights else None
        self._captured: list[torch.Tensor] = []
        self.grad_sum: torch.Tensor | None = None  # (L, E), summed over the epoch's steps
        self.steps = 0
        self._stepping = True  # whether the optimiser steps between start_epoch and collect

    @torch.no_grad()
    def _trace(self, x: torch.Tensor) -> tuple[dict[str, nn.Module], dict[int, tuple[str, int]], int, int]:
        """Weight layers in forward order; the activation calls that first follow a layer (call index ->
        (kind, layer)); the number of activation calls in a pass; the values those kept activations hold
        per sample and member."""
        named = {m: name for name, m in self.model.named_modules() if isinstance(m, WEIGHT_LAYERS + _stacked_layers())}
        called: dict[str, nn.Module] = {}
        acts: dict[int, tuple[str, int]] = {}
        calls = [0]
        sizes: list[int] = []  # values each kept activation holds per sample and member

        def on_layer(m, inp, out):
            called.setdefault(named[m], m)
            on_layer.last = list(called).index(named[m])
        on_layer.last = -1

        def on_act(m, inp, out):
            if on_layer.last >= 0 and all(layer != on_layer.last for _, layer in acts.values()):
                acts[calls[0]] = (_kind(m), on_layer.last)
                sizes.append(out[0].numel() // (out.shape[1] if self.members else 1))  # per sample and member
            calls[0] += 1

        handles = [m.register_forward_hook(on_layer) for m in named]
        handles += [m.register_forward_hook(on_act) for m in self.model.modules() if isinstance(m, ACTIVATION_MODULES)]
        was_training = self.model.training
        try:
            self.model.eval()
            self.model(x)
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        for m, name in named.items():  # never called in forward: last, in registration order
            called.setdefault(name, m)
        return called, acts, calls[0], sum(sizes)

    # --- gradients and weights -------------------------------------------------

    def start_epoch(self, steps: bool = True) -> None:
        """An epoch to probe begins: W_before is the weights now. `steps=False`: no optimiser step will
        come before `collect` (a diagnosis), so W_before is W itself and needs no copy."""
        self.grad_sum, self.steps, self._stepping = None, 0, steps
        if steps:
            with torch.no_grad():
                torch._foreach_copy_(self._before, self.weights)

    def after_backward(self) -> None:
        """Add this step's weight-gradient norms (before clipping)."""
        with torch.no_grad():
            norms = member_norms([w.grad if w.grad is not None else torch.zeros_like(w) for w in self.weights],
                                 self.members, self._plans[0])
            self.grad_sum = norms if self.grad_sum is None else self.grad_sum.add_(norms)
        self.steps += 1

    # --- activations -------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self):
        """Keep the followed activations' outputs of the forward pass inside the block, (E, B, ...) each."""
        self._captured = []

        def take(module, inp, out):  # validation runs under no_grad: nothing to detach there
            a = out.detach() if out.requires_grad else out
            a = a if self.members else a.unsqueeze(0)  # (E, B, C, ...)
            if a.shape[0] * a.shape[1] * self._per_sample > BIG:  # the whole pass's would be: keep none
                kind = _kind(module)
                total, root, peak, *tail = [t[0] for t in activation_stats(a.unsqueeze(0), {kind})]
                a = Reduced(tuple(a.shape), total, root, peak, tail[0] if tail else torch.zeros_like(total))
            self._captured.append(a)
        handles = [m.register_forward_hook(take) for m in self._act_modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _groups(self, shapes: tuple) -> list[list[int]]:
        """Indices of same-shaped activations: each group is reduced by one kernel per statistic."""
        groups: dict[tuple, list[int]] = {}
        for i, shape in enumerate(shapes):
            groups.setdefault(shape, []).append(i)
        return list(groups.values())

    # --- one read per logged epoch -------------------------------------------------

    def collect(self) -> list[torch.Tensor]:
        """Every raw number of the epoch, as 1-d device tensors to concatenate with the caller's
        own and read in one sync; `table` turns them into rows.

        Layout, each (L, E) member-last: grad norm sums, ||W_after - W_before||, ||W_after||,
        ||W_before||; then per group of same-shaped activations, `activation_stats`.
        """
        with torch.no_grad():
            e = self.members
            grads = self.grad_sum if self.grad_sum is not None else torch.full((len(self.weights), self.size), math.nan,
                                                                                  device=self._device)
            if self.weights and not self._stepping:  # W_after = W_before: the difference is 0
                norms = member_norms(self.weights, e, self._plans[0])
                parts = [torch.cat([grads, torch.zeros_like(norms), norms, norms])]
            elif self.weights:  # ||W_after - W_before||, ||W_after||, ||W_before||: one norm call for all three
                diffs = torch._foreach_sub(self.weights, self._before)
                parts = [torch.cat([grads, member_norms([*diffs, *self.weights, *self._before], e, self._plans[1])])]
            else:
                parts = [grads] * 4
            captured = [self._captured[k] for k, _, _ in self.acts] if len(self._captured) == self._calls else []
            self._shapes = tuple(tuple(a.shape) for a in captured)
            for idx in self._groups(self._shapes):
                kinds = [self.acts[i][1] for i in idx]
                if isinstance(captured[idx[0]], Reduced):  # a group is all big or all small: they share a shape
                    group = [captured[i] for i in idx]
                    parts += [torch.stack([r.total for r in group]), torch.stack([r.root for r in group]),
                              torch.stack([r.peak for r in group])]
                    parts += [torch.stack([r.tail if k == kind else torch.zeros_like(r.tail) for r, k in zip(group, kinds)])
                              for kind in TAILS if kind in kinds]
                else:
                    parts += activation_stats(torch.stack([captured[i] for i in idx]), kinds)
            self._captured = []
            return [p.flatten() for p in parts]

    def logged(self, epoch: int, raw: list[float]) -> Logged:
        """The epoch's numbers as `collect` laid them out, read to the host, with what reading them needs."""
        return Logged(epoch, self.steps, epoch > 0, self._shapes, np.asarray(raw, dtype=np.float64))

    def table(self, logged: list[Logged], member: int = 0) -> dict[str, np.ndarray]:
        """The columns of member's layers.csv (epoch, layer, name, LAYER_COLUMNS) for the logged epochs."""
        n = len(self.weights)
        if not logged:
            return {c: np.array([]) for c in ("epoch", "layer", "name", *LAYER_COLUMNS)}
        values = np.concatenate([self._rows(run, member) for run in _runs(logged)]).reshape(-1, len(LAYER_COLUMNS))
        table = {"epoch": np.repeat([e.epoch for e in logged], n), "layer": np.tile(np.arange(n), len(logged)),
                 "name": np.tile(np.array(self.names, dtype=object), len(logged))}
        # float32, the precision the device measured them in
        return table | {column: values[:, j].astype(np.float32) for j, column in enumerate(LAYER_COLUMNS)}

    def _blocks(self, shapes: tuple) -> list[tuple[int, ...]]:
        """The shapes of collect's blocks in order, member dimension left out: each is (rows, E, *rest) in the raw."""
        blocks = [(len(self.weights),)] * 4  # grads, ||W_after - W_before||, ||W_after||, ||W_before||
        for idx in self._groups(shapes):
            kinds = {self.acts[i][1] for i in idx}
            blocks += [(len(idx),), (len(idx),), (len(idx), shapes[idx[0]][2])]  # sums, roots, peaks
            blocks += [(len(idx),) for kind in TAILS if kind in kinds]
        return blocks

    def _columns(self, shapes: tuple, member: int) -> np.ndarray:
        """Where member's own numbers sit in a logged epoch's raw (all E members'): its blocks, in order."""
        at, columns = 0, []
        for rows, *rest in self._blocks(shapes):
            size = rows * self.size * math.prod(rest)
            columns.append(np.arange(at, at + size).reshape(rows, self.size, -1)[:, member].ravel())
            at += size
        return np.concatenate(columns)

    @np.errstate(all="ignore")  # a diverged run's inf - inf and inf / inf: NaN, as it should be
    def _rows(self, logged: list[Logged], member: int) -> np.ndarray:
        """(T, L, LAYER_COLUMNS) of one member for T logged epochs of one layout, all at once."""
        columns = self._columns(logged[0].shapes, member)
        raw = np.stack([e.raw[columns] for e in logged])  # this member's numbers only: the others' are theirs to read
        steps = np.maximum([e.steps for e in logged], 1)[:, None]
        updated = np.array([e.updated for e in logged])[:, None]
        shapes, n = logged[0].shapes, len(self.weights)
        blocks = self._blocks(shapes)
        ends = np.cumsum([math.prod(b) for b in blocks])[:-1]
        parts = iter([part.reshape(len(raw), *b) for part, b in zip(np.split(raw, ends, axis=1), blocks)])
        take = parts.__next__  # the next block of the layout

        out = np.full((len(logged), n, len(LAYER_COLUMNS)), np.nan)
        grads, updates, weights, before = take(), take(), take(), take()
        out[..., 0] = grads / steps
        out[..., 1] = weights
        np.divide(updates, before, out=out[..., 2], where=updated & (before != 0))
        for idx in self._groups(shapes):
            units, size = shapes[idx[0]][2], math.prod(shapes[idx[0]][1:])  # per member
            sums, roots, peaks = take(), take(), take()
            layers = np.array([self.acts[i][2] for i in idx])
            kinds = np.array([self.acts[i][1] for i in idx])
            out[:, layers, 3] = sums / size
            if size > 1:
                out[:, layers, 4] = np.sqrt(np.maximum(roots * roots - sums * sums / size, 0.0) / (size - 1))
            dead = kinds == "dead"
            out[:, layers[dead], 5] = (peaks[:, dead] <= 0).sum(-1) / units
            for kind in TAILS:
                if kind in kinds:
                    tails = take()
                    out[:, layers[kinds == kind], 6] = tails[:, kinds == kind] / size
        return out

    def read(self, updated: bool = True, member: int = 0) -> list[dict]:
        """The epoch's layer statistics as dicts (one host sync); for tests and notebooks."""
        raw = torch.cat(self.collect()).tolist()
        table = self.table([Logged(0, self.steps, updated, self._shapes, np.asarray(raw))], member)
        return [{"layer": i, "name": name, **{c: float(table[c][i]) for c in LAYER_COLUMNS}}
                for i, name in enumerate(self.names)]


def _runs(logged: list[Logged]) -> list[list[Logged]]:
    """Consecutive logged epochs whose activations had the same shapes (one layout each)."""
    runs: list[list[Logged]] = []
    for e in logged:
        if runs and runs[-1][0].shapes == e.shapes:
            runs[-1].append(e)
        else:
            runs.append([e])
    return runs


def _stacked_layers() -> tuple[type, ...]:
    from .stack import Conv2d, Linear

    return (Linear, Conv2d)
