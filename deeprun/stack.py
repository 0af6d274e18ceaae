"""Stacked training: E jobs that build the same shapes train as one model of E members.

A member is one job of a sweep. Each is built as its solo run builds it (`build_model`, its
own seed and init), then the members' parameters are stacked along a new first dimension, so
that one forward pass computes every member (a batched matmul, a grouped convolution) and one
backward pass every member's gradients. Nothing mixes members: member e's numbers depend on
member e's weights and batches only.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from .records import config_hash

# Keys members of one stack may differ in: they change numbers, not shapes. dropout's rate may
# differ, not whether there is dropout (a Dropout module or none).
MEMBER_KEYS = ("seed", "init", "lr", "optimizer.momentum", "optimizer.weight_decay", "optimizer.nesterov",
               "dropout", "grad_clip", "save", "expect", "resume", "strict", "objective", "penalty", "log.progress",
               "logger", "diagnose")  # logger: each member logs to its own run; diagnose.*: deeprun-diagnose only


def group_key(cfg: DictConfig) -> Optional[str]:
    """Jobs with equal keys train together as one stack; None: this job runs alone (why_alone says why)."""
    if why_alone(cfg) is not None:
        return None
    return config_hash(cfg, MEMBER_KEYS, {"dropout>0": cfg.dropout > 0})


def why_alone(cfg: DictConfig) -> Optional[str]:
    """Why this job cannot join a stack, or None if it can."""
    if "_target_" in cfg.model:
        return "a model._target_ model (only deeprun's own models are stacked)"
    if cfg.scheduler.name == "plateau":
        return "scheduler=plateau (it steps on each member's own validation loss)"
    return None


# --- stacked layers ---------------------------------------------------------------
# Each holds its members' parameters and buffers under torch's own names, with a first dimension
# of E members, so that member e's state dict is every tensor's [e] (member_state). Activations
# flow as (E, B, ...): member first, then the batch.


def _stacked(tensors: list[torch.Tensor], parameter: bool) -> torch.Tensor:
    t = torch.stack([x.detach() for x in tensors])
    return nn.Parameter(t, requires_grad=tensors[0].requires_grad) if parameter else t


def _stacked_param(members: list[nn.Module], name: str) -> Optional[nn.Parameter]:
    """The members' parameter `name` stacked, or None where they have none (bias=False, affine=False)."""
    return None if getattr(members[0], name) is None else _stacked([getattr(m, name) for m in members], True)


def _flat(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(E, C) -> (E*C,), a view: batch_norm updates running statistics through it in place."""
    return None if t is None else t.flatten()


class Linear(nn.Module):
    """E x nn.Linear: one batched matmul, (E, B, in) -> (E, B, out).

    `weight` is (E, in, out): each member's weight transposed, the order the matmul reads (a
    transposed view costs it half again as much on small nets); member_state transposes it back."""

    def __init__(self, members: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in members]).contiguous())
        self.bias = _stacked_param(members, "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


def _to_channels(x: torch.Tensor) -> torch.Tensor:
    """(E, B, C, ...) -> (B, E*C, ...): each member's channels side by side, as grouped ops want them."""
    return x.transpose(0, 1).flatten(1, 2)


def _from_channels(y: torch.Tensor, members: int) -> torch.Tensor:
    """(B, E*C, ...) -> (E, B, C, ...), a view: the next layer's _to_channels gets it back without a copy."""
    return y.unflatten(1, (members, -1)).transpose(0, 1)


class Conv2d(nn.Module):
    """E x nn.Conv2d as one grouped convolution (groups = E x the members' own)."""

    def __init__(self, members: list[nn.Conv2d]):
        super().__init__()
        m = members[0]
        self.weight = _stacked_param(members, "weight")  # (E, out, in/groups, kh, kw)
        self.bias = _stacked_param(members, "bias")
        self.stride, self.padding, self.dilation, self.groups = m.stride, m.padding, m.dilation, m.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.weight.shape[0]
        y = F.conv2d(_to_channels(x), self.weight.flatten(0, 1), None if self.bias is None else self.bias.flatten(),
                     self.stride, self.padding, self.dilation, self.groups * e)
        return _from_channels(y, e)


