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

LAYER_COLUMNS = ("grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std", "dead_frac", "saturated_frac")
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
        # activation call k of a forward pass -> the layer it follows (first one per layer)
        seen: set[int] = set()
        self.act_keep: list[int] = []  # call indices to keep
        act_layer: list[int] = []
        self.act_kinds: list[str] = []
        for k, (layer, module) in enumerate(act_calls):
            if layer >= 0 and layer not in seen:
                seen.add(layer)
                self.act_keep.append(k)
                act_layer.append(layer)
                self.act_kinds.append(_kind(module))
        device = self.weights[0].device if self.weights else probe_x.device
        self.act_layer = torch.tensor(act_layer, dtype=torch.long, device=device)
        self.is_dead = torch.tensor([k == "dead" for k in self.act_kinds], device=device)
        self.is_tanh = torch.tensor([k == "tanh" for k in self.act_kinds], device=device)
        self.is_sigmoid = torch.tensor([k == "sigmoid" for k in self.act_kinds], device=device)
        self.nan = torch.tensor(math.nan, device=device)
        self._zero = torch.zeros((), device=device)
        self._captured: list[torch.Tensor] = []
        self.grad_sum: torch.Tensor | None = None
        self.steps = 0
        self.before: list[torch.Tensor] = []

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

    @torch.no_grad()
    def start_epoch(self) -> None:
        self.grad_sum, self.steps = None, 0
        self.before = torch._foreach_mul(self.weights, 1.0)  # a copy, in one kernel launch

    @torch.no_grad()
    def after_backward(self) -> None:
        grads = [w.grad if w.grad is not None else self._zero for w in self.weights]
        norms = torch.stack(torch._foreach_norm(grads))
        self.grad_sum = norms if self.grad_sum is None else self.grad_sum + norms
        self.steps += 1

    @torch.no_grad()
    def end_epoch(self, updated: bool = True) -> torch.Tensor:
        """(n_layers, 3): grad_norm, weight_norm, update_ratio (NaN when nothing was updated)."""
        n = len(self.weights)
        grad = self.grad_sum / self.steps if self.steps else torch.full((n,), math.nan, device=self.nan.device)
        diff = torch._foreach_sub(self.weights, self.before)
        norms = torch.stack(torch._foreach_norm([*diff, *self.before, *self.weights])).view(3, n)
        ratio = norms[0] / norms[1] if updated else torch.full_like(norms[0], math.nan)
        return torch.stack([grad, norms[2], ratio], dim=1)

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

    @torch.no_grad()
    def act_stats(self) -> torch.Tensor:
        """(n_layers, 4): act_mean, act_std, dead_frac, saturated_frac of the captured forward."""
        out = torch.full((len(self.weights), 4), math.nan, device=self.nan.device)
        outs = [self._captured[k] for k in self.act_keep if k < len(self._captured)]
        if not outs or len(outs) != len(self.act_keep):
            return out
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(outs):  # stack same-shaped outputs: a few kernels for all layers
            groups.setdefault(tuple(a.shape), []).append(i)
        for shape, idx in groups.items():
            s = torch.stack([outs[i] for i in idx]).flatten(3) if len(shape) > 2 else torch.stack([outs[i] for i in idx])[..., None]
            # s: (G, N, C, spatial); a unit is a feature or a channel map
            std, mean = torch.std_mean(s, dim=(1, 2, 3))
            dead = 1 - (s > 0).any(3).any(1).float().mean(1)
            sel = torch.tensor(idx, device=s.device)
            kinds = {self.act_kinds[i] for i in idx}
            sat = self.nan.expand(len(idx))
            if "tanh" in kinds:
                sat = torch.where(self.is_tanh[sel], (s.abs() > 0.99).float().mean((1, 2, 3)), sat)
            if "sigmoid" in kinds:
                sat = torch.where(self.is_sigmoid[sel], ((s < 0.01) | (s > 0.99)).float().mean((1, 2, 3)), sat)
            dead = torch.where(self.is_dead[sel], dead, self.nan)
            out[self.act_layer[sel]] = torch.stack([mean, std, dead, sat], dim=1)
        return out
