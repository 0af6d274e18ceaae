"""init=checkpoint: a run starts from an earlier run's saved weights; a file that is not a fitting
state dict is a one-line error naming init.path."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

import deeprun
from conftest import tiny
from deeprun.config import ConfigError, validate


def checkpoint_cfg(path, *overrides: str):
    return tiny("init=checkpoint", f"init.path={path}", *overrides)


def test_a_model_built_from_a_checkpoint_holds_its_tensors(tmp_path):
    data = deeprun.build_data(tiny())
    saved = deeprun.build_model(tiny("seed=7"), data).state_dict()
    torch.save(saved, tmp_path / "w.pt")
    loaded = deeprun.build_model(checkpoint_cfg(tmp_path / "w.pt"), data).state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not torch.equal(deeprun.build_model(tiny(), data).state_dict()["fc0.weight"], saved["fc0.weight"])


@pytest.mark.slow
def test_a_run_continues_from_another_runs_final_weights(tmp_path, main, one_thread):
    first = main("epochs=4", "data.n=64", "save.checkpoints=[final]", "log.progress=false", "hydra.run.dir=a")
    assert first.code == 0, first.err
    second = main("epochs=2", "data.n=64", "init=checkpoint", "init.path=a/final.pt", "log.progress=false",
                  "hydra.run.dir=b")  # a path relative to the working directory, as a user types it
    assert second.code == 0, second.err
    # epoch 0 of the second run is the first run's end: same weights, same validation loss
    assert pd.read_csv(tmp_path / "b" / "epochs.csv").val_loss[0] == pytest.approx(
        pd.read_csv(tmp_path / "a" / "epochs.csv").val_loss.iloc[-1], rel=1e-6)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["init"] == "checkpoint"


class Whole(nn.Module):  # torch.save(model) pickles the class: weights_only=True must refuse it
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


BAD = {
    "a whole pickled module": (lambda p: torch.save(Whole(), p), "not a state dict torch can load safely"),
    "a list of tensors": (lambda p: torch.save([torch.zeros(2)], p), "holds a list, not a state dict"),
    "a dict of numbers": (lambda p: torch.save({"fc0.weight": 1.0}, p), "holds a dict, not a state dict"),
    "text": (lambda p: p.write_text("weights, honest\n"), "not a state dict torch can load safely"),
    "another width": (lambda p: torch.save(deeprun.build_model(tiny("width=4"), deeprun.build_data(tiny())).state_dict(), p),
                      "does not fit this model (shapes: fc0.weight (4, 3) != (8, 3)"),
    "another depth": (lambda p: torch.save(deeprun.build_model(tiny("depth=3"), deeprun.build_data(tiny())).state_dict(), p),
                      "does not fit this model (unexpected: fc2.weight, fc2.bias"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_file_that_is_not_a_fitting_state_dict_is_a_config_error(tmp_path, kind):
    write, message = BAD[kind]
    path = tmp_path / "w.pt"
    write(path)
    with pytest.raises(ConfigError) as e:
        deeprun.build_model(checkpoint_cfg(path), deeprun.build_data(tiny()))
    assert str(e.value).startswith(f"init.path='{path}': ")
    assert message in str(e.value)


def test_init_path_is_required_and_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"^init.path: required with init=checkpoint"):
        validate(tiny("init=checkpoint"))
    with pytest.raises(ConfigError, match=r"^init.path='nope.pt': no such file"):
        validate(tiny("init=checkpoint", "init.path=nope.pt"))


def test_the_cli_says_one_line_and_leaves_no_record(tmp_path, main):
    """log.progress is on (the default): the progress bar wraps training only, so a checkpoint refused
    while the model is built shows no bar, no summary table, only the error."""
    torch.save([1, 2, 3], tmp_path / "list.pt")
    p = main("init=checkpoint", "init.path=list.pt", "epochs=1", "hydra.run.dir=run")
    assert p.code == 2
    assert p.out == ""
    assert p.err.strip().splitlines() == ["deeprun: error: init.path='list.pt': holds a list, not a state dict "
                                          "(parameter names -> tensors); save one with torch.save(model.state_dict(), path)"]
    assert not (tmp_path / "run" / "summary.json").exists()
