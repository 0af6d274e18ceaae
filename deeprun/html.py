"""`deeprun-report PATH... --html report.html`: one self-contained HTML page of any runs and sweeps.

Opened from disk, it needs no server and no network: the vega, vega-lite and vega-embed scripts (the
bundle of vl-convert-python, about 0.9 MB) are inlined once, the charts' Vega-Lite specs are built with
altair, and the records they draw travel gzip-compressed in the page (the browser's DecompressionStream
opens them). What it shows:

- what was run (a sweep's command line from its multirun.yaml, a run's .hydra/overrides.yaml), when
  (the records' times), where (device, Hydra's working directory, host and torch where recorded), and
  how many runs ended how;
- the results table: varying columns first, sortable by a click on a header, filtered by a text box
  (`act=tanh depth>4 diverged`: key=value, key<x, key>x, or any text), failed and diverged rows marked,
  each row linking to its run's section; the charts below follow the filter;
- the pivots asked for (by default: the two swept keys against the objective), mean ± std over seeds;
- loss curves: train solid, validation dashed, one colour per configuration, the mean over its seeds
  with a band from the lowest to the highest seed;
- per layer: the gradient norm against the layer index at initialisation and at the end, and a
  layer x epoch heatmap of the gradient norm and the dead or saturated fraction of a run chosen in a
  select box;
- the diagnosis (deeprun-diagnose's runs, and the training runs' verdict@init): verdicts, chi_1,
  trainable_depth, jac_condition, and the diagnosis runs' gradient per layer at initialisation.

Size: a loss curve keeps at most MAX_POINTS epochs (evenly spaced, the first and last included) and a
layer heatmap at most MAX_HEAT_LAYERS layers and MAX_HEAT_EPOCHS logged epochs, fewer epochs when all
runs' heatmaps together would pass HEAT_CELLS cells; numbers keep 4 significant digits (3 in heatmaps).
A 300-run sweep stays well under 3 MB.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import gzip
import json
import math
import platform
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from . import __version__, schema
from .display import TEXT_COLUMNS, default_columns, fmt, varying_columns
from .records import DIAGNOSIS, DIAGNOSIS_LAYERS, SUMMARY, read_run, write_atomic
from .report import (SEEDS, VERDICT_COLOURS, WIDE, ReportError, _colours, _short_names, _text, _unstack,
                     label_keys, layer_grid, pivot_stats)

MAX_POINTS = 200  # epochs per loss curve
MAX_HEAT_EPOCHS = 60  # logged epochs per layer heatmap
MIN_HEAT_EPOCHS = 4  # ... however many runs
MAX_HEAT_LAYERS = 64  # layers per heatmap (a deeper net: evenly spaced ones; the line charts keep them all)
HEAT_CELLS = 120_000  # layer x epoch cells of all runs' heatmaps together
GRAD_POINTS = 120_000  # points of the gradient-per-layer charts together (a run keeps at least 32 layers)
CANVAS = 20_000  # a chart of more points than this draws on a canvas (SVG would be slow), smaller ones as SVG
OFF_CHART = 1e3  # a loss above this times the largest loss at initialisation is off the chart (it diverged)
MAX_LINES = 12  # commands listed in the header; the rest are counted
DIAGNOSIS_COLUMNS = schema.select("verdict@init", "chi_1", "trainable_depth", "jac_condition", "grad_ratio@init",
                                  "phase", "evidence", "fixes")  # the diagnosis section's table
PROSE_COLUMNS = schema.select("evidence", "fixes")  # sentences: wrapped in the table
WHERE_COLUMNS = schema.select("host", "torch")  # the header's "where it ran", beside `device`


@dataclass
class Run:
    """One row of the table and what its records hold for the charts."""
    i: int  # its row in the table (shown as #i+1)
    row: pd.Series
    name: str  # its path less what all runs share
    kind: str  # "train" or "diagnosis"
    label: str = ""
    group: int = 0
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)
    diagnosis: pd.DataFrame = field(default_factory=pd.DataFrame)


def write(path: Path, frame: pd.DataFrame, everything: pd.DataFrame, pivots: Sequence[tuple[Sequence[str], Any]],
          paths: Sequence[str], chosen: Sequence[str] = (), command: str = "", filters: Sequence[str] = ()) -> None:
    """Write the page of the runs of `frame` (the table after filters; `everything`: before) to `path`."""
    text = build(frame, everything, pivots, paths=paths, chosen=chosen, command=command, filters=filters)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), lambda f: f.write(text.encode("utf-8")), mode="wb")


def build(frame: pd.DataFrame, everything: pd.DataFrame | None = None,
          pivots: Sequence[tuple[Sequence[str], Any]] = (), paths: Sequence[str] = (), chosen: Sequence[str] = (),
          command: str = "", filters: Sequence[str] = ()) -> str:
    """The page as text."""
    import vl_convert

    everything = frame if everything is None else everything
    frame = frame.reset_index(drop=True)
    runs = read(frame)
    pivots = list(pivots) or default_pivots(frame, runs)
    data, notes = chart_data(runs, chosen)
    specs = chart_specs(runs, pivots, notes)
    sections = [
        _results(frame, everything, runs),
        _pivots(pivots, specs),
        _loss(runs, notes),
        _layers(runs, notes),
        _diagnosis(frame, runs),
        '<section id="runs"><h2>Runs</h2><p class="caption">Every column of each run\'s record; a row\'s # in '
        'the table links here.</p><div id="run-sections"></div></section>',
    ]
    title = f"deeprun report: {len(frame)} run{'' if len(frame) == 1 else 's'} under {', '.join(paths)}"
    bundle = vl_convert.javascript_bundle(vl_version=_vl_version())
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<meta name=\"generator\" content=\"deeprun {escape(__version__)}\">\n",
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        _header(frame, everything, runs, paths, command, filters), "\n",
        _nav(runs, pivots),
        "<main>\n", "\n".join(s for s in sections if s), "\n</main>\n",
        f'<footer>Made by <code>{escape(command)}</code> (deeprun {escape(__version__)}) on '
        f"{escape(platform.node() or 'this machine')} at {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. "
        "Charts: Vega-Lite, inlined; this file needs no network.</footer>\n",
        "<noscript><p class=\"note\">The charts, sorting and filtering need JavaScript.</p></noscript>\n",
        f"<script>\n{bundle}\n</script>\n",
        f'<script type="application/json" id="deeprun-specs">{_json(specs)}</script>\n',
        '<script type="application/octet-stream" id="deeprun-data" data-encoding="gzip+base64">',
        _pack(data), "</script>\n",
        f"<script>\n{SCRIPT}\n</script>\n</body>\n</html>\n",
    ])


def _vl_version() -> str:
    """altair's Vega-Lite version as vl-convert names it (v6_4): the bundle then compiles altair's specs."""
    from altair.vegalite import SCHEMA_VERSION

    return "_".join(SCHEMA_VERSION.split(".")[:2])


# --- the records ---------------------------------------------------------------------------------------

def read(frame: pd.DataFrame) -> list[Run]:
    """Each row's records: epochs.csv and layers.csv of a training run, diagnosis_layers.csv of a diagnosis."""
    names = _short_names([str(r) for r in frame["run"]])
    runs = []
    for i, row in frame.iterrows():
        path = Path(str(row["run"]))
        diagnosis = (path / DIAGNOSIS).is_file() and not (path / SUMMARY).is_file()
        run = Run(i=int(i), row=row, name=names[int(i)], kind="diagnosis" if diagnosis else "train")
        with contextlib.suppress(OSError, ValueError, KeyError):  # missing, torn or empty records: no charts
            if diagnosis:
                run.diagnosis = pd.read_csv(path / DIAGNOSIS_LAYERS)
            else:
                _, run.epochs, run.layers = read_run(path)
        runs.append(run)
    for kind in ("train", "diagnosis"):
        mine = [r for r in runs if r.kind == kind]
        if not mine:
            continue
        sub = frame.loc[[r.i for r in mine]]
        keys = label_keys(sub, sub[sub["status"] != "failed"] if "status" in sub else sub)
        groups: dict[str, int] = {}
        for r in mine:
            r.label = " ".join(f"{k}={_text(r.row[k])}" for k in keys) or r.name
            r.group = groups.setdefault(r.label, len(groups))
    return runs


