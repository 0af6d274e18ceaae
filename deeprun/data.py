"""Data sets -> train/validation tensors on the device, split by a seeded permutation.

Synthetic sets (the vanishing-gradient experiment's regression, the diagonal flip, Gaussian-cluster
classes, pattern images), scikit-learn's small real sets (digits, breast_cancer, wine, iris,
diabetes), the user's CSV table (rows as images with data.image_shape), or the user's own
`_target_` returning (x, y).
"""

from __future__ import annotations

import csv
import inspect
import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .config import FLOAT32_MAX, ConfigError, import_object, lookup

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
    rows_dropped: int = 0  # CSV rows that data.missing=drop left out
    # data.scale_target: the regression targets' train-split (mean, std) per column, which y_* are
    # standardised by; None when y_* are in the target's own units
    y_scale: tuple[list[float], list[float]] | None = None

    @property
    def n_classes(self) -> int | None:
        """The number of classes; None for regression."""
        return None if self.classes is None else len(self.classes)

    @property
    def loss_units(self) -> str | None:
        """What the regression losses are measured in: `standardised` or `target` (None: classification)."""
        if self.task != "regression":
            return None
        return "standardised" if self.y_scale is not None else "target"

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
    """The vanishing-gradient experiment's data: x ~ U(low, high)^3, y = sin(x0) + 0.5 x1^2 - 0.8 x2."""
    x = torch.rand(cfg.n, 3, generator=gen) * (cfg.high - cfg.low) + cfg.low
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 - 0.8 * x[:, 2]
    y = y + cfg.noise * torch.randn(cfg.n, generator=gen)
    return x, y[:, None]


