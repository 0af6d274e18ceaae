"""The terminal: a rich progress bar while training, a summary table at the end."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import schema

# The end-of-run table's rows, a selection of summary.json's columns (deeprun/schema.py) in the order shown
SUMMARY_KEYS = schema.select(
    "model", "depth", "width", "act", "init", "norm", "optimizer", "lr", "data", "task", "loss_units", "rows_dropped",
    "device", "params", "status", "diverged_epoch", "final_train_loss", "final_val_loss", "best_val_loss", "val_r2",
    "val_accuracy", "val_rmse", "verdict@init", "grad_norm_first@init", "grad_norm_last@init", "grad_ratio@init",
    "grad_norm_first", "grad_norm_last", "grad_ratio", "dead_frac_max", "saturated_frac_max", "seconds", "error",
    file=schema.SUMMARY)


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


def _summary_value(summary: dict, key: str):
    value = summary[key]
    if key == "task" and value == "multiclass" and summary.get("n_classes") is not None:
        return f"multiclass ({int(summary['n_classes'])} classes)"
    return value


def summary_table(summary: dict, out_dir: Optional[Path]) -> Table:
    """The run's settings and outcome; the records path folds, never cut (print_summary puts it below)."""
    table = Table(title="deeprun", show_header=False, title_justify="left")
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in SUMMARY_KEYS:
        if key in summary and summary[key] is not None and not (key == "rows_dropped" and not summary[key]):
            table.add_row(key, fmt(_summary_value(summary, key)))
    for key in sorted((k for k in summary if k.startswith("loss@")), key=lambda k: int(k[5:])):
        table.add_row(key, fmt(summary[key]))
    if out_dir is not None:
        table.add_row("records", str(out_dir))
    return table


def print_summary(summary: dict, out_dir: Optional[Path], console: Optional[Console] = None) -> None:
    console = console or Console()
    console.print(summary_table(summary, None))
    if out_dir is not None:  # below the table on a line of its own, never wrapped or cut: a path to copy
        console.print(f"records: {out_dir}", soft_wrap=True, markup=False, highlight=False)


# --- results tables (sweeps, deeprun-report) -------------------------------------

# The outcome columns a results table shows after the swept ones, in this order (where some row has them)
KEY_METRICS = schema.select("status", "verdict@init", "final_train_loss", "final_val_loss", "val_r2", "val_accuracy",
                            "val_rmse", "grad_ratio@init", "grad_norm_first@init", "grad_norm_first", "grad_ratio",
                            "dead_frac_max", "saturated_frac_max", "chi_1", "trainable_depth", "jac_condition",
                            "seconds", "error", "expect_missed")
TEXT_COLUMNS = schema.select("error", "expect_missed", "run", "overrides")  # long text: cut with …, not wrapped


def config_columns(frame) -> list[str]:
    """The columns of a results table that describe the config (the schema's config columns), in its order."""
    return schema.config_columns(frame.columns)


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


def fit_priority(columns: list[str]) -> list[str]:
    """`columns` in the order they get room in a narrow terminal: KEY_METRICS' order, with loss@N after the
    validation metrics and before the probes, other columns next and long text last."""
    probes = KEY_METRICS.index("grad_ratio@init")

    def key(c: str) -> tuple[int, int]:
        if c in TEXT_COLUMNS:
            return 4, TEXT_COLUMNS.index(c)
        if c.startswith("loss@"):
            return 1, int(c[5:]) if c[5:].isdigit() else 0
        if c in KEY_METRICS:
            return (0 if KEY_METRICS.index(c) < probes else 2), KEY_METRICS.index(c)
        return 3, 0
    return sorted(columns, key=key)


def results_table(frame, columns: Optional[list[str]] = None, title: Optional[str] = None) -> Table:
    """A rich table of results rows; by default default_columns(frame). Cells never wrap; only long text
    columns are cut (with …), so a table wider than the console needs a wider console, see print_results."""
    columns = columns if columns is not None else default_columns(frame)
    table = Table(title=title, title_justify="left")
    for c in columns:
        numeric = frame[c].dtype.kind in "iuf"
        table.add_column(c, justify="right" if numeric else "left", no_wrap=True, overflow="ellipsis",
                         max_width=48 if c in TEXT_COLUMNS else None, min_width=len(str(c)))
    styles = {"failed": "red", "diverged": "yellow", "interrupted": "magenta", "running": "magenta"}
    for _, row in frame.iterrows():
        table.add_row(*(fmt(None if _missing(row[c]) else row[c]) for c in columns),
                      style=styles.get(row.get("status"), None))
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def table_width(table: Table) -> int:
    """The columns `table` takes with nothing cut: rich's own measure on an unbounded console."""
    return Console(width=100_000, file=io.StringIO()).measure(table).maximum