def _seed(run: Run) -> str:
    return next((f"{k}={_text(run.row[k])}" for k in SEEDS if k in run.row and pd.notna(run.row[k])), "")


def _round(values, digits: int = 4) -> list:
    """Numbers for the page: `digits` significant digits, None for NaN and inf."""
    out = []
    for v in np.asarray(values, dtype=float):
        out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else None)
    return out


def _pick(n: int, most: int) -> np.ndarray:
    """At most `most` of n indices, evenly spaced, the first and the last among them."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, most)).astype(int))


def chart_data(runs: list[Run], chosen: Sequence[str] = ()) -> tuple[dict, dict]:
    """The page's data (compact: lists per run, expanded into records in the browser) and notes on what
    was left out or thinned, for the captions."""
    notes: dict[str, Any] = {"chosen": None, "long": 0}
    train = [r for r in runs if r.kind == "train" and len(r.epochs) and "train_loss" in r.epochs]
    # a diverging run's loss (1e35 before it turns NaN) and BatchNorm's validation loss at epoch 0 (1e33) would
    # flatten every other curve on the log axis: beyond OFF_CHART x the largest loss at initialisation they
    # are left off, and the caption says how many
    first = [float(r.epochs.sort_values("epoch")["train_loss"].iloc[0]) for r in train]
    first = [x for x in first if math.isfinite(x) and x > 0]
    losses = np.concatenate([r.epochs["train_loss"].to_numpy(dtype=float) for r in train]) if train else np.array([])
    losses = losses[np.isfinite(losses) & (losses > 0)]
    reference = max(first) if first else losses.min() if len(losses) else math.nan
    top = OFF_CHART * reference if math.isfinite(reference) else math.inf
    curves, values, off, off_runs = [None] * len(runs), [], 0, 0
    for r in train:
        epochs = r.epochs.drop_duplicates("epoch", keep="last").sort_values("epoch")
        notes["long"] = max(notes["long"], len(epochs))
        at = _pick(len(epochs), MAX_POINTS)
        e = epochs["epoch"].to_numpy()[at]
        t = epochs["train_loss"].to_numpy(dtype=float)[at]
        v = epochs["val_loss"].to_numpy(dtype=float)[at] if "val_loss" in epochs else np.full(len(at), np.nan)
        above = int(np.sum(np.isfinite(t) & (t > top)) + np.sum(np.isfinite(v) & (v > top)))
        off, off_runs = off + above, off_runs + bool(above)
        t, v = np.where(t > top, np.nan, t), np.where(v > top, np.nan, v)
        values += [x for x in (*t, *v) if math.isfinite(x)]
        curves[r.i] = [[int(x) for x in e], _round(t), _round(v) if np.isfinite(v).any() else None]
    notes.update(top=top, off=off, off_runs=off_runs, log_loss=_wide(values),
                 has_val=any(c and c[2] for c in curves), points=len(values))

    grads, heat, grad_values = [None] * len(runs), [None] * len(runs), []
    probed = [r for r in runs if r.kind == "train" and len(r.layers) and "grad_norm" in r.layers]
    cells = sum(min(r.layers["layer"].nunique(), MAX_HEAT_LAYERS) for r in probed) or 1
    per_run = int(min(MAX_HEAT_EPOCHS, max(MIN_HEAT_EPOCHS, HEAT_CELLS // cells)))
    notes.update(heat_epochs=per_run, heat_thinned=False, heat_layers_thinned=False)
    ends = set()
    per_net = max(32, GRAD_POINTS // (2 * max(len(probed), 1)))
    notes["grad_layers"], notes["grad_thinned"] = per_net, False
    for r in probed:
        layers = r.layers
        last = layers["epoch"].max()
        ends.add(int(last))
        first_rows = layers[layers["epoch"] == layers["epoch"].min()].sort_values("layer")
        last_rows = layers[layers["epoch"] == last].sort_values("layer")
        both = first_rows[["layer", "name"]].merge(last_rows[["layer", "grad_norm"]], on="layer", how="outer")
        keep = _pick(len(both), per_net)
        notes["grad_thinned"] |= len(keep) < len(both)
        both = both.iloc[keep]
        init = first_rows.set_index("layer")["grad_norm"].reindex(both["layer"]).to_numpy(dtype=float)
        end = last_rows.set_index("layer")["grad_norm"].reindex(both["layer"]).to_numpy(dtype=float)
        grad_values += [x for x in (*init, *end) if math.isfinite(x)]
        grads[r.i] = [[int(x) for x in both["layer"]], [str(n) for n in both["name"].fillna("")], _round(init),
                      _round(end), int(last)]
        grid = layer_grid(layers, "grad_norm")
        at, rows = _pick(grid.shape[1], per_run), _pick(grid.shape[0], MAX_HEAT_LAYERS)
        notes["heat_thinned"] |= len(at) < grid.shape[1]
        notes["heat_layers_thinned"] |= len(rows) < grid.shape[0]
        fractions = []
        for column in ("dead_frac", "saturated_frac"):
            if column in layers and layers[column].notna().any():
                values_ = layer_grid(layers, column).reindex(index=grid.index, columns=grid.columns).to_numpy()
                fractions.append(_round(values_[np.ix_(rows, at)].ravel(), 3))
            else:
                fractions.append(None)
        names = layers.drop_duplicates("layer").set_index("layer")["name"].reindex(grid.index).fillna("")
        heat[r.i] = [[int(x) for x in grid.index[rows]], [str(n) for n in names.iloc[rows]],
                     [int(x) for x in grid.columns[at]], _round(grid.to_numpy()[np.ix_(rows, at)].ravel(), 3),
                     *fractions]
    notes.update(ends=sorted(ends), grad_span=_span(grad_values))

    diagnosis = [None] * len(runs)
    for r in runs:
        d = r.diagnosis
        if r.kind != "diagnosis" or not len(d) or "grad_norm" not in d:
            continue
        m = d["grad_norm"].to_numpy(dtype=float)
        s = d["grad_norm_std"].to_numpy(dtype=float) if "grad_norm_std" in d else np.full(len(m), np.nan)
        diagnosis[r.i] = [[int(x) for x in d["layer"]], [str(n) for n in d.get("name", pd.Series([""] * len(d)))],
                          _round(m), _round(np.where(np.isfinite(s), s, 0.0))]
    chosen_set = {str(c) for c in chosen}
    first = next((r.i for r in runs if str(r.row["run"]) in chosen_set and heat[r.i]), None)
    notes["chosen"] = first if first is not None else next((r.i for r in runs if heat[r.i]), None)

    columns = list(runs[0].row.index) if runs else []
    rows = [[_cell(r.row[c]) for c in columns] for r in runs]
    data = {
        "runs": [{"n": r.i + 1, "name": r.name, "path": str(r.row["run"]), "label": r.label, "g": r.group,
                  "kind": r.kind, "status": _cell(r.row.get("status")), "seed": _seed(r)} for r in runs],
        "columns": columns, "rows": rows, "curves": curves, "grads": grads, "heat": heat, "diagnosis": diagnosis,
        "chosen": notes["chosen"],
    }
    return data, notes


def _cell(value):
    """A table value for JSON: numbers to 6 significant digits, NaN as None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.6g}")
    return None if pd.api.types.is_scalar(value) and pd.isna(value) else str(value)


def _span(values) -> float:
    """Decades between the smallest and the largest positive value (0 without any)."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return math.log10(max(positive) / min(positive)) if positive else 0.0


def _wide(values) -> bool:
    """Whether values span a decade or more (then: a log axis)."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return bool(positive) and max(positive) >= WIDE * min(positive)


