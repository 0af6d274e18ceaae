"""Models and the registries configs name: activations, norms, inits, models.

A *layer* (DESIGN.md) is a module holding a weight matrix or kernel, in forward
order; :func:`weight_layers` lists them for the probes.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import ConfigError, import_object, lookup

ActFactory = Callable[[], nn.Module]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
# The gain torch.nn.init.calculate_gain knows for each activation; the smooth
# ReLU relatives take ReLU's, softplus and identity are treated as linear.
GAINS = {"relu": "relu", "leaky_relu": "leaky_relu", "elu": "relu", "selu": "selu", "gelu": "relu",
         "silu": "relu", "mish": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "softplus": "linear",
         "identity": "linear"}
AUTO_INIT = {"relu": "kaiming_normal", "leaky_relu": "kaiming_normal", "elu": "kaiming_normal",
             "gelu": "kaiming_normal", "silu": "kaiming_normal", "mish": "kaiming_normal",
             "selu": "lecun_normal", "tanh": "xavier_uniform", "sigmoid": "xavier_uniform",
             "softplus": "xavier_uniform", "identity": "xavier_uniform"}
NORMS: dict[str, type[nn.Module] | None] = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def make_act(act: DictConfig) -> ActFactory:
    """A zero-argument factory for the configured activation (a fresh module per call)."""
    cls = lookup(ACTIVATIONS, act.name, "activation")
    if act.name == "leaky_relu":
        return functools.partial(cls, act.slope)
    return cls


def make_norm(name: str, width: int) -> nn.Module | None:
    cls = lookup(NORMS, name, "norm")
    return None if cls is None else cls(width)


def norm_act(width: int, act: ActFactory, norm: str, norm_position: str) -> list[tuple[str, nn.Module]]:
    """[norm, act] for 'pre' (normalise the activation's input), [act, norm] for 'post'."""
    pair = [("act", act())]
    n = make_norm(norm, width)
    if n is not None:
        pair.insert(0 if norm_position == "pre" else 1, ("norm", n))
    return pair


class MLP(nn.Sequential):
    """depth x (Linear -> [norm] -> act -> [dropout]) -> Linear head; `widths` for unequal layers.

    Flat (fc0, act0, ..., head) rather than nested blocks: each container call
    costs as much as a small matmul on the tiny nets of seed 001.
    """

    def __init__(self, n_in: int, n_out: int, *, depth: int, width: int, act: ActFactory,
                 norm: str = "none", norm_position: str = "pre", dropout: float = 0.0,
                 widths: list[int] | None = None):
        sizes = [n_in, *(widths if widths is not None else [width] * depth)]
        layers: list[tuple[str, nn.Module]] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append((f"fc{i}", nn.Linear(fan_in, fan_out)))
            layers += [(f"{kind}{i}", m) for kind, m in norm_act(fan_out, act, norm, norm_position)]
            if dropout > 0:
                layers.append((f"drop{i}", nn.Dropout(dropout)))
        layers.append(("head", nn.Linear(sizes[-1], n_out)))
        super().__init__(OrderedDict(layers))


class ResidualBlock(nn.Module):
    """x -> act(x + f(x)), f = Linear-Norm-Act-Linear-Norm (seed 000's ResidualBlock)."""

    def __init__(self, width: int, act: ActFactory, norm: str, norm_position: str, dropout: float):
        super().__init__()
        f = [("fc1", nn.Linear(width, width)), *norm_act(width, act, norm, norm_position)]
        if dropout > 0:
            f.append(("drop", nn.Dropout(dropout)))
        f.append(("fc2", nn.Linear(width, width)))
        if (n := make_norm(norm, width)) is not None:
            f.append(("norm2", n))
        self.f = nn.Sequential(OrderedDict(f))
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.f(x))