def fit_columns(frame, columns: list[str], width: int, keep: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(shown, left out): `keep` always, then whole columns in fit_priority order while the table fits `width`;
    shown keeps the order of `columns`."""
    chosen = [c for c in columns if c in keep]
    left = []
    for c in fit_priority([c for c in columns if c not in keep]):
        trial = [x for x in columns if x in chosen or x == c]
        if table_width(results_table(frame, trial)) <= width:
            chosen.append(c)
        else:
            left.append(c)
    return [c for c in columns if c in chosen], [c for c in columns if c in left]


def print_results(frame, columns: Optional[list[str]] = None, title: Optional[str] = None, wide: bool = False,
                  source: str = "DIR", console: Optional[Console] = None,
                  every: Optional[list[str]] = None) -> list[str]:
    """Print the results table; returns the columns left out. Default columns in a terminal (or on the
    `console` given): the swept ones whole, then as many whole metrics as fit, and a line naming the rest.
    Asked-for columns (or wide, or a pipe/log file) all show, in lines as wide as they need.
    every: the default columns when not default_columns(frame) (a report's, over all runs before its filter)."""
    fit = console is not None
    if console is None:
        console = Console()
        fit = console.is_terminal
        if not fit:  # a log file or a pipe: no terminal edge to fit, so every column shows
            console = Console(width=240)
    left: list[str] = []
    if columns is None:
        columns = every if every is not None else default_columns(frame)
        if not wide and fit:
            swept = tuple(c for c in columns if c not in KEY_METRICS and not c.startswith("loss@"))
            columns, left = fit_columns(frame, columns, console.width, keep=swept)
    table = results_table(frame, columns, title)
    # asked-for or swept columns wider than the console: longer lines, never squeezed columns
    width, console.width = console.width, max(console.width, table_width(table))
    console.print(table)
    console.width = width
    if left:
        console.print(f"{len(left)} column{'' if len(left) == 1 else 's'} left out ({', '.join(left)}): "
                      f"deeprun-report {source} --wide, --columns a,b,c, or --out table.csv",
                      markup=False, highlight=False)
    return left


# --- deeprun-diagnose ---------------------------------------------------------------------

DIAGNOSIS_COLUMNS = ("pre_std", "act_std", "grad_norm", "dead_frac", "saturated_frac")  # the rest: the CSV
SHOWN_LAYERS = 24  # a deeper net shows its first and last layers; the whole table is in diagnosis_layers.csv


def _mean_spread(mean, std) -> str:
    """`1.23e-05 ±12%`: the draws' mean and their spread relative to it (nothing where they agree)."""
    if _missing(mean):
        return "-"
    if _missing(std) or std == 0 or mean == 0:
        return f"{mean:.3g}"
    return f"{mean:.3g} ±{min(abs(std / mean), 9.99):.0%}"


def print_diagnosis(result, out_dir: Optional[Path], console: Optional[Console] = None) -> None:
    """The per-layer table (mean ± spread over the draws), the Jacobian and mean-field numbers, the verdict."""
    console = console or Console()
    row, layers = result.row, result.layers
    title = (f"deeprun-diagnose: {row.get('model')} depth {row.get('depth')} width {row.get('width')} act {row.get('act')} "
             f"init {row.get('init')} norm {row.get('norm')}; {row.get('draws')} draws, {row.get('rows')} rows")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)  # light rules: 80 columns hold it
    # dead_frac for the ReLU family, saturated_frac for tanh and sigmoid: the one this net has
    columns = [c for c in DIAGNOSIS_COLUMNS if c in layers and layers[c].notna().any()]
    for c in ("layer", "name", *columns):
        table.add_column(c, justify="left" if c == "name" else "right", no_wrap=True,
                         min_width=None if c == "name" else len(c))
    shown = range(len(layers)) if len(layers) <= SHOWN_LAYERS else \
        [*range(SHOWN_LAYERS // 2), None, *range(len(layers) - SHOWN_LAYERS // 2, len(layers))]
    for i in shown:
        if i is None:
            table.add_row("…", f"{len(layers) - SHOWN_LAYERS} more", *[""] * len(columns))
            continue
        r = layers.iloc[i]
        # the gradient's spread over the draws says whether one draw could mislead; the others' rarely matter
        cells = [_mean_spread(r[c], r.get(f"{c}_std") if c == "grad_norm" else None) for c in columns]
        table.add_row(str(int(r["layer"])), str(r["name"]), *cells)
    console.print(table)
    facts = Table(show_header=False, box=None)
    facts.add_column("key", style="bold", no_wrap=True)
    facts.add_column("value", overflow="fold")
    for key in ("grad_ratio@init", "grad_decay@init", "jac_sv_max", "jac_sv_min", "jac_sv_mean_sq", "jac_condition",
                "jac_method", "mean_field", "sigma_w2", "sigma_b2", "q_star", "chi_1", "xi_q", "xi_c", "trainable_depth",
                "critical_sigma_w2", "seconds"):
        if row.get(key) is not None:
            facts.add_row(key, fmt(row[key]))
    console.print(facts)
    style = "green" if row.get("verdict@init") == "healthy" else "bold red"
    console.print(Text.assemble((str(row.get("verdict@init")), style), f": {row.get('evidence')}"), highlight=False)
    if row.get("fixes"):
        console.print(f"Try: {row['fixes']}.", markup=False, highlight=False)
    if out_dir is not None:
        console.print(f"records: {out_dir}", soft_wrap=True, markup=False, highlight=False)