def _pack(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def _json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


# --- the pivots ----------------------------------------------------------------------------------------

def default_pivots(frame: pd.DataFrame, runs: list[Run]) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """Without --pivot: where a kind of run (training, diagnosis) was swept over two keys besides the seed,
    those keys against the objective (the runs' `objective`, best_val_loss by default; final_train_loss
    where it has no numbers) or, for diagnoses, against verdict@init."""
    out = []
    for kind in ("train", "diagnosis"):
        rows = [r.i for r in runs if r.kind == kind]
        sub = frame.loc[rows] if rows else frame.iloc[:0]
        keys = [k for k in swept(sub) if k not in SEEDS]
        if len(keys) != 2:
            continue
        values = [_objective(runs[rows[0]]), "final_train_loss"] if kind == "train" else ["verdict@init"]
        for value in values:
            if value in sub and sub[value].notna().any():
                with contextlib.suppress(ReportError):
                    out.append(((keys[0], keys[1], value), pivot_stats(sub, keys[0], keys[1], value)))
                break
    return out


def swept(frame: pd.DataFrame) -> list[str]:
    """The columns the runs' command-line overrides set to more than one value (a sweep's axes)."""
    if "overrides" not in frame:
        return []
    given = {part.lstrip("+~").split("=", 1)[0] for text in frame["overrides"] if isinstance(text, str)
             for part in text.split()}
    return [c for c in varying_columns(frame) if c in given]


def _objective(run: Run) -> str:
    with contextlib.suppress(Exception):  # no .hydra/ (the Python API), an unreadable config: the default
        return str(OmegaConf.load(Path(str(run.row["run"])) / ".hydra" / "config.yaml").get("objective"))
    return "best_val_loss"


# --- the charts: Vega-Lite specs built with altair -----------------------------------------------------

SHOWN = "shown == null || indexof(shown, datum.r) >= 0"  # the table's filter, set by the page's script


def chart_specs(runs: list[Run], pivots: list, notes: dict) -> dict[str, dict]:
    """name -> Vega-Lite spec; a spec's usermeta.data names the page's datasets it draws."""
    import altair as alt

    specs: dict[str, dict] = {}
    train = [r for r in runs if r.kind == "train"]
    # the legends: the configurations drawn (not a failed run's), one colour each in both charts
    labels = list(dict.fromkeys(r.label for r in train if len(r.epochs) or len(r.layers)))
    if any(len(r.epochs) for r in train):
        specs["loss"] = _with_data(_loss_chart(alt, labels, notes), ["curves"], points=notes["points"])
    if any(len(r.layers) for r in train):
        specs["grad"] = _with_data(_grad_chart(alt, labels, notes), ["grads"])
        for metric, title, scheme in (("grad_norm", "‖∂loss/∂W‖", "viridis"),
                                      ("dead_frac", "dead fraction", ["#f7f7f7", "#b2182b"]),
                                      ("saturated_frac", "saturated fraction", ["#f7f7f7", "#54278f"])):
            specs[f"heat_{metric}"] = _with_data(_heat_chart(alt, metric, title, scheme), ["heat"], shown=False)
    diagnosed = [r for r in runs if r.kind == "diagnosis" and len(r.diagnosis)]
    if diagnosed:
        diag_labels = list(dict.fromkeys(r.label for r in diagnosed))
        specs["diagnosis"] = _with_data(_diagnosis_chart(alt, diag_labels), ["diagnosis"])
    for k, ((rows, cols, value), stats) in enumerate(pivots):
        specs[f"pivot_{k}"] = _with_data(_pivot_chart(alt, stats, rows, cols, value, runs), [], shown=False)
    return specs


def _with_data(chart, names: list[str], shown: bool = True, points: int = 0) -> dict:
    spec = chart.to_dict()
    spec["usermeta"] = {"data": names, "renderer": "canvas" if points > CANVAS else "svg"}
    if shown:
        spec.setdefault("params", []).append({"name": "shown", "value": None})
    return spec


def _palette(n: int) -> list[str]:
    from matplotlib.colors import to_hex

    colours = [to_hex(c) for c in _colours(n)]  # loss.png's colours, in the same order
    return [colours[k % len(colours)] for k in range(max(n, 1))]


def _colour(alt, labels: list[str], title: str = "configuration"):
    many = len(labels) > 12
    legend = alt.Legend(orient="bottom" if many else "right", columns=3 if many else 1, labelLimit=360,
                        symbolLimit=90, title=title, symbolType="stroke", symbolOpacity=1, symbolStrokeWidth=3)
    return alt.Color("c:N", scale=alt.Scale(domain=labels, range=_palette(len(labels))), legend=legend)


def _loss_chart(alt, labels: list[str], notes: dict):
    log = notes["log_loss"]
    scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    base = alt.Chart(alt.NamedData("curves")).transform_filter(SHOWN)
    if log:
        base = base.transform_filter("datum.v > 0")
    agg = base.transform_aggregate(m="mean(v)", lo="min(v)", hi="max(v)", n="count()",
                                   groupby=["c", "runs", "s", "e"])
    x = alt.X("e:Q", title="epoch (0 = at initialisation)")
    colour = _colour(alt, labels)
    pick = alt.selection_point(name="pick", fields=["c"], bind="legend")
    faded = alt.condition(pick, alt.value(1.0), alt.value(0.12))
    dash = alt.StrokeDash("s:N", title="split", scale=alt.Scale(domain=["train", "validation"],
                                                                range=[[1, 0], [6, 4]]))
    band = agg.mark_area().encode(x, alt.Y("lo:Q", scale=scale, title="loss" + (" (log scale)" if log else "")),
                                  alt.Y2("hi:Q"), colour, detail="s:N",
                                  fillOpacity=alt.condition(pick, alt.value(0.2), alt.value(0.03)))
    line = agg.mark_line(strokeWidth=1.8).encode(x, alt.Y("m:Q"), colour, dash, opacity=faded).add_params(pick)
    # no nearest=True: its voronoi layer costs a second on 300 runs, and its tooltip loses the text fields
    hover = alt.selection_point(name="hover", on="pointerover", fields=["c", "s", "e"], empty=False,
                                clear="pointerout")
    points = agg.mark_point(filled=True, size=90).encode(
        x, alt.Y("m:Q"), colour, opacity=alt.condition(hover, alt.value(1.0), alt.value(0.0)),
        tooltip=[alt.Tooltip("c:N", title="configuration"), alt.Tooltip("runs:N", title="runs"),
                 alt.Tooltip("s:N", title="split"), alt.Tooltip("e:Q", title="epoch"),
                 alt.Tooltip("m:Q", title="loss (mean over seeds)", format=".4g"),
                 alt.Tooltip("lo:Q", title="lowest seed", format=".4g"),
                 alt.Tooltip("hi:Q", title="highest seed", format=".4g"), alt.Tooltip("n:Q", title="seeds")],
    ).add_params(hover)
    return alt.layer(band, line, points).properties(width=720, height=380)


def _grad_chart(alt, labels: list[str], notes: dict):
    ends = notes["ends"]
    end = f"epoch {ends[0]}" if len(ends) == 1 else "last logged epoch"
    pick = alt.selection_point(name="pick", fields=["c"], bind="legend")  # one legend for both panels
    panels = []
    for when, title in (("init", "at initialisation (epoch 0)"), ("end", f"after training ({end})")):
        base = alt.Chart(alt.NamedData("grads")).transform_filter(SHOWN).transform_filter(
            f"datum.w == '{when}' && datum.v > 0")
        agg = base.transform_aggregate(m="mean(v)", lo="min(v)", hi="max(v)", n="count()",
                                       groupby=["c", "runs", "l", "name"])
        x = alt.X("l:Q", title="layer index (0 = first layer; last = output head)", scale=alt.Scale(nice=False),
                  axis=alt.Axis(tickMinStep=1, format="d"))
        y = alt.Y("m:Q", scale=alt.Scale(type="log"), title="‖∂loss/∂W‖ of the layer's weight (log scale)",
                  axis=alt.Axis(format=".0e") if notes["grad_span"] > 4 else alt.Axis())
        colour = _colour(alt, labels)
        band = agg.mark_area().encode(x, alt.Y("lo:Q", scale=alt.Scale(type="log")), alt.Y2("hi:Q"), colour,
                                      fillOpacity=alt.condition(pick, alt.value(0.18), alt.value(0.03)))
        line = agg.mark_line(point=alt.OverlayMarkDef(filled=True, size=30)).encode(
            x, y, colour, opacity=alt.condition(pick, alt.value(1.0), alt.value(0.12)),
            tooltip=[alt.Tooltip("c:N", title="configuration"), alt.Tooltip("runs:N", title="runs"),
                     alt.Tooltip("l:Q", title="layer"), alt.Tooltip("name:N", title="module"),
                     alt.Tooltip("m:Q", title="grad norm (mean over seeds)", format=".3g"),
                     alt.Tooltip("lo:Q", title="lowest seed", format=".3g"),
                     alt.Tooltip("hi:Q", title="highest seed", format=".3g")])
        if when == "init":
            line = line.add_params(pick)
        panels.append(alt.layer(band, line).properties(width=400, height=300, title=f"Gradient norm per layer {title}"))
    return alt.hconcat(*panels).resolve_scale(y="shared")


def _heat_chart(alt, metric: str, title: str, scheme):
    log = metric == "grad_norm"
    colour = alt.Color("v:Q", title=title, scale=alt.Scale(type="log", scheme=scheme) if log
                       else alt.Scale(domain=[0, 1], range=scheme))
    chart = alt.Chart(alt.NamedData("heat")).transform_filter(f"datum.m == '{metric}' && isValid(datum.v)")
    if log:
        chart = chart.transform_filter("datum.v > 0")
    return chart.mark_rect().encode(
        alt.X("e:O", title="logged epoch", axis=alt.Axis(labelOverlap=True, labelAngle=0)),
        alt.Y("l:O", title="layer (0 = first)", axis=alt.Axis(labelOverlap=True)),
        colour,
        tooltip=[alt.Tooltip("l:O", title="layer"), alt.Tooltip("name:N", title="module"),
                 alt.Tooltip("e:O", title="epoch"), alt.Tooltip("v:Q", title=title, format=".3g")],
    ).properties(width=480 if log else 300, height=260, title=f"{title} by layer and epoch")


def _diagnosis_chart(alt, labels: list[str]):
    base = alt.Chart(alt.NamedData("diagnosis")).transform_filter(SHOWN).transform_filter("datum.m > 0")
    x = alt.X("l:Q", title="layer index (0 = first layer; last = output head)", scale=alt.Scale(nice=False),
              axis=alt.Axis(tickMinStep=1, format="d"))
    colour = _colour(alt, labels)
    band = base.mark_area(opacity=0.15).encode(x, alt.Y("lo:Q", scale=alt.Scale(type="log"),
                                                        title="‖∂loss/∂W‖ at initialisation (log scale)"),
                                               alt.Y2("hi:Q"), colour, detail="run:N")
    line = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=30)).encode(
        x, alt.Y("m:Q"), colour, detail="run:N",
        tooltip=[alt.Tooltip("c:N", title="configuration"), alt.Tooltip("run:N", title="run"),
                 alt.Tooltip("l:Q", title="layer"), alt.Tooltip("name:N", title="module"),
                 alt.Tooltip("m:Q", title="grad norm (mean over draws)", format=".3g"),
                 alt.Tooltip("sd:Q", title="std over draws", format=".3g")])
    return alt.layer(band, line).properties(
        width=720, height=320, title="Gradient norm per layer at initialisation (mean over draws, band: ± std)")


