"""Run records: summary.json (one results row), epochs.csv, layers.csv; atomic writes; the results table.
Their columns, in order and with their meaning, are deeprun/schema.py's.

A reader never sees a torn file: each record is written to a temporary file in
the same directory and renamed over the old one. No torch here: deeprun-report
and the end of a sweep read records without it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from . import schema

SUMMARY, EPOCHS, LAYERS, RESULTS, GROUPS = schema.SUMMARY, schema.EPOCHS, schema.LAYERS, schema.RESULTS, schema.GROUPS
DIAGNOSIS = schema.DIAGNOSIS  # deeprun-diagnose's row: a run directory holds it or a summary.json
DIAGNOSIS_LAYERS, DIAGNOSIS_BLOCKS, DIAGNOSIS_JACOBIAN = schema.DIAGNOSIS_LAYERS, schema.DIAGNOSIS_BLOCKS, schema.DIAGNOSIS_JACOBIAN
LAYER_COLUMNS = tuple(c.name for c in schema.LAYER_ROW if c.kind == schema.OUTCOME)  # the probes' numbers
FINISHED = ("completed", "diverged")  # a run with one of these statuses has its whole record
# Keys that change how a run is driven or recorded (logger=...), not what it computes: left out of its config_key
RUNTIME_KEYS = ("resume", "strict", "expect", "log.progress", "logger")


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


def write_atomic(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call write(file) on a temporary file next to `path`, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; records are for lab mates to read too
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_partial(run_dir: Path) -> None:
    """Delete what write_atomic left half-written in `run_dir` when its process was killed (SIGKILL
    mid-write): a job starting in its directory again (resume=true) leaves no stale temporary file."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_summary(out_dir: Path, summary: dict, name: str = SUMMARY) -> None:
    """The run's row as JSON (`name`: summary.json, or diagnosis.json for a diagnosis); NaN and inf as null."""
    clean = {k: _finite_or_none(v) for k, v in summary.items()}
    write_atomic(Path(out_dir) / name, lambda f: json.dump(clean, f, indent=1))


def record_of(run_dir: Path) -> Path | None:
    """The row file of a run directory: its summary.json, else its diagnosis.json; None if neither."""
    for name in (SUMMARY, DIAGNOSIS):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def write_table(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, lambda f: f.write(csv_text(frame)))


def csv_text(frame: pd.DataFrame) -> str:
    """frame.to_csv(index=False)'s text (on Linux), but float32 columns as '%.9g' (the fewest digits that read back as the
    same float32 always) where pandas writes numpy's shortest repr: under half the time on a run's layers.csv."""
    columns = [_texts(frame.iloc[:, i]) for i in range(frame.shape[1])]
    if len(columns) == 1:  # an empty line would read as no row at all
        columns = [[t or '""' for t in columns[0]]]
    lines = [",".join(_quoted(str(c)) for c in frame.columns), *map(",".join, zip(*columns))]
    return "\n".join(lines) + "\n"


def _texts(column: pd.Series) -> list[str]:
    """A column's CSV fields, as pandas writes them: NaN and None empty, floats by repr."""
    values, kind = column.tolist(), column.dtype.kind if isinstance(column.dtype, np.dtype) else "O"
    if column.dtype == np.float32:
        return ["%.9g" % v if v == v else "" for v in values]
    if kind == "f":
        return [repr(v) if v == v else "" for v in values]
    if kind in "iub":
        return list(map(str, values))
    return ["" if v is None or v is pd.NA or v != v else _quoted(str(v)) for v in values]


@functools.lru_cache(maxsize=4096)  # layers.csv's names: a few, on every row
def _quoted(text: str, special=re.compile(r'[,"\r\n]').search) -> str:
    """A field in quotes where the csv module's QUOTE_MINIMAL (pandas' default) quotes it."""
    return '"' + text.replace('"', '""') + '"' if special(text) else text


TASK_COLUMNS = {"val_r2": ("val_r2", "val_rmse"), "val_accuracy": ("val_accuracy",)}  # a task's own metrics


def epoch_columns(metric: str) -> list[str]:
    """epochs.csv's columns (schema.EPOCH_ROW) for a run whose validation metric is `metric` (data.metric): a
    regression's val_r2 and val_rmse (in the target's own units), or a classification's val_accuracy."""
    others = {c for own in TASK_COLUMNS.values() for c in own} - set(TASK_COLUMNS.get(metric, ()))
    return [c.name for c in schema.EPOCH_ROW if c.name not in others]


def layer_columns() -> list[str]:
    return [c.name for c in schema.LAYER_ROW]


