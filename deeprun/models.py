"""Models and the registries configs name: activations, norms, inits, models.

A *layer* (docs/records.md, layers.csv) is a module holding a weight matrix or kernel, in forward
order; :func:`weight_layers` lists them for the probes. The scalars of
residual_scale=rezero/skipinit are parameters of a block, not layers.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import ACTIVATION_TABLE, ConfigError, import_object, lookup

ActFactory = Callable[[], nn.Module]

# config.ACTIVATION_TABLE names each activation's torch.nn class, gain and init=auto pick
ACTIVATIONS: dict[str, type[nn.Module]] = {name: getattr(nn, a.module) for name, a in ACTIVATION_TABLE.items()}
GAINS = {name: a.gain for name, a in ACTIVATION_TABLE.items()}  # torch.nn.init.calculate_gain's names
AUTO_INIT = {name: a.auto_init for name, a in ACTIVATION_TABLE.items()}
NORMS: dict[str, type[nn.Module] | None] = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
# The same names on (N, C, H, W) maps: layer norm is GroupNorm with one group (each sample's C x H x W,
# a scale and shift per channel), so it does not fix the image size as LayerNorm([C, H, W]) would
NORMS_2D: dict[str, Callable[[int], nn.Module] | None] = {"none": None, "batch": nn.BatchNorm2d,
                                                          "layer": functools.partial(nn.GroupNorm, 1)}
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# residual_scale -> the start of the learnable scalar a in x + a * f(x), from the number of blocks;
# None: no scalar (1 is the plain skip; fixup rescales the branch weights at init instead, see fixup_)
RESIDUAL_SCALES: dict[str, Callable[[int], float] | None] = {
    "1": None, "rezero": lambda depth: 0.0, "skipinit": lambda depth: depth ** -0.5, "fixup": None}
STAGES = 3  # cnn, resnet_cnn: at most this many stages, each halving the image and doubling the channels


def make_act(act: DictConfig) -> ActFactory:
    """A zero-argument factory for the configured activation (a fresh module per call)."""
    cls = lookup(ACTIVATIONS, act.name, "activation")
    if act.name == "leaky_relu":
        return functools.partial(cls, act.slope)
    return cls


def make_norm(name: str, width: int, image: bool = False) -> nn.Module | None:
    """The norm over `width` features, or over `width` channels of an image map when `image`."""
    cls = lookup(NORMS_2D if image else NORMS, name, "norm")
    return None if cls is None else cls(width)


def feeds_batch_norm(norm: str, norm_position: str) -> bool:
    """Whether a layer's output goes straight into BatchNorm, which subtracts each unit's batch mean:
    the layer's bias then has a gradient of zero up to rounding, which Adam would turn into lr-sized
    steps of noise. Such layers have no bias (as torchvision's ResNets)."""
    return norm == "batch" and norm_position == "pre"


def norm_act(width: int, act: ActFactory, norm: str, norm_position: str,
             image: bool = False) -> list[tuple[str, nn.Module]]:
    """[norm, act] for 'pre' (normalise the activation's input), [act, norm] for 'post'."""
    pair = [("act", act())]
    n = make_norm(norm, width, image)
    if n is not None:
        pair.insert(0 if norm_position == "pre" else 1, ("norm", n))
    return pair


class MLP(nn.Sequential):
    """depth x (Linear -> [norm] -> act -> [dropout]) -> Linear head; `widths` for unequal layers.

    Flat (fc0, act0, ..., head) rather than nested blocks: each container call
    costs as much as a small matmul on tiny nets (the vanishing-gradient experiment's). Images (an
    `in_shape` of more than one dimension) are flattened by a first module.
    """

    def __init__(self, n_in: int, n_out: int, *, depth: int, width: int, act: ActFactory,
                 norm: str = "none", norm_position: str = "pre", dropout: float = 0.0,
                 widths: list[int] | None = None, in_shape: tuple[int, ...] | None = None):
        sizes = [n_in, *(widths if widths is not None else [width] * depth)]
        layers: list[tuple[str, nn.Module]] = []
        if in_shape is not None and len(in_shape) > 1:
            layers.append(("flatten", nn.Flatten()))
        for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append((f"fc{i}", nn.Linear(fan_in, fan_out, bias=not feeds_batch_norm(norm, norm_position))))
            layers += [(f"{kind}{i}", m) for kind, m in norm_act(fan_out, act, norm, norm_position)]
            if dropout > 0:
                layers.append((f"drop{i}", nn.Dropout(dropout)))
        layers.append(("head", nn.Linear(sizes[-1], n_out)))
        super().__init__(OrderedDict(layers))


def branch_scale(residual_scale: str, depth: int) -> nn.Parameter | None:
    """The learnable scalar a of x + a * f(x) for `residual_scale` in a net of `depth` blocks, or None.

    A plain attribute, not a layer: the probes see only modules holding a weight matrix or kernel.
    """
    start = lookup(RESIDUAL_SCALES, str(residual_scale), "residual_scale")
    return None if start is None else nn.Parameter(torch.tensor(float(start(depth))))


def branch(first: tuple[str, nn.Module], second: tuple[str, nn.Module], width: int, act: ActFactory, norm: str,
           norm_position: str, dropout: float, image: bool = False) -> nn.Sequential:
    """The f of a residual block: first -> [norm] -> act -> [dropout] -> second -> [norm]."""
    f = [first, *norm_act(width, act, norm, norm_position, image=image)]
    if dropout > 0:
        f.append(("drop", nn.Dropout(dropout)))
    f.append(second)
    if (n := make_norm(norm, width, image=image)) is not None:
        f.append(("norm2", n))
    return nn.Sequential(OrderedDict(f))


class Residual(nn.Module):
    """What the residual blocks share: act(skip + f(x)), or act(skip + a * f(x)) with rezero and
    skipinit's learnable scalar a; `residual_scale` also tells fixup_ which blocks to rescale."""

    def __init__(self, act: ActFactory, residual_scale: str, depth: int):
        super().__init__()
        self.act = act()
        self.residual_scale = str(residual_scale)
        self.alpha = branch_scale(residual_scale, depth)

    def merge(self, skip: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        if self.alpha is None:
            return self.act(skip + fx)
        # a scalar, or one per member of a stack (E,): it scales the member's (B, ...) rows
        return self.act(skip + self.alpha.view(-1, *[1] * (fx.dim() - 1)) * fx)


class ResidualBlock(Residual):
    """x -> act(x + f(x)), f = Linear-Norm-Act-Linear-Norm (the deep-MLP notebook's ResidualBlock); rezero and
    skipinit make it act(x + a * f(x))."""

    def __init__(self, width: int, act: ActFactory, norm: str, norm_position: str, dropout: float,
                 residual_scale: str = "1", depth: int = 1):
        super().__init__(act, residual_scale, depth)
        self.f = branch(("fc1", nn.Linear(width, width, bias=not feeds_batch_norm(norm, norm_position))),
                        ("fc2", nn.Linear(width, width, bias=norm != "batch")), width, act, norm,
                        norm_position, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(x, self.f(x))


class ResidualMLP(nn.Module):
    """stem -> depth x (x + f(x)) -> head (the deep-MLP notebook's ResNetVanilla, minus the output sigmoid)."""

    def __init__(self, n_in: int, n_out: int, *, depth: int, width: int, act: ActFactory,
                 norm: str = "batch", norm_position: str = "pre", dropout: float = 0.0, residual_scale: str = "1"):
        super().__init__()
        self.flatten = nn.Flatten()  # images: flattened
        self.stem = nn.Linear(n_in, width)
        self.stem_act = act()
        self.blocks = nn.Sequential(*(ResidualBlock(width, act, norm, norm_position, dropout, residual_scale, depth)
                                      for _ in range(depth)))
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem_act(self.stem(self.flatten(x)))))


# --- convolutional ------------------------------------------------------------------

def stages(depth: int) -> list[int]:
    """The stage of each of `depth` conv layers (cnn) or blocks (resnet_cnn): min(depth, STAGES)
    stages of near-equal length; stage s has width * 2^s channels."""
    return [STAGES * i // depth for i in range(depth)]


def conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3, "same" padding: stride 1 keeps the size, stride 2 halves it (rounding up)."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def _channels(in_shape: tuple[int, ...], model: str) -> int:
    if len(in_shape) != 3:
        raise ValueError(f"{model} takes images (N, C, H, W); got samples of shape {tuple(in_shape)}")
    return in_shape[0]


class CNN(nn.Sequential):
    """depth x (Conv3x3 -> [norm] -> act -> [dropout]) -> global average pool -> Linear head (the CNN notebook's).

    Flat like MLP (conv0, norm0, act0, ..., pool, flatten, head). The first conv of
    each stage after the first has stride 2 and doubles the channels.
    """

    def __init__(self, in_shape: tuple[int, ...], n_out: int, *, depth: int, width: int, act: ActFactory,
                 norm: str = "batch", norm_position: str = "pre", dropout: float = 0.0):
        c_in, layers, stage = _channels(in_shape, "cnn"), [], 0
        for i, s in enumerate(stages(depth)):
            c_out = width * 2 ** s
            layers.append((f"conv{i}", conv3x3(c_in, c_out, stride=2 if s != stage else 1,
                                               bias=not feeds_batch_norm(norm, norm_position))))
            layers += [(f"{kind}{i}", m) for kind, m in norm_act(c_out, act, norm, norm_position, image=True)]
            if dropout > 0:
                layers.append((f"drop{i}", nn.Dropout(dropout)))
            c_in, stage = c_out, s
        layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("head", nn.Linear(c_in, n_out))]
        super().__init__(OrderedDict(layers))


class ResidualConvBlock(Residual):
    """x -> act(shortcut(x) + f(x)), f = Conv3x3-Norm-Act-[Dropout]-Conv3x3-Norm (the residual-network notebook's block).

    The shortcut is the identity, or a 1x1 stride-2 conv + norm (a projection)
    where the block halves the size and doubles the channels. rezero and
    skipinit scale the branch by a learnable scalar a.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, act: ActFactory, norm: str, norm_position: str,
                 dropout: float, residual_scale: str = "1", depth: int = 1):
        super().__init__(act, residual_scale, depth)
        self.shortcut = None  # before f: called first in forward, so the probes list it first too
        if stride != 1 or c_in != c_out:
            proj = [("conv", nn.Conv2d(c_in, c_out, 1, stride=stride, bias=norm != "batch"))]
            if (n := make_norm(norm, c_out, image=True)) is not None:
                proj.append(("norm", n))
            self.shortcut = nn.Sequential(OrderedDict(proj))
        self.f = branch(("conv1", conv3x3(c_in, c_out, stride, bias=not feeds_batch_norm(norm, norm_position))),
                        ("conv2", conv3x3(c_out, c_out, bias=norm != "batch")), c_out, act, norm,
                        norm_position, dropout, image=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.merge(skip, self.f(x))


class ResidualCNN(nn.Module):
    """stem Conv3x3 -> [norm] -> act -> depth residual blocks in stages -> global average pool -> head (the residual-network notebook's)."""

    def __init__(self, in_shape: tuple[int, ...], n_out: int, *, depth: int, width: int, act: ActFactory,
                 norm: str = "batch", norm_position: str = "pre", dropout: float = 0.0, residual_scale: str = "1"):
        super().__init__()
        c_in = _channels(in_shape, "resnet_cnn")
        self.stem = nn.Sequential(OrderedDict([("conv", conv3x3(c_in, width, bias=not feeds_batch_norm(norm, norm_position))),
                                               *norm_act(width, act, norm, norm_position, image=True)]))
        blocks, c_in, stage = [], width, 0
        for s in stages(depth):
            c_out = width * 2 ** s
            blocks.append(ResidualConvBlock(c_in, c_out, 2 if s != stage else 1, act, norm, norm_position, dropout,
                                            residual_scale, depth))
            c_in, stage = c_out, s
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.blocks(self.stem(x)))))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "resnet": ResidualMLP, "cnn": CNN, "resnet_cnn": ResidualCNN}