def _pivot_chart(alt, stats: pd.DataFrame, rows: str, cols: str, value: str, runs: list[Run]):
    """Lines of VALUE against ROWS, one per COLS value, when ROWS and VALUE are numbers; else a heatmap with
    each cell's mean ± std written in it (verdicts: in their colours)."""
    mean, std = _unstack(stats, "mean", cols), _unstack(stats, "std", cols)
    count = _unstack(stats, "count", cols)
    repeats = int(stats["count"].max()) if len(stats) else 1
    text = stats["mean"].dtype.kind not in "iuf"
    records = []
    for r in mean.index:
        for c in mean.columns:
            m, s, n = mean.at[r, c], std.at[r, c], count.at[r, c]
            if (isinstance(m, float) and math.isnan(m)) or m is None:
                continue
            label = str(m) if text else fmt(float(m)) + ("" if pd.isna(s) else f" ± {fmt(float(s))}")
            records.append({"row": _cell(r), "col": _text(c), "m": m if text else _cell(float(m)),
                            "s": None if text or pd.isna(s) else _cell(float(s)), "n": int(n) if pd.notna(n) else 0,
                            "text": label})
    title = f"{value} by {rows} and {cols}" + (f" ({'commonest' if text else 'mean ± std'} over {repeats} seeds)"
                                                if repeats > 1 else "")
    data = pd.DataFrame(records)
    col_order = [_text(c) for c in mean.columns]
    row_values = [_cell(r) for r in mean.index]
    numeric_rows = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row_values)
    tooltip = [alt.Tooltip("row", title=rows), alt.Tooltip("col:N", title=cols),
               alt.Tooltip("text:N", title=value), alt.Tooltip("n:Q", title="runs")]
    if not text and numeric_rows and len(data):
        log_y = _wide(data["m"])
        spread = [0.0 if s is None or pd.isna(s) else float(s) for s in data["s"]]
        # on a log axis mean - std may be <= 0: the lower bar stops at a tenth of the mean instead
        data["lo"] = [max(m - s, m / 10) if log_y else m - s for m, s in zip(data["m"], spread)]
        data["hi"] = [m + s for m, s in zip(data["m"], spread)]
        x = alt.X("row:Q", title=rows, scale=alt.Scale(type="log") if _wide(row_values) else alt.Scale(zero=False),
                  axis=alt.Axis(values=row_values) if len(row_values) <= 12 else alt.Axis())
        yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
        colour = alt.Color("col:N", title=cols, sort=col_order, scale=alt.Scale(domain=col_order,
                                                                                range=_palette(len(col_order))))
        base = alt.Chart(data)
        lines = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=50)).encode(
            x, alt.Y("m:Q", title=value, scale=yscale), colour, tooltip=tooltip)
        bars = base.mark_rule().encode(x, alt.Y("lo:Q", scale=yscale), alt.Y2("hi:Q"), colour)
        return alt.layer(bars, lines).properties(width=560, height=340, title=title)
    x = alt.X("col:N", title=cols, sort=col_order, axis=alt.Axis(labelAngle=0))
    y = alt.Y("row:O" if numeric_rows else "row:N", title=rows, sort=row_values)
    size = dict(width=min(760, 110 * max(len(col_order), 2)), height=min(520, 46 * max(len(row_values), 2)))
    base = alt.Chart(data)
    if text:
        names = list(dict.fromkeys(str(v) for v in data["m"])) if len(data) else []
        others = iter(c for c in _palette(10) if c not in VERDICT_COLOURS.values())
        colours = [VERDICT_COLOURS.get(n) or next(others, "#888888") for n in names]
        cells = base.mark_rect().encode(x, y, alt.Color("m:N", title=value, scale=alt.Scale(domain=names, range=colours)),
                                        tooltip=tooltip)
        words = base.mark_text(color="white", fontWeight="bold").encode(x, y, text="text:N")
        return alt.layer(cells, words).properties(title=title, **size)
    finite = [m for m in data["m"] if m is not None and math.isfinite(m)] if len(data) else []
    log = bool(finite) and min(finite) > 0 and _wide(finite)
    middle = (math.sqrt(min(finite) * max(finite)) if log else (min(finite) + max(finite)) / 2) if finite else 0
    cells = base.mark_rect().encode(x, y, alt.Color("m:Q", title=value, scale=alt.Scale(type="log", scheme="viridis")
                                                    if log else alt.Scale(scheme="viridis")), tooltip=tooltip)
    words = base.mark_text(fontSize=12).encode(
        x, y, text="text:N", color=alt.condition(f"datum.m < {middle!r}", alt.value("white"), alt.value("black")))
    return alt.layer(cells, words).properties(title=title, **size)