def config_row(cfg: DictConfig, init: str, device: str) -> dict:
    """The config half of a results row: group names, top-level keys, then group extras (`optimizer.momentum`)."""
    widths = OmegaConf.select(cfg, "model.widths")
    row = {
        "model": cfg.model.name, "depth": len(widths) if widths else cfg.depth, "width": None if widths else cfg.width,
        "act": cfg.act.name, "init": init, "norm": cfg.norm.name, "norm_position": cfg.norm.position,
        "optimizer": cfg.optimizer.name, "scheduler": cfg.scheduler.name, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "dropout": cfg.dropout, "grad_clip": cfg.grad_clip,
        "data": cfg.data.name, "seed": cfg.seed, "device": device, "config_key": config_key(cfg),
    }
    for group in GROUPS:
        for key, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            if key not in ("name", "position"):
                row[f"{group}.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return row


def metrics_row(cfg: DictConfig, metric: str | None, epochs: pd.DataFrame, layers: pd.DataFrame) -> dict:
    """The outcome half of a results row, from the epoch and layer records."""
    nan = math.nan
    trained = epochs[epochs.epoch >= 1]
    last = trained.iloc[-1] if len(trained) else pd.Series(dtype=float)
    row = {
        "final_train_loss": float(last.get("train_loss", nan)),
        "final_val_loss": float(last.get("val_loss", nan)),
        "best_val_loss": float(trained.val_loss.min()) if len(trained) else nan,
    }
    if metric:
        row[metric] = float(last.get(metric, nan))
        if metric == "val_r2":
            row["val_rmse"] = float(last.get("val_rmse", nan))
    by_epoch = epochs.set_index("epoch").train_loss
    for e in cfg.log.loss_at:
        if e <= cfg.epochs:
            row[f"loss@{e}"] = float(by_epoch.get(e, nan))
    final = layers[layers.epoch == layers.epoch.iloc[-1]] if len(layers) else layers
    row.update(gradient_columns(final))
    # the same at initialisation: a net whose gradients vanished from the start reads "no vanishing"
    # at the end of a long run, once every layer's gradient has died (the vanishing-gradient experiment's model D)
    row.update({f"{k}@init": v for k, v in gradient_columns(layers[layers.epoch == 0]).items()})
    row.update(
        dead_frac_max=float(final.dead_frac.max()) if len(final) else nan,
        saturated_frac_max=float(final.saturated_frac.max()) if len(final) else nan,
    )
    return row


def gradient_columns(at: pd.DataFrame) -> dict:
    """grad_norm_first, grad_norm_last (the layer before the output head) and their ratio, from the
    layers.csv rows of one epoch."""
    grads = at.grad_norm.tolist()
    first = grads[0] if grads else math.nan
    last_hidden = grads[max(len(grads) - 2, 0)] if grads else math.nan
    return {"grad_norm_first": first, "grad_norm_last": last_hidden,
            "grad_ratio": first / last_hidden if last_hidden else math.nan}


def read_run(run_dir: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(summary, epochs, layers) of one run directory."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / SUMMARY).read_text())
    epochs = pd.read_csv(run_dir / EPOCHS) if (run_dir / EPOCHS).exists() else pd.DataFrame()
    layers = pd.read_csv(run_dir / LAYERS) if (run_dir / LAYERS).exists() else pd.DataFrame()
    return summary, epochs, layers


def config_key(cfg: DictConfig, record: str = SUMMARY) -> str:
    """A short hash of everything in `cfg` that decides a run's outcome: equal keys, equal runs.
    Resume finds a sweep's finished jobs by it, whatever their job number. A diagnosis (`record`
    DIAGNOSIS) of a config has a key of its own: it is not that config's training run."""
    if record == DIAGNOSIS:
        return config_hash(cfg, RUNTIME_KEYS, extra={"record": DIAGNOSIS})
    return config_hash(cfg, (*RUNTIME_KEYS, "diagnose"))  # diagnose.*: read by deeprun-diagnose only


def config_hash(cfg: DictConfig, leave_out: tuple[str, ...], extra: dict | None = None) -> str:
    """12 hex digits of the resolved `cfg` without its hydra node and the dotted keys `leave_out`, plus `extra`."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra", None)
    for key in leave_out:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    tree.update(extra or {})
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def missed_expectation(expect: DictConfig, summary: dict) -> str | None:
    """The first `expect.<column>_below|_above` the run's summary misses, as one line; None if all hold."""
    for key, bound in expect.items():
        if bound is None:
            continue
        column, side = key.rsplit("_", 1)
        value = summary.get(column)
        holds = isinstance(value, (int, float)) and (value < bound if side == "below" else value > bound)
        if not holds:
            shown = "missing" if value is None else f"{value:.6g}" if isinstance(value, float) else value
            return f"expect.{key}={bound:g} missed: {column} = {shown} (status {summary.get('status')})"
    return None


def natural_key(path: str | Path) -> list:
    """Sort key: job 10 after job 9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (those holding a summary.json or a diagnosis.json) at or under each path, in natural order."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        records = [*path.rglob(SUMMARY), *path.rglob(DIAGNOSIS)] if path.is_dir() else []
        for record in sorted(records, key=lambda p: natural_key(p.parent)):
            found[record.parent] = None
    return list(found)


def results_frame(paths: list[str | Path], relative_to: Path | None = None) -> pd.DataFrame:
    """The results table of every run under `paths`: one row per summary.json, plus its `run` directory.

    Built from the files alone, so it is right whichever launcher ran the jobs and however a
    sweep ended. A summary that cannot be read is skipped with a warning.
    """
    rows = []
    for run_dir in find_runs(paths):
        record = record_of(run_dir) or run_dir / SUMMARY
        try:
            summary = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            print(f"deeprun: skipping {record}: {e}", file=sys.stderr)
            continue
        run = run_dir.relative_to(relative_to) if relative_to is not None and run_dir.is_relative_to(relative_to) else run_dir
        rows.append({**summary, "overrides": _overrides(run_dir), "run": str(run)})
    return pd.DataFrame(rows, columns=column_order(rows))


def column_order(key_lists) -> list[str]:
    """The columns of several rows (or tables) merged, in the schema's order: a config key that only a later
    row has (a resnet's model.residual_scale after an mlp job) still comes before `status`."""
    return schema.order(k for keys in key_lists for k in keys)


def _overrides(run_dir: Path) -> str | None:
    """The run's command-line overrides as Hydra recorded them (`act=tanh depth=8`); None without a .hydra/."""
    path = run_dir / ".hydra" / "overrides.yaml"
    with contextlib.suppress(OSError, ValueError):
        if path.is_file():
            return " ".join(str(o) for o in OmegaConf.load(path))
    return None
