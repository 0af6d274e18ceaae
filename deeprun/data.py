"""Data sets -> train/validation tensors on the device, split by a seeded permutation.

Synthetic sets (seed 001's regression, seed 004's diagonal flip, Gaussian-cluster
classes, pattern images), the user's CSV table (rows as images with data.image_shape),
or the user's own `_target_` returning (x, y).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, import_object, lookup

TASKS = ("regression", "binary", "multiclass")


@dataclass
class Data:
    x_train: torch.Tensor  # (N, n_in) table or (N, C, H, W) images
    y_train: torch.Tensor  # regression/binary: (N, n_out) float; multiclass: (N,) long
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: str  # regression | binary | multiclass
    n_out: int
    classes: list | None = None  # class labels in code order (classification)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """One sample's shape: (n_in,) or (C, H, W)."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_in(self) -> int:
        """Input features, an image's pixels counted flat (what an MLP sees)."""
        return math.prod(self.in_shape)

    @property
    def metric(self) -> str:
        """The validation metric's column name."""
        return "val_r2" if self.task == "regression" else "val_accuracy"


# --- losses and metrics (output heads emit logits) ------------------------------

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "regression": F.mse_loss,  # MSE, not 0.5 * MSE
    "binary": F.binary_cross_entropy_with_logits,
    "multiclass": F.cross_entropy,
}


# --- synthetic sets --------------------------------------------------------------

