"""`deeprun-report PATH...`: the results table of any runs, filtered and sorted; pivots with mean ± std
over seeds; the table written as csv, markdown or parquet; plots of loss curves and per-layer gradients;
one self-contained HTML page of it all (--html, deeprun/html.py).

Reads records only: no torch, so it starts in about a second. matplotlib loads only for --plot, altair
only for --html.

In Python, `deeprun.results(PATH)` is the table and `deeprun.report(PATH, html=..., pivot=..., plot=...)`
everything else: `deeprun.report` names this module, which is callable for that (see _CallableModule).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import re
import shlex
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, Union

import numpy as np
import pandas as pd

from . import schema
from .display import default_columns, fmt, print_results, varying_columns
from .hints import suggest
from .records import (DIAGNOSIS, DIAGNOSIS_JACOBIAN, DIAGNOSIS_LAYERS, RESULTS, read_run, results_frame, write_atomic,
                      write_table)

USAGE_ERROR = 2  # as `deeprun`: a user's mistake
FORMATS = ("csv", "md", "parquet")
SEEDS = schema.select("seed", "data.seed")  # the columns a pivot cell may average over
MAX_GROUPS = 20  # configurations per plot: beyond this, lines and legend stop being readable
WIDE = 10  # values whose max/min is at least this (a decade) get a log axis
FEW = 6  # configurations whose singular values get a histogram each; more get a range each
# a verdict@init pivot: the same colour for a verdict in every plot (diagnosis.VERDICTS)
VERDICT_COLOURS = {"healthy": "#2ca02c", "vanishing": "#1f77b4", "exploding": "#d62728", "dead units": "#7f7f7f",
                   "saturated": "#9467bd", "ordered": "#17becf", "chaotic": "#ff7f0e", "bottleneck": "#8c564b"}
# the config columns a plot's subtitle names when all its runs share them (a selection of schema.ROW's)
SHARED = schema.select("model", "depth", "width", "act", "init", "norm", "optimizer", "lr", "batch_size", "epochs",
                       "data")
FEW_LAYER_PNGS = 3  # --plot without --layers: layers_<run>.png for each run when there are at most this many
LAYER_FRACTIONS = (("dead_frac", "dead fraction (ReLU family)", "Reds"),
                   ("saturated_frac", "saturated fraction (tanh, sigmoid)", "Purples"))
Paths = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

EXAMPLES = """examples:
  deeprun-report outputs/sweeps/2026-11-22_14-13-21-590484
  deeprun-report outputs/sweeps/* --filter status=completed --sort=-final_val_loss
  deeprun-report outputs/sweeps/2026-11-22_14-13-21-590484 --wide
  deeprun-report runs/a runs/b --columns act,depth,final_train_loss,grad_norm_first --out table.md
  deeprun-report SWEEP --pivot depth act final_train_loss --out pivot.csv --plot plots/
  deeprun-report SWEEP DIAGNOSIS_SWEEP --html report.html --pivot depth act final_val_loss --pivot depth act verdict@init
"""


class ReportError(ValueError):
    """A user's mistake: one line on stderr, exit status 2."""


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command = shlex.join(["deeprun-report", *(sys.argv[1:] if argv is None else argv)])
    try:
        report(args.paths, columns=args.columns, sort=args.sort, filters=args.filters, pivot=args.pivot,
               out=args.out, plot=args.plot, wide=args.wide, html=args.html,
               layers=args.layers, command=command)
    except ReportError as e:
        _fail(str(e))
    except BrokenPipeError:  # `deeprun-report ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own is two lines: usage, then the message
        _fail(f"{message} (see deeprun-report --help)")


def _fail(message: str) -> NoReturn:
    print(f"deeprun-report: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="deeprun-report", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                description="The results table of the runs under PATHs (run or sweep directories, searched "
                            "recursively): printed, pivoted, written to a file and plotted.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="run or sweep directories, e.g. outputs/sweeps/<stamp>")
    p.add_argument("--columns", metavar="A,B,C",
                   help="columns to show and write (default: those that vary, then key metrics), "
                        "e.g. --columns act,depth,final_train_loss")
    p.add_argument("--wide", action="store_true",
                   help="show every default column whatever the terminal's width (lines may run past its "
                        "edge); by default a narrow terminal gets the columns that fit, e.g. --wide")
    p.add_argument("--sort", metavar="COL[,COL]",
                   help="sort rows by these columns, missing values last; a leading - sorts descending "
                        "(write it with =), e.g. --sort=-final_val_loss or --sort act,depth")
    p.add_argument("--filter", dest="filters", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose KEY equals VALUE, compared as the column's type (null: missing); "
                        "repeat to require several, e.g. --filter depth=8 --filter status=completed")
    p.add_argument("--pivot", nargs=3, action="append", metavar=("ROWS", "COLS", "VALUE"),
                   help="VALUE per (ROWS, COLS) cell; mean ± std (sample std, ddof=1) where a cell holds runs "
                        "that differ only by seed; repeat for several, e.g. --pivot depth act final_train_loss")
    p.add_argument("--out", metavar="FILE",
                   help="write the table shown (with --pivot: the pivot, its std as '<col> std' columns); "
                        "the format follows the suffix: .csv, .md or .parquet, e.g. --out results.md")
    p.add_argument("--plot", metavar="DIR",
                   help="write PNGs into DIR: loss.png (loss curves; a band over seeds), grad_norm.png (gradient "
                        "norm per layer at initialisation and at the end), layers_<run>.png (layer x epoch "
                        "heatmaps of the runs named by --layers; without it, of each run when there are at most "
                        f"{FEW_LAYER_PNGS}) and with --pivot the pivot, e.g. --plot plots/")
    p.add_argument("--layers", action="append", default=[], metavar="RUN",
                   help="a run whose layer x epoch heatmaps --plot draws and --html opens with: its directory, "
                        "the end of its path, or a sweep job's number (3 for 3_act=tanh,depth=8); repeat for "
                        "several, e.g. --layers 3 --layers runs/relu-d8")
    p.add_argument("--html", metavar="FILE",
                   help="write one self-contained HTML page (no network needed to open it): the table, sortable "
                        "and filterable, the pivots (default: the two swept keys against the objective), loss "
                        "curves, per-layer views and the diagnosis; needs pip install 'deeprun[html]', "
                        "e.g. --html report.html")
    return p


def report(paths: Paths, columns: str | None = None, sort: str | None = None,
           filters: Sequence[str] = (), pivot: Sequence[str] | Sequence[Sequence[str]] | None = None,
           out: str | None = None, plot: str | None = None, wide: bool = False, html: str | None = None,
           layers: Sequence[str] = (), command: str | None = None) -> pd.DataFrame:
    """Everything deeprun-report does; raises ReportError for bad input before it writes anything.

    paths: a run or sweep directory, or several; pivot: (ROWS, COLS, VALUE) or a list of them; html: the page
    to write; layers: the runs (as chosen_runs reads them) whose layer x epoch heatmaps --plot draws and the
    page opens with; command: how it was called, for the page. Returns the table of the runs kept (after
    filters and sort)."""
    paths = _paths(paths)
    pivots = _pivots(pivot)
    out_path, plot_dir = _check_out(out), None if plot is None else Path(plot)
    if out_path is not None and len(pivots) > 1:
        raise ReportError(f"--out {out}: writes one table; give one --pivot with --out (the page of --html "
                          "shows them all)")
    if plot_dir is not None and plot_dir.exists() and not plot_dir.is_dir():
        raise ReportError(f"--plot {plot}: not a directory; name a directory for the PNGs")
    html_path = _check_html(html)
    everything = load(paths)
    frame = select(everything, filters, sort)
    # default: what varies among all the runs found, so a filter does not make its own column disappear
    shown = (list(dict.fromkeys(_column(frame, c.strip(), "--columns") for c in columns.split(","))) if columns
             else None)
    kept = f"{len(frame)} of {len(everything)}" if len(frame) < len(everything) else str(len(frame))
    stats = [pivot_stats(frame, *p) for p in pivots]
    chosen = chosen_runs(frame, layers)
    # default columns: print_results fits them to the terminal; the file gets them all
    print_results(frame, shown, title=f"{kept} run{'' if kept == 1 else 's'} under {', '.join(paths)}", wide=wide,
                  source=" ".join(paths), every=default_columns(everything))
    table = frame[shown or default_columns(everything)]
    for (rows, cols, value), cell_stats in zip(pivots, stats):
        table, cells = pivot_frame(cell_stats, rows, cols), pivot_frame(cell_stats, rows, cols, as_text=True)
        over = f" (mean ± std over {cell_stats['count'].max()} seeds)" if cell_stats["count"].max() > 1 else ""
        print_results(cells, list(cells.columns), title=value + over)
    if out_path is not None:
        try:
            write(table, out_path)
        except OSError as e:  # permissions, a full disk: the user's path, not our bug
            raise ReportError(f"--out {out}: cannot write: {e.strerror or e}") from None
        print(f"wrote {out_path}")
    if plot_dir is not None:
        try:
            written = plots(frame, plot_dir, list(zip(pivots, stats)), layer_runs=chosen if layers else None)
        except OSError as e:
            raise ReportError(f"--plot {plot}: cannot write: {e.strerror or e}") from None
        for path in written:
            print(f"wrote {path}")
    if html_path is not None:
        from . import html as page

        try:
            page.write(html_path, frame, everything, list(zip(pivots, stats)), paths=paths, chosen=chosen,
                       command=command or _call(paths, pivots, filters), filters=filters)
        except OSError as e:
            raise ReportError(f"--html {html}: cannot write: {e.strerror or e}") from None
        print(f"wrote {html_path}")
    return frame


def results(paths: Paths) -> pd.DataFrame:
    """The results table deeprun-report builds of every run at or under `paths` (a directory or several):
    one row per summary.json or diagnosis.json, its config and outcome columns, `overrides` and `run`."""
    return load(_paths(paths))


def _paths(paths: Paths) -> list[str]:
    return [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]


def _pivots(pivot) -> list[tuple[str, str, str]]:
    """--pivot's triples: None, one (ROWS, COLS, VALUE) or a list of them."""
    if not pivot:
        return []
    triples = [pivot] if isinstance(pivot[0], str) else list(pivot)
    for triple in triples:
        if isinstance(triple, str) or len(triple) != 3:
            raise ReportError(f"--pivot {triple}: expected ROWS COLS VALUE, e.g. --pivot depth act final_train_loss")
    return [tuple(t) for t in triples]


def _call(paths: list[str], pivots: list, filters: Sequence[str]) -> str:
    """How the Python API was called, for the page's header."""
    args = [repr(paths[0] if len(paths) == 1 else paths)]
    args += [f"filters={list(filters)!r}"] if filters else []
    args += [f"pivot={pivots!r}"] if pivots else []
    return f"deeprun.report({', '.join(args)}, html=...)"


def _check_html(html: str | None) -> Path | None:
    if html is None:
        return None
    try:
        import altair  # noqa: F401  (the charts' specs)
        import vl_convert  # noqa: F401  (the vega, vega-lite and vega-embed scripts, inlined)
    except ImportError:
        raise ReportError("--html needs altair and vl-convert-python, which are not installed: "
                          "pip install 'deeprun[html]'") from None
    if Path(html).is_dir():
        raise ReportError(f"--html {html}: a directory; name the file to write, e.g. --html report.html")
    return Path(html)


def chosen_runs(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """The `run` paths of the runs named: each name a run directory, the end of its path (`relu-d8-s0`,
    `sweep/3_act=tanh,depth=8`) or a sweep job's number (`3`: Hydra's job directory 3_act=tanh,depth=8, in
    each sweep); an error naming some runs where one matches none."""
    chosen: list[str] = []
    runs = [str(r) for r in frame["run"]]
    for name in names:
        want = Path(name).parts
        if name.isdigit():
            found = [r for r in runs if Path(r).name == name or Path(r).name.startswith(f"{name}_")]
        else:
            found = [r for r in runs if want and (Path(r).parts[-len(want):] == want or Path(r) == Path(name))]
        if not found:
            examples = ", ".join(Path(r).name for r in runs[:3])
            raise ReportError(f"--layers {name}: no run directory {name} among these runs; name one by its "
                              f"directory, e.g. --layers {Path(runs[0]).name} (runs here: {examples}"
                              f"{', ...' if len(runs) > 3 else ''})")
        chosen += [r for r in found if r not in chosen]
    return chosen


def load(paths: Sequence[str]) -> pd.DataFrame:
    """The results table of every run at or under `paths`."""
    for path in paths:
        if not Path(path).is_dir():
            why = "not a directory" if Path(path).exists() else "no such directory"
            raise ReportError(f"PATH {path}: {why}; pass run or sweep directories, e.g. outputs/sweeps/<stamp>")
    frame = results_frame(list(paths))
    if frame.empty:
        raise ReportError(f"no runs under {', '.join(paths)}: no readable summary.json there; pass run or sweep "
                          "directories, e.g. outputs/sweeps/<stamp>")
    return frame


def select(frame: pd.DataFrame, filters: Sequence[str] = (), sort: str | None = None) -> pd.DataFrame:
    """The rows that match every KEY=VALUE filter, sorted by `sort` (`col,-col`; missing values last)."""
    for text in filters:
        key, eq, value = text.partition("=")
        if not eq:
            raise ReportError(f"--filter {text}: expected KEY=VALUE, e.g. --filter act=tanh")
        matched = frame[_matches(frame[_column(frame, key, "--filter")], value, text)]
        if matched.empty:
            present = list(dict.fromkeys(_text(v) for v in frame[key]))
            more = f" and {len(present) - 12} more" if len(present) > 12 else ""
            raise ReportError(f"--filter {text}: no run matches; {key} here is one of: {', '.join(present[:12])}{more}")
        frame = matched
    if sort:
        keys = [k.strip() for k in sort.split(",")]
        by = [_column(frame, k.lstrip("-"), "--sort") for k in keys]
        frame = frame.sort_values(by, ascending=[not k.startswith("-") for k in keys], na_position="last",
                                  kind="stable")
    return frame


def _matches(column: pd.Series, value: str, text: str) -> pd.Series:
    if value == "null":
        return column.isna()
    if column.dtype.kind in "iuf":
        try:
            return column == float(value)
        except ValueError:
            raise ReportError(f"--filter {text}: {column.name} holds numbers, e.g. {_text(column.iloc[0])}") from None
    return column.map(_text) == value


def _text(value) -> str:
    """A value as a person types it in an override or filter: true, 8, 0.01, null."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt(value)


def _column(frame: pd.DataFrame, name: str, option: str) -> str:
    """`name` if the table has that column, else an error naming the option and columns it has."""
    if name in frame.columns:
        return name
    known = schema.column(name)
    if known is not None:  # a real column these runs lack: val_accuracy of regressions, chi_1 of training runs
        files = " and ".join(f for f in known.files if f != RESULTS) or RESULTS
        raise ReportError(f"{option}: no run here has column {name!r} ({files}: {known.meaning}); columns here "
                          f"include {', '.join(default_columns(frame))} ({len(frame.columns)} in all)")
    hint = suggest(name, frame.columns)
    raise ReportError(f"{option}: no column {name!r}; {hint + ' ' if hint else ''}columns here include "
                      f"{', '.join(default_columns(frame))} ({len(frame.columns)} in all)")


def pivot_stats(frame: pd.DataFrame, rows: str, cols: str, value: str) -> pd.DataFrame:
    """mean, std and count of `value` per (rows, cols) cell. An error if a cell mixes runs that differ in
    more than their seed: its mean would hide that difference."""
    option = f"--pivot {rows} {cols} {value}"
    for name in (rows, cols, value):
        _column(frame, name, "--pivot")
    if len({rows, cols, value}) < 3:
        raise ReportError(f"{option}: ROWS, COLS and VALUE must be three different columns")
    axes = [f"{what} {name} is not a config column" for what, name in (("ROWS", rows), ("COLS", cols))
            if schema.kind(name) in (schema.OUTCOME, schema.RECORD)]  # a column the schema lacks may be either
    if schema.is_config(value):
        axes.append(f"VALUE {value} is a config column")
    if axes:  # the usual slip: the outcome first, `--pivot final_train_loss depth act`
        swept = [c for c in varying_columns(frame) if c not in SEEDS] or schema.config_columns(frame.columns)
        raise ReportError(f"{option}: {', '.join(axes)}; ROWS and COLS are config columns (here: "
                          f"{', '.join(swept)}), VALUE an outcome")
    text = frame[value].dtype.kind not in "iufb" and frame[value].notna().any()  # verdict@init: the commonest per cell
    if not text and (frame[value].dtype.kind not in "iuf" or frame[value].isna().all()):
        numeric = [c for c in default_columns(frame) if frame[c].dtype.kind == "f" and frame[c].notna().any()]
        raise ReportError(f"{option}: VALUE {value} has no numbers in these runs; numeric: {', '.join(numeric)}")
    ran = frame[frame["status"] != "failed"] if "status" in frame else frame  # a failed run still says init=auto
    cells = ran.groupby([rows, cols], dropna=False)
    others = [c for c in varying_columns(frame) if c not in (rows, cols, *SEEDS)]
    mixed = [c for c in others if (cells[c].nunique(dropna=False) > 1).any()]
    if mixed:
        raise ReportError(f"{option}: a cell holds runs that differ in {', '.join(mixed)}, not only in seed; "
                          f"add --filter {mixed[0]}=<value> or pivot by {mixed[0]}")
    grouped = frame.groupby([rows, cols], dropna=False, sort=False)[value]
    if text:
        stats = pd.DataFrame({"mean": grouped.agg(_commonest), "std": math.nan, "count": grouped.count()})
    else:
        stats = grouped.agg(["mean", "std", "count"])
    stats = stats.reindex(pd.MultiIndex.from_product([_order(frame[rows]), _order(frame[cols])],
                                                     names=[rows, cols])).dropna(how="all")
    return stats.astype({"count": int})  # reindex made it float: "over 2 seeds", not "2.0"


def _commonest(values: pd.Series):
    """The most common text of a pivot cell (a verdict over seeds); the first seen where tied."""
    counts = values.dropna().value_counts(sort=False)
    return counts.idxmax() if len(counts) else None


def _order(column: pd.Series) -> list:
    """A pivot axis in the sweep's order: numbers sorted as numbers, text in order of first appearance."""
    values = list(pd.unique(column))  # in order of first appearance, one NaN at most
    return sorted(v for v in values if pd.notna(v)) + [v for v in values if pd.isna(v)] if column.dtype.kind in "iuf" \
        else values


def pivot_frame(stats: pd.DataFrame, rows: str, cols: str, as_text: bool = False) -> pd.DataFrame:
    """The pivot as a flat table: a ROWS column, then per COLS value v the mean `<cols>=v` and, where cells
    hold several seeds, `<cols>=v std`. as_text: `mean ± std` text cells instead, for the terminal."""
    mean, std = _unstack(stats, "mean", cols), _unstack(stats, "std", cols)
    table = pd.DataFrame({rows: mean.index})
    for c in mean.columns:
        name = f"{cols}={_text(c)}"
        if as_text:
            table[name] = [fmt(m) + ("" if pd.isna(s) else f" ± {fmt(s)}") for m, s in zip(mean[c], std[c])]
            continue
        table[name] = mean[c].to_numpy()
        if stats["count"].max() > 1:
            table[f"{name} std"] = std[c].to_numpy()
    return table


def _unstack(stats: pd.DataFrame, what: str, cols: str) -> pd.DataFrame:
    """stats[what] as a grid in stats' own row and column order (unstack alone sorts both)."""
    rows, columns = (pd.unique(stats.index.get_level_values(i)) for i in (0, 1))
    return stats[what].unstack(cols).reindex(index=rows, columns=columns)


def _check_out(out: str | None) -> Path | None:
    if out is None:
        return None
    kind = Path(out).suffix.lstrip(".").lower()
    if kind not in FORMATS:
        raise ReportError(f"--out {out}: unknown format {Path(out).suffix or '(no suffix)'}; "
                          "name a .csv, .md or .parquet file")
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401  (pandas writes parquet through it)
        except ImportError:
            raise ReportError(f"--out {out}: parquet needs pyarrow: pip install 'deeprun[parquet]'") from None
    return Path(out)


def write(table: pd.DataFrame, path: Path) -> None:
    """`table` as csv, markdown or parquet by the suffix of `path`, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.suffix.lstrip(".").lower()
    if kind == "csv":
        write_table(path, table)
    elif kind == "md":
        write_atomic(path, lambda f: f.write(markdown(table)))
    else:
        write_atomic(path, lambda f: table.to_parquet(f, index=False), mode="wb")


def markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table: numbers right-aligned to 4 significant digits, missing values as -."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |\n"

    rule = "|" + "|".join("---:" if table[c].dtype.kind in "iuf" else "---" for c in table.columns) + "|\n"
    return line(table.columns) + rule + "".join(line(map(fmt, row)) for row in table.itertuples(index=False))


# --- plots: matplotlib's Figure without pyplot renders PNGs on the Agg canvas, no display or global state ---

def plots(frame: pd.DataFrame, plot_dir: Path, pivots: Sequence[tuple[Sequence[str], pd.DataFrame]] = (),
          layer_runs: Sequence[str] | None = None) -> list[Path]:
    """Write loss.png, grad_norm.png, layers_<run>.png (the runs of `layer_runs`; None: each run when there
    are at most FEW_LAYER_PNGS) and each pivot's plot (pivots: ((ROWS, COLS, VALUE), pivot_stats) pairs)
    into plot_dir; their paths."""
    runs, skipped, diagnosed = [], [], []
    for _, row in frame.iterrows():
        if (Path(row["run"]) / DIAGNOSIS).is_file() and not (Path(row["run"]) / "summary.json").is_file():
            diagnosed.append(row)  # deeprun-diagnose's: no epochs, its own layer table
            continue
        try:
            _, epochs, layers = read_run(Path(row["run"]))
        except (OSError, ValueError):  # a missing, torn or empty record (ValueError: pandas' EmptyDataError)
            epochs = layers = pd.DataFrame()
        (runs if len(epochs) and len(layers) else skipped).append((row, epochs, layers))
    if skipped:
        names = ", ".join(str(row["run"]) for row, _, _ in skipped)
        print(f"deeprun-report: {len(skipped)} runs without records left out of the plots: {names}", file=sys.stderr)
    figures = {}
    if runs:
        groups, subtitle = _groups(frame, runs), _subtitle(frame, len(runs))
        figures["loss.png"] = _loss_figure(groups, subtitle)
        figures["grad_norm.png"] = _grad_figure(groups, subtitle)
    if layer_runs is None:
        layer_runs = [str(row["run"]) for row, _, _ in runs] if len(runs) <= FEW_LAYER_PNGS else []
    wanted = set(map(str, layer_runs))
    names = _short_names([str(row["run"]) for row, _, _ in runs])
    for (row, epochs, layers), name in zip(runs, names):
        if str(row["run"]) in wanted:
            figures[_file_name(f"layers_{name}.png")] = _layers_figure(layers, str(row["run"]))
    if diagnosed:
        figures["diagnosis.png"] = _diagnosis_figure(pd.DataFrame(diagnosed))
    for (rows, cols, value), stats in pivots:
        name = _file_name(f"pivot_{value}_by_{rows}_and_{cols}.png")
        figures[name] = _pivot_figure(stats, rows, cols, value,
                                      lines=frame[rows].dtype.kind in "iuf" and stats["mean"].dtype.kind in "iuf")
    plot_dir.mkdir(parents=True, exist_ok=True)
    for name, figure in figures.items():
        write_atomic(plot_dir / name, functools.partial(figure.savefig, format="png", dpi=110), mode="wb")
    return [plot_dir / name for name in figures]


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.@=-]+", "_", name)


def _short_names(runs: Sequence[str]) -> list[str]:
    """Each run's path less the part all of them share (`sweep/3_act=tanh`, or its directory's name alone)."""
    parts = [Path(r).parts for r in runs]
    common = 0
    while parts and all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


def label_keys(frame: pd.DataFrame, ran: pd.DataFrame) -> list[str]:
    """The config columns that label a run (`act=sigmoid depth=8`): those that vary in `frame`, less seeds
    and less a column that the others determine among the runs `ran` (init=auto's pick follows act)."""
    varying = varying_columns(frame)
    keys = [c for c in varying if c not in SEEDS] or varying
    if ran.empty:
        return keys
    for k in reversed(keys[1:]):
        rest = [c for c in keys if c != k]
        if (ran.groupby(rest, dropna=False)[k].nunique(dropna=False) <= 1).all():
            keys = rest
    return keys


def _groups(frame: pd.DataFrame, runs: list) -> dict[str, list]:
    """Runs by label, the values of the config columns that vary (`act=sigmoid depth=8`), at most MAX_GROUPS.
    Seeds are left out, so the seeds of one config share a colour and a legend entry, and so is a column
    that the others determine (init=auto's pick follows act)."""
    keys = label_keys(frame, pd.DataFrame([row for row, _, _ in runs]))
    groups: dict[str, list] = {}
    for row, epochs, layers in runs:
        label = " ".join(f"{k}={_text(row[k])}" for k in keys) or Path(row["run"]).name
        groups.setdefault(label, []).append((epochs, layers))
    if len(groups) > MAX_GROUPS:
        print(f"deeprun-report: the plots show the first {MAX_GROUPS} of {len(groups)} configurations; "
              "narrow them down with --filter", file=sys.stderr)
    return {label + (f" ({len(runs)} runs)" if len(runs) > 1 else ""): runs
            for label, runs in list(groups.items())[:MAX_GROUPS]}


def _subtitle(frame: pd.DataFrame, n_runs: int) -> str:
    """What all plotted runs share (`model=mlp width=8 lr=0.01`), so that a PNG explains itself."""
    varying = varying_columns(frame)
    shared = [f"{k}={_text(frame[k].iloc[0])}" for k in SHARED
              if k in frame and k not in varying and frame[k].notna().all() and frame[k].nunique() == 1]
    return f"{n_runs} run{'' if n_runs == 1 else 's'}; " + " ".join(shared)


def _figure(ncols: int, width: float, subtitle: str = "", sharey: bool = True):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 5.5), layout="constrained")
    figure.suptitle(subtitle, x=0.01, ha="left", fontsize="small", color="dimgray")
    return figure, figure.subplots(1, ncols, sharey=sharey, squeeze=False)[0]


def _colours(n: int) -> list:
    from matplotlib import colormaps

    return list(colormaps["tab10" if n <= 10 else "tab20"].colors)


def _legend(figure, handles: list) -> None:
    """Outside the axes on the right, in smaller type as entries grow."""
    size = "medium" if len(handles) <= 8 else "small" if len(handles) <= 14 else "x-small"
    figure.legend(handles=handles, loc="outside right upper", fontsize=size, frameon=False)
    _wrap_subtitle(figure)


def _wrap_subtitle(figure) -> None:
    """Wrap a long subtitle so that it ends left of the legend: both sit at the top, and would overlap."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    title = figure._suptitle
    if title is None or not title.get_text() or not figure.legends:
        return
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw_without_rendering()  # runs the constrained layout, which places the legend
    box, legend = title.get_window_extent(renderer), figure.legends[0].get_window_extent(renderer)
    if box.x1 > legend.x0 and box.y0 < legend.y1:
        chars = int(len(title.get_text()) * (legend.x0 - box.x0 - 10) / box.width)
        title.set_text(textwrap.fill(title.get_text(), max(chars, 20)))


def _log_if_wide(set_scale, values) -> None:
    positive = [v for v in values if math.isfinite(v) and v > 0]
    if positive and max(positive) >= WIDE * min(positive):
        set_scale("log")


def _loss_figure(groups: dict[str, list], subtitle: str):
    from matplotlib.lines import Line2D

    figure, (ax,) = _figure(1, 10, subtitle)
    handles, train, val, banded = [], [], [], False
    for (label, runs), colour in zip(groups.items(), _colours(len(groups))):
        for epochs, _ in runs:
            train += list(epochs["train_loss"])
            val += list(zip(epochs["epoch"], epochs["val_loss"]))
        if len(runs) > 1:  # seeds: their mean, and a band from the lowest to the highest
            banded = True
            for column, ls in (("train_loss", "-"), ("val_loss", "--")):
                mean, low, high = seed_band([epochs for epochs, _ in runs], column)
                ax.plot(mean.index, mean, color=colour, lw=1.5, ls=ls)
                ax.fill_between(mean.index, low, high, color=colour, alpha=0.15, lw=0)
        else:
            for epochs, _ in runs:
                ax.plot(epochs["epoch"], epochs["train_loss"], color=colour, lw=1.5)
                ax.plot(epochs["epoch"], epochs["val_loss"], color=colour, lw=1.5, ls="--")
        handles.append(Line2D([], [], color=colour, lw=2, label=label))
    handles += [Line2D([], [], color="k", label="train"), Line2D([], [], color="k", ls="--", label="validation")]
    finite = [v for v in train if math.isfinite(v)]
    # a validation loss over 1e3 x the largest training loss (BatchNorm's initial statistics) would flatten the rest
    top = 1e3 * max(finite) if finite and max(finite) > 0 else math.inf
    off = sorted({int(e) for e, v in val if math.isfinite(v) and v > top})
    values = finite + [v for _, v in val if math.isfinite(v) and v <= top]
    _log_if_wide(ax.set_yscale, values)
    if off and values:
        low, high = min(values), max(values)
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(*((low / 1.5, high * 1.5) if ax.get_yscale() == "log" else (low - pad, high + pad)))
        run = off == list(range(off[0], off[-1] + 1))
        at = (f"epoch {off[0]}" if len(off) == 1 else f"epochs {off[0]}-{off[-1]}" if run
              else "epochs " + ", ".join(map(str, off)))
        ax.text(0.99, 0.98, f"validation loss above {top:.0e} at {at} is off the chart", transform=ax.transAxes,
                ha="right", va="top", fontsize="small", color="dimgray")
    ax.set(xlabel="epoch (0 = at initialisation)", ylabel="loss",
           title="Loss: train (solid), validation (dashed)" + ("; seeds: mean, band from lowest to highest"
                                                               if banded else ""))
    ax.grid(alpha=0.3, which="both")
    _legend(figure, handles)
    return figure


def seed_band(runs: Sequence[pd.DataFrame], column: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """mean, min and max of `column` over the epochs tables of a configuration's seeds, per epoch; only
    finite values count (a diverged seed stops adding to the mean where its loss became NaN or inf)."""
    values = pd.concat([e.drop_duplicates("epoch", keep="last").set_index("epoch")[column].astype(float)
                        for e in runs if column in e], axis=1)
    values = values.where(np.isfinite(values)).sort_index()
    return values.mean(axis=1), values.min(axis=1), values.max(axis=1)


def layer_grid(layers: pd.DataFrame, column: str) -> pd.DataFrame:
    """`column` of layers.csv as a layer x epoch grid (rows: layer index, columns: logged epochs, both sorted;
    a (layer, epoch) written twice, as by a resumed run: the last)."""
    rows, cols = np.unique(layers["layer"].to_numpy()), np.unique(layers["epoch"].to_numpy())
    grid = np.full((len(rows), len(cols)), np.nan)
    grid[np.searchsorted(rows, layers["layer"].to_numpy()), np.searchsorted(cols, layers["epoch"].to_numpy())] = \
        pd.to_numeric(layers[column], errors="coerce").to_numpy(dtype=float)
    return pd.DataFrame(grid, index=pd.Index(rows, name="layer"), columns=pd.Index(cols, name="epoch"))


def _layers_figure(layers: pd.DataFrame, run: str):
    """One run's layer x epoch heatmaps: the gradient norm (log colour), and its dead or saturated fraction
    where its activation has one."""
    from matplotlib.colors import LogNorm

    panels = [("grad_norm", "‖∂loss/∂W‖ (log colour)", "viridis")]
    panels += [p for p in LAYER_FRACTIONS if p[0] in layers and layers[p[0]].notna().any()]
    figure, axes = _figure(len(panels), 5.5 + 4.5 * len(panels), run, sharey=True)
    names = layers.drop_duplicates("layer").set_index("layer")["name"] if "name" in layers else None
    for ax, (column, title, cmap) in zip(axes, panels):
        grid = layer_grid(layers, column)
        values = grid.to_numpy(dtype=float)
        finite = values[np.isfinite(values) & (values > 0)]
        if column == "grad_norm":
            norm = LogNorm(finite.min(), finite.max()) if len(finite) and finite.max() > finite.min() else None
            image = ax.imshow(np.where(values > 0, values, np.nan), aspect="auto", cmap=cmap, norm=norm,
                              interpolation="nearest")
        else:
            image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        epochs = list(grid.columns)
        ticks = sorted({int(round(t)) for t in np.linspace(0, len(epochs) - 1, min(len(epochs), 8))})
        ax.set_xticks(ticks, labels=[str(epochs[t]) for t in ticks])
        rows = list(grid.index)
        shown = sorted({int(round(t)) for t in np.linspace(0, len(rows) - 1, min(len(rows), 24))})
        ax.set_yticks(shown, labels=[f"{rows[t]} {names[rows[t]]}" if names is not None else str(rows[t])
                                     for t in shown])
        ax.set(title=title, xlabel="logged epoch")
        figure.colorbar(image, ax=ax, shrink=0.8)
    axes[0].set_ylabel("layer (0 = first layer; last = output head)")
    return figure


def _grad_figure(groups: dict[str, list], subtitle: str):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure(2, 12, subtitle)
    handles, ends = [], set()
    for (label, runs), colour in zip(groups.items(), _colours(len(groups))):
        for _, layers in runs:
            ends.add(layers["epoch"].max())
            for ax, epoch in zip(axes, (0, layers["epoch"].max())):
                at = layers[layers["epoch"] == epoch].sort_values("layer")
                ax.plot(at["layer"], at["grad_norm"], color=colour, marker="o", ms=3, lw=1.5)
        handles.append(Line2D([], [], color=colour, marker="o", label=label))
    end = f"epoch {ends.pop()}" if len(ends) == 1 else "last logged epoch"
    for ax, when in zip(axes, ("at initialisation (epoch 0)", f"after training ({end})")):
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # two lines: with a long legend beside them, one line ran into the next panel's title
        ax.set(title=f"Gradient norm per layer\n{when}", xlabel="layer index (0 = first layer; last = output head)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("‖∂loss/∂W‖ of the layer's weight (log scale)")
    _legend(figure, handles)
    return figure


def _diagnosis_figure(frame: pd.DataFrame):
    """deeprun-diagnose's runs: the gradient norm per layer at initialisation (mean over draws, the
    spread as a band) and the histogram of the input-output Jacobian's singular values, a colour per
    configuration."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure, (grads, hist) = _figure(2, 12, _subtitle(frame, len(frame)), sharey=False)
    groups: dict[str, list[Path]] = {}
    keys = [c for c in varying_columns(frame) if c not in SEEDS]
    for _, row in frame.iterrows():
        label = " ".join(f"{k}={_text(row[k])}" for k in keys) or Path(row["run"]).name
        groups.setdefault(label, []).append(Path(row["run"]))
    handles, spectra = [], []
    for (label, runs), colour in zip(list(groups.items())[:MAX_GROUPS], _colours(min(len(groups), MAX_GROUPS))):
        values = []
        for run in runs:
            with contextlib.suppress(OSError, ValueError):
                layers = pd.read_csv(run / DIAGNOSIS_LAYERS)
                grads.plot(layers["layer"], layers["grad_norm"], color=colour, marker="o", ms=3, lw=1.5)
                low = (layers["grad_norm"] - layers["grad_norm_std"]).clip(lower=layers["grad_norm"] / 10)
                grads.fill_between(layers["layer"], low, layers["grad_norm"] + layers["grad_norm_std"],
                                   color=colour, alpha=0.15, lw=0)
            with contextlib.suppress(OSError, ValueError):
                values.append(pd.read_csv(run / DIAGNOSIS_JACOBIAN)["singular_value"].to_numpy(dtype=float))
        values = np.concatenate(values) if values else np.array([])
        spectra.append((label, colour, np.log10(values[np.isfinite(values) & (values > 0)])))
        handles.append(Line2D([], [], color=colour, marker="o", label=label))
    if len(spectra) <= FEW:  # a histogram each
        for label, colour, logs in spectra:
            if len(logs):
                hist.hist(logs, bins=30, color=colour, histtype="step", lw=1.5)
        hist.set(xlabel="log10 singular value", ylabel="count")
    else:  # many: each configuration's range, smallest to largest, with its median
        for i, (label, colour, logs) in enumerate(spectra):
            if len(logs):
                hist.plot([logs.min(), logs.max()], [i, i], color=colour, lw=3, solid_capstyle="butt")
                hist.plot([np.median(logs)], [i], color="k", marker="|", ms=10)
        hist.set_yticks(range(len(spectra)), labels=[""] * len(spectra))
        hist.invert_yaxis()
        hist.set(xlabel="log10 singular value (bar: smallest to largest; tick: median)", ylabel="configuration")
    grads.set_yscale("log")
    grads.xaxis.set_major_locator(MaxNLocator(integer=True))
    grads.set(title="Gradient norm per layer at initialisation\n(mean over draws, band: ± std)",
              xlabel="layer index (0 = first layer; last = output head)", ylabel="‖∂loss/∂W‖ (log scale)")
    hist.set(title="Input-output Jacobian singular values\n(all at 1: dynamical isometry)")
    for ax in (grads, hist):
        ax.grid(alpha=0.3, which="both")
    _legend(figure, handles)
    return figure


def _pivot_figure(stats: pd.DataFrame, rows: str, cols: str, value: str, lines: bool):
    """Lines of VALUE against ROWS, one per COLS value, when ROWS are numbers; else a heatmap."""
    from matplotlib.colors import LogNorm

    mean, std = _unstack(stats, "mean", cols), _unstack(stats, "std", cols)
    repeats = stats["count"].max()
    text = stats["mean"].dtype.kind not in "iuf"
    title = f"{value} by {rows} and {cols}" + (f" ({'commonest' if text else 'mean ± std'} over {repeats} seeds)"
                                                if repeats > 1 else "")
    figure, (ax,) = _figure(1, 8)
    if text:  # categories (verdicts): a colour each, the name in the cell
        from matplotlib.colors import ListedColormap

        names = list(dict.fromkeys(v for v in mean.to_numpy().ravel() if isinstance(v, str)))
        codes = np.array([[names.index(v) if isinstance(v, str) else np.nan for v in r] for r in mean.to_numpy()])
        others = iter(c for c in _colours(10) if c not in VERDICT_COLOURS.values())
        colours = [VERDICT_COLOURS.get(n) or next(others, "grey") for n in names]
        ax.imshow(codes, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(names) - 0.5, aspect="auto")
        ax.set_xticks(range(len(mean.columns)), labels=[_text(c) for c in mean.columns])
        ax.set_yticks(range(len(mean.index)), labels=[_text(r) for r in mean.index])
        for i, j in zip(*np.nonzero(np.isfinite(codes))):
            ax.text(j, i, names[int(codes[i, j])], ha="center", va="center", color="white")
        ax.set(xlabel=cols, ylabel=rows, title=title)
        return figure
    if lines:
        _log_if_wide(ax.set_xscale, mean.index.astype(float))
        _log_if_wide(ax.set_yscale, mean.to_numpy(dtype=float).ravel())
        log = ax.get_yscale() == "log"
        for c, colour in zip(mean.columns, _colours(len(mean.columns))):
            yerr = None
            if repeats > 1:
                s = std[c].fillna(0).to_numpy(dtype=float)
                m = mean[c].to_numpy(dtype=float)
                # on a log axis mean - std may be <= 0: the lower bar stops at a tenth of the mean instead
                yerr = [np.minimum(s, 0.9 * m) if log else s, s]
            ax.errorbar(mean.index, mean[c], yerr=yerr, color=colour, marker="o", capsize=3,
                        label=f"{cols}={_text(c)}")
        ax.set(xlabel=rows, ylabel=value, title=title)
        ax.grid(alpha=0.3, which="both")
        _legend(figure, ax.get_legend_handles_labels()[0])
        return figure
    grid = mean.to_numpy(dtype=float)
    finite = grid[np.isfinite(grid)]
    wide = len(finite) and finite.min() > 0 and finite.max() >= WIDE * finite.min()
    image = ax.imshow(grid, cmap="viridis", aspect="auto", norm=LogNorm() if wide else None)
    ax.set_xticks(range(len(mean.columns)), labels=[_text(c) for c in mean.columns])
    ax.set_yticks(range(len(mean.index)), labels=[_text(r) for r in mean.index])
    for i, j in zip(*np.nonzero(np.isfinite(grid))):  # empty cells stay blank
        m, s = grid[i, j], std.iat[i, j]
        shade = "white" if image.norm(m) < 0.5 else "black"  # readable on viridis' dark and light ends
        ax.text(j, i, fmt(m) + ("" if pd.isna(s) else f"\n± {fmt(s)}"), ha="center", va="center", color=shade)
    ax.set(xlabel=cols, ylabel=rows, title=title)
    figure.colorbar(image, ax=ax, label=value)
    return figure


class _CallableModule(types.ModuleType):
    """`deeprun.report` names this module (the console script's, `from deeprun import report`) and is the
    notebook's call as well: deeprun.report(PATH, html="report.html", pivot=("depth", "act", "final_val_loss"))."""

    def __call__(self, paths: Paths, **options) -> pd.DataFrame:
        return report(paths, **options)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