# --- initialisation -----------------------------------------------------------

def _gain(act: DictConfig) -> tuple[str, float]:
    return GAINS[act.name], float(act.get("slope", 0.0))


# scheme -> fill(weight, gain, init), gain = (torch's nonlinearity name, leaky_relu's slope)
INITS: dict[str, Callable[[torch.Tensor, tuple[str, float], DictConfig], object]] = {
    "kaiming_uniform": lambda w, gain, init: nn.init.kaiming_uniform_(w, a=gain[1], nonlinearity=gain[0]),
    "kaiming_normal": lambda w, gain, init: nn.init.kaiming_normal_(w, a=gain[1], nonlinearity=gain[0]),
    "xavier_uniform": lambda w, gain, init: nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain(*gain)),
    "xavier_normal": lambda w, gain, init: nn.init.xavier_normal_(w, gain=nn.init.calculate_gain(*gain)),
    "orthogonal": lambda w, gain, init: nn.init.orthogonal_(w, gain=nn.init.calculate_gain(*gain)),
    # LeCun normal: N(0, 1/fan_in), i.e. Kaiming with gain 1; SELU's self-normalisation needs exactly this.
    "lecun_normal": lambda w, gain, init: nn.init.kaiming_normal_(w, nonlinearity="linear"),
    "uniform": lambda w, gain, init: nn.init.uniform_(w, -init.a, init.a),
    "normal": lambda w, gain, init: nn.init.normal_(w, 0.0, init.std),
    # N(0, sigma_w2 / fan_in), the weights of mean-field theory (Poole et al. 2016); biases below
    "mean_field": lambda w, gain, init: nn.init.kaiming_normal_(w, nonlinearity="linear").mul_(init.sigma_w2 ** 0.5),
}


