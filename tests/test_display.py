"""Results and summary tables in 80-, 100- and 120-column terminals: swept columns and numbers whole, a note
naming what was left out; the real deeprun-report in a 100-column pseudo-terminal."""

from __future__ import annotations

import io
import os
import re
import select
import struct
from pathlib import Path

import pandas as pd
import pytest
from conftest import start_cli
from rich.console import Console

from deeprun import display

DATA = Path(__file__).parent / "data" / "sweep_results.csv"  # a real `deeprun -m act=relu,tanh depth=2,8` table
WIDTHS = (80, 100, 120)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.read_csv(DATA)


def render(frame, width: int, **kw) -> tuple[str, list[str]]:
    console = Console(width=width, file=io.StringIO())
    left = display.print_results(frame, title="4 jobs: outputs/sweeps/2026-12-01_23-07-44-312410/results.csv",
                                 console=console, **kw)
    return console.file.getvalue(), left


def header_cells(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith("┃"))
    return [c.strip() for c in line.strip("┃").split("┃")]


def body_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("width", WIDTHS)
def test_results_fit_the_width_with_swept_columns_and_numbers_whole(frame, width):
    out, left = render(frame, width)
    table = out[:out.index("┘") + 1]
    assert max(len(line) for line in table.splitlines()) <= width
    swept = display.varying_columns(frame)
    assert swept[:2] == ["act", "depth"]
    headers = header_cells(out)
    assert headers[:len(swept)] == swept  # first, whole
    shown = headers
    defaults = display.default_columns(frame)
    assert shown == [c for c in defaults if c in shown] and left == [c for c in defaults if c in left]
    assert set(shown) | set(left) == set(display.default_columns(frame))
    rows = body_rows(out)
    assert "…" not in table
    for cells, (_, row) in zip(rows, frame.iterrows()):
        for column, cell in zip(shown, cells):
            assert cell == display.fmt(row[column]) or (cell == "-" and pd.isna(row[column]))
    assert ("status" in shown) and ("final_train_loss" in shown)  # the first priorities always fit
    if left:
        note = " ".join(out[out.index("┘") + 1:].split())
        named = re.search(r"(\d+) columns? left out \(([^)]*)\)", note)
        assert int(named[1]) == len(left) and named[2].split(", ") == left
        assert "--wide" in note and "--out table.csv" in note
        assert max(len(line) for line in out.splitlines()) <= width
    else:
        assert "left out" not in out


def test_priority_keeps_the_objective_before_probes():
    order = display.fit_priority(["seconds", "grad_norm_first", "loss@10", "val_r2", "error", "status",
                                  "grad_ratio@init", "final_val_loss", "final_train_loss"])
    assert order == ["status", "final_train_loss", "final_val_loss", "val_r2", "loss@10", "grad_ratio@init",
                     "grad_norm_first", "seconds", "error"]


@pytest.mark.parametrize("width", WIDTHS)
def test_wide_and_asked_columns_are_never_squeezed(frame, width):
    out, left = render(frame, width, wide=True)
    assert left == [] and header_cells(out) == display.default_columns(frame) and "…" not in out
    asked = ["act", "depth", "seed", "grad_norm_first@init", "saturated_frac_max", "final_val_loss"]
    out, _ = render(pd.concat([frame] * 3), width, columns=asked * 2)  # more than fits: lines grow
    assert header_cells(out) == asked * 2 and "…" not in out


def test_a_pipe_or_log_file_gets_every_column(frame, capsys):
    display.print_results(frame)  # capsys: stdout is not a terminal
    out = capsys.readouterr().out
    assert header_cells(out) == display.default_columns(frame) and "…" not in out and "left out" not in out


def test_long_text_is_cut_last_and_only_text(frame):
    frame = frame.assign(error=["ValueError: " + "x" * 200, None, None, None], status="failed")
    out, left = render(frame, 120, wide=True)
    assert "ValueError" in out and "…" in out
    assert all("…" not in cell for row in body_rows(out) for cell in row[:-1])


