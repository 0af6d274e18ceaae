"""Stacked training: E jobs that build the same shapes train as one model of E members.

A member is one job of a sweep. Each is built as its solo run builds it (`build_model`, its
own seed and init), then the members' parameters are stacked along a new first dimension, so
that one forward pass computes every member (a batched matmul, a grouped convolution) and one
backward pass every member's gradients. Nothing mixes members: member e's numbers depend on
member e's weights and batches only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from omegaconf import DictConfig, OmegaConf

# Keys members of one stack may differ in: they change numbers, not shapes. dropout's rate may
# differ, not whether there is dropout (a Dropout module or none).
MEMBER_KEYS = ("seed", "init", "lr", "optimizer.momentum", "optimizer.weight_decay", "optimizer.nesterov",
               "dropout", "grad_clip", "save", "expect", "resume", "strict", "objective", "penalty", "log.progress")


def group_key(cfg: DictConfig) -> Optional[str]:
    """Jobs with equal keys train together as one stack; None: this job runs alone (why_alone says why)."""
    if why_alone(cfg) is not None:
        return None
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra", None)
    for key in MEMBER_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    tree["dropout>0"] = cfg.dropout > 0
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def why_alone(cfg: DictConfig) -> Optional[str]:
    """Why this job cannot join a stack, or None if it can."""
    if "_target_" in cfg.model:
        return "a model._target_ model (only deeprun's own models are stacked)"
    if cfg.scheduler.name == "plateau":
        return "scheduler=plateau (it steps on each member's own validation loss)"
    return None