# --- the page's sections -------------------------------------------------------------------------------

def _nav(runs: list[Run], pivots: list) -> str:
    items = [("results", "Results")]
    items += [("pivots", "Pivots")] if pivots else []
    train = [r for r in runs if r.kind == "train"]
    items += [("loss", "Loss curves")] if any(len(r.epochs) for r in train) else []
    items += [("layers", "Per layer")] if any(len(r.layers) for r in train) else []
    items += [("diagnosis", "Diagnosis")] if any(r.kind == "diagnosis" or pd.notna(r.row.get("verdict@init"))
                                                 for r in runs) else []
    items += [("runs", "Runs")]
    return "<nav>" + " · ".join(f'<a href="#{k}">{escape(v)}</a>' for k, v in items) + "</nav>\n"


def _sweep_dir(run_dir: Path) -> Path | None:
    """The sweep directory a run belongs to: the nearest parent (up to three up) with a multirun.yaml."""
    for parent in list(run_dir.parents)[:3]:
        if (parent / "multirun.yaml").is_file():
            return parent
    return None


@functools.lru_cache(maxsize=256)
def _load_yaml(path: Path):
    """A Hydra record (a sweep's multirun.yaml is read once, however many of its runs ask)."""
    with contextlib.suppress(Exception):  # a torn or foreign file: the header says less
        return OmegaConf.load(path)
    return None


def _quote(override: str) -> str:
    return shlex.quote(str(override))


def _commands(runs: list[Run]) -> list[str]:
    """One line of HTML per sweep (its command line, its config's sweeper params) and per lone run."""
    sweeps: dict[Path, list[Run]] = {}
    lone: list[Run] = []
    for r in runs:
        home = _sweep_dir(Path(str(r.row["run"])))
        (sweeps.setdefault(home, []) if home is not None else lone).append(r)
    lines = []
    for home, members in sweeps.items():
        cfg = _load_yaml(home / "multirun.yaml")
        program = "deeprun-diagnose" if all(r.kind == "diagnosis" for r in members) else "deeprun"
        task = []
        params: dict = {}
        with contextlib.suppress(Exception):
            task = [str(o) for o in OmegaConf.to_container(cfg.hydra.overrides.task)]
        with contextlib.suppress(Exception):
            params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
        command = " ".join([program, "-m", *map(_quote, task)])
        extra = (f"; the config sweeps {escape(', '.join(f'{k}={v}' for k, v in params.items()))}" if params else "")
        lines.append(f"<code>{escape(command)}</code> into <code>{escape(str(home))}</code>{extra} "
                     f"({_count(len(members), 'run')} here)")
    for r in lone:
        path = Path(str(r.row["run"]))
        program = "deeprun-diagnose" if r.kind == "diagnosis" else "deeprun"
        overrides = r.row.get("overrides")
        if isinstance(overrides, str):
            lines.append(f"<code>{escape(program + ' ' + ' '.join(map(_quote, overrides.split())))}</code> into "
                         f"<code>{escape(str(path))}</code>")
        else:
            lines.append(f"<code>{escape(str(path))}</code>: no .hydra/ record (made by the Python API, or copied)")
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"and {len(lines) - MAX_LINES} more"]
    return lines


def _count(n: int, what: str) -> str:
    plural = what[:-2] + "es" if what.endswith("is") else what + "es" if what.endswith("s") else what + "s"
    return f"{n} {what if n == 1 else plural}"


def _when(runs: list[Run]) -> str:
    """From the first run's start (its .hydra/config.yaml, else its record) to the last one's end."""
    starts, ends = [], []
    for r in runs:
        path = Path(str(r.row["run"]))
        with contextlib.suppress(OSError):
            record = path / (DIAGNOSIS if r.kind == "diagnosis" else SUMMARY)
            ends.append(record.stat().st_mtime)
            config = path / ".hydra" / "config.yaml"
            starts.append(config.stat().st_mtime if config.is_file() else record.stat().st_mtime)
    if not ends:
        return "not recorded"
    first, last = (dt.datetime.fromtimestamp(t).astimezone() for t in (min(starts), max(ends)))
    same_day = first.date() == last.date()
    return (f"{first:%Y-%m-%d %H:%M} to {last:%H:%M %Z}" if same_day else
            f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M %Z}") + " (record times)"


def _where(frame: pd.DataFrame, runs: list[Run]) -> str:
    parts = []
    for what in WHERE_COLUMNS:
        if what in frame and frame[what].notna().any():
            values = Counter(str(v) for v in frame[what].dropna())
            parts.append(f"{what} " + ", ".join(f"{escape(v)}" + (f" ({n})" if len(values) > 1 else "")
                                               for v, n in values.items()))
        else:
            parts.append(f"{what}: not recorded")
    if "device" in frame:
        devices = Counter(str(v) for v in frame["device"].dropna())
        parts.insert(0, "device " + ", ".join(f"{escape(v)} ({n})" for v, n in devices.items()))
    cwds = []
    for r in runs[:50]:
        home = _sweep_dir(Path(str(r.row["run"])))
        cfg = _load_yaml(home / "multirun.yaml") if home else _load_yaml(Path(str(r.row["run"])) / ".hydra" / "hydra.yaml")
        with contextlib.suppress(Exception):
            cwd = str(cfg.hydra.runtime.cwd)
            if cwd not in cwds:
                cwds.append(cwd)
    if cwds:
        parts.append("run from " + ", ".join(f"<code>{escape(c)}</code>" for c in cwds[:3]))
    return "; ".join(parts)


def _status_badges(frame: pd.DataFrame) -> str:
    counts = Counter(str(s) for s in frame["status"].fillna("unknown")) if "status" in frame else Counter()
    order = [s for s in schema.STATUSES if s in counts] + [s for s in counts if s not in schema.STATUSES]
    return " ".join(f'<span class="badge status-{escape(s)}">{counts[s]} {escape(s)}</span>' for s in order)


def _verdict_badges(frame: pd.DataFrame) -> str:
    if "verdict@init" not in frame or not frame["verdict@init"].notna().any():
        return ""
    counts = Counter(str(v) for v in frame["verdict@init"].dropna())
    return " ".join(f'<span class="badge verdict" style="background:{VERDICT_COLOURS.get(v, "#888")}">'
                    f"{n} {escape(v)}</span>" for v, n in counts.most_common())


def _header(frame, everything, runs, paths, command, filters) -> str:
    kinds = Counter(r.kind for r in runs)
    what = ", ".join(_count(n, "training run" if k == "train" else "diagnosis") for k, n in kinds.items())
    kept = (f" (the {len(frame)} of {len(everything)} that match {escape(' '.join(filters))})"
            if len(frame) < len(everything) else "")
    swept_keys = varying_columns(frame)
    lines = _commands(runs)
    return (
        "<header>\n<h1>deeprun report</h1>\n"
        f"<p class=\"lead\">{len(frame)} runs{kept} under {', '.join(f'<code>{escape(p)}</code>' for p in paths)}: "
        f"{escape(what)}. {_status_badges(frame)}</p>\n<dl class=\"facts\">\n"
        "<dt>what</dt><dd>" + "<br>".join(lines) + "</dd>\n"
        f"<dt>varied</dt><dd>{escape(', '.join(swept_keys)) or 'nothing: one configuration'}</dd>\n"
        f"<dt>when</dt><dd>{escape(_when(runs))}</dd>\n"
        f"<dt>where</dt><dd>{_where(frame, runs)}</dd>\n"
        + (f"<dt>verdict@init</dt><dd>{_verdict_badges(frame)}</dd>\n" if _verdict_badges(frame) else "")
        + "</dl>\n</header>"
    )


