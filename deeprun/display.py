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