class ResidualMLP(nn.Module):
    """stem -> depth x (x + f(x)) -> head (seed 000's ResNetVanilla, minus the output sigmoid)."""

    def __init__(self, n_in: int, n_out: int, *, depth: int, width: int, act: ActFactory,
                 norm: str = "batch", norm_position: str = "pre", dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.stem_act = act()
        self.blocks = nn.Sequential(*(ResidualBlock(width, act, norm, norm_position, dropout) for _ in range(depth)))
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem_act(self.stem(x))))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "resnet": ResidualMLP}
# Module types whose forward does not depend on train/eval mode (not Dropout, not BatchNorm; a
# user's class might read self.training, so it is not listed)
MODE_FREE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.Sequential, nn.ModuleList,
             MLP, ResidualMLP, ResidualBlock, *ACTIVATIONS.values())


# --- initialisation -----------------------------------------------------------

def _gain(act: DictConfig) -> tuple[str, float]:
    return GAINS[act.name], float(act.get("slope", 0.0))


INITS: dict[str, Callable[[torch.Tensor, DictConfig, DictConfig], object]] = {
    "kaiming_uniform": lambda w, act, init: nn.init.kaiming_uniform_(w, a=_gain(act)[1], nonlinearity=_gain(act)[0]),
    "kaiming_normal": lambda w, act, init: nn.init.kaiming_normal_(w, a=_gain(act)[1], nonlinearity=_gain(act)[0]),
    "xavier_uniform": lambda w, act, init: nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain(*_gain(act))),
    "xavier_normal": lambda w, act, init: nn.init.xavier_normal_(w, gain=nn.init.calculate_gain(*_gain(act))),
    "orthogonal": lambda w, act, init: nn.init.orthogonal_(w, gain=nn.init.calculate_gain(*_gain(act))),
    # LeCun normal: N(0, 1/fan_in), i.e. Kaiming with gain 1; SELU's self-normalisation needs exactly this.
    "lecun_normal": lambda w, act, init: nn.init.kaiming_normal_(w, nonlinearity="linear"),
    "uniform": lambda w, act, init: nn.init.uniform_(w, -init.a, init.a),
    "normal": lambda w, act, init: nn.init.normal_(w, 0.0, init.std),
}


def resolve_init(init: DictConfig, act: DictConfig) -> str:
    """The scheme init=auto stands for with this activation; other names are themselves."""
    return AUTO_INIT[act.name] if init.name == "auto" else init.name


def init_weights(model: nn.Module, init: DictConfig, act: DictConfig) -> str:
    """Initialise every weight layer (zero biases); torch_default leaves torch's own. Returns the scheme."""
    scheme = resolve_init(init, act)
    if scheme == "torch_default":
        return scheme
    fill = lookup(INITS, scheme, "init")
    with torch.no_grad():
        for layer in weight_layers(model).values():
            fill(layer.weight, act, init)
            if layer.bias is not None:
                layer.bias.zero_()
    return scheme


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding a weight matrix or kernel, by module path, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


# --- the builder ----------------------------------------------------------------

def build_model(cfg: DictConfig, data) -> nn.Module:
    """The configured model for `data` (its n_in / n_out), initialised, on the data's device.

    A config with `_target_` builds the user's own class the same way: it gets the
    model node's other keys plus whichever shared arguments its signature names.
    """
    shared = dict(n_in=data.n_in, n_out=data.n_out, depth=cfg.depth, width=cfg.width, act=make_act(cfg.act),
                  norm=cfg.norm.name, norm_position=cfg.norm.position, dropout=cfg.dropout)
    own = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ("name", "_target_")}
    if "_target_" in cfg.model:
        cls = import_object(cfg.model._target_, "model._target_")
        params = _parameters(cls)
        if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            shared = {k: v for k, v in shared.items() if k in params}
    else:
        cls = lookup(MODELS, cfg.model.name, "model")
    try:  # a wrong or missing key is the user's: say which, before the constructor runs
        if _parameters(cls) is not None:
            inspect.signature(cls).bind(**shared, **own)
    except TypeError as e:
        raise ConfigError(f"model ({cfg.model.get('_target_') or cfg.model.name}): {e}") from None
    torch.manual_seed(cfg.seed)
    model = cls(**shared, **own)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg.model._target_!r} returned {type(model).__name__}, not a torch.nn.Module")
    init_weights(model, cfg.init, cfg.act)
    return model.to(data.x_train.device)


def _parameters(cls) -> dict | None:
    """The constructor's parameters, or None where Python cannot tell (some builtins)."""
    try:
        return dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