def _results(frame: pd.DataFrame, everything: pd.DataFrame, runs: list[Run]) -> str:
    columns = [c for c in default_columns(everything) if c in frame]
    if "run" not in columns:
        columns.append("run")
    head = ['<th data-col="#" data-type="num" scope="col"><button type="button">#</button></th>']
    for c in columns:
        numeric = frame[c].dtype.kind in "iuf"
        head.append(f'<th data-col="{escape(c)}" data-type="{"num" if numeric else "text"}" scope="col">'
                    f'<button type="button">{escape(c)}</button></th>')
    body = []
    for r in runs:
        status = str(r.row.get("status", ""))
        cells = [f'<td class="num" data-v="{r.i + 1}"><a href="#run-{r.i + 1}" title="{escape(str(r.row["run"]))}">'
                 f"#{r.i + 1}</a></td>"]
        for c in columns:
            v = r.row[c]
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            text = "-" if missing else fmt(v)
            if c == "run":
                cells.append(f'<td class="path" title="{escape(str(v))}">{escape(r.name)}</td>')
            elif frame[c].dtype.kind in "iuf":
                cells.append(f'<td class="num" data-v="{"" if missing else repr(float(v))}">{escape(text)}</td>')
            elif c == "verdict@init" and not missing:
                colour = VERDICT_COLOURS.get(str(v), "#888")
                cells.append(f'<td><span class="badge verdict" style="background:{colour}">{escape(text)}</span></td>')
            elif c == "status":
                cells.append(f'<td><span class="badge status-{escape(text)}">{escape(text)}</span></td>')
            elif c in TEXT_COLUMNS:  # cut with an ellipsis: the whole text on hover
                cells.append(f'<td class="long" title="{escape(text)}">{escape(text)}</td>')
            else:
                cells.append(f"<td>{escape(text)}</td>")
        body.append(f'<tr id="row-{r.i + 1}" class="status-{escape(status)}" data-r="{r.i}">' + "".join(cells) + "</tr>")
    return (
        '<section id="results">\n<h2>Results</h2>\n'
        '<p class="caption">Varying columns first, then the key metrics. Click a header to sort (again: the other '
        "way; missing values last). Filter with words: <code>act=tanh</code>, <code>depth&gt;4</code>, "
        "<code>status!=completed</code> or any text; every word must match. The charts below follow the "
        "filter.</p>\n"
        '<div class="controls"><input id="filter" type="search" placeholder="filter, e.g. act=tanh depth>4" '
        'aria-label="filter the runs" size="40"> <span id="shown-count" aria-live="polite">'
        f"{_count(len(runs), 'run')}</span></div>\n"
        '<div class="scroll"><table id="results-table">\n<thead><tr>' + "".join(head) + "</tr></thead>\n<tbody>\n"
        + "\n".join(body) + "\n</tbody></table></div>\n</section>"
    )


def _pivots(pivots: list, specs: dict) -> str:
    if not pivots:
        return ""
    charts = "".join(f'<div class="chart" data-spec="pivot_{k}" aria-label="pivot {escape(" ".join(p))}"></div>'
                     for k, (p, _) in enumerate(pivots))
    return ('<section id="pivots">\n<h2>Pivots</h2>\n<p class="caption">Each cell: the mean over the runs that differ '
            "only by seed, ± their sample std (ddof=1); a text value (a verdict) shows the commonest. Lines where "
            "the rows are numbers. These do not follow the table's filter.</p>\n"
            f'<div class="charts">{charts}</div>\n</section>')


def _loss(runs: list[Run], notes: dict) -> str:
    if not any(len(r.epochs) for r in runs if r.kind == "train"):
        return ""
    thinned = (f" Curves longer than {MAX_POINTS} epochs show {MAX_POINTS} evenly spaced ones (the longest here: "
               f"{notes['long']})." if notes["long"] > MAX_POINTS else "")
    off = (f" {_count(notes['off'], 'loss')} of {_count(notes['off_runs'], 'run')} above {fmt(notes['top'])} "
           f"({OFF_CHART:g} x the largest loss at initialisation: diverging, or BatchNorm's first validation "
           "loss) are off the chart." if notes["off"] else "")
    val = "" if notes["has_val"] else " No validation split here (data.val_fraction=0): training loss only."
    return ('<section id="loss">\n<h2>Loss curves</h2>\n'
            '<p class="caption">Train solid, validation dashed; one colour per configuration; its seeds as their '
            "mean, with a band from the lowest to the highest. Hover for the runs and values; click a legend "
            f"entry to pick a configuration (shift-click: several).{val}{thinned}{off}</p>\n"
            '<div class="chart" data-spec="loss"></div>\n</section>')


def _layers(runs: list[Run], notes: dict) -> str:
    probed = [r for r in runs if r.kind == "train" and len(r.layers)]
    if not probed:
        return ""
    options = "".join(f'<option value="{r.i}"{" selected" if r.i == notes["chosen"] else ""}>'
                      f"#{r.i + 1} {escape(r.label)} {escape(_seed(r))} ({escape(str(r.row.get('status')))})</option>"
                      for r in probed)
    thinned = (f" Runs with more logged epochs show {notes['heat_epochs']} evenly spaced ones (the first and "
               "last among them)." if notes["heat_thinned"] else "")
    thinned += (f" Nets of more than {MAX_HEAT_LAYERS} layers show {MAX_HEAT_LAYERS} evenly spaced ones (the charts "
                "above keep them all)." if notes["heat_layers_thinned"] else "")
    fewer = (f" Nets of more than {notes['grad_layers']} layers show {notes['grad_layers']} evenly spaced ones."
             if notes["grad_thinned"] else "")
    return ('<section id="layers">\n<h2>Per layer</h2>\n'
            '<p class="caption">The gradient norm of each layer\'s weight, mean over seeds with a band from the '
            "lowest to the highest; a line falling towards layer 0 is a vanishing gradient, rising an exploding "
            f"one. Click a legend entry to pick a configuration.{fewer}</p>\n"
            '<div class="chart" data-spec="grad"></div>\n'
            '<h3>Layer x epoch, one run</h3>\n'
            '<div class="controls"><label>run <select id="layer-run">' + options + "</select></label></div>\n"
            f'<p class="caption">Gradient norm (log colour) and the dead or saturated fraction of each layer at each '
            f"logged epoch.{thinned}</p>\n"
            '<div class="charts" id="heat">'
            '<div class="chart" data-spec="heat_grad_norm" data-heat="grad_norm"></div>'
            '<div class="chart" data-spec="heat_dead_frac" data-heat="dead_frac"></div>'
            '<div class="chart" data-spec="heat_saturated_frac" data-heat="saturated_frac"></div>'
            "</div>\n</section>")