class BatchNorm(nn.Module):
    """E x nn.BatchNorm1d / 2d: one batch norm over the members' channels side by side."""

    def __init__(self, members: list[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        m = members[0]
        self.eps, self.momentum = m.eps, m.momentum
        self.weight, self.bias = _stacked_param(members, "weight"), _stacked_param(members, "bias")
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, _stacked([getattr(b, name) for b in members], False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative average, as nn.BatchNorm's
                momentum = 1.0 / float(self.num_batches_tracked[0])
        y = F.batch_norm(_to_channels(x), _flat(self.running_mean), _flat(self.running_var), _flat(self.weight),
                         _flat(self.bias), self.training, momentum or 0.0, self.eps)
        return _from_channels(y, x.shape[0])


class LayerNorm(nn.Module):
    """E x nn.LayerNorm: normalise each sample, then each member's own scale and shift."""

    def __init__(self, members: list[nn.LayerNorm]):
        super().__init__()
        m = members[0]
        self.shape, self.eps = m.normalized_shape, m.eps
        self.weight, self.bias = _stacked_param(members, "weight"), _stacked_param(members, "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, self.shape, None, None, self.eps)
        spread = (x.shape[0], *[1] * (x.dim() - 1 - len(self.shape)), *self.shape)  # (E, 1, ..., normalised dims)
        if self.weight is not None:
            y = y * self.weight.view(spread)
        return y if self.bias is None else y + self.bias.view(spread)


class GroupNorm(nn.Module):
    """E x nn.GroupNorm: one group norm with E x the members' groups over their channels side by side."""

    def __init__(self, members: list[nn.GroupNorm]):
        super().__init__()
        m = members[0]
        self.groups, self.eps = m.num_groups, m.eps
        self.weight, self.bias = _stacked_param(members, "weight"), _stacked_param(members, "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.group_norm(_to_channels(x), self.groups * x.shape[0], _flat(self.weight), _flat(self.bias), self.eps)
        return _from_channels(y, x.shape[0])


class Dropout(nn.Module):
    """Dropout drawn from each member's own generator, so that a member's masks are its solo run's.

    Used by solo runs too (`stacked=False`: x has no member dimension): torch's own nn.Dropout
    draws from the global generator, which E members would share."""

    def __init__(self, p: list[float], generators: list[torch.Generator], stacked: bool = True):
        super().__init__()
        self.p, self.generators, self.stacked = p, generators, stacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.p):
            return x
        keep = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        for mask, p, gen in zip(keep if self.stacked else [keep], self.p, self.generators):
            mask.bernoulli_(1 - p, generator=gen).div_(1 - p)
        return x * keep


class AdaptiveAvgPool2d(nn.Module):
    """E x nn.AdaptiveAvgPool2d: members and batch folded into one batch, torch's own kernel."""

    def __init__(self, members: list[nn.AdaptiveAvgPool2d]):
        super().__init__()
        self.size = members[0].output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.flatten(0, 1), self.size).unflatten(0, x.shape[:2])


class Flatten(nn.Flatten):
    """nn.Flatten one dimension later: the first is the member."""

    def __init__(self, members: list[nn.Flatten]):
        m = members[0]
        super().__init__(m.start_dim + 1 if m.start_dim >= 0 else m.start_dim, m.end_dim if m.end_dim < 0 else m.end_dim + 1)


STACKED: dict[type, type] = {nn.Linear: Linear, nn.Conv2d: Conv2d, nn.BatchNorm1d: BatchNorm,
                             nn.BatchNorm2d: BatchNorm, nn.LayerNorm: LayerNorm, nn.GroupNorm: GroupNorm,
                             nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d, nn.Flatten: Flatten}


def member_dropout(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """`model` with its nn.Dropout modules drawing from `generator` (a solo run: a stack of one)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout([child.p], [generator], stacked=False))
    return model


def stack(models: list[nn.Module], generators: list[torch.Generator]) -> nn.Module:
    """One model computing all of `models` (built alike, each with its own weights) on (E, B, ...)
    input; member e's dropout draws from generators[e].

    The layers in STACKED are replaced; parameterless modules whose forward works on any leading
    dimensions (activations, containers) are kept; a residual block's scalar is stacked as it is.
    Anything else raises ValueError."""
    from .models import Residual

    stacked = copy.deepcopy(models[0])
    per_model = [dict(m.named_modules()) for m in models]
    for name, module in list(stacked.named_modules()):
        members = [named[name] for named in per_model]
        if type(module) in STACKED:
            new = STACKED[type(module)](members)
        elif type(module) is nn.Dropout:
            new = Dropout([m.p for m in members], generators)
        else:
            own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            if own and not isinstance(module, Residual):
                raise ValueError(f"cannot stack {name or 'the model'}: {type(module).__name__} is not a stacked layer")
            for pname, _ in own:  # rezero / skipinit's scalar a: (E,), broadcast by Residual.merge
                setattr(module, pname, _stacked([getattr(m, pname) for m in members], True))
            continue
        if not name:
            return new
        parent, _, child = name.rpartition(".")
        setattr(stacked.get_submodule(parent), child, new)
    return stacked


def member_state(stacked: nn.Module, e: int) -> dict[str, torch.Tensor]:
    """Member e's state dict, as its solo model's: loads into build_model(cfg, data)."""
    state = {k: v[e].clone() for k, v in stacked.state_dict().items()}
    for name, module in stacked.named_modules():
        if isinstance(module, Linear):  # (in, out) back to nn.Linear's (out, in)
            key = f"{name}.weight" if name else "weight"
            state[key] = state[key].t().contiguous()
    return state
