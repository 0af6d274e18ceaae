"""deeprun-report on real records: a 2x2 sweep (act x depth) over 2 seeds, written once per module through the
Python API, plus a failed run and a run with a torn epochs.csv. Numbers are checked against the summaries."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, run_python, tiny

import deeprun
from deeprun import report
from deeprun.display import fmt

ACTS, DEPTHS, SEEDS = ("relu", "sigmoid"), (2, 8), (0, 1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, Path]:
    """sweep/: 8 completed runs (the deep-MLP notebook's setting, 5 epochs); broken/: a failed run and a torn one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 8-wide nets: one thread is fastest and immune to a busy machine
    root = tmp_path_factory.mktemp("report")
    for act in ACTS:
        for depth in DEPTHS:
            for seed in SEEDS:
                cfg = tiny(f"act={act}", f"depth={depth}", f"seed={seed}", "epochs=5", "init=uniform",
                           "optimizer=sgd", "lr=0.01")
                deeprun.run(cfg, out_dir=root / "sweep" / f"{act}-d{depth}-s{seed}")
    cfg = tiny()
    cfg.lr = -1.0  # validated inside run(): a real `failed` record with header-only csv files
    with pytest.raises(deeprun.ConfigError):
        deeprun.run(cfg, out_dir=root / "broken" / "failed")
    shutil.copytree(root / "sweep" / "relu-d2-s0", root / "broken" / "torn")
    (root / "broken" / "torn" / "epochs.csv").write_text("")  # a torn write: empty file
    (root / "broken" / "torn" / "layers.csv").unlink()
    torch.set_num_threads(threads)
    return {"sweep": root / "sweep", "broken": root / "broken", "root": root}


def summary(records, act: str, depth: int, seed: int) -> dict:
    return json.loads((records["sweep"] / f"{act}-d{depth}-s{seed}" / "summary.json").read_text())


def run_report(capsys, *args) -> tuple[str, str]:
    report.main([str(a) for a in args])
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_default_table_shows_varying_columns_and_metrics(records, capsys):
    out, _ = run_report(capsys, records["sweep"])
    header = next(line for line in out.splitlines() if "final_train_loss" in line)
    for column in ("act", "depth", "seed", "status", "grad_norm_first"):
        assert column in header
    assert "lr" not in header.split() and "width" not in header  # the same in every run
    assert "8 runs under" in out
    assert out.count("completed") == 8


def test_filter_and_sort_written_as_csv(records, capsys, tmp_path):
    out_file = tmp_path / "t.csv"
    run_report(capsys, records["sweep"], records["broken"], "--filter", "act=sigmoid", "--filter", "depth=8",
               "--sort=-final_train_loss", "--out", out_file)
    table = pd.read_csv(out_file)
    assert set(table.act) == {"sigmoid"} and set(table.depth) == {8} and sorted(table.seed) == [0, 1]
    assert list(table.final_train_loss) == sorted(table.final_train_loss, reverse=True)
    for _, row in table.iterrows():
        assert row.final_train_loss == pytest.approx(summary(records, "sigmoid", 8, row.seed)["final_train_loss"])


def test_filter_compares_as_the_column_type(records, capsys, tmp_path):
    out_file = tmp_path / "t.csv"
    run_report(capsys, records["sweep"], records["broken"] / "failed", "--filter", "status=completed",
               "--filter", "error=null", "--filter", "lr=0.01", "--filter", "depth=2.0",
               "--columns", "act,depth,seed,status", "--sort", "act,-seed", "--out", out_file)
    table = pd.read_csv(out_file)
    assert list(table.columns) == ["act", "depth", "seed", "status"]
    assert list(zip(table.act, table.seed)) == [("relu", 1), ("relu", 0), ("sigmoid", 1), ("sigmoid", 0)]
    assert set(table.status) == {"completed"} and set(table.depth) == {2}


def test_markdown_rows(records, capsys, tmp_path):
    out_file = tmp_path / "t.md"
    run_report(capsys, records["sweep"], "--columns", "act,depth,seed,final_val_loss", "--sort", "act,depth,seed",
               "--out", out_file)
    lines = out_file.read_text().splitlines()
    assert lines[0] == "| act | depth | seed | final_val_loss |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert len(lines) == 2 + 8
    first = summary(records, "relu", 2, 0)["final_val_loss"]
    assert lines[2] == f"| relu | 2 | 0 | {fmt(first)} |"


def test_parquet_matches_csv(records, capsys, tmp_path):
    run_report(capsys, records["sweep"], "--out", tmp_path / "t.parquet")
    run_report(capsys, records["sweep"], "--out", tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), pd.read_csv(tmp_path / "t.csv"),
                                  check_dtype=False)


