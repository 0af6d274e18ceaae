"""Output that cannot be written: a bad output path and a disk that fills up mid-write.

Each case asserts one line on stderr (no traceback), the exit status, and that
nothing is left behind that looks complete: no temporary files, no record that
a summary calls finished. (A failing job, divergence, Ctrl-C, SIGKILL with
resume and colliding sweeps are covered in test_cli.py, test_train.py and
test_sweep.py.)
"""

from __future__ import annotations

import errno
import json
import sys

import pandas as pd
import pytest

from conftest import TINY, run_dirs

SMALL = [*TINY, "epochs=2", "data.n=32"]


@pytest.fixture
def full_disk(monkeypatch):
    """Writing epochs.csv fails once its temporary file is open, as a full disk does: the temporary file
    must vanish and the summary must say so."""
    from deeprun import records

    real = records.csv_text

    def csv_text(frame):
        if list(frame.columns[:2]) == ["epoch", "train_loss"]:  # epochs.csv
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(frame)
    monkeypatch.setattr(records, "csv_text", csv_text)


def one_line(err: str, out: str = "") -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err, err
    return lines[-1] if lines else ""


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_an_output_path_under_a_file_is_one_line_and_exit_2(tmp_path, main, multirun):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    where = tmp_path / "notes.txt" / "runs"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    p = main(*(["-m", "seed=0,1"] if multirun else []), *SMALL, f"{key}={where}")
    assert p.code == 2, p.err
    assert one_line(p.err, p.out) == f"deeprun: error: cannot write {where}: Not a directory"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["notes.txt"]  # nothing made elsewhere


def test_a_full_disk_during_a_run_leaves_no_partial_file_and_a_failed_summary(tmp_path, main, full_disk):
    p = main(*SMALL, "hydra.run.dir=run")
    assert p.code == 1, p.err
    assert one_line(p.err, p.out).startswith("deeprun: error: cannot write")
    assert one_line(p.err).endswith("No space left on device")
    run = tmp_path / "run"
    assert not (run / "epochs.csv").exists()
    assert not [f.name for f in run.iterdir() if f.name.endswith(".tmp")]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "records not written: [Errno 28] No space left on device"


def test_a_full_disk_in_a_sweep_fails_each_job_and_the_sweep_still_ends_in_its_table(tmp_path, main, full_disk):
    p = main("-m", *SMALL, "seed=0,1", "hydra.sweep.dir=S")
    assert "Traceback" not in p.err, p.err
    assert p.code == 1, p.err
    dirs = run_dirs(tmp_path / "S")
    assert len(dirs) == 2
    for d in dirs:
        assert json.loads((d / "summary.json").read_text())["status"] == "failed"
        assert not (d / "epochs.csv").exists() and not list(d.glob(".*.tmp"))
    results = (tmp_path / "S" / "results.csv").read_text()
    assert results.count("No space left on device") == 2


FLAKY = '''
import torch
from torch import nn


class Flaky(nn.Module):
    """An MLP that raises on its fourth forward pass when width is 13: a user's bug, mid-training."""

    def __init__(self, n_in, n_out, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, n_out))
        self.width, self.calls = width, 0

    def forward(self, x):
        self.calls += 1
        if self.width == 13 and self.calls == 4:
            raise RuntimeError("boom in Flaky.forward")
        return self.net(x)
'''


def test_a_user_model_raising_mid_sweep_fails_its_job_only(tmp_path, main, monkeypatch):
    (tmp_path / "flaky_model.py").write_text(FLAKY)
    monkeypatch.setenv("COLUMNS", "300")
    try:
        p = main("-m", *SMALL, "epochs=4", "model=custom", "model._target_=flaky_model.Flaky", "width=8,13,16",
                 "hydra.sweep.dir=S")
    finally:
        sys.modules.pop("flaky_model", None)  # the user's module goes with its directory
    assert "Traceback" not in p.err, p.err
    assert p.code == 1, p.err  # the sweep ran to its end, and says a job failed
    assert "deeprun: job 1 failed: RuntimeError: boom in Flaky.forward" in p.err
    results = pd.read_csv(tmp_path / "S" / "results.csv").sort_values("width")
    assert list(results.status) == ["completed", "failed", "completed"]
    assert results.error.iloc[1] == "RuntimeError: boom in Flaky.forward"
    assert "boom in Flaky.forward" in p.out  # the printed table shows the error
    failed = next(d for d in run_dirs(tmp_path / "S") if json.loads((d / "summary.json").read_text())["width"] == 13)
    # forward calls: 1 the probes' trace, 2 and 3 epoch 0's (training batch, validation), 4 epoch 1's: raised
    epochs = pd.read_csv(failed / "epochs.csv")
    assert list(epochs.epoch) == [0]  # what it finished before the error, intact


def test_a_config_error_leaves_no_folders_under_outputs(tmp_path, main):
    """Hydra makes outputs/runs/<day>/<time>/ before deeprun sees the config: a mistake removes them all."""
    (tmp_path / "outputs" / "keep").mkdir(parents=True)  # the user's own: untouched
    p = main("init=checkpoint", "init.path=nope.pt")
    assert p.code == 2, p.err
    assert one_line(p.err, p.out).startswith("deeprun: error: init.path='nope.pt': no such file")
    assert sorted(str(x.relative_to(tmp_path)) for x in tmp_path.rglob("*")) == ["outputs", "outputs/keep"]