def regression(cfg: DictConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 001: x ~ U(low, high)^3, y = sin(x0) + 0.5 x1^2 - 0.8 x2."""
    x = torch.rand(cfg.n, 3, generator=gen) * (cfg.high - cfg.low) + cfg.low
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 - 0.8 * x[:, 2]
    y = y + cfg.noise * torch.randn(cfg.n, generator=gen)
    return x, y[:, None]


def diag_flip(cfg: DictConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 004: all 16 binary 2x2 images, flattened [a,b,c,d] -> transpose [a,c,b,d]."""
    x = torch.tensor([[i, j, k, l] for i in (0, 1) for j in (0, 1) for k in (0, 1) for l in (0, 1)],
                     dtype=torch.float32)
    return x, x[:, [0, 2, 1, 3]]


def classification(cfg: DictConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian clusters per class (so no single hyperplane separates them), unit noise."""
    # each centre's distance from the origin is about class_sep noise standard deviations
    centres = torch.randn(cfg.n_classes, 2, cfg.n_features, generator=gen) * cfg.class_sep / cfg.n_features ** 0.5
    labels = torch.arange(cfg.n) % cfg.n_classes
    cluster = torch.randint(0, 2, (cfg.n,), generator=gen)
    x = centres[labels, cluster] + torch.randn(cfg.n, cfg.n_features, generator=gen)
    return x, labels


def _stripes(coord: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Period-4 stripes along `coord` (a grid), shifted by each image's phase (B,) -> (B, S, S)."""
    return ((coord + phase[:, None, None]) // 2 % 2).float()


def _box(yy: torch.Tensor, xx: torch.Tensor, pos: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """Offsets from each image's corner `pos` (B, 2), and where they fall inside the size x size box."""
    dy, dx = yy - pos[:, 0, None, None], xx - pos[:, 1, None, None]
    return dy, dx, (dy >= 0) & (dy < size) & (dx >= 0) & (dx < size)


def _square(yy, xx, pos, size, hollow: bool) -> torch.Tensor:
    dy, dx, inside = _box(yy, xx, pos, size)
    edge = (dy == 0) | (dy == size - 1) | (dx == 0) | (dx == size - 1)
    return (inside & edge if hollow else inside).float()


def _plus(yy, xx, pos, size) -> torch.Tensor:
    dy, dx, inside = _box(yy, xx, pos, size)
    return (inside & ((dy == size // 2) | (dx == size // 2))).float()


# Class k draws the k-th pattern: (grid rows, grid columns, phases (B, 2), corners (B, 2), shape size)
# -> (B, S, S) in {0, 1}. Textures move with the phase, shapes with the corner: where is no cue to the class.
PATTERNS: dict[str, Callable[..., torch.Tensor]] = {
    "horizontal_stripes": lambda yy, xx, ph, pos, size: _stripes(yy, ph[:, 0]),
    "vertical_stripes": lambda yy, xx, ph, pos, size: _stripes(xx, ph[:, 1]),
    "checkerboard": lambda yy, xx, ph, pos, size: (_stripes(yy, ph[:, 0]) + _stripes(xx, ph[:, 1])) % 2,
    "diagonal_stripes": lambda yy, xx, ph, pos, size: _stripes(yy + xx, ph[:, 0]),
    "antidiagonal_stripes": lambda yy, xx, ph, pos, size: _stripes(yy - xx, ph[:, 0]),
    "filled_square": lambda yy, xx, ph, pos, size: _square(yy, xx, pos, size, hollow=False),
    "hollow_square": lambda yy, xx, ph, pos, size: _square(yy, xx, pos, size, hollow=True),
    "plus": lambda yy, xx, ph, pos, size: _plus(yy, xx, pos, size),
}


def images(cfg: DictConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced classes of (n, channels, S, S) images: class k's pattern at a random phase (textures)
    or corner (shapes), pixels -1 / +1, in a random colour per image when channels > 1, plus noise."""
    s, n = cfg.image_size, cfg.n
    labels = torch.arange(n) % cfg.n_classes
    size = max(3, s // 2) | 1  # the shapes' side: odd, so the plus sign has a middle row and column
    phase = torch.randint(0, 4, (n, 2), generator=gen)
    pos = torch.randint(0, s - size + 1, (n, 2), generator=gen)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    x = torch.empty(n, s, s)
    for k, draw in enumerate(list(PATTERNS.values())[:cfg.n_classes]):
        mine = labels == k
        x[mine] = draw(yy, xx, phase[mine], pos[mine], size)
    colour = torch.rand(n, cfg.channels, 1, 1, generator=gen) * 0.5 + 0.5 if cfg.channels > 1 else 1.0
    x = (2 * x[:, None] - 1) * colour + cfg.noise * torch.randn(n, cfg.channels, s, s, generator=gen)
    return x, labels


SYNTHETIC = {"regression": regression, "diag_flip": diag_flip, "classification": classification, "images": images}
SYNTHETIC_TASK = {"regression": "regression", "diag_flip": "regression"}


# --- tables: CSV and the user's own (x, y) ----------------------------------------

def read_csv(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, targets) from the user's CSV file, or a ConfigError naming what is wrong."""
    path = Path(cfg.path)
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"data.path={str(path)!r}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.path={str(path)!r}: not a readable CSV file ({str(e).splitlines()[0]})") from None
    targets = [cfg.target] if isinstance(cfg.target, str) else list(cfg.target)
    for key, names in (("data.target", targets), ("data.features", list(cfg.features or []))):
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise ConfigError(f"{key}: column {missing[0]!r} not in {path.name}; columns: {', '.join(map(str, table.columns))}")
    features = list(cfg.features) if cfg.features else [c for c in table.columns if c not in targets]
    if not features:
        raise ConfigError(f"data.path={str(path)!r}: no feature columns left besides the target {targets}")
    if len(table) < 2:
        raise ConfigError(f"data.path={str(path)!r}: {len(table)} data row(s); at least 2 are needed")
    x = table[features]
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(x[c])]
    if bad:
        example = x[bad[0]].dropna().iloc[0] if x[bad[0]].notna().any() else "?"
        raise ConfigError(f"data.features: column {bad[0]!r} of {path.name} is not numeric (e.g. {example!r}); "
                          f"list numeric columns with data.features=[...]")
    return x, table[targets]


def detect_task(y: pd.DataFrame, task: str, max_classes: int) -> str:
    """regression | binary | multiclass, from data.task or from the target's values."""
    if task == "auto":
        col = y.iloc[:, 0]
        categorical = not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
        few_ints = pd.api.types.is_integer_dtype(col) and col.nunique() <= max_classes
        task = "classification" if y.shape[1] == 1 and (categorical or few_ints) else "regression"
    if task == "regression":
        bad = [c for c in y.columns if not pd.api.types.is_numeric_dtype(y[c])]
        if bad:
            raise ConfigError(f"data.target: column {bad[0]!r} is not numeric; regression needs numbers "
                              f"(or set data.task=classification)")
        return "regression"
    if y.shape[1] != 1:
        raise ConfigError(f"data.target={list(y.columns)}: classification takes one target column")
    n = y.iloc[:, 0].nunique()
    if n < 2:
        raise ConfigError(f"data.target={y.columns[0]!r}: one class only ({y.iloc[0, 0]!r}); classification needs two or more")
    return "binary" if n == 2 else "multiclass"


def encode_target(y: pd.DataFrame, task: str) -> tuple[torch.Tensor, list | None]:
    if task == "regression":
        return torch.from_numpy(y.to_numpy(dtype=np.float32, copy=True)), None
    codes, classes = pd.factorize(y.iloc[:, 0], sort=True)
    codes = torch.as_tensor(codes, dtype=torch.long)
    return (codes.float()[:, None] if task == "binary" else codes), list(classes)


def check_finite(x: pd.DataFrame, y: pd.DataFrame, where: str) -> None:
    bad = ~np.isfinite(x.to_numpy(dtype=np.float64)).all(1)
    if any(pd.api.types.is_numeric_dtype(y[c]) for c in y.columns):
        num = y.select_dtypes("number")
        bad |= ~np.isfinite(num.to_numpy(dtype=np.float64)).all(1)
    bad |= y.isna().any(axis=1).to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(r + 1) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        raise ConfigError(f"{where}: missing or non-finite values in {len(rows)} data row(s): {shown} "
                          f"(1-based, after the header)")


def user_data(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Call data._target_ with the node's other keys; it returns (x, y) arrays or tensors."""
    fn = import_object(cfg._target_, "data._target_")
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in _DEEPRUN_KEYS}
    if "seed" in inspect.signature(fn).parameters:
        kwargs["seed"] = cfg.seed
    x, y = fn(**kwargs)
    x, y = (np.asarray(v.cpu() if torch.is_tensor(v) else v) for v in (x, y))
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    return pd.DataFrame(x), pd.DataFrame(y)


_DEEPRUN_KEYS = ("name", "_target_", "task", "max_classes", "val_fraction", "seed")  # not passed to _target_


# --- the builder ----------------------------------------------------------------

def resolve_device(name: str, job: int | None = None) -> torch.device:
    """auto: cuda, then mps, then cpu; a named device that is absent is a ConfigError. With `job`
    (device.spread in a sweep), CUDA jobs go round the GPUs: job k on GPU k mod count."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if has[d])
    if not has.get(name, False):
        present = ", ".join(d for d, ok in has.items() if ok)
        raise ConfigError(f"device={name}: not available on this machine (torch {torch.__version__}); "
                          f"available: {present}, or device=auto")
    if name == "cuda" and job is not None:
        return torch.device("cuda", job % torch.cuda.device_count())
    return torch.device(name)


def split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) from a permutation seeded by data.seed."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(max(round(n * val_fraction), 1), n - 1) if val_fraction > 0 else 0
    return perm[n_val:], perm[:n_val]


def build_data(cfg: DictConfig, device: torch.device | str | None = None) -> Data:
    """The configured data set, split and on `device` (default: cfg.device); cfg is the whole run config."""
    device = device if device is not None else resolve_device(cfg.device.name)
    node = cfg.data
    if "_target_" in node or node.name == "csv":
        x_df, y_df = user_data(node) if "_target_" in node else read_csv(node)
        check_finite(x_df, y_df, f"data.path={node.path!r}" if node.name == "csv" else "data._target_")
        task = detect_task(y_df, node.task, node.max_classes)
        y, classes = encode_target(y_df, task)
        x = torch.from_numpy(x_df.to_numpy(dtype=np.float32, copy=True))
        image_shape = node.get("image_shape")
        if image_shape is not None and math.prod(image_shape) != x.shape[1]:
            raise ConfigError(f"data.image_shape={list(image_shape)}: {math.prod(image_shape)} pixels (C*H*W), but "
                              f"{Path(node.path).name} has {x.shape[1]} feature columns")
    else:
        make = lookup(SYNTHETIC, node.name, "data set")
        x, y = make(node, torch.Generator().manual_seed(node.seed))
        task = SYNTHETIC_TASK.get(node.name) or ("binary" if node.n_classes == 2 else "multiclass")
        classes = None if task == "regression" else list(range(node.n_classes))
        if task == "binary":
            y = y.float()[:, None]
    max_rows = node.get("max_rows")
    if max_rows is not None and max_rows < len(x):  # a seeded sample of the rows (debug=smoke)
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(node.seed))[:max_rows]
        x, y = x[keep], y[keep]
    train, val = split(len(x), node.val_fraction, node.seed)
    if node.name == "csv":  # standardise with the training split's statistics only
        if node.image_shape is not None:  # one mean and std over all pixels: a blank border pixel has no std
            mean, std = x[train].mean(), x[train].std()
            x = ((x - mean) / (std if std > 0 else 1)).view(len(x), *node.image_shape)
        else:
            mean, std = x[train].mean(0), x[train].std(0)
            x = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
    n_out = y.shape[1] if task != "multiclass" else len(classes)
    to = lambda t: t.to(device)
    return Data(to(x[train]), to(y[train]), to(x[val]), to(y[val]), task, n_out, classes)
