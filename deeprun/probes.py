"""Per-layer probes, accumulated on the device; the host reads them once per logged epoch.

Definitions (docs/records.md, layers.csv): a *layer* is each module holding a weight matrix or
kernel, in forward order. `grad_norm` is the L2 norm of its weight gradient
before clipping, averaged over the epoch's optimiser steps; `update_ratio` is
||W_after - W_before|| / ||W_before|| over the epoch; activation stats come from
the output of the activation that follows the layer, on the probe batch:
`dead_frac` = share of units never positive on any probe sample (ReLU family),
`saturated_frac` = share of unit-sample pairs in the flat tails (tanh |a| > 0.99,
sigmoid a < 0.01 or a > 0.99).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .models import WEIGHT_LAYERS
from .records import LAYER_COLUMNS

FLAT_LIMIT = 1 << 20  # weights up to which Probes keep W_before and W_after in flat rows (see __init__)
RELU_FAMILY = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.ReLU6, nn.PReLU, nn.CELU, nn.RReLU)
ACTIVATION_MODULES = (*RELU_FAMILY, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity)


def _kind(module: nn.Module) -> str:
    if isinstance(module, RELU_FAMILY):
        return "dead"
    return {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}.get(type(module), "plain")


class Reduced(NamedTuple):
    """A big activation's statistics, taken as it comes out of the forward pass. Keeping hundreds
    of big activations alive until the epoch's read costs more than reducing them: the allocator
    then serves the rest of the pass from fresh pages (seed 000's resnet at width 256: 14 ms a
    pass, against 8 ms of reductions)."""

    shape: torch.Size
    total: torch.Tensor  # the sum
    root: torch.Tensor  # the L2 norm
    positive: torch.Tensor  # (C,) each unit's maximum, clamped at 0: zero when never positive
    tail: torch.Tensor  # count in the flat tails of its own kind (tanh / sigmoid), else 0


class Logged(NamedTuple):
    """One logged epoch's raw numbers (`Probes.collect`, read to the host), kept as they are:
    `Probes.table` makes the rows of many epochs in one numpy pass, where building them in
    Python at each epoch cost seed 001's model D about 3% of its time."""

    epoch: int
    steps: int  # optimiser steps the gradient norms were summed over
    updated: bool  # whether W_before is from an earlier epoch (not at epoch 0)
    shapes: tuple  # the kept activations' shapes, which say how to read the numbers
    raw: list[float]


