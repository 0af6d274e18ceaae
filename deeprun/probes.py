"""Per-layer probes, accumulated on the device; the host reads them once per logged epoch.

Definitions (DESIGN.md): a *layer* is each module holding a weight matrix or
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

import torch
from torch import nn

from .models import WEIGHT_LAYERS
from .records import LAYER_COLUMNS
RELU_FAMILY = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.ReLU6, nn.PReLU, nn.CELU, nn.RReLU)
ACTIVATION_MODULES = (*RELU_FAMILY, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity)


def _kind(module: nn.Module) -> str:
    if isinstance(module, RELU_FAMILY):
        return "dead"
    return {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}.get(type(module), "plain")


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
        for k, (layer, module) in enumerate(act_calls):
            if layer >= 0 and layer not in self.act_layer:
                self.act_keep.append(k)
                self.act_layer.append(layer)
                self.act_kinds.append(_kind(module))
        device = self.weights[0].device if self.weights else probe_x.device
        self.nan = torch.tensor(math.nan, device=device)
        self._zero = torch.zeros((), device=device)
        self._captured: list[torch.Tensor] = []
        self._plans: dict[tuple, list[tuple]] = {}
        self._shapes: tuple = ()
        # A flat nn.Sequential (deeprun's MLP) is walked by hand in forward(): no hooks to add and remove
        all_acts = [m for m in model.modules() if isinstance(m, ACTIVATION_MODULES)]
        flat = isinstance(model, nn.Sequential) and sum(isinstance(c, ACTIVATION_MODULES) for c in model) == len(all_acts)
        self._flat = [(m, isinstance(m, ACTIVATION_MODULES)) for m in model] if flat else None
        self.grad_sum: list[torch.Tensor] | None = None  # per layer, summed over the epoch's steps
        self.steps = 0
        self.before: list[torch.Tensor] = []  # the weights at the start of the epoch (spent by collect)
        self.before_norms: list[torch.Tensor] = []  # their norms
        self._versions: list[int] = []  # the weights' version counters when before_norms was last right

    @torch.no_grad()
    def _trace(self, x: torch.Tensor) -> tuple[dict[str, nn.Module], list[tuple[int, nn.Module]]]:
        """Weight layers in forward order, and each activation call with the layer it follows."""
        named = {m: name for name, m in self.model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
        called: dict[str, nn.Module] = {}
        acts: list[tuple[int, nn.Module]] = []
        last = [-1]

        def on_layer(m, inp, out):
            if named[m] not in called:
                called[named[m]] = m
            last[0] = list(called).index(named[m])

        def on_act(m, inp, out):
            acts.append((last[0], m))

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

    def start_epoch(self) -> None:
        self.grad_sum, self.steps = None, 0
        with torch.no_grad():
            if not self.before:
                self.before = [w.detach().clone() for w in self.weights]
            # ||W_before||: the last collect's ||W_after|| when no weight has changed since (probes
            # every epoch), which saves a norm per layer; else measured now
            versions = [w._version for w in self.weights]
            if versions != self._versions:
                self.before_norms = list(torch._foreach_norm(self.weights))
            torch._foreach_copy_(self.before, self.weights)  # into the same buffers every epoch: no allocation

    def after_backward(self) -> None:
        grads = [w.grad if w.grad is not None else self._zero for w in self.weights]
        with torch.no_grad():
            norms = torch._foreach_norm(grads)
            if self.grad_sum is None:
                self.grad_sum = list(norms)
            else:
                torch._foreach_add_(self.grad_sum, norms)
        self.steps += 1

    # --- activations -------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self):
        """Record activation outputs of the forward passes inside the block."""
        self._captured = []
        grab = lambda m, inp, out: self._captured.append(out.detach())
        handles = [m.register_forward_hook(grab) for m in self.model.modules() if isinstance(m, ACTIVATION_MODULES)]
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
        for module, is_act in self._flat:
            x = module(x)
            if is_act:
                captured.append(x)
        return x

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
        own and read in one sync; `finish` turns them into rows.

        Layout: grad norm sums (L), ||W_after - W_before|| (L), ||W_before|| (L), ||W_after|| (L),
        then per group of stacked activations: sum (G), root of the sum of squares (G), each unit's maximum (G x C)
        and, where the group has tanh or sigmoid layers, tail counts (G).
        """
        with torch.no_grad():
            grads = self.grad_sum if self.grad_sum is not None else [self.nan] * len(self.weights)
            torch._foreach_sub_(self.before, self.weights)  # in place: no second copy of the weights
            norms = torch._foreach_norm([*self.before, *self.weights])  # ||W_after - W_before||, ||W_after||
            after = norms[len(self.weights):]
            parts = [torch.stack([*grads, *norms[:len(self.weights)], *self.before_norms, *after])]
            self.before_norms, self._versions = after, [w._version for w in self.weights]
            self._shapes = tuple(a.shape for a in self._kept())
            for idx, tanh, sigmoid in self._plan(self._shapes) if self._shapes else []:
                s = torch.stack([self._captured[self.act_keep[i]] for i in idx])
                s = s.flatten(3) if s.dim() > 3 else s[..., None]  # (G, N, C, spatial): a unit is a feature or a channel map
                flat = s.view(len(idx), -1)
                # sum and root of the sum of squares: the host makes mean and std of them; two plain
                # reductions cost a tenth of torch.std_mean's kernel on small tensors
                parts += [flat.sum(1), torch.linalg.vector_norm(flat, dim=1),
                          s.amax(dim=(1, 3)).flatten()]  # each unit's maximum; the host counts those <= 0
                if tanh:
                    parts.append((s.abs() > 0.99).sum((1, 2, 3)))
                if sigmoid:
                    parts.append(((s < 0.01) | (s > 0.99)).sum((1, 2, 3)))
            return parts

    def finish(self, raw: list[float], updated: bool = True) -> list[list[float]]:
        """Host side of `collect`: one row of LAYER_COLUMNS per layer."""
        n, nan = len(self.weights), math.nan
        steps = self.steps or 1
        rows = [[raw[i] / steps, raw[3 * n + i], raw[n + i] / raw[2 * n + i] if updated and raw[2 * n + i] else nan,
                 nan, nan, nan, nan] for i in range(n)]
        k = 4 * n
        for idx, tanh, sigmoid in self._plan(self._shapes) if self._shapes else []:
            g, units, n = len(idx), self._shapes[idx[0]][1], math.prod(self._shapes[idx[0]])
            sums, roots = raw[k:k + g], raw[k + g:k + 2 * g]
            mean = [t / n for t in sums]
            std = [math.sqrt(max(r * r - t * t / n, 0.0) / (n - 1)) if n > 1 else nan for t, r in zip(sums, roots)]
            maxima = raw[k + 2 * g:k + 2 * g + g * units]
            k += 2 * g + g * units
            tails = {}
            for kind, present in (("tanh", tanh), ("sigmoid", sigmoid)):
                if present:
                    tails[kind], k = raw[k:k + g], k + g
            for j, a in enumerate(idx):
                kind, pairs = self.act_kinds[a], math.prod(self._shapes[a])
                row = rows[self.act_layer[a]]
                row[3:5] = mean[j], std[j]
                dead = sum(m <= 0 for m in maxima[j * units:(j + 1) * units])  # never positive on any sample
                row[5] = dead / units if kind == "dead" else nan
                row[6] = tails[kind][j] / pairs if kind in tails else nan
        return rows

    def read(self, updated: bool = True) -> list[dict]:
        """The epoch's layer statistics as dicts (one host sync); for tests and notebooks."""
        return [{"layer": i, "name": name, **dict(zip(LAYER_COLUMNS, row))}
                for i, (name, row) in enumerate(zip(self.names, self.finish(torch.cat(self.collect()).tolist(), updated)))]

    def _kept(self) -> list[torch.Tensor]:
        if len(self._captured) < len(self.act_keep):
            return []
        return [self._captured[k] for k in self.act_keep]
