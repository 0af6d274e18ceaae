"""scikit-learn's small real data sets (data=digits, breast_cancer, wine, iris, diabetes), offline:
each trains end to end, beats chance, and without scikit-learn says which extra to install."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import deeprun
from deeprun import report
from deeprun.config import ConfigError
from deeprun.records import results_frame

from conftest import compose, fast_first

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("sklearn")

SMALL = ["device=cpu", "depth=2", "width=32", "log.progress=false", "lr=0.01", "optimizer=adam"]
# option -> (task, n_in shape, n_out, rows, chance accuracy; None: regression)
SETS = {
    "breast_cancer": ("binary", (30,), 1, 569, 0.63),
    "wine": ("multiclass", (13,), 3, 178, 0.40),
    "iris": ("multiclass", (4,), 3, 150, 0.34),
    "diabetes": ("regression", (10,), 1, 442, None),
    "digits": ("multiclass", (1, 8, 8), 10, 1797, 0.1),
}


@pytest.mark.parametrize("name", fast_first(SETS, keep={"iris", "digits"}))
def test_shapes_task_split_and_standardised_features(name):
    task, shape, n_out, rows, _ = SETS[name]
    data = deeprun.build_data(compose([*SMALL, f"data={name}"]))
    assert (data.task, data.in_shape, data.n_out) == (task, shape, n_out)
    assert (len(data.x_train) + len(data.x_val), len(data.x_val)) == (rows, round(rows * 0.2))
    assert abs(data.x_train.mean().item()) < 1e-4  # the train split's statistics
    assert data.n_classes == (None if task == "regression" else max(n_out, 2))
    assert data.loss_units == ("standardised" if task == "regression" else None)
    assert len(deeprun.build_data(compose([*SMALL, f"data={name}", "data.max_rows=64"])).x_train) == 51


@pytest.mark.parametrize("name", fast_first(["iris", "wine", "breast_cancer", "diabetes"], keep={"iris"}))
def test_trains_and_beats_chance(name):
    task, _, _, _, chance = SETS[name]
    result = deeprun.run(compose([*SMALL, f"data={name}", "epochs=30"]))
    s = result.summary
    assert s["status"] == "completed" and s["task"] == task
    if chance is None:
        assert s["val_r2"] > 0 and s["loss_units"] == "standardised" and 20 < s["val_rmse"] < 80  # diabetes' units
    else:
        assert s["val_accuracy"] > chance + 0.2 and s["loss_units"] is None


def test_without_scikit_learn_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ConfigError) as info:
        deeprun.build_data(deeprun.compose([*SMALL, "data=digits"]))
    assert str(info.value) == "data=digits needs scikit-learn: pip install 'deeprun[sklearn]'"


@pytest.mark.slow
def test_digits_with_a_cnn_through_the_cli(tmp_path, main):
    proc = main("data=digits", "model=cnn", "depth=2", "width=8", "epochs=5", "batch_size=64", "lr=0.01", "optimizer=adam",
                "device=cpu", "log.progress=false", "hydra.run.dir=run")
    assert proc.code == 0, proc.err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (s["status"], s["task"], s["n_classes"], s["data"]) == ("completed", "multiclass", 10, "digits")
    assert s["val_accuracy"] > 0.3
    table = results_frame([tmp_path])  # what deeprun-report reads
    assert table.data.tolist() == ["digits"] and table.n_classes.tolist() == [10]
    report.main([str(tmp_path), "--out", str(tmp_path / "results.csv")])  # deeprun-report, in-process
    assert (tmp_path / "results.csv").read_text().splitlines()[1].startswith("completed,")