class Probes:
    """Gradient, weight and activation statistics of each weight layer of `model`."""

    def __init__(self, model: nn.Module, probe_x: torch.Tensor):
        self.model = model
        order, act_calls = self._trace(probe_x[:2])
        self.names = list(order)
        self.weights = [m.weight for m in order.values()]
        # activation call k of a forward pass -> the layer it follows (the first call after each layer)
        self.act_keep: list[int] = []  # call indices kept
        self.act_layer: list[int] = []  # the layer index of each kept call
        self.act_kinds: list[str] = []  # dead | tanh | sigmoid | plain: which fraction applies
        self._per_sample = 0  # values the kept activations of a forward pass hold per sample
        for k, (layer, module, size) in enumerate(act_calls):
            if layer >= 0 and layer not in self.act_layer:
                self.act_keep.append(k)
                self.act_layer.append(layer)
                self.act_kinds.append(_kind(module))
                self._per_sample += size
        device = self.weights[0].device if self.weights else probe_x.device
        self.nan = torch.tensor(math.nan, device=device)
        self._zero = torch.zeros((), device=device)
        self._captured: list[torch.Tensor] = []
        self._plans: dict[tuple, list[tuple]] = {}
        self._shapes: tuple = ()
        # A flat nn.Sequential (deeprun's MLP) is walked by hand in forward(): no hooks to add and remove
        self._acts = [(m, _kind(m)) for m in model.modules() if isinstance(m, ACTIVATION_MODULES)]
        flat = isinstance(model, nn.Sequential) and sum(isinstance(c, ACTIVATION_MODULES) for c in model) == len(self._acts)
        self._flat = [(m, _kind(m) if isinstance(m, ACTIVATION_MODULES) else None) for m in model] if flat else None
        self.grad_sum: torch.Tensor | None = None  # (L,) per layer, summed over the epoch's steps
        self.steps = 0
        # W_before lives in one flat buffer. On a small net every kernel launch counts: one copy, one
        # subtraction and one segment sum then replace a kernel per layer (seed 001's model D: a
        # tenth of its epoch). Its rows 0 and 2 take turns holding W_before and W_after, with their
        # difference between them, so that [W_after, difference] is always two adjacent rows (one
        # square, one segment sum) and W_after stays whole to be the next epoch's W_before (probes
        # every epoch: no copy at the epoch's start). A big net keeps per-layer norms (the segment
        # sum is slower on millions of weights), a single row (no second copy of its weights) and a
        # scratch the size of its largest layer.
        sizes = [w.numel() for w in self.weights]
        small = sum(sizes) <= FLAT_LIMIT and all(w.is_contiguous() for w in self.weights)
        self._buffer = torch.empty((3 if small else 1, sum(sizes)), device=device)
        self._buffer_rows = self._buffer.unbind(0)  # views made once, not per epoch
        self._at = 0  # the row holding W_before
        if small:
            self._views = [w.detach().view(-1) for w in self.weights]  # optimisers step in place
            # summed in float64: one after another (a segment sum), float32 would lose four digits
            # over a 512 x 512 layer (MPS has no float64)
            self._squares = torch.empty((2, sum(sizes)), device=device,
                                        dtype=torch.float32 if torch.device(device).type == "mps" else torch.float64)
            # segment lengths of both rows; a segment sum, not index_add_, whose CUDA atomics would
            # add in a different order each run (same seed, other bits)
            self._lengths = torch.tensor(sizes, device=device).expand(2, -1).contiguous()
            # W_after's row -> the two adjacent rows squared together: [W_after, diff] or [diff, W_after]
            self._pairs = {0: self._buffer[0:2], 2: self._buffer[1:3]}
            self.before, self._scratch = [], None
        else:
            self._views = None
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            self.before = [self._buffer_rows[0].narrow(0, o, n).view_as(w)
                           for o, n, w in zip(starts, sizes, self.weights)]
            self._scratch = torch.empty(max(sizes, default=0), device=device)
        self.before_norms: torch.Tensor | None = None  # (L,) ||W_before||

    @torch.no_grad()
    def _trace(self, x: torch.Tensor) -> tuple[dict[str, nn.Module], list[tuple[int, nn.Module, int]]]:
        """Weight layers in forward order, and each activation call with the layer it follows and
        its output's size per sample."""
        named = {m: name for name, m in self.model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
        called: dict[str, nn.Module] = {}
        acts: list[tuple[int, nn.Module, int]] = []
        last = [-1]

        def on_layer(m, inp, out):
            if named[m] not in called:
                called[named[m]] = m
            last[0] = list(called).index(named[m])

        def on_act(m, inp, out):
            acts.append((last[0], m, out[0].numel()))

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
        return called, acts

    # --- gradients and weights -------------------------------------------------

    def start_epoch(self, unchanged: bool = False) -> None:
        """An epoch to probe begins. `unchanged`: no weight has changed since the last collect (the
        previous epoch was probed); then W_before and its norms are what that collect left, which
        saves a pass over the weights. Only the caller can say so: fused optimisers step without
        bumping the weights' version counters."""
        self.grad_sum, self.steps = None, 0
        with torch.no_grad():
            if not unchanged or self.before_norms is None:
                self.before_norms = torch.stack(torch._foreach_norm(self.weights))
                if self._views is not None:
                    torch.cat(self._views, out=self._buffer_rows[self._at])
                else:
                    torch._foreach_copy_(self.before, self.weights)

    def after_backward(self) -> None:
        grads = [w.grad if w.grad is not None else self._zero for w in self.weights]
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm(grads))
            self.grad_sum = norms if self.grad_sum is None else self.grad_sum.add_(norms)
        self.steps += 1

    def _update_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """||W_after - W_before|| and ||W_after|| per layer, (L,) each; W_after becomes W_before
        (the next epoch's, if no step comes first)."""
        if self._views is None:
            # layer by layer, so that the norms and the copy read a weight the subtraction has just
            # brought into cache: a third less time than whole-net passes (100 x 1024 x 1024 weights)
            updates, weights = [], []
            for w, b in zip(self.weights, self.before):
                updates.append(torch.linalg.vector_norm(torch.sub(w, b, out=self._scratch[:w.numel()].view(w.shape))))
                weights.append(torch.linalg.vector_norm(w))
                b.copy_(w)
            return torch.stack(updates), torch.stack(weights)
        before, after = self._at, 2 - self._at
        torch.cat(self._views, out=self._buffer_rows[after])
        torch.sub(self._buffer_rows[after], self._buffer_rows[before], out=self._buffer_rows[1])
        torch.square(self._pairs[after], out=self._squares)
        upper, lower = torch.segment_reduce(self._squares, "sum", lengths=self._lengths, axis=1).sqrt_().unbind(0)
        self._at = after
        return (lower, upper) if after == 0 else (upper, lower)  # (updates, weights): rows in _pairs' order

    # --- activations -------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self):
        """Record the activation outputs of the forward passes inside the block (when big, their `Reduced`)."""
        self._captured = []

        def take(out: torch.Tensor, kind: str) -> None:
            out = out.detach()
            self._captured.append(self._reduce(out, kind) if self._big(len(out)) else out)
        handles = [m.register_forward_hook(lambda m, inp, out, kind=kind: take(out, kind)) for m, kind in self._acts]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """model(x), capturing the activation outputs for the epoch's statistics."""
        if self._flat is None:
            with self.capture():
                return self.model(x)
        self._captured = captured = []
        big = self._big(len(x))
        for module, kind in self._flat:
            x = module(x)
            if kind is not None:
                captured.append(self._reduce(x, kind) if big else x)
        return x

    def _big(self, rows: int) -> bool:
        """Whether the kept activations of a pass over `rows` samples are too big to keep to the
        epoch's read (`_activation_stats` stacks them); if so each is reduced as it comes."""
        return rows * self._per_sample > FLAT_LIMIT

    def _reduce(self, a: torch.Tensor, kind: str) -> Reduced:
        tail = ((a.abs() > 0.99).sum() if kind == "tanh" else ((a < 0.01) | (a > 0.99)).sum() if kind == "sigmoid"
                else self._zero)
        units = [0, *range(2, a.dim())]  # reduce over samples and positions
        return Reduced(a.shape, a.sum(), torch.linalg.vector_norm(a), a.amax(units).clamp_(min=0), tail)

    def _plan(self, shapes: tuple) -> list[tuple[list[int], bool, bool]]:
        """Group same-shaped outputs, so that all layers take a few kernels: (act indices, any tanh, any sigmoid)."""
        if shapes not in self._plans:
            groups: dict[tuple, list[int]] = {}
            for i, shape in enumerate(shapes):
                groups.setdefault(shape, []).append(i)
            self._plans[shapes] = [(idx, any(self.act_kinds[i] == "tanh" for i in idx),
                                    any(self.act_kinds[i] == "sigmoid" for i in idx)) for idx in groups.values()]
        return self._plans[shapes]

    # --- one read per logged epoch -------------------------------------------------

    def collect(self) -> list[torch.Tensor]:
        """Every raw number of the epoch, as 1-d device tensors to concatenate with the caller's
        own and read in one sync; `table` turns them into rows.

        Layout: grad norm sums (L), ||W_after - W_before|| (L), ||W_after|| (L), ||W_before|| (L),
        then per group of same-shaped activations, `_activation_stats`.
        """
        with torch.no_grad():
            grads = self.grad_sum if self.grad_sum is not None else self.nan.expand(len(self.weights))
            updates, weights = self._update_norms()
            parts = [grads, updates, weights, self.before_norms]
            self.before_norms = weights
            self._shapes = tuple(a.shape for a in self._kept())
            for idx, tanh, sigmoid in self._plan(self._shapes) if self._shapes else []:
                parts += self._activation_stats([self._captured[self.act_keep[i]] for i in idx], tanh, sigmoid)
            return parts

    @staticmethod
    def _activation_stats(acts: list[torch.Tensor] | list[Reduced], tanh: bool, sigmoid: bool) -> list[torch.Tensor]:
        """For G same-shaped activations (N, C, ...): sum (G), root of the sum of squares (G) (the
        host makes mean and std of them: two plain reductions cost a tenth of std_mean on small
        tensors), each unit's evidence of life (G x C, zero when never positive on any sample;
        a unit is a feature or a channel map) and, for tanh / sigmoid layers, tail counts (G)."""
        if isinstance(acts[0], Reduced):  # big: reduced one by one as they came
            parts = [torch.stack([a.total for a in acts]), torch.stack([a.root for a in acts]),
                     torch.cat([a.positive for a in acts])]
            parts += [torch.stack([a.tail for a in acts])] * (tanh + sigmoid)  # each row reads its own kind's
            return parts
        s = torch.stack(acts)  # small: one kernel each for the whole group
        s = s.flatten(3) if s.dim() > 3 else s  # (G, N, C[, spatial])
        every, samples = tuple(range(1, s.dim())), (1, 3) if s.dim() > 3 else 1  # reduced over, per unit
        parts = [s.sum(every), torch.linalg.vector_norm(s, dim=every),
                 s.clamp(min=0).sum(samples).flatten()]  # sum of the positive parts: a third of amax's cost here
        if tanh:
            parts.append((s.abs() > 0.99).sum(every))
        if sigmoid:
            parts.append(((s < 0.01) | (s > 0.99)).sum(every))
        return parts

    def logged(self, epoch: int, raw: list[float]) -> Logged:
        """The epoch's numbers as `collect` laid them out, read to the host, with what reading them needs."""
        return Logged(epoch, self.steps, epoch > 0, self._shapes, raw)

    def table(self, logged: list[Logged]) -> dict[str, np.ndarray]:
        """The columns of layers.csv (epoch, layer, name, LAYER_COLUMNS) for the logged epochs."""
        parts, start = [], 0
        while start < len(logged):  # epochs whose activations had the same shapes share one layout
            stop = start + 1
            while stop < len(logged) and logged[stop].shapes == logged[start].shapes:
                stop += 1
            parts.append(self._rows(logged[start:stop]))
            start = stop
        n = len(self.weights)
        values = np.concatenate(parts).reshape(-1, len(LAYER_COLUMNS))  # (epochs x layers, columns)
        table = {"epoch": np.repeat([e.epoch for e in logged], n), "layer": np.tile(np.arange(n), len(logged)),
                 "name": np.tile(np.array(self.names, dtype=object), len(logged))}
        return table | {column: values[:, j] for j, column in enumerate(LAYER_COLUMNS)}

    @np.errstate(all="ignore")  # a diverged run's inf - inf and inf / inf: NaN, as it should be
    def _rows(self, logged: list[Logged]) -> np.ndarray:
        """(E, L, LAYER_COLUMNS) for E logged epochs of one layout, all at once."""
        raw = np.array([e.raw for e in logged], dtype=np.float64)
        steps = np.maximum([e.steps for e in logged], 1)[:, None]
        updated = np.array([e.updated for e in logged])[:, None]
        shapes, n = logged[0].shapes, len(self.weights)
        out = np.full((len(logged), n, len(LAYER_COLUMNS)), np.nan)
        out[..., 0] = raw[:, :n] / steps
        out[..., 1] = raw[:, 2 * n:3 * n]
        before = raw[:, 3 * n:4 * n]
        np.divide(raw[:, n:2 * n], before, out=out[..., 2], where=updated & (before != 0))
        k = 4 * n
        for idx, tanh, sigmoid in self._plan(shapes) if shapes else []:
            g, units, size = len(idx), shapes[idx[0]][1], math.prod(shapes[idx[0]])  # a group shares a shape
            sums, roots = raw[:, k:k + g], raw[:, k + g:k + 2 * g]
            positive = raw[:, k + 2 * g:k + 2 * g + g * units].reshape(len(raw), g, units)
            k += 2 * g + g * units
            layers = np.array([self.act_layer[a] for a in idx])
            kinds = np.array([self.act_kinds[a] for a in idx])
            out[:, layers, 3] = sums / size
            if size > 1:
                out[:, layers, 4] = np.sqrt(np.maximum(roots * roots - sums * sums / size, 0.0) / (size - 1))
            dead = kinds == "dead"  # units whose positive parts sum to zero: never positive on any sample
            out[:, layers[dead], 5] = (positive[:, dead] == 0).sum(-1) / units
            for kind, present in (("tanh", tanh), ("sigmoid", sigmoid)):
                if present:
                    out[:, layers[kinds == kind], 6] = raw[:, k:k + g][:, kinds == kind] / size
                    k += g
        return out

    def read(self, updated: bool = True) -> list[dict]:
        """The epoch's layer statistics as dicts (one host sync); for tests and notebooks."""
        raw = torch.cat(self.collect()).tolist()  # first: collect notes the activations' shapes
        table = self.table([Logged(0, self.steps, updated, self._shapes, raw)])
        return [{"layer": i, "name": name, **{c: float(table[c][i]) for c in LAYER_COLUMNS}}
                for i, name in enumerate(self.names)]

    def _kept(self) -> list[torch.Tensor]:
        if len(self._captured) < len(self.act_keep):
            return []
        return [self._captured[k] for k in self.act_keep]
