"""The config schema (dataclasses in Hydra's ConfigStore) and the checks a schema cannot express.

Every group option YAML under conf/ names its schema in its defaults list
(``/schema/<group>@_here_: <option>``), so a misspelt key or a wrong type fails
at compose time. Ranges and cross-key rules live in :func:`validate`.
No torch import here: ``--help`` and config errors stay fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, List, Optional, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .schema import EXPECT_COLUMNS

T = TypeVar("T")


class ConfigError(ValueError):
    """A user's mistake in the config: printed as one line, exit status 2."""


class OutOfMemory(ConfigError):
    """Training ran out of memory: the user's to fix (a smaller model or batch), and the run's record stays."""


def lookup(table: dict[str, T], name: str, kind: str) -> T:
    """table[name], or an error listing the valid choices."""
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; choose from: {', '.join(sorted(table))}")
    return table[name]


def conf_dir() -> Path:
    """conf/ inside the installed package, else the checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"deeprun's conf/ not found next to {here}")


# --- groups -----------------------------------------------------------------
# The `name` field of each group is the option's registry name; it is what the
# results table records, never an import path.


@dataclass
class ModelConfig:
    name: str = MISSING


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    widths: Optional[List[int]] = None  # unequal hidden widths; overrides depth and width


@dataclass
class ResNetConfig(ModelConfig):
    name: str = "resnet"
    residual_scale: str = "1"  # 1 | rezero | skipinit | fixup: how each block scales its branch f(x)


@dataclass
class CNNConfig(ModelConfig):
    name: str = "cnn"


@dataclass
class ResNetCNNConfig(ModelConfig):
    name: str = "resnet_cnn"
    residual_scale: str = "1"


@dataclass
class ActConfig:
    name: str = MISSING


@dataclass
class LeakyReLUConfig(ActConfig):
    name: str = "leaky_relu"
    slope: float = 0.01  # negative slope; also sets the Kaiming gain


@dataclass
class InitConfig:
    name: str = "auto"  # auto picks by activation; the pick is what the results record


@dataclass
class UniformInitConfig(InitConfig):
    name: str = "uniform"
    a: float = 0.5  # U(-a, a): the vanishing-gradient experiment's weights


@dataclass
class NormalInitConfig(InitConfig):
    name: str = "normal"
    std: float = 0.01  # N(0, std^2)


@dataclass
class MeanFieldInitConfig(InitConfig):
    name: str = "mean_field"
    sigma_w2: float = 1.0  # weights N(0, sigma_w2 / fan_in): the weight variance of mean-field theory
    sigma_b2: float = 0.0  # biases N(0, sigma_b2)


@dataclass
class CheckpointInitConfig(InitConfig):
    name: str = "checkpoint"
    path: Optional[str] = None  # a state dict saved by torch.save (e.g. a run's final.pt)


@dataclass
class NormConfig:
    name: str = "none"
    position: str = "pre"  # pre: Linear-Norm-Act; post: Linear-Act-Norm (the deep-MLP notebook's failing net)


@dataclass
class OptimizerConfig:
    name: str = MISSING
    weight_decay: float = 0.0


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.01


@dataclass
class RMSpropConfig(OptimizerConfig):
    name: str = "rmsprop"
    alpha: float = 0.99
    momentum: float = 0.0


@dataclass
class SchedulerConfig:
    name: str = "none"


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    name: str = "step"
    step_size: int = 30  # epochs
    gamma: float = 0.1


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    name: str = "cosine"
    eta_min: float = 0.0  # anneals from lr to eta_min over all epochs


@dataclass
class PlateauSchedulerConfig(SchedulerConfig):
    name: str = "plateau"  # on validation loss (training loss when there is no validation set)
    factor: float = 0.1
    patience: int = 10
    min_lr: float = 0.0


@dataclass
class DeviceConfig:
    name: str = "auto"  # auto: cuda, then mps, then cpu
    threads: Optional[int] = None  # torch intra-op CPU threads; null: one per core, shared out among parallel jobs
    spread: bool = False  # in a sweep, job k runs on GPU k mod (number of GPUs)


@dataclass
class DataConfig:
    name: str = MISSING
    val_fraction: float = 0.2
    seed: int = 0  # the data set and its split; the top-level seed drives init and shuffling
    max_rows: Optional[int] = None  # use a seeded sample of at most this many rows; debug=smoke sets 64
    scale_target: bool = False  # standardise regression targets with the train split's mean and std (csv, real sets)


@dataclass
class RegressionDataConfig(DataConfig):
    name: str = "regression"
    n: int = 400
    noise: float = 0.0  # std of Gaussian noise added to y
    low: float = -2.0
    high: float = 2.0


@dataclass
class DiagFlipDataConfig(DataConfig):
    name: str = "diag_flip"
    val_fraction: float = 0.0  # the 16 images are the whole task


@dataclass
class ClassificationDataConfig(DataConfig):
    name: str = "classification"
    n: int = 1000
    n_features: int = 20
    n_classes: int = 2
    class_sep: float = 2.0  # distance of the cluster centres from the origin, in noise standard deviations


@dataclass
class ImagesDataConfig(DataConfig):
    name: str = "images"
    n: int = 1000
    image_size: int = 16  # height = width
    channels: int = 1
    n_classes: int = 4  # class k draws pattern k (data.py: PATTERNS); at most MAX_IMAGE_CLASSES
    noise: float = 1.0  # std of Gaussian pixel noise; patterns are -1 / +1


@dataclass
class CSVDataConfig(DataConfig):
    name: str = "csv"
    path: Optional[str] = None
    target: Any = None  # a column name or a list of them
    features: Optional[List[str]] = None  # default: every column but the targets
    task: str = "auto"  # auto | classification | regression
    max_classes: int = 20  # auto: integer targets with at most this many values are classes
    image_shape: Optional[List[int]] = None  # [C, H, W]: each row's features are an image
    delimiter: str = "auto"  # auto | comma | semicolon | tab | pipe
    decimal: str = "point"  # point | comma: 1.5 or 1,5
    missing: str = "error"  # error | drop: rows with an empty, NaN or infinite cell in a used column
    categorical: str = "error"  # error | onehot: text feature columns
    scale_target: bool = True


@dataclass
class RealDataConfig(DataConfig):  # scikit-learn's real sets (the `sklearn` extra): conf/data/<name>.yaml names one
    scale_target: bool = True  # diabetes is a regression; on the classification sets it does nothing


@dataclass
class LoggerConfig:  # logger=none: deeprun's own records only
    name: str = "none"


@dataclass
class TensorBoardLoggerConfig(LoggerConfig):
    name: str = "tensorboard"
    dir: Optional[str] = None  # null: <run dir>/tensorboard; else a root each run writes below (docs/config.md)


@dataclass
class MLflowLoggerConfig(LoggerConfig):
    name: str = "mlflow"
    tracking_uri: str = "sqlite:///outputs/mlflow.db"  # a relative sqlite path: from the working directory
    experiment: str = "deeprun"


# --- top level ----------------------------------------------------------------


@dataclass
class LogConfig:
    every: int = 1  # probe every N epochs (and at epoch 0, the init)
    loss_at: List[int] = field(default_factory=lambda: [200])  # epochs recorded as loss@<epoch>
    progress: bool = True  # rich progress bar and summary table


@dataclass
class DiagnoseConfig:  # deeprun-diagnose; a training run's verdict@init reads its epoch 0 instead
    draws: int = 8  # independent initialisations the per-layer table is averaged over
    rows: Optional[int] = 128  # the first training rows gradients and activations are measured on; null: all
    jacobian_samples: int = 4  # input-output Jacobians taken on draw 0 (the net this seed trains), one per training row


@dataclass
class SaveConfig:
    checkpoints: List[str] = field(default_factory=list)  # any of: init, final


# Results columns a run can be held to (the schema's expect=True ones): expect.<column>_below / _above=<x>
ExpectConfig = make_dataclass("ExpectConfig", [(f"{c}_{side}", Optional[float], None)
                                               for c in EXPECT_COLUMNS for side in ("below", "above")])


@dataclass
class Config:
    model: Any = MISSING  # built-in options carry their schema; model=custom is open for _target_
    act: ActConfig = MISSING
    init: InitConfig = MISSING
    norm: NormConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    device: DeviceConfig = MISSING
    data: Any = MISSING  # as model: data=custom takes a _target_
    logger: LoggerConfig = MISSING  # how a run is recorded, not what it computes: not in config_key
    depth: int = 3
    width: int = 32
    epochs: int = 300
    lr: float = 1e-3
    batch_size: Optional[int] = None  # null: full batch
    seed: int = 0
    dropout: float = 0.0
    grad_clip: Optional[float] = None  # max global grad norm; null: off
    log: LogConfig = field(default_factory=LogConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    # sweeps
    resume: bool = False  # skip the jobs of this sweep dir that already have a finished record
    strict: bool = False  # the first failing job ends the sweep
    objective: str = "best_val_loss"  # the results column a sweeper (Optuna) minimises
    penalty: float = 1.0e9  # what a failed or diverged job reports to the sweeper instead
    expect: ExpectConfig = field(default_factory=ExpectConfig)  # <column>_below / _above: exit 1 if missed


# Options with keys of their own; the others are checked by the base class the
# top-level field is typed with.
SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"mlp": MLPConfig, "resnet": ResNetConfig, "cnn": CNNConfig, "resnet_cnn": ResNetCNNConfig},
    "act": {"leaky_relu": LeakyReLUConfig},
    "init": {"uniform": UniformInitConfig, "normal": NormalInitConfig, "mean_field": MeanFieldInitConfig,
             "checkpoint": CheckpointInitConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig, "rmsprop": RMSpropConfig},
    "scheduler": {"step": StepSchedulerConfig, "cosine": CosineSchedulerConfig, "plateau": PlateauSchedulerConfig},
    "data": {"regression": RegressionDataConfig, "diag_flip": DiagFlipDataConfig,
             "classification": ClassificationDataConfig, "images": ImagesDataConfig, "csv": CSVDataConfig,
             **dict.fromkeys(("digits", "breast_cancer", "wine", "iris", "diabetes"), RealDataConfig)},
    "logger": {"tensorboard": TensorBoardLoggerConfig, "mlflow": MLflowLoggerConfig},
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, table in SCHEMAS.items():
        for name, node in table.items():
            cs.store(name=f"schema_{group}_{name}", node=node)


register_configs()


# --- checks a type cannot express -----------------------------------------------

@dataclass(frozen=True)
class Activation:
    """What deeprun knows of an activation option: models.py, probes.py and the diagnosis read it here."""
    module: str  # its torch.nn class (models.ACTIVATIONS holds the class itself: no torch here)
    gain: str  # torch.nn.init.calculate_gain's name for it
    auto_init: str  # the scheme init=auto picks for it
    dead_frac: bool = False  # the probes count its dead units (never positive): the ReLU family
    dies: bool = False  # a never-positive unit passes no gradient (flat below zero), so it cannot recover
    tails: Optional[tuple[float, float]] = None  # (low, high): a < low or a > high is a saturated_frac tail


# The smooth ReLU relatives take ReLU's gain; softplus and identity are treated as linear.
ACTIVATION_TABLE: dict[str, Activation] = {
    "relu": Activation("ReLU", "relu", "kaiming_normal", dead_frac=True, dies=True),
    "leaky_relu": Activation("LeakyReLU", "leaky_relu", "kaiming_normal", dead_frac=True),
    "elu": Activation("ELU", "relu", "kaiming_normal", dead_frac=True),
    "selu": Activation("SELU", "selu", "lecun_normal", dead_frac=True),  # self-normalising needs LeCun's variance
    "gelu": Activation("GELU", "relu", "kaiming_normal", dead_frac=True),
    "silu": Activation("SiLU", "relu", "kaiming_normal", dead_frac=True),
    "mish": Activation("Mish", "relu", "kaiming_normal", dead_frac=True),
    "tanh": Activation("Tanh", "tanh", "xavier_uniform", tails=(-0.99, 0.99)),
    "sigmoid": Activation("Sigmoid", "sigmoid", "xavier_uniform", tails=(0.01, 0.99)),
    "softplus": Activation("Softplus", "linear", "xavier_uniform"),
    "identity": Activation("Identity", "linear", "xavier_uniform"),
}
ACTIVATION_NAMES = tuple(ACTIVATION_TABLE)
INIT_NAMES = ("auto", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal",
              "lecun_normal", "orthogonal", "uniform", "normal", "mean_field", "torch_default", "checkpoint")
CHOICES = {
    "act.name": ACTIVATION_NAMES,
    "init.name": INIT_NAMES,
    "norm.name": ("none", "batch", "layer"),
    "norm.position": ("pre", "post"),
    "optimizer.name": ("sgd", "adam", "adamw", "rmsprop"),
    "scheduler.name": ("none", "step", "cosine", "plateau"),
    "device.name": ("auto", "cpu", "cuda", "mps"),
    "data.task": ("auto", "classification", "regression"),
    "model.residual_scale": ("1", "rezero", "skipinit", "fixup"),
    "logger.name": ("none", "tensorboard", "mlflow"),
}
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> its package; deeprun's extra is the logger's name
# data=csv's own keys (a custom data node passes keys of these names on to the user's _target_)
CSV_CHOICES = {
    "delimiter": ("auto", "comma", "semicolon", "tab", "pipe"),
    "decimal": ("point", "comma"),
    "missing": ("error", "drop"),
    "categorical": ("error", "onehot"),
}
IMAGE_MODELS = ("cnn", "resnet_cnn")  # they take (N, C, H, W) input
IMAGE_DATA = ("images", "digits")  # data options that give (N, C, H, W) images
MAX_IMAGE_CLASSES = 8  # data=images draws one pattern per class (data.PATTERNS)
CHECKPOINTS = ("init", "final")
# Sizes past these are typos or out-of-memory errors in waiting (width=10^12 asks for terabytes):
MAX_DEPTH = 10_000
MAX_WEIGHTS = 2 ** 31  # weights (weight_count): 8 GiB of float32
MAX_DATA = 2 ** 28  # values in a synthetic data set: 1 GiB of float32
MAX_THREADS = 1024
FLOAT32_MAX = 3.4028234663852886e38  # a float (a key, a CSV cell) beyond it overflows once torch takes it
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.manual_seed takes
STAGES = 3  # models.STAGES: cnn, resnet_cnn double the channels at most twice
WEIGHT_FORMULAS = {"mlp": "inputs x width + (depth - 1) x width^2",
                   "resnet": "2 x depth x width^2: two Linear layers a block",
                   "cnn": "3x3 convs, channels doubling per stage",
                   "resnet_cnn": "two 3x3 convs a block, channels doubling per stage"}
BYTES_PER_WEIGHT = 4 * 4  # float32 weights, their gradients and Adam's two moments
ACTIVATION_COPIES = 4  # what autograd keeps per unit and sample for backward: layer output, norm, activation, grad


def weight_count(cfg: DictConfig) -> int:
    """About the model's weights, from the config alone, as models.py builds them: fan_in x fan_out a layer,
    x 9 a 3x3 conv (a CSV table's columns are not known yet: its input layer counts as a hidden one)."""
    name, depth, width = cfg.model.get("name"), cfg.depth, cfg.width
    if name == "mlp":  # the input layer, the hidden ones, the head (one output)
        image_shape = cfg.data.get("image_shape")
        inputs = {"regression": 3, "diag_flip": 4, "classification": cfg.data.get("n_features"),
                  "images": cfg.data.get("channels", 0) * cfg.data.get("image_size", 0) ** 2,
                  "csv": math.prod(image_shape) if image_shape else None}.get(cfg.data.get("name")) or width
        sizes = [inputs, *(cfg.model.widths if cfg.model.get("widths") is not None else [width] * depth), 1]
        return sum(a * b for a, b in zip(sizes, sizes[1:]))
    if name == "resnet":
        return 2 * depth * width ** 2
    if name in IMAGE_MODELS:
        image_shape = cfg.data.get("image_shape")
        c_in = cfg.data.get("channels") or (image_shape[0] if image_shape else 1)
        channels = [width * 2 ** (STAGES * i // depth) for i in range(depth)]  # models.stages: a layer's (block's)
        if name == "cnn":
            return 9 * (c_in * width + sum(a * b for a, b in zip(channels, channels[1:])))
        # the stem, then per block conv1, conv2 and, where the channels change, a 1x1 projection
        return 9 * c_in * width + sum(9 * a * b + 9 * b * b + (a * b if a != b else 0)
                                      for a, b in zip([width, *channels], channels))
    return depth * width ** 2  # a user's model: a check on typos only


def memory_needed(cfg: DictConfig, weights: int, rows: int) -> tuple[int, int]:
    """Bytes training needs, about: (weights x 4 bytes x 4: weights, grads, Adam's two moments; activations:
    batch x width x layers x 4 bytes x 4, x H x W for the image models; a resnet block has two layers)."""
    batch = min(cfg.batch_size or rows, rows)
    image_shape = cfg.data.get("image_shape")
    pixels = cfg.data.get("image_size", 0) ** 2 or (image_shape[1] * image_shape[2] if image_shape else 1)
    layers = cfg.depth * (2 if cfg.model.get("name") in ("resnet", "resnet_cnn") else 1)
    per_unit = pixels if cfg.model.get("name") in IMAGE_MODELS else 1
    return weights * BYTES_PER_WEIGHT, batch * cfg.width * per_unit * layers * 4 * ACTIVATION_COPIES


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={_show(value)}: must be {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return str(value) if not isinstance(value, str) else repr(value)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key that is unknown or whose value is out of range."""
    _check_keys(cfg, "")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None:
            _require(value in allowed, key, value, "one of: " + ", ".join(allowed))
    _check_floats(cfg, "")
    _require(1 <= cfg.depth <= MAX_DEPTH, "depth", cfg.depth, f"in [1, {MAX_DEPTH}]")
    _require(cfg.width >= 1, "width", cfg.width, ">= 1")
    weights = weight_count(cfg) if OmegaConf.select(cfg, "model.widths") is None else 0  # widths: checked below
    if weights > MAX_WEIGHTS:
        formula = WEIGHT_FORMULAS.get(cfg.model.get("name"), "depth x width^2")
        raise ConfigError(f"depth={cfg.depth}, width={cfg.width}: about {weights:.1e} weights "
                          f"(model={cfg.model.get('name') or cfg.model.get('_target_')}: {formula}); "
                          f"at most 2^31, 8 GiB of float32")
    _require(SEED_RANGE[0] <= cfg.seed <= SEED_RANGE[1], "seed", cfg.seed, "a 64-bit integer")
    _require(cfg.epochs >= 1, "epochs", cfg.epochs, ">= 1")
    _require(cfg.lr > 0, "lr", cfg.lr, "> 0")
    _require(cfg.batch_size is None or cfg.batch_size >= 1, "batch_size", cfg.batch_size, ">= 1 or null (full batch)")
    _require(0 <= cfg.dropout < 1, "dropout", cfg.dropout, "in [0, 1)")
    if cfg.norm.name == "batch" and cfg.batch_size == 1:
        raise ConfigError("batch_size=1: BatchNorm cannot normalise a single sample; use norm=layer or norm=none")
    _require(cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip", cfg.grad_clip, "> 0 or null (off)")
    _require(cfg.log.every >= 1, "log.every", cfg.log.every, ">= 1")
    _require(cfg.diagnose.draws >= 1, "diagnose.draws", cfg.diagnose.draws, ">= 1")
    _require(cfg.diagnose.rows is None or cfg.diagnose.rows >= 1, "diagnose.rows", cfg.diagnose.rows, ">= 1 or null (all)")
    _require(cfg.diagnose.jacobian_samples >= 1, "diagnose.jacobian_samples", cfg.diagnose.jacobian_samples, ">= 1")
    _require(cfg.device.threads is None or 1 <= cfg.device.threads <= MAX_THREADS, "device.threads",
             cfg.device.threads, f"in [1, {MAX_THREADS}] or null")
    _require(all(e >= 1 for e in cfg.log.loss_at), "log.loss_at", cfg.log.loss_at, "epochs >= 1 (the first epoch is 1)")
    _require(all(c in CHECKPOINTS for c in cfg.save.checkpoints), "save.checkpoints", cfg.save.checkpoints,
             "a list of: " + ", ".join(CHECKPOINTS))
    widths = OmegaConf.select(cfg, "model.widths")
    if widths is not None:
        _require(len(widths) >= 1 and all(w >= 1 for w in widths), "model.widths", widths, "a non-empty list of ints >= 1")
        _require(len(widths) <= MAX_DEPTH and len(widths) * max(widths) ** 2 <= MAX_WEIGHTS, "model.widths",
                 widths, f"at most {MAX_DEPTH} layers and 2^31 weights (8 GiB of float32)")
    if OmegaConf.select(cfg, "model.residual_scale") == "fixup" and cfg.norm.name != "none":
        # zero-initialised branch ends followed by a norm: 0 / sqrt(0 + eps) multiplies their gradient by ~300
        raise ConfigError(f"model.residual_scale='fixup': for norm-free residual nets; add norm=none (norm={cfg.norm.name} now)")
    images = cfg.data.get("name") in IMAGE_DATA or cfg.data.get("name") == "csv" and cfg.data.image_shape is not None
    if cfg.model.get("name") in IMAGE_MODELS and not images:
        raise ConfigError(f"model={cfg.model.name} needs images (N, C, H, W) but data={cfg.data.get('name')} is a table; "
                          f"use data=images, or data=csv with data.image_shape=[C,H,W]")
    if cfg.init.name == "checkpoint":
        _require_file("init.path", cfg.init.path, "init=checkpoint; e.g. init.path=outputs/runs/.../final.pt")
    for key in ("init.a", "init.std"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            _require(value > 0, key, value, "> 0")
    if cfg.init.name == "mean_field":
        _require(cfg.init.sigma_w2 > 0, "init.sigma_w2", cfg.init.sigma_w2, "> 0 (the weight variance times fan_in)")
        _require(cfg.init.sigma_b2 >= 0, "init.sigma_b2", cfg.init.sigma_b2, ">= 0 (the bias variance)")
    _require(cfg.objective in (*EXPECT_COLUMNS, "params") or cfg.objective.startswith("loss@"), "objective",
             cfg.objective, "a results column: " + ", ".join(EXPECT_COLUMNS))
    _validate_data(cfg.data)
    _validate_custom(cfg.model, "model")
    _validate_logger(cfg)


def _validate_logger(cfg: DictConfig) -> None:
    """The logger's package is installed (checked without importing it: torch stays unloaded) and its keys are set."""
    name = OmegaConf.select(cfg, "logger.name", default="none")  # a config saved before loggers: none
    package = LOGGER_PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(f"logger={name} needs {package}, which is not installed; pip install 'deeprun[{name}]'")
    for key in ("tracking_uri", "experiment", "dir"):
        value = OmegaConf.select(cfg, f"logger.{key}")
        if key in cfg.get("logger", {}) and (key != "dir" or value is not None):
            _require(isinstance(value, str) and value.strip() != "", f"logger.{key}", value,
                     "a non-empty string" + (" or null" if key == "dir" else ""))


def _require_file(key: str, path: Optional[str], needed_by: str) -> None:
    if not path:
        raise ConfigError(f"{key}: required with {needed_by}")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}={path!r}: no such file (working directory: {os.getcwd()})")


def _check_floats(node: DictConfig, path: str) -> None:
    """Every float deeprun reads is finite and fits float32 (a user's own `_target_` node keeps its own rules)."""
    if "_target_" in node:
        return
    for key in node.keys():
        value = node._get_node(key)
        if isinstance(value, DictConfig):
            _check_floats(node[key], f"{path}{key}.")
        elif isinstance(value._value(), float):
            v = value._value()
            _require(math.isfinite(v) and abs(v) <= FLOAT32_MAX, f"{path}{key}", v, "a finite number within float32's range")


def _check_keys(node: DictConfig, path: str) -> None:
    """Keys added with `+key=...` bypass the schema; only a `_target_` node (the user's own) takes new ones."""
    cls = OmegaConf.get_type(node)
    if is_dataclass(cls) and "_target_" not in node.keys():
        extra = [k for k in node.keys() if k not in {f.name for f in fields(cls)}]
        if extra:
            from .hints import unknown_key  # hints reads this module's schema

            value = node._get_node(extra[0])._value()
            raise ConfigError(unknown_key(path + str(extra[0]), _show(value).strip("'"), node._get_root(), cls))
    for key in node.keys():
        if isinstance(node._get_node(key), DictConfig):
            _check_keys(node[key], f"{path}{key}.")


def field_names(cls: type) -> list[str]:
    return sorted(f.name for f in fields(cls))


def import_object(path: str, key: str) -> Any:
    """The object at a dotted path (module.attr), or a ConfigError saying why not."""
    if os.getcwd() not in sys.path:  # `model._target_=my_nets.Net` finds ./my_nets.py, as `python -m` would
        sys.path.append(os.getcwd())
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{key}={path!r}: cannot import it ({type(e).__name__}: {e})") from None


def _validate_data(data: DictConfig) -> None:
    _require(0 <= data.get("val_fraction", 0.0) < 1, "data.val_fraction", data.get("val_fraction"), "in [0, 1)")
    if data.get("max_rows") is not None:
        _require(data.max_rows >= 2, "data.max_rows", data.max_rows, ">= 2 or null (all rows)")
    if "scale_target" in data:  # a custom node has no schema to check its type
        _require(isinstance(data.scale_target, bool), "data.scale_target", data.scale_target, "true or false")
    if "max_classes" in data:
        _require(isinstance(data.max_classes, int) and data.max_classes >= 2, "data.max_classes",
                 data.max_classes, "an int >= 2")
    for key in ("n", "n_features"):
        if key in data:
            _require(data[key] >= 1, f"data.{key}", data[key], ">= 1")
    _require(SEED_RANGE[0] <= data.get("seed", 0) <= SEED_RANGE[1], "data.seed", data.get("seed"), "a 64-bit integer")
    if "n_classes" in data:
        _require(data.n_classes >= 2, "data.n_classes", data.n_classes, ">= 2")
    if "noise" in data and "_target_" not in data:  # a custom set's keys are the user's
        _require(data.noise >= 0, "data.noise", data.noise, ">= 0")
    if data.get("name") == "images":
        _require(data.n_classes <= MAX_IMAGE_CLASSES, "data.n_classes", data.n_classes,
                 f"in [2, {MAX_IMAGE_CLASSES}] with data=images (one pattern per class)")
        _require(data.image_size >= 4, "data.image_size", data.image_size, ">= 4")
        _require(data.channels >= 1, "data.channels", data.channels, ">= 1")
    per_row = {"regression": ("3", 3), "classification": ("data.n_features", data.get("n_features")),
               "images": ("data.channels x data.image_size^2", data.get("channels", 0) * data.get("image_size", 0) ** 2)}
    if data.get("name") in per_row and "_target_" not in data:
        what, values = per_row[data.name]
        if data.n * values > MAX_DATA:
            raise ConfigError(f"data.n={data.n} x {what} = {data.n * values:.1e} values: a synthetic set holds "
                              f"at most 2^28 (1 GiB of float32)")
    if data.get("image_shape") is not None:
        shape = data.image_shape
        _require(len(shape) == 3 and all(d >= 1 for d in shape), "data.image_shape", shape,
                 "[C, H, W], three ints >= 1, or null")
    if data.get("name") == "csv":
        _require_file("data.path", data.path, "data=csv; e.g. data.path=my.csv data.target=price")
        for key, allowed in CSV_CHOICES.items():
            _require(data[key] in allowed, f"data.{key}", data[key], "one of: " + ", ".join(allowed))
        if data.decimal == "comma" and data.delimiter == "comma":
            raise ConfigError("data.delimiter=comma: with data.decimal=comma it would split 1,5 in two; "
                              "use semicolon, tab, pipe or auto")
        target = data.target  # an int names a column too: data.target=2020
        one = isinstance(target, (str, int)) and not isinstance(target, bool) and str(target) != ""
        if not (one or isinstance(target, ListConfig) and len(target) > 0):
            raise ConfigError("data.target: required with data=csv; a column name or a list of them, "
                              "e.g. data.target=price or data.target=[price,rent]")
    _validate_custom(data, "data")


def _validate_custom(node: DictConfig, group: str) -> None:
    if "_target_" in node.keys() and OmegaConf.is_missing(node, "_target_"):
        raise ConfigError(f"{group}._target_: required with {group}=custom; "
                          f"e.g. {group}._target_=my_package.my_module.{'MyNet' if group == 'model' else 'make_data'}")
    if "_target_" in node:
        target = node._target_
        _require(isinstance(target, str) and "." in target, f"{group}._target_", target,
                 "an importable dotted path, e.g. my_package.my_module.MyThing")


def compose(overrides: Optional[list[str]] = None) -> DictConfig:
    """The config `deeprun <overrides>` would run, for notebooks and tests."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from . import hints

    if isinstance(overrides, str):  # Hydra would take it one character at a time
        example = ", ".join(f'"{o}"' for o in overrides.split()) or '"depth=4"'
        raise ConfigError(f"compose takes a list of overrides, e.g. compose([{example}]); got the string {overrides!r}")
    overrides = list(overrides or [])
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name="config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:  # Hydra's advice for an unknown key, `+dept=4`, is wrong
            hint = hints.from_error(e, overrides)
            if hint is None:
                raise
            raise ConfigError(hint) from e
    validate(cfg)
    return cfg
