"""The terminal: a rich progress bar while training, a summary table at the end."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

SUMMARY_KEYS = ("model", "depth", "width", "act", "init", "norm", "optimizer", "lr", "data", "device", "params",
                "status", "diverged_epoch", "final_train_loss", "final_val_loss", "best_val_loss", "val_r2",
                "val_accuracy", "grad_norm_first", "grad_norm_last", "grad_ratio", "dead_frac_max",
                "saturated_frac_max", "seconds", "error")


def fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


@contextlib.contextmanager
def epoch_progress(epochs: int, enabled: bool = True) -> Iterator[Callable[[dict], None]]:
    """Yields on_log(row): moves the bar to row['epoch'] and shows its losses."""
    if not enabled:
        yield lambda row: None
        return
    columns = (TextColumn("[bold]epoch"), BarColumn(), MofNCompleteColumn(),
               TextColumn("train {task.fields[train]}  val {task.fields[val]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("train", total=epochs, train="-", val="-")

        def on_log(row: dict) -> None:
            progress.update(task, completed=row["epoch"], train=fmt(row["train_loss"]), val=fmt(row["val_loss"]))

        yield on_log


def summary_table(summary: dict, out_dir: Optional[Path]) -> Table:
    table = Table(title="deeprun", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key in SUMMARY_KEYS:
        if key in summary and summary[key] is not None:
            table.add_row(key, fmt(summary[key]))
    for key in sorted((k for k in summary if k.startswith("loss@")), key=lambda k: int(k[5:])):
        table.add_row(key, fmt(summary[key]))
    if out_dir is not None:
        table.add_row("records", str(out_dir))
    return table


def print_summary(summary: dict, out_dir: Optional[Path]) -> None:
    Console().print(summary_table(summary, out_dir))


# --- results tables (sweeps, deeprun-report) -------------------------------------

KEY_METRICS = ("status", "final_train_loss", "final_val_loss", "val_r2", "val_accuracy", "grad_norm_first",
               "grad_ratio", "dead_frac_max", "saturated_frac_max", "seconds", "error", "expect_missed")


OUTCOME_COLUMNS = ("config_key", "threads", "task", "params")  # stored among the config columns, but not chosen


def config_columns(frame) -> list[str]:
    """The columns of a results table that describe the config: those before `status` in a summary."""
    columns = list(frame.columns)
    return [c for c in columns[:columns.index("status")] if c not in OUTCOME_COLUMNS] if "status" in columns else []


def varying_columns(frame) -> list[str]:
    """What the runs were varied by: the keys of their command-line overrides whose values differ
    (a sweep's axes), then any other config column that differs between runs that got as far as
    training (a failed run still shows init=auto where the others show what auto picked)."""
    columns = config_columns(frame)
    swept: list[str] = []
    if "overrides" in frame:
        given = [dict(o.lstrip("+~").split("=", 1) for o in str(text).split() if "=" in o) if isinstance(text, str) else {}
                 for text in frame["overrides"]]
        for key in dict.fromkeys(k for row in given for k in row):
            if key in columns and len({row.get(key) for row in given}) > 1:
                swept.append(key)
    ran = frame[frame["status"] != "failed"] if "status" in frame else frame
    differ = [c for c in columns if c not in swept and ran[c].astype(str).nunique() > 1]
    return swept + differ


def default_columns(frame) -> list[str]:
    """The swept columns, then the key metrics that have a value in some row."""
    metrics = [c for c in KEY_METRICS if c in frame and frame[c].notna().any()]
    loss_at = sorted((c for c in frame.columns if c.startswith("loss@")), key=lambda c: int(c[5:]))
    return [*varying_columns(frame), *metrics[:1], *loss_at, *metrics[1:]]


def results_table(frame, columns: Optional[list[str]] = None, title: Optional[str] = None) -> Table:
    """A rich table of results rows; by default default_columns(frame)."""
    columns = columns if columns is not None else default_columns(frame)
    table = Table(title=title, title_justify="left")
    for c in columns:
        numeric = frame[c].dtype.kind in "if"
        wide = c in ("error", "expect_missed", "run", "overrides")  # long text: cut, not wrapped down the page
        table.add_column(c, justify="right" if numeric else "left", no_wrap=True,
                         overflow="ellipsis", max_width=48 if wide else None)
    styles = {"failed": "red", "diverged": "yellow", "interrupted": "magenta", "running": "magenta"}
    for _, row in frame.iterrows():
        table.add_row(*(fmt(None if _missing(row[c]) else row[c]) for c in columns),
                      style=styles.get(row.get("status"), None))
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def print_results(frame, columns: Optional[list[str]] = None, title: Optional[str] = None) -> None:
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: no terminal edge to fit, so no squeezed columns
        console = Console(width=240)
    console.print(results_table(frame, columns, title))