def resolve_init(init: DictConfig, act: DictConfig) -> str:
    """The scheme init=auto stands for with this activation; other names are themselves."""
    return AUTO_INIT[act.name] if init.name == "auto" else init.name


def init_weights(model: nn.Module, init: DictConfig, act: DictConfig) -> str:
    """Initialise every weight layer (zero biases, N(0, sigma_b2) with mean_field); torch_default leaves
    torch's own. Then Fixup
    where a residual block asks for it. Returns the scheme."""
    scheme = resolve_init(init, act)
    if scheme == "checkpoint":  # the weights of an earlier run, as they were
        load_checkpoint(model, init.path)
        return scheme
    if scheme != "torch_default":
        fill = lookup(INITS, scheme, "init")
        gain = _gain(act)  # once: a config lookup per layer costs more than a small layer's init
        with torch.no_grad():
            for layer in weight_layers(model).values():
                fill(layer.weight, gain, init)
                if layer.bias is not None and scheme == "mean_field":
                    layer.bias.normal_(0.0, init.sigma_b2 ** 0.5)
                elif layer.bias is not None:
                    layer.bias.zero_()
    fixup_(model)
    return scheme


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state dict saved with torch.save (tensors only: weights_only=True runs no pickled code),
    or a ConfigError saying why the file cannot be one for this model."""
    where = f"init.path={path!r}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a whole pickled module, a truncated file, not a torch file at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{where}: not a state dict torch can load safely ({first}); "
                          f"save one with torch.save(model.state_dict(), path)") from None
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise ConfigError(f"{where}: holds a {type(state).__name__}, not a state dict (parameter names -> tensors); "
                          f"save one with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if keys]
        raise ConfigError(f"{where}: does not fit this model ({'; '.join(parts)}); "
                          f"use the model, depth and width it was saved with")
    model.load_state_dict(state)


@torch.no_grad()
def fixup_(model: nn.Module) -> None:
    """Fixup (Zhang et al. 2019) on the blocks with residual_scale=fixup, after the init scheme: the
    last layer of each branch starts at zero (weight and bias: each block starts as its shortcut),
    the branch's other layers are scaled by L^(-1/(2m-2)) for L blocks of m layers, which keeps the
    size of an SGD step's change to the output bounded as depth grows, without a norm. Fixup's
    scalar biases and multiplier are left out."""
    blocks = [m for m in model.modules() if isinstance(m, Residual) and m.residual_scale == "fixup"]
    for block in blocks:
        *others, last = weight_layers(block.f).values()
        m = len(others) + 1
        for layer in others:
            layer.weight.mul_(len(blocks) ** (-1 / (2 * m - 2)))
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding a weight matrix or kernel, by module path, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


# --- the builder ----------------------------------------------------------------

def build_model(cfg: DictConfig, data) -> nn.Module:
    """The configured model for `data` (its n_in or in_shape, and n_out), initialised, on the data's device.

    A config with `_target_` builds the user's own class the same way: it gets the
    model node's other keys plus whichever shared arguments its signature names.
    """
    shared = dict(n_in=data.n_in, in_shape=data.in_shape, n_out=data.n_out, depth=cfg.depth, width=cfg.width,
                  act=make_act(cfg.act), norm=cfg.norm.name, norm_position=cfg.norm.position, dropout=cfg.dropout)
    own = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ("name", "_target_")}
    if "_target_" in cfg.model:
        cls = import_object(cfg.model._target_, "model._target_")
    else:
        cls = lookup(MODELS, cfg.model.name, "model")
    params = _parameters(cls)  # n_in for a table model, in_shape for a conv net; both for an MLP
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        shared = {k: v for k, v in shared.items() if k in params}
    try:  # a wrong or missing key is the user's: say which, before the constructor runs
        if params is not None:
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