def _diagnosis(frame: pd.DataFrame, runs: list[Run]) -> str:
    with_verdict = [r for r in runs if pd.notna(r.row.get("verdict@init"))]
    diagnosed = [r for r in runs if r.kind == "diagnosis"]
    if not with_verdict and not diagnosed:
        return ""
    columns = [c for c in DIAGNOSIS_COLUMNS if c in frame and frame[c].notna().any()]
    rows = []
    for r in (diagnosed or with_verdict):
        cells = [f'<td class="num"><a href="#run-{r.i + 1}">#{r.i + 1}</a></td><td>{escape(r.label)} '
                 f"{escape(_seed(r))}</td>"]
        for c in columns:
            v = r.row.get(c)
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            if c == "verdict@init" and not missing:
                cells.append(f'<td><span class="badge verdict" style="background:{VERDICT_COLOURS.get(str(v), "#888")}">'
                             f"{escape(str(v))}</span></td>")
            else:
                kind = "num" if frame[c].dtype.kind in "iuf" else "prose" if c in PROSE_COLUMNS else ""
                cells.append(f'<td class="{kind}">{escape("-" if missing else fmt(v))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    who = ("deeprun-diagnose's runs: the net at initialisation, nothing trained" if diagnosed else
           "the training runs' verdict on their own epoch 0")
    chart = ('<div class="chart" data-spec="diagnosis"></div>\n'
             if any(len(r.diagnosis) for r in diagnosed) else "")
    return ('<section id="diagnosis">\n<h2>Diagnosis</h2>\n'
            f'<p class="caption">Verdicts: {_verdict_badges(frame)}. Below, {escape(who)}; chi_1 &lt; 1 is the '
            "ordered phase (gradients vanish with depth), &gt; 1 the chaotic one; trainable_depth is 6 xi_c; "
            "jac_condition is the input-output Jacobian's largest over smallest singular value.</p>\n" + chart
            + '<div class="scroll"><table class="diagnosis"><thead><tr><th>#</th><th>configuration</th>'
            + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>\n</section>")


# --- style and script ----------------------------------------------------------------------------------

CSS = """
:root { --ink: #1d232a; --muted: #5b6570; --rule: #d9dee3; --soft: #f4f6f8; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
header, nav, main, footer { max-width: 1240px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 6px; padding-top: 8px; border-top: 1px solid var(--rule); }
section, details.run { scroll-margin-top: 40px; }  /* below the sticky contents line */
h3 { font-size: 15px; margin: 18px 0 6px; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
       padding: 0 3px; border-radius: 3px; word-break: break-all; }
.lead { margin: 4px 0 10px; font-size: 15px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 14px; margin: 0 0 8px; }
.facts dt { color: var(--muted); font-weight: 600; }
.facts dd { margin: 0; }
nav { position: sticky; top: 0; background: rgba(255,255,255,.96); border-bottom: 1px solid var(--rule);
      padding-top: 6px; padding-bottom: 6px; z-index: 5; }
nav a { color: var(--accent); text-decoration: none; }
.caption { color: var(--muted); margin: 2px 0 8px; max-width: 980px; }
.controls { margin: 6px 0; }
.controls input, .controls select { font: inherit; padding: 3px 6px; max-width: 100%; }
.scroll { overflow-x: auto; max-height: 75vh; overflow-y: auto; border: 1px solid var(--rule); }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 3px 7px; border-bottom: 1px solid var(--rule); white-space: nowrap; text-align: left; }
thead th { position: sticky; top: 0; background: var(--soft); z-index: 1; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th button:focus-visible { outline: 2px solid var(--accent); }
th[aria-sort="ascending"] button::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"] button::after { content: " \\25BC"; font-size: 10px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.long, td.path { max-width: 280px; overflow: hidden; text-overflow: ellipsis; }
td.prose { white-space: normal; min-width: 260px; max-width: 460px; }
tbody tr:hover { background: #eef4fb; }
tr.status-failed { background: #fde8e7; } tr.status-failed td:first-child { box-shadow: inset 4px 0 #d62728; }
tr.status-diverged { background: #fff5d6; } tr.status-diverged td:first-child { box-shadow: inset 4px 0 #e8a200; }
tr.status-interrupted, tr.status-running { background: #f6e9f7; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 12px; color: #fff; background: #6c757d; }
.status-completed.badge { background: #2e7d32; } .status-diverged.badge { background: #c98a00; }
.status-failed.badge { background: #c62828; } .status-interrupted.badge, .status-running.badge { background: #8e44ad; }
.charts { display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: flex-start; }
.chart { max-width: 100%; overflow-x: auto; min-height: 40px; }
.chart .vega-embed { max-width: 100%; }
.chart.empty { color: var(--muted); font-style: italic; min-height: 0; padding: 6px 0; }
details.run { border: 1px solid var(--rule); border-radius: 4px; margin: 4px 0; padding: 2px 10px; }
details.run[open] { background: #fbfcfd; }
details.run summary { cursor: pointer; }
details.run:target, details.run.target { outline: 2px solid var(--accent); }
details.run dl { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1px 16px;
                 font-size: 12.5px; margin: 6px 0; }
details.run dl div { display: flex; gap: 6px; min-width: 0; }
details.run dt { color: var(--muted); white-space: nowrap; }
details.run dd { margin: 0; overflow-wrap: anywhere; }
.note, .error { color: #a12; }
footer { color: var(--muted); font-size: 12px; margin-top: 32px; padding-bottom: 24px; border-top: 1px solid var(--rule); padding-top: 8px; }
@media print {
  @page { size: A4 landscape; margin: 12mm; }
  nav, .controls, .vega-embed details, .vega-actions { display: none !important; }
  body { font-size: 11px; }
  .scroll { max-height: none; overflow: visible; border: 0; }
  table { font-size: 9.5px; }
  thead th { position: static; }
  .chart, tr, details.run { break-inside: avoid; }
  h2 { break-after: avoid; }
  tr.status-failed, tr.status-diverged, .badge { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

SCRIPT = r"""
(function () {
  "use strict";
  const $ = (s, el) => (el || document).querySelector(s);
  const $$ = (s, el) => Array.from((el || document).querySelectorAll(s));
  const VIEWS = {}, TIMES = {};
  window.deeprunReport = {views: VIEWS, times: TIMES};  // for a console, or a test: each chart's view and ms
  const OPTIONS = {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}};
  let DATA = null, SPECS = null, SHOWN = null, RECORDS = {};

  async function unpack(el) {
    const bytes = Uint8Array.from(atob(el.textContent.trim()), c => c.charCodeAt(0));
    if (typeof DecompressionStream === "undefined") throw new Error("this browser cannot open the charts' data (no DecompressionStream); use a current Chrome, Firefox, Safari or Edge");
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }

  function fail(el, error) {
    console.error(error);
    el.classList.add("empty", "error");
    el.textContent = "This chart could not be drawn: " + (error && error.message || error);
  }

  function groupRuns() {  // per kind and configuration: "#1 seed=0, #2 seed=1"
    const groups = {};
    for (const run of DATA.runs) {
      const key = run.kind + "\u0000" + run.g;
      (groups[key] = groups[key] || []).push("#" + run.n + (run.seed ? " " + run.seed : ""));
    }
    const text = {};
    for (const [key, list] of Object.entries(groups))
      text[key] = list.length > 6 ? list.slice(0, 5).join(", ") + ", and " + (list.length - 5) + " more" : list.join(", ");
    return run => text[run.kind + "\u0000" + run.g];
  }

  function records() {  // the page's compact lists as the records the specs draw
    const runsOf = groupRuns(), curves = [], grads = [], diagnosis = [];
    DATA.runs.forEach((run, r) => {
      const base = {r: r, c: run.label, runs: runsOf(run)};
      const curve = DATA.curves[r];
      if (curve) {
        const [e, t, v] = curve;
        for (let k = 0; k < e.length; k++) {
          if (t[k] !== null) curves.push(Object.assign({s: "train", e: e[k], v: t[k]}, base));
          if (v && v[k] !== null) curves.push(Object.assign({s: "validation", e: e[k], v: v[k]}, base));
        }
      }
      const grad = DATA.grads[r];
      if (grad) {
        const [layers, names, init, end] = grad;
        layers.forEach((l, k) => {
          if (init[k] !== null) grads.push(Object.assign({w: "init", l: l, name: names[k], v: init[k]}, base));
          if (end[k] !== null) grads.push(Object.assign({w: "end", l: l, name: names[k], v: end[k]}, base));
        });
      }
      const diag = DATA.diagnosis[r];
      if (diag) {
        const [layers, names, m, s] = diag;
        layers.forEach((l, k) => {
          if (m[k] === null) return;
          const sd = s[k] || 0;
          diagnosis.push(Object.assign({run: "#" + run.n + " " + run.name, l: l, name: names[k], m: m[k], sd: sd,
                                        lo: Math.max(m[k] - sd, m[k] / 10), hi: m[k] + sd}, base));
        });
      }
    });
    return {curves: curves, grads: grads, diagnosis: diagnosis};
  }

  function heatRecords(r) {
    const heat = DATA.heat[r];
    if (!heat) return [];
    const [layers, names, epochs, grad, dead, sat] = heat, out = [];
    const metrics = [["grad_norm", grad], ["dead_frac", dead], ["saturated_frac", sat]];
    layers.forEach((l, i) => epochs.forEach((e, j) => {
      for (const [m, values] of metrics) {
        if (!values) continue;
        const v = values[i * epochs.length + j];
        if (v !== null) out.push({m: m, l: l, name: names[i], e: e, v: v});
      }
    }));
    return out;
  }

  async function embed(el, name, datasets) {
    const spec = JSON.parse(JSON.stringify(SPECS[name]));
    spec.datasets = Object.assign({}, spec.datasets || {});
    for (const key of (spec.usermeta && spec.usermeta.data) || []) spec.datasets[key] = datasets[key];
    if (VIEWS[name]) { VIEWS[name].finalize(); delete VIEWS[name]; }
    el.classList.remove("empty", "error");
    el.textContent = "";
    const renderer = (spec.usermeta && spec.usermeta.renderer) || "svg", start = performance.now();
    const result = await vegaEmbed(el, spec, Object.assign({}, OPTIONS, {renderer: renderer}));
    TIMES[name] = Math.round(performance.now() - start);
    VIEWS[name] = result.view;
    if (SHOWN !== null && hasShown(name)) await result.view.signal("shown", SHOWN).runAsync();
    return result.view;
  }

  const hasShown = name => (SPECS[name].params || []).some(p => p.name === "shown");

  async function drawHeat() {
    const select = $("#layer-run");
    if (!select) return;
    const r = Number(select.value), heat = DATA.heat[r], records = heatRecords(r);
    const note = {dead_frac: "no dead fraction for this run: it is measured for the ReLU family only",
                  saturated_frac: "no saturated fraction for this run: it is measured for tanh and sigmoid only"};
    for (const el of $$("#heat .chart")) {
      const metric = el.dataset.heat;
      const index = {grad_norm: 3, dead_frac: 4, saturated_frac: 5}[metric];
      if (!heat || !heat[index]) {
        if (VIEWS[el.dataset.spec]) { VIEWS[el.dataset.spec].finalize(); delete VIEWS[el.dataset.spec]; }
        el.classList.add("empty");
        el.textContent = note[metric] || "no per-layer records for this run";
        continue;
      }
      try { await embed(el, el.dataset.spec, {heat: records}); } catch (e) { fail(el, e); }
    }
  }

  // --- the table: sort by a header, filter by words --------------------------------------------------
  function setupTable() {
    const table = $("#results-table");
    if (!table) return;
    const heads = $$("thead th", table);
    heads.forEach((th, index) => th.addEventListener("click", () => sortBy(table, th, index)));
    const input = $("#filter");
    let timer = null;
    input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => filter(table, input.value), 150); });
    if (input.value) filter(table, input.value);
  }

  function cellValue(td, numeric) {
    const raw = td.dataset.v !== undefined ? td.dataset.v : td.textContent.trim();
    if (raw === "" || raw === "-") return null;
    if (numeric) { const x = Number(raw); return Number.isNaN(x) ? null : x; }
    return raw;
  }

  function sortBy(table, th, index) {
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    $$("thead th", table).forEach(h => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const numeric = th.dataset.type === "num", body = table.tBodies[0];
    const rows = Array.from(body.rows).map((tr, k) => ({tr: tr, k: k, v: cellValue(tr.cells[index], numeric)}));
    const collator = new Intl.Collator(undefined, {numeric: true});
    rows.sort((a, b) => {
      if (a.v === null || b.v === null) return a.v === b.v ? a.k - b.k : a.v === null ? 1 : -1;  // missing last
      const c = numeric ? a.v - b.v : collator.compare(a.v, b.v);
      return (ascending ? c : -c) || a.k - b.k;
    });
    body.append(...rows.map(x => x.tr));
  }

  function matcher(table, text) {
    const columns = {};
    $$("thead th", table).forEach((th, k) => { columns[th.dataset.col] = {index: k, numeric: th.dataset.type === "num"}; });
    const terms = text.trim().split(/\s+/).filter(Boolean).map(term => {
      const m = term.match(/^(.+?)(!=|<=|>=|=|<|>)(.*)$/);
      if (m && columns[m[1]]) return Object.assign({op: m[2], want: m[3]}, columns[m[1]]);
      return {any: term.toLowerCase()};
    });
    return tr => terms.every(t => {
      if (t.any !== undefined) return tr.textContent.toLowerCase().includes(t.any);
      const td = tr.cells[t.index], text = td.textContent.trim(), v = cellValue(td, t.numeric), w = Number(t.want);
      const number = t.numeric && v !== null && t.want !== "" && !Number.isNaN(w);
      switch (t.op) {
        case "=": return number ? v === w : t.want === "null" ? v === null : text === t.want;
        case "!=": return number ? v !== w : t.want === "null" ? v !== null : text !== t.want;
        case "<": return number && v < w;
        case ">": return number && v > w;
        case "<=": return number && v <= w;
        case ">=": return number && v >= w;
      }
      return true;
    });
  }

  function filter(table, text) {
    const keep = matcher(table, text), rows = Array.from(table.tBodies[0].rows), shown = [];
    for (const tr of rows) {
      const ok = keep(tr);
      tr.hidden = !ok;
      if (ok) shown.push(Number(tr.dataset.r));
    }
    $("#shown-count").textContent = (shown.length === rows.length ? "" : shown.length + " of ") + rows.length + " runs";
    SHOWN = shown.length === rows.length ? null : shown;
    for (const [name, view] of Object.entries(VIEWS))
      if (hasShown(name)) view.signal("shown", SHOWN).runAsync().catch(console.error);
  }

  // --- the runs' sections ------------------------------------------------------------------------
  function runSections() {
    const home = $("#run-sections");
    if (!home) return;
    const fragment = document.createDocumentFragment();
    DATA.runs.forEach((run, r) => {
      const details = document.createElement("details");
      details.className = "run";
      details.id = "run-" + run.n;
      const summary = document.createElement("summary");
      const row = DATA.rows[r], at = name => row[DATA.columns.indexOf(name)];
      const status = at("status");
      summary.innerHTML = "<b>#" + run.n + "</b> ";
      summary.append(run.label + (run.seed ? " " + run.seed : "") + " \u2014 ");
      const badge = document.createElement("span");
      badge.className = "badge status-" + status;
      badge.textContent = status === null || status === undefined ? "?" : status;
      summary.append(badge, " " + (run.kind === "diagnosis" ? "diagnosis " : "") + run.name);
      details.append(summary);
      const path = document.createElement("p");
      path.innerHTML = "<code></code>";
      path.firstChild.textContent = run.path;
      details.append(path);
      if (DATA.heat[r]) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = "show its layer x epoch heatmaps";
        button.addEventListener("click", () => {
          const select = $("#layer-run");
          select.value = String(r);
          drawHeat();
          $("#layers").scrollIntoView();
        });
        details.append(button);
      }
      const list = document.createElement("dl");
      DATA.columns.forEach((name, k) => {
        const v = row[k];
        if (v === null || v === undefined || name === "run") return;
        const pair = document.createElement("div"), dt = document.createElement("dt"), dd = document.createElement("dd");
        dt.textContent = name;
        dd.textContent = typeof v === "number" ? String(Number(v.toPrecision(4))) : String(v);
        pair.append(dt, dd);
        list.append(pair);
      });
      details.append(list);
      fragment.append(details);
    });
    home.append(fragment);
    const open = () => {
      const target = location.hash && document.getElementById(location.hash.slice(1));
      if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
    };
    window.addEventListener("hashchange", open);
    open();
  }

  async function main() {
    SPECS = JSON.parse($("#deeprun-specs").textContent);
    let start = performance.now();
    DATA = await unpack($("#deeprun-data"));
    TIMES.unpack = Math.round(performance.now() - start);
    start = performance.now();
    RECORDS = records();
    window.deeprunReport.curves = RECORDS.curves;
    TIMES.records = Math.round(performance.now() - start);
    setupTable();
    runSections();
    const select = $("#layer-run");
    if (select) select.addEventListener("change", drawHeat);
    for (const el of $$(".chart[data-spec]")) {
      if (el.dataset.heat) continue;
      if (!SPECS[el.dataset.spec]) { el.classList.add("empty"); el.textContent = "nothing to draw"; continue; }
      try { await embed(el, el.dataset.spec, RECORDS); } catch (e) { fail(el, e); }
    }
    await drawHeat();
    document.body.dataset.ready = "true";
  }

  main().catch(error => { console.error(error); document.body.dataset.ready = "error"; });
})();
"""