def diag_flip(cfg: DictConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal flip: all 16 binary 2x2 images, flattened [a,b,c,d] -> transpose [a,c,b,d]."""
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

@dataclass
class Table:
    """A table before the split: numeric features and the targets as read."""
    x: pd.DataFrame  # numeric feature columns (one-hot columns included)
    y: pd.DataFrame  # target columns; text targets are class labels
    onehot: list = field(default_factory=list)  # columns of x that data.categorical=onehot made: kept 0/1
    rows_dropped: int = 0  # rows data.missing=drop left out
    source: str = ""  # a user's data._target_ (and y), which errors about the targets then name

    def target_key(self) -> str:
        """What an error about the targets names: the CSV's data.target, or the user's data._target_."""
        if self.source:
            return self.source
        names = [str(c) for c in self.y.columns]
        return f"data.target={names[0]!r}" if len(names) == 1 else f"data.target={names}"


DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}  # data.delimiter; auto picks one
DECIMALS = {"point": ".", "comma": ","}  # data.decimal
SNIFF_LINES = 20  # data.delimiter=auto reads the header and at most this many lines after it
MAX_CATEGORIES = 1000  # data.categorical=onehot: a text column with more values is an ID or free text


def read_csv(cfg: DictConfig) -> Table:
    """The user's CSV file as features and targets, or a ConfigError naming what is wrong."""
    path = Path(cfg.path)
    where = f"data.path={str(path)!r}"
    table, sep = _read_table(path, cfg.delimiter, cfg.decimal, where)
    # data.target=2020 reaches us as an int; the header's names are strings
    targets = [str(t) for t in ([cfg.target] if isinstance(cfg.target, (str, int)) else cfg.target)]
    listed = [str(c) for c in cfg.features or []]
    for key, names in (("data.target", targets), ("data.features", listed)):
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise ConfigError(f"{key}: column {missing[0]!r} not in {path.name}; columns: {', '.join(map(str, table.columns))}")
    for c in listed:  # a target among the features would hand the model its answer
        if c in targets or listed.count(c) > 1:
            raise ConfigError(f"data.features: column {c!r} " + ("is data.target too" if c in targets else "is listed twice"))
    features = listed or [c for c in table.columns if c not in targets]
    # pandas names a header's empty cell "Unnamed: <position>"; such a column is nearly always the row
    # index that DataFrame.to_csv writes by default, and as a feature it would hand the model row order
    unnamed = [i for i, c in enumerate(table.columns) if c == f"Unnamed: {i}" and c in features]
    if unnamed and not listed:
        raise ConfigError(f"{where}: column {unnamed[0] + 1} has no name in the header (a row index, as pandas' "
                          f"to_csv writes by default?); save the file with index=False, give the column a name to "
                          f"use it as a feature, or list the features with data.features=[...]")
    if not features:
        raise ConfigError(f"{where}: no feature columns left besides the target {targets}")
    table = table[features + targets]
    if cfg.decimal == "point" and sep != ",":
        table = read_decimal_commas(table, where)
    # Only the columns in use count: an empty cell in a column left out is no reason to stop.
    # Every problem found is reported at once: fixing one should not merely uncover the next.
    table, dropped, problems = drop_missing(table, cfg.missing, where)
    if len(table) < 2:
        after = f" left after data.missing=drop dropped {dropped}" if dropped else ""
        raise ConfigError(f"{where}: {len(table)} data row(s){after}; at least 2 are needed")
    x, onehot, text = encode_features(table[features], cfg.categorical, path.name)
    problems += text
    if problems:
        raise ConfigError("; ".join(problems))
    if cfg.image_shape is not None and math.prod(cfg.image_shape) != x.shape[1]:
        raise ConfigError(f"data.image_shape={list(cfg.image_shape)}: {math.prod(cfg.image_shape)} pixels (C*H*W), "
                          f"but {path.name} has {x.shape[1]} feature columns")
    return Table(x, table[targets], onehot, dropped)


DECIMAL_COMMA = re.compile(r"[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?")  # 3,014  -0,5  ,5  1,5e3: one comma, no point
INTEGER = re.compile(r"[+-]?\d+")


def read_decimal_commas(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """Text columns whose every cell is a number written with a decimal comma (a file saved with
    data.decimal left at point, in a language that writes 3,014) as numbers, with a one-line note on
    stderr: one-hot encoding them, or taking such a target's values as classes, would train on garbage.
    A cell with a point besides (1.234,5: thousands?) leaves its column text, for the error to name."""
    read, example = [], ""
    for c in table.columns:
        if pd.api.types.is_numeric_dtype(table[c]):
            continue
        cells = table[c].dropna().astype(str).str.strip()
        cells = cells[cells != ""]
        commas = cells.str.fullmatch(DECIMAL_COMMA.pattern)
        if len(cells) and commas.any() and (commas | cells.str.fullmatch(INTEGER.pattern)).all():
            table = table.assign(**{c: pd.to_numeric(table[c].astype(str).str.replace(",", ".", regex=False)
                                                     .where(table[c].notna()), errors="coerce")})
            read.append(c)
            example = example or cells[commas].iloc[0]
    if read:
        print(f"deeprun: {where}: read {len(read)} column(s) with decimal commas ({_first(map(repr, read), 3)}; "
              f"e.g. {example} as {example.replace(',', '.')}); set data.decimal=comma to say so", file=sys.stderr)
    return table


def _read_table(path: Path, delimiter: str, decimal: str, where: str) -> tuple[pd.DataFrame, str]:
    """(the whole file as pandas reads it, the delimiter), once the delimiter is known and the header's
    names are unique."""
    try:
        sep, header = _peek(path, delimiter, decimal)
        if not header:  # 0 bytes, or blank lines only
            raise ConfigError(f"{where}: the file is empty")
        # pandas renames a repeated name x to x.1, and data.target=x would pick one of them silently
        repeated = sorted({name for name in header if name and header.count(name) > 1})
        if repeated:
            raise ConfigError(f"{where}: column {repeated[0]!r} appears {header.count(repeated[0])} times in the "
                              f"header; data.target and data.features pick columns by name, so names must be unique")
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name.
        # skipinitialspace: "a, b" names columns a and b, not a and " b".
        # low_memory=False: pandas types each column on the whole file, not chunk by chunk, so a big file
        # with a stray text cell gives no DtypeWarning, whose lines would break the one-line error.
        return pd.read_csv(path, sep=sep, decimal=DECIMALS[decimal], encoding="utf-8-sig", skipinitialspace=True,
                           low_memory=False), sep
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{where}: the file is empty") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except (pd.errors.ParserError, csv.Error) as e:
        raise ConfigError(f"{where}: not a readable CSV file ({str(e).strip().splitlines()[0]})") from None
    except OSError as e:  # a directory, no permission
        raise ConfigError(f"{where}: cannot read it ({e.strerror or e})") from None


def _peek(path: Path, delimiter: str, decimal: str = "point") -> tuple[str, list[str]]:
    """(the delimiter, the header's names as written) from the first lines of the file.

    data.delimiter=auto tries comma, semicolon, tab and pipe, and takes the one that splits the header
    into the most columns and every sampled line after it into as many (comma wins a tie; with
    data.decimal=comma, comma is not a candidate: it is inside the numbers). Without one
    that fits every line, the header decides alone, and pandas names the first line that does not fit.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = list(itertools.islice(f, SNIFF_LINES + 1))
    cut = len(lines) > SNIFF_LINES  # the sample may end inside a row: do not hold its last row against it
    candidates = ([d for d in DELIMITERS.values() if d != DECIMALS[decimal]] if delimiter == "auto"
                  else [DELIMITERS[delimiter]])
    best = (",", [], False)  # (delimiter, rows, every row as wide as the header)
    for sep in candidates:
        rows = _rows(lines, sep)
        rows = rows[:-1] if cut and len(rows) > 1 else rows
        if not rows:
            continue
        fits = len(rows[0]) > 1 and all(len(r) == len(rows[0]) for r in rows)  # one column fits any file
        if not best[1] or (fits, len(rows[0])) > (best[2], len(best[1][0])):
            best = (sep, rows, fits)
    sep, rows, _ = best
    return sep, rows[0] if rows else []


def _rows(lines: list[str], sep: str) -> list[list[str]]:
    """The non-blank rows of `lines` split at `sep`, quotes respected, as pandas splits them."""
    rows = []
    try:
        for row in csv.reader(lines, delimiter=sep, skipinitialspace=True):
            if row and row != [""]:
                rows.append(row)
    except csv.Error:  # a quoted field that runs past the sample's end
        pass
    return rows


def bad_cells(frame: pd.DataFrame) -> np.ndarray:
    """(rows, columns) bool: empty, NaN, +-inf, or a number float32 cannot hold (it would be inf)."""
    bad = frame.isna().to_numpy()
    for j, c in enumerate(frame.columns):
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]):
            values = frame[c].to_numpy(dtype=np.float64)
            bad[:, j] |= ~(np.abs(values) <= FLOAT32_MAX)  # beyond it: inf as a float32 tensor; NaN compares False
    return bad


def drop_missing(table: pd.DataFrame, rule: str, where: str) -> tuple[pd.DataFrame, int, list[str]]:
    """data.missing: `error` names the rows and columns with a missing or non-finite cell; `drop`
    leaves those rows out. Returns (the rows kept, how many were dropped, the problem as [text] or [])."""
    bad = bad_cells(table)
    rows = bad.any(axis=1)
    if not rows.any():
        return table, 0, []
    if rule == "drop":
        return table[~rows], int(rows.sum()), []
    columns = [str(c) for c, b in zip(table.columns, bad.any(axis=0)) if b]
    return table, 0, [f"{where}: missing or non-finite values (empty, nan, inf, beyond float32) in "
                      f"{rows.sum()} data row(s): {_first(np.flatnonzero(rows) + 1)} (1-based, after the header), "
                      f"column(s): {_first(columns)}; data.missing=drop leaves such rows out"]


def _first(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (" ..." if len(items) > n else "")


def encode_features(x: pd.DataFrame, rule: str, name: str) -> tuple[pd.DataFrame, list, list[str]]:
    """data.categorical: `error` names the text columns; `onehot` puts one 0/1 column per value
    (`city=Oslo`, values sorted, learned on every row kept) where each text column was.
    Returns (numeric features, the one-hot columns' names, the problem as [text] or [])."""
    text = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
    if not text:
        return x, [], []
    if rule == "error":
        value = _not_a_number(x[text[0]])
        if len(text) == 1:
            what, example = f"column {text[0]!r} of {name} is", f"e.g. {value!r}"
        else:
            what, example = f"columns {_first(map(repr, text))} of {name} are", f"e.g. {value!r} in {text[0]!r}"
        if DECIMAL_COMMA.fullmatch(value.strip()):  # a number after all: one-hot would make each value a column
            return x, [], [f"data.features: {what} not numeric ({example}): a decimal comma? set data.decimal=comma "
                           f"(and data.delimiter to the one between fields), or list numeric columns with "
                           f"data.features=[...]"]
        return x, [], [f"data.features: {what} not numeric ({example}); one-hot encode with "
                       f"data.categorical=onehot, or list numeric columns with data.features=[...]"]
    wide = [c for c in text if x[c].nunique() > MAX_CATEGORIES]
    if wide:
        raise ConfigError(f"data.categorical=onehot: column {wide[0]!r} of {name} has {x[wide[0]].nunique()} distinct "
                          f"values (at most {MAX_CATEGORIES}: one column each); leave it out with data.features=[...]")
    parts, onehot = [], []
    for c in x.columns:
        if c in text:
            part = pd.get_dummies(x[c].astype(str), prefix=str(c), prefix_sep="=", dtype=np.float32)
            parts.append(part)
            onehot += list(part.columns)
        else:
            parts.append(x[[c]])
    return pd.concat(parts, axis=1), onehot, []


def _not_a_number(column: pd.Series) -> str:
    """The first value of a text column that is not a number: the one to look at."""
    values = column.dropna().astype(str)
    numbers = pd.to_numeric(values, errors="coerce")
    odd = values[numbers.isna()]
    return odd.iloc[0] if len(odd) else (values.iloc[0] if len(values) else "?")


MIN_ROWS_PER_CLASS = 3  # data.task=auto: fewer rows per class on average is numbers read as labels, not classes


def detect_task(table: Table, task: str, max_classes: int) -> str:
    """regression | binary | multiclass, from data.task or from the target's values. A classification
    with more than max_classes classes (or, found by auto, under MIN_ROWS_PER_CLASS rows per class) is an error."""
    y = table.y
    auto = task == "auto"
    if auto:
        col = y.iloc[:, 0]
        categorical = not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
        # integers are labels when few, and each has rows enough; else they are numbers (a price, a count)
        n = col.nunique()
        few_ints = pd.api.types.is_integer_dtype(col) and n <= max_classes and len(col) >= MIN_ROWS_PER_CLASS * n
        task = "classification" if y.shape[1] == 1 and (categorical or few_ints) else "regression"
    if task == "regression":
        bad = [c for c in y.columns if not pd.api.types.is_numeric_dtype(y[c])]
        if bad:
            raise ConfigError(f"{table.target_key()}: column {bad[0]!r} is not numeric; regression needs numbers "
                              f"(or set data.task=classification)")
        return "regression"
    if y.shape[1] != 1:
        raise ConfigError(f"{table.target_key()}: classification takes one target column")
    n = y.iloc[:, 0].nunique()
    if n < 2:  # task=auto included: an integer column with one value is a one-class problem, not a regression
        value = y.iloc[0, 0]
        value = value.item() if isinstance(value, np.generic) else value  # 7, not np.int64(7)
        raise ConfigError(f"{table.target_key()}: one class only ({value!r}); classification needs two or more")
    few_rows = auto and n > 2 and len(y) < MIN_ROWS_PER_CLASS * n  # text labels nearly one per row: not classes
    if n > max_classes or few_rows:
        why = (f"more than data.max_classes={max_classes}" if n > max_classes
               else f"{len(y) / n:.1f} rows per class on average")
        raise ConfigError(f"{table.target_key()}: column {str(y.columns[0])!r} has {n} distinct values to take as "
                          f"classes ({why}); set data.task=regression if they are numbers, or "
                          f"data.task=classification data.max_classes={n} to train {n} classes")
    return "binary" if n == 2 else "multiclass"


def encode_target(y: pd.DataFrame, task: str) -> tuple[torch.Tensor, list | None]:
    if task == "regression":
        return torch.from_numpy(y.to_numpy(dtype=np.float32, copy=True)), None
    codes, classes = pd.factorize(y.iloc[:, 0], sort=True)
    codes = torch.as_tensor(codes, dtype=torch.long)
    return (codes.float()[:, None] if task == "binary" else codes), list(classes)


def user_data(cfg: DictConfig) -> Table:
    """Call data._target_ with the node's other keys; it returns (x, y) arrays or tensors of numbers.
    data.missing and data.categorical are CSV keys: here a missing value is always an error."""
    fn = import_object(cfg._target_, "data._target_")
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in _DEEPRUN_KEYS}
    if "seed" in inspect.signature(fn).parameters:
        kwargs["seed"] = cfg.seed
    where = f"data._target_={cfg._target_!r}"
    out = fn(**kwargs)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ConfigError(f"{where}: returned {type(out).__name__}; it must return a pair (x, y)")
    x, y = (np.asarray(v.detach().cpu() if torch.is_tensor(v) else v) for v in out)
    x, y = (v[:, None] if v.ndim == 1 else v for v in (x, y))
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ConfigError(f"{where}: returned x of shape {x.shape} and y of shape {y.shape}; "
                          f"x must be (N, n_in) or (N,), y (N, n_out) or (N,), with the same N")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ConfigError(f"{where}: x holds {x.dtype} values, not numbers; encode them before returning x")
    x_df = pd.DataFrame(x, columns=[f"x[:, {j}]" for j in range(x.shape[1])])
    y_df = pd.DataFrame(y, columns=[f"y[:, {j}]" for j in range(y.shape[1])])
    both = pd.concat([x_df, y_df], axis=1)
    bad = bad_cells(both)
    if bad.any():
        rows, columns = bad.any(axis=1), [c for c, b in zip(both.columns, bad.any(axis=0)) if b]
        raise ConfigError(f"{where}: missing or non-finite values (nan, inf, beyond float32) in {rows.sum()} row(s): "
                          f"{_first(np.flatnonzero(rows))} (0-based, as x[i] and y[i]), column(s): {_first(columns)}")
    return Table(x_df, y_df, source=f"{where}: y")


# not passed to _target_ (max_rows: debug=smoke sets it on every data node)
_DEEPRUN_KEYS = ("name", "_target_", "task", "max_classes", "val_fraction", "seed", "max_rows", "scale_target")


# --- scikit-learn's real sets, shipped inside its wheel (no download) ----------------

# data option -> (sklearn.datasets loader, task, image shape or None)
REAL = {
    "digits": ("load_digits", "multiclass", (1, 8, 8)),
    "breast_cancer": ("load_breast_cancer", "binary", None),
    "wine": ("load_wine", "multiclass", None),
    "iris": ("load_iris", "multiclass", None),
    "diabetes": ("load_diabetes", "regression", None),
}


def real_data(name: str) -> tuple[torch.Tensor, torch.Tensor, str, list | None]:
    """(x (N, n_in), y, task, classes) of scikit-learn's data set `name`; y as build_data's synthetic sets give it."""
    loader, task, _ = REAL[name]
    try:
        from sklearn import datasets
    except ImportError:
        raise ConfigError(f"data={name} needs scikit-learn: pip install 'deeprun[sklearn]'") from None
    x, y = getattr(datasets, loader)(return_X_y=True)
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if task == "regression":
        return x, torch.from_numpy(np.asarray(y, dtype=np.float32))[:, None], task, None
    codes, classes = pd.factorize(y, sort=True)
    codes = torch.as_tensor(codes, dtype=torch.long)
    return x, (codes.float()[:, None] if task == "binary" else codes), task, [c.item() for c in classes]


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
    table = None
    if "_target_" in node or node.name == "csv":
        table = user_data(node) if "_target_" in node else read_csv(node)
        task = detect_task(table, node.task, node.max_classes)
        y, classes = encode_target(table.y, task)
        x = torch.from_numpy(table.x.to_numpy(dtype=np.float32, copy=True))
    elif node.name in REAL:
        x, y, task, classes = real_data(node.name)
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
    if table is not None and task != "regression" and len(y[train].unique()) < 2:
        label = classes[int(y[train][0])]
        raise ConfigError(f"{table.target_key()}: the training split holds one class only ({label!r}; "
                          f"the others fell in the validation split); add rows, or try another data.seed")
    if node.name == "csv" or node.name in REAL:  # standardise with the training split's statistics only
        image_shape = node.image_shape if node.name == "csv" else REAL[node.name][2]
        if image_shape is not None:  # one mean and std over all pixels: a blank border pixel has no std
            mean, std = x[train].mean(), x[train].std()
            x = ((x - mean) / (std if std > 0 else 1)).view(len(x), *image_shape)
        else:
            mean, std = x[train].mean(0), x[train].std(0)
            std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column becomes 0, not 0/0
            if table is not None:
                onehot = torch.tensor([c in table.onehot for c in table.x.columns])
                mean[onehot], std[onehot] = 0.0, 1.0  # one-hot columns stay 0/1: a rare value would grow to ~sqrt(N)
            x = (x - mean) / std
    y_scale = None
    if task == "regression" and node.get("scale_target", False):  # as sklearn's TransformedTargetRegressor
        mean, std = y[train].mean(0), y[train].std(0) if len(train) > 1 else torch.ones(y.shape[1])
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant target stays constant (0), not 0/0
        y, y_scale = (y - mean) / std, (mean.tolist(), std.tolist())
    n_out = y.shape[1] if task != "multiclass" else len(classes)
    to = lambda t: t.to(device)
    return Data(to(x[train]), to(y[train]), to(x[val]), to(y[val]), task, n_out, classes,
                table.rows_dropped if table is not None else 0, y_scale)