SUMMARY = {"model": "mlp", "depth": 2, "act": "relu", "data": "synthetic", "task": "multiclass", "n_classes": 10,
           "loss_units": "standardised", "rows_dropped": 3, "status": "completed", "final_train_loss": 0.5,
           "val_rmse": 1.25, "grad_norm_first@init": 2.5, "grad_norm_last@init": 0.25, "grad_ratio@init": 10.0,
           "grad_norm_first": 1.0, "val_r2": None, "loss@10": 0.7}
RECORDS = Path("/home/someone/projects/deep-learning/experiments/outputs/runs/2026-12-01/19-22-50-123456_act=relu")


@pytest.mark.parametrize("width", WIDTHS)
def test_summary_shows_the_records_path_whole_and_the_new_keys(width):
    console = Console(width=width, file=io.StringIO())
    display.print_summary(SUMMARY, RECORDS, console=console)
    out = console.file.getvalue()
    assert out.splitlines()[-1] == f"records: {RECORDS}"  # one line to copy
    assert out.count(str(RECORDS)) == 1
    folded = Console(width=width, file=io.StringIO())
    folded.print(display.summary_table(SUMMARY, RECORDS))  # the table alone folds the path, never cuts it
    rows = [line.split("│")[1:3] for line in folded.file.getvalue().splitlines() if line.startswith("│")]
    start = next(i for i, (key, _) in enumerate(rows) if key.strip() == "records")
    assert "".join(value.strip() for _, value in rows[start:]) == str(RECORDS)
    assert "multiclass (10 classes)" in out and "standardised" in out and "val_rmse" in out
    lines = out.splitlines()
    keys = [line.strip("│ ").split()[0] for line in lines if line.startswith("│")]
    assert [k for k in keys if "grad" in k] == ["grad_norm_first@init", "grad_norm_last@init", "grad_ratio@init",
                                                "grad_norm_first"]
    assert "rows_dropped" in keys and "val_r2" not in keys and "loss@10" in keys
    assert "…" not in out


def test_summary_task_and_dropped_rows_show_only_when_they_say_something(capsys):
    display.print_summary({"task": "regression", "rows_dropped": 0, "status": "completed"}, RECORDS)
    out = capsys.readouterr().out  # a log file: rich's 80 columns
    assert "regression" in out and "rows_dropped" not in out
    assert f"records: {RECORDS}" in out.splitlines()


@pytest.mark.subprocess
def test_report_in_a_100_column_pseudo_terminal(frame, tmp_path):
    """The real console script: rich sees a terminal of 100 columns and fits the table to it."""
    import json

    root = tmp_path / "sweep"
    summaries = frame.drop(columns=["run"]).to_dict("records")
    for name, row in zip(frame["run"], summaries):
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text(json.dumps({k: (None if pd.isna(v) else v) for k, v in row.items()}))
    import fcntl
    import pty
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = start_cli(str(root), program="deeprun-report", cwd=tmp_path, stdin=child, stdout=child, stderr=child,
                     text=False, start_new_session=False, close_fds=True,
                     env={"COLUMNS": "100", "LINES": "40", "TERM": "xterm", "NO_COLOR": None})
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(main)
    out = ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")
    assert proc.returncode == 0, out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, out
    headers = header_cells(out)
    assert sorted(headers[:2]) == ["act", "depth"], out
    rows = [dict(zip(headers, r)) for r in body_rows(out)]
    assert [(r["act"], r["depth"]) for r in rows] == [("relu", "2"), ("relu", "8"), ("tanh", "2"), ("tanh", "8")]
    assert "…" not in out and "left out" in out


def test_what_the_data_decided_is_an_outcome_not_a_swept_column():
    """task, n_classes, loss_units and rows_dropped sit before `status` in a summary, but nobody chose them."""
    frame = pd.DataFrame({"act": ["relu", "tanh"], "data": ["iris", "iris"], "task": ["multiclass", "binary"],
                          "n_classes": [3, 2], "loss_units": [None, "target"], "params": [10, 20],
                          "rows_dropped": [0, 4], "status": ["completed", "completed"]})
    assert display.varying_columns(frame) == ["act"]