def test_pivot_one_seed_equals_summaries(records, capsys, tmp_path):
    out_file = tmp_path / "p.csv"
    out, _ = run_report(capsys, records["sweep"], "--filter", "seed=0", "--pivot", "depth", "act", "final_train_loss",
                        "--out", out_file)
    table = pd.read_csv(out_file).set_index("depth")
    assert list(table.columns) == ["act=relu", "act=sigmoid"]  # one run per cell: no std columns
    for act in ACTS:
        for depth in DEPTHS:
            assert table.loc[depth, f"act={act}"] == pytest.approx(summary(records, act, depth, 0)["final_train_loss"])
    assert "±" not in out


def test_pivot_mean_and_std_over_seeds(records, capsys, tmp_path):
    out_file = tmp_path / "p.csv"
    out, _ = run_report(capsys, records["sweep"], records["broken"] / "failed", "--pivot", "depth", "act",
                        "grad_norm_first", "--out", out_file)
    table = pd.read_csv(out_file).set_index("depth")
    assert list(table.columns) == ["act=relu", "act=relu std", "act=sigmoid", "act=sigmoid std"]
    for act in ACTS:
        for depth in DEPTHS:  # the failed run (relu, depth 2) has no value and does not count
            values = [summary(records, act, depth, seed)["grad_norm_first"] for seed in SEEDS]
            assert table.loc[depth, f"act={act}"] == pytest.approx(statistics.mean(values))
            assert table.loc[depth, f"act={act} std"] == pytest.approx(statistics.stdev(values))
    values = [summary(records, "sigmoid", 8, seed)["grad_norm_first"] for seed in SEEDS]
    assert f"{fmt(statistics.mean(values))} ± {fmt(statistics.stdev(values))}" in out
    assert "mean ± std over 2 seeds" in out


@pytest.mark.slow
def test_plots_are_pngs_and_skip_runs_without_records(records, capsys, tmp_path):
    out, err = run_report(capsys, records["sweep"], records["broken"], "--pivot", "depth", "act", "final_train_loss",
                          "--plot", tmp_path / "plots")
    names = ["loss.png", "grad_norm.png", "pivot_final_train_loss_by_depth_and_act.png"]
    for name in names:
        path = tmp_path / "plots" / name
        assert f"wrote {path}" in out
        assert path.read_bytes()[:8] == PNG
        import matplotlib.image

        height, width, channels = matplotlib.image.imread(path).shape
        assert 400 <= height <= width <= 2000 and channels in (3, 4)
    assert "2 runs without records left out of the plots" in err
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temporary files left


def test_grad_norm_panel_titles_do_not_overlap():
    """With a legend of long labels beside them, the two panels' titles stay apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    layers = pd.DataFrame({"epoch": [0] * 9 + [1000] * 9, "layer": list(range(9)) * 2, "grad_norm": [0.1] * 18})
    groups = {f"model.widths=[8, 8, 8, 8, 8, 8, 8, 8] act=sigmoid lr={i} (3 runs)": [(None, layers)] for i in range(8)}
    figure = report._grad_figure(groups, "24 runs; model=mlp init=uniform")
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    left, right = (ax.title.get_window_extent(renderer) for ax in figure.axes)
    assert left.x1 < right.x0, (left, right)
    assert [ax.get_title() for ax in figure.axes] == ["Gradient norm per layer\nat initialisation (epoch 0)",
                                                       "Gradient norm per layer\nafter training (epoch 1000)"]


@pytest.mark.slow
def test_pivot_of_named_rows_is_a_heatmap_png(records, capsys, tmp_path):
    run_report(capsys, records["sweep"], "--pivot", "act", "depth", "grad_norm_first", "--plot", tmp_path)
    assert (tmp_path / "pivot_grad_norm_first_by_act_and_depth.png").read_bytes()[:8] == PNG


def test_plot_labels_are_the_varying_config_without_seeds(records):
    frame = report.load([str(records["sweep"])])
    runs = [(row, pd.DataFrame({"epoch": [0]}), pd.DataFrame({"epoch": [0]})) for _, row in frame.iterrows()]
    assert list(report._groups(frame, runs)) == [f"depth={d} act={a} (2 runs)" for a in ACTS for d in DEPTHS]


ERRORS = {
    "missing path": (["{sweep}/nope"], "PATH {sweep}/nope: no such directory"),
    "no runs": (["{root}/empty"], "no runs under {root}/empty"),
    "unknown --columns": (["{sweep}", "--columns", "act,final_los"], "--columns: no column 'final_los'; did you mean"),
    "unknown --sort": (["{sweep}", "--sort=-nope"], "--sort: no column 'nope'; columns here include depth, act, seed"),
    "unknown --filter key": (["{sweep}", "--filter", "dept=8"], "--filter: no column 'dept'; did you mean depth"),
    "malformed --filter": (["{sweep}", "--filter", "depth8"], "--filter depth8: expected KEY=VALUE"),
    "--filter no match": (["{sweep}", "--filter", "depth=3"], "depth=3: no run matches; depth here is one of: 2, 8"),
    "--filter not a number": (["{sweep}", "--filter", "depth=deep"], "--filter depth=deep: depth holds numbers"),
    "unknown --pivot": (["{sweep}", "--pivot", "depth", "actt", "final_train_loss"], "--pivot: no column 'actt'"),
    "--pivot VALUE empty": (["{sweep}", "--pivot", "depth", "act", "error"], "VALUE error has no numbers"),
    "--pivot mixed cells": (["{sweep}", "--pivot", "depth", "seed", "final_train_loss"], "differ in act, not only"),
    "--pivot two args": (["{sweep}", "--pivot", "depth", "act"], "argument --pivot: expected 3 arguments"),
    "--out unwritable": (["{sweep}", "--out", "{sweep}/relu-d2-s0/summary.json/t.md"], "t.md: cannot write"),
    "--out suffix": (["{sweep}", "--out", "t.xlsx"], "--out t.xlsx: unknown format .xlsx; name a .csv, .md or"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_line_and_status_2(records, capsys, case):
    (records["root"] / "empty").mkdir(exist_ok=True)
    args, expected = ERRORS[case]
    with pytest.raises(SystemExit) as exit_info:
        report.main([a.format(**records) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("deeprun-report: error: ")
    assert expected.format(**records) in err


def test_parquet_without_pyarrow_says_what_to_install(records, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(SystemExit):
        report.main([str(records["sweep"]), "--out", "t.parquet"])
    assert "pip install 'deeprun[parquet]'" in capsys.readouterr().err


def test_help_documents_every_option_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in report._parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[0] in text and "e.g. " in action.help


@pytest.mark.subprocess
def test_console_script_reads_records_without_torch(records, tmp_path):
    """The whole report, plots included, as a user runs it; torch is never imported."""
    args = [str(records["sweep"]), "--pivot", "depth", "act", "final_train_loss", "--plot", str(tmp_path)]
    code = f"import sys; from deeprun.report import main; main({args!r}); print('torch:', 'torch' in sys.modules)"
    done = run_python(code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch: False" in done.stdout and "wrote" in done.stdout
    bad = run_cli(str(tmp_path / "nope"), cwd=tmp_path, program="deeprun-report", timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_wide_shows_every_default_column(records, capsys):
    out, _ = run_report(capsys, records["sweep"], "--wide")
    header = next(line for line in out.splitlines() if "final_train_loss" in line)
    frame = report.load([str(records["sweep"])])
    assert [c.strip() for c in header.strip("┃").split("┃")] == report.default_columns(frame)
    assert "left out" not in out and "…" not in out


def test_pivot_rows_follow_the_sweep_not_the_alphabet():
    frame = pd.DataFrame({"depth": [8, 32, 2, 8, 32, 2], "act": ["tanh"] * 3 + ["relu"] * 3,
                          "loss": [1.0, 2, 3, 4, 5, 6], "status": "completed"})
    stats = report.pivot_stats(frame, "depth", "act", "loss")
    table = report.pivot_frame(stats, "depth", "act")
    assert list(table["depth"]) == [2, 8, 32]  # numbers as numbers
    assert list(table.columns) == ["depth", "act=tanh", "act=relu"]  # text in order of first appearance
    assert list(table["act=relu"]) == [6, 4, 5]
    names = report.pivot_frame(report.pivot_stats(frame, "act", "depth", "loss"), "act", "depth")
    assert list(names["act"]) == ["tanh", "relu"] and list(names.columns) == ["act", "depth=2", "depth=8", "depth=32"]
    assert stats["count"].dtype.kind == "i"


def test_subtitle_counts_one_run_and_stays_clear_of_the_legend():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    frame = pd.DataFrame({"model": ["mlp"], "width": [8], "status": ["completed"], "run": ["r"]})
    subtitle = report._subtitle(frame, 1)
    assert subtitle.startswith("1 run; ")
    epochs = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.6, 0.3]})
    groups = {f"model.widths=[8, 8, 8, 8, 8, 8, 8, 8] act=sigmoid lr={i}": [(epochs, None)] for i in range(6)}
    figure = report._loss_figure(groups, subtitle + " model=mlp width=8 init=uniform optimizer=sgd lr=0.01 " * 3)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    title, legend = figure._suptitle.get_window_extent(renderer), figure.legends[0].get_window_extent(renderer)
    assert title.y0 >= legend.y1 or title.x1 <= legend.x0, (title, legend)


def test_pivot_error_bars_stay_above_zero_on_a_log_axis():
    index = pd.MultiIndex.from_product([[2, 8, 32], ["relu"]], names=["depth", "act"])
    stats = pd.DataFrame({"mean": [1e-3, 1.0, 100.0], "std": [5e-3, 0.1, 500.0], "count": [3, 3, 3]}, index=index)
    figure = report._pivot_figure(stats, "depth", "act", "final_train_loss", lines=True)
    ax = figure.axes[0]
    assert ax.get_yscale() == "log"
    from matplotlib.collections import LineCollection

    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    lows = [seg[:, 1].min() for c in bars for seg in c.get_segments()]
    assert lows and min(lows) > 0


def test_loss_outliers_are_off_the_chart_with_a_note():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    epochs = pd.DataFrame({"epoch": [0, 1, 2, 3, 4], "train_loss": [5.0, 2.0, 1.0, 0.5, 0.4],
                           "val_loss": [3.9e33, 1e20, 1.5, 0.8, 0.6]})
    figure = report._loss_figure({"model=resnet depth=100": [(epochs, None)]}, "1 run; model=resnet")
    FigureCanvasAgg(figure).draw()
    ax = figure.axes[0]
    low, high = ax.get_ylim()
    assert high < 100 and low > 0
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["validation loss above 5e+03 at epochs 0-1 is off the chart"]
    calm = report._loss_figure({"a": [(epochs.assign(val_loss=epochs["train_loss"]), None)]}, "1 run")
    assert len(calm.axes[0].texts) == 0 and calm.axes[0].get_ylim()[1] < 100


# --- layer x epoch heatmaps, seed bands, several pivots, the Python API ------------------------------------

@pytest.mark.slow
def test_layers_pngs_for_the_runs_named_and_for_a_few_by_default(records, capsys, tmp_path):
    out, _ = run_report(capsys, records["sweep"], "--plot", tmp_path / "named", "--layers", "relu-d8-s0",
                        "--layers", f"{records['sweep'].name}/sigmoid-d8-s1", "--layers", "sigmoid-d2-s0")
    named = sorted(p.name for p in (tmp_path / "named").iterdir() if p.name.startswith("layers_"))
    assert named == ["layers_relu-d8-s0.png", "layers_sigmoid-d2-s0.png", "layers_sigmoid-d8-s1.png"]
    for name in named:
        assert (tmp_path / "named" / name).read_bytes()[:8] == PNG and f"wrote {tmp_path / 'named' / name}" in out
    run_report(capsys, records["sweep"], "--filter", "act=sigmoid", "--filter", "depth=8", "--plot", tmp_path / "few")
    assert sorted(p.name for p in (tmp_path / "few").iterdir() if p.name.startswith("layers_")) == \
        ["layers_sigmoid-d8-s0.png", "layers_sigmoid-d8-s1.png"]  # two runs: a few, each drawn
    run_report(capsys, records["sweep"], "--plot", tmp_path / "many")
    assert not [p for p in (tmp_path / "many").iterdir() if p.name.startswith("layers_")]  # eight: none unasked


def test_layers_figure_panels_follow_the_activation(records):
    _, _, relu = report.read_run(records["sweep"] / "relu-d8-s0")
    _, _, sigmoid = report.read_run(records["sweep"] / "sigmoid-d8-s0")
    titles = [[ax.get_title() for ax in report._layers_figure(layers, "run").axes if ax.get_title()]
              for layers in (relu, sigmoid)]
    assert titles[0] == ["‖∂loss/∂W‖ (log colour)", "dead fraction (ReLU family)"]
    assert titles[1] == ["‖∂loss/∂W‖ (log colour)", "saturated fraction (tanh, sigmoid)"]
    grid = report.layer_grid(relu, "grad_norm")
    assert list(grid.columns) == sorted(relu["epoch"].unique()) and list(grid.index) == list(range(9))
    first = relu[(relu.epoch == 0) & (relu.layer == 0)]["grad_norm"].iloc[0]
    assert grid.loc[0, 0] == pytest.approx(first)


def test_unknown_layers_run_is_one_line_and_status_2(records, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(records["sweep"]), "--plot", "p", "--layers", "relu-d9-s0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "--layers relu-d9-s0: no run directory relu-d9-s0 among these runs" in err
    assert not Path("p").exists()


def test_loss_png_draws_seeds_as_a_mean_and_a_band():
    from matplotlib.collections import PolyCollection

    def epochs(shift):
        return pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0 + shift, 0.5 + shift, 0.2 + shift],
                             "val_loss": [1.1 + shift, 0.6 + shift, 0.3 + shift]})
    figure = report._loss_figure({"act=tanh (2 runs)": [(epochs(0), None), (epochs(0.1), None)],
                                  "act=relu": [(epochs(0.5), None)]}, "3 runs")
    ax = figure.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # train and validation of the two seeds; none for the single run
    assert [list(line.get_ydata()) for line in ax.lines[:1]] == [pytest.approx([1.05, 0.55, 0.25])]
    assert "band from lowest to highest" in ax.get_title()
    mean, low, high = report.seed_band([epochs(0), epochs(0.1).iloc[:2]], "train_loss")
    assert list(mean) == pytest.approx([1.05, 0.55, 0.2]) and list(high) == pytest.approx([1.1, 0.6, 0.2])


@pytest.mark.slow
def test_several_pivots_each_printed_and_plotted(records, capsys, tmp_path):
    out, _ = run_report(capsys, records["sweep"], "--pivot", "depth", "act", "final_train_loss",
                        "--pivot", "act", "depth", "grad_norm_first", "--plot", tmp_path)
    assert "final_train_loss (mean ± std over 2 seeds)" in out and "grad_norm_first (mean ± std over 2 seeds)" in out
    for name in ("pivot_final_train_loss_by_depth_and_act.png", "pivot_grad_norm_first_by_act_and_depth.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(records["sweep"]), "--pivot", "depth", "act", "final_train_loss",
                     "--pivot", "act", "depth", "grad_norm_first", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "give one --pivot with --out" in err


def test_python_api_is_the_report(records, capsys, tmp_path):
    table = deeprun.results(records["sweep"])
    pd.testing.assert_frame_equal(table, report.load([str(records["sweep"])]))
    assert deeprun.results([records["sweep"], records["broken"]]).shape[0] == 8 + 2
    kept = deeprun.report(str(records["sweep"]), filters=["act=relu"], pivot=("depth", "seed", "final_train_loss"),
                          out=str(tmp_path / "p.csv"))
    assert len(kept) == 4 and set(kept["act"]) == {"relu"}
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == ["depth", "seed=0", "seed=1"]
    assert "final_train_loss" in capsys.readouterr().out
    from deeprun import report as module

    assert module is report and callable(module) and module.main is report.main
