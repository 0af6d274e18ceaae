"""Stacked training gives each member its solo run's numbers.

For each model family, a group of members that differ in seed, lr and init (and dropout rate,
grad_clip, momentum where the family has them) is trained with api.run_group, and each member's
epochs.csv and layers.csv are compared with the same config run alone (api.run): equal within
float rounding (rel 1e-5; absolute 1e-6 for numbers near zero, such as an R^2 near 0).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import deeprun
from deeprun import api, stack
from deeprun.records import read_run

from conftest import fast_first, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {
    # the vanishing-gradient notebook's model D: SGD, full batch
    "model_d": (["depth=8", "width=8", "init=uniform", "optimizer=sgd", "lr=0.01", "epochs=40", "data.n=100"],
                [["seed=0"], ["seed=1", "lr=0.05"], ["seed=2", "init=normal", "init.std=0.3"],
                 ["seed=3", "optimizer.momentum=0.9", "optimizer.weight_decay=0.01"]]),
    # BatchNorm, dropout, minibatches, Adam, clipping, a cosine schedule
    "mlp_bn": (["depth=3", "width=16", "norm=batch", "dropout=0.2", "batch_size=16", "optimizer=adam",
                "grad_clip=0.5", "scheduler=cosine", "epochs=12", "data.n=100"],
               [["seed=0"], ["seed=1", "lr=0.01"], ["seed=2", "init=xavier_normal", "dropout=0.4"],
                ["seed=3", "grad_clip=null"]]),
    "resnet": (["model=resnet", "depth=3", "width=16", "batch_size=32", "optimizer=adam", "epochs=10",
                "data.n=100", "model.residual_scale=rezero"],
               [["seed=0"], ["seed=1", "lr=0.003", "grad_clip=1.0"], ["seed=2", "init=orthogonal"]]),
    "cnn": (["model=cnn", "data=images", "data.n=48", "data.image_size=8", "depth=3", "width=4", "batch_size=16",
             "optimizer=sgd", "lr=0.05", "epochs=4"],
            [["seed=0"], ["seed=1", "lr=0.02"], ["seed=2", "init=kaiming_uniform"]]),
    "resnet_cnn": (["model=resnet_cnn", "data=images", "data.n=48", "data.image_size=8", "depth=2", "width=4",
                    "batch_size=16", "optimizer=adam", "epochs=4", "norm=layer"],
                   [["seed=0"], ["seed=1", "lr=0.01"], ["seed=2", "init=xavier_uniform"]]),
}


def numbers(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.select_dtypes("number").drop(columns=["seconds"], errors="ignore")


def assert_close(solo: pd.DataFrame, member: pd.DataFrame, what: str) -> None:
    a, b = numbers(solo), numbers(member)
    assert list(a.columns) == list(b.columns) and a.shape == b.shape, what
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=what)


@pytest.mark.parametrize("family", fast_first(FAMILIES, keep={"model_d"}))
def test_each_member_has_its_solo_runs_numbers(family, tmp_path):
    shared, members = FAMILIES[family]
    cfgs = [tiny(*shared, *own, "device=cpu") for own in members]
    assert len({stack.group_key(c) for c in cfgs}) == 1, "the members must form one group"
    summaries = api.run_group(cfgs, [tmp_path / f"m{i}" for i in range(len(cfgs))])
    assert [s["status"] for s in summaries] == ["completed"] * len(cfgs), [s["error"] for s in summaries]
    assert [s["stack_size"] for s in summaries] == [len(cfgs)] * len(cfgs)
    for i, cfg in enumerate(cfgs):
        solo = api.run(cfg, out_dir=tmp_path / f"solo{i}")
        assert solo.summary["stack_size"] == 1
        member = read_run(tmp_path / f"m{i}")
        assert_close(solo.epochs, member[1], f"{family} member {i} ({members[i]}): epochs.csv")
        assert_close(solo.layers, member[2], f"{family} member {i} ({members[i]}): layers.csv")
        assert member[0]["lr"] == cfg.lr and member[0]["seed"] == cfg.seed


def test_members_differ_from_each_other():
    """The members are not one model's copies: each trains its own weights from its own seed."""
    shared, members = FAMILIES["model_d"]
    cfgs = [tiny(*shared, *own, "device=cpu") for own in members[:2]]
    summaries = api.run_group(cfgs, [None, None])
    assert summaries[0]["final_train_loss"] != summaries[1]["final_train_loss"]


def test_checkpoints_are_per_member_state_dicts_that_load_into_build_model(tmp_path):
    shared, members = FAMILIES["resnet"]
    cfgs = [tiny(*shared, *own, "device=cpu", "save.checkpoints=[init,final]") for own in members]
    api.run_group(cfgs, [tmp_path / f"m{i}" for i in range(len(cfgs))])
    solo = api.run(cfgs[2], out_dir=tmp_path / "solo")
    data = deeprun.build_data(cfgs[2], "cpu")
    for name in ("init", "final"):
        model = deeprun.build_model(cfgs[2], data)
        state = torch.load(tmp_path / "m2" / f"{name}.pt", weights_only=True)
        model.load_state_dict(state)  # same keys and shapes as a solo model's
        theirs = torch.load(tmp_path / "solo" / f"{name}.pt", weights_only=True)
        for key, value in theirs.items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(torch.load(tmp_path / "m2" / "final.pt")["head.weight"],
                           torch.load(tmp_path / "m2" / "init.pt")["head.weight"])
    assert solo.summary["status"] == "completed"


def test_a_diverging_member_is_recorded_diverged_and_the_others_go_on(tmp_path):
    shared = ["depth=3", "width=16", "optimizer=sgd", "epochs=30", "data.n=64"]
    cfgs = [tiny(*shared, "lr=0.01", "device=cpu"), tiny(*shared, "lr=1e4", "seed=1", "device=cpu"),
            tiny(*shared, "lr=0.02", "seed=2", "device=cpu")]
    summaries = api.run_group(cfgs, [tmp_path / f"m{i}" for i in range(3)])
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    solo = api.run(cfgs[1])
    assert summaries[1]["diverged_epoch"] == solo.summary["diverged_epoch"] is not None
    epochs = pd.read_csv(tmp_path / "m1" / "epochs.csv")
    assert epochs.epoch.max() == summaries[1]["diverged_epoch"] and not math.isfinite(epochs.train_loss.iloc[-1])
    assert pd.read_csv(tmp_path / "m0" / "epochs.csv").epoch.max() == 30
    assert_close(api.run(cfgs[2]).epochs, pd.read_csv(tmp_path / "m2" / "epochs.csv"), "the member after it")


def test_a_member_that_fails_to_build_is_failed_and_the_others_train(tmp_path):
    shared = ["depth=2", "width=4", "epochs=3"]
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    cfgs = [tiny(*shared, "device=cpu"), tiny(*shared, "init=checkpoint", f"init.path={tmp_path / 'bad.pt'}", "device=cpu")]
    summaries = api.run_group(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert summaries[0]["status"] == "completed"
    assert summaries[1]["status"] == "failed" and "not a state dict" in summaries[1]["error"]
    assert read_run(tmp_path / "b")[0]["status"] == "failed"


def test_group_keys_split_on_shapes_and_join_on_member_keys():
    base = tiny("device=cpu")
    same = [tiny("seed=3", "device=cpu"), tiny("lr=0.1", "device=cpu"), tiny("init=orthogonal", "device=cpu"),
            tiny("grad_clip=1.0", "device=cpu"), tiny("optimizer.weight_decay=0.1", "device=cpu")]
    other = [tiny("depth=4", "device=cpu"), tiny("width=9", "device=cpu"), tiny("act=tanh", "device=cpu"),
             tiny("norm=batch", "device=cpu"), tiny("batch_size=8", "device=cpu"), tiny("dropout=0.1", "device=cpu"),
             tiny("data.seed=4", "device=cpu"), tiny("optimizer=sgd", "device=cpu")]
    assert all(stack.group_key(c) == stack.group_key(base) for c in same)
    assert all(stack.group_key(c) != stack.group_key(base) for c in other)
    assert stack.group_key(tiny("scheduler=plateau", "device=cpu")) is None
    assert "plateau" in stack.why_alone(tiny("scheduler=plateau", "device=cpu"))


@pytest.mark.parametrize("family, act", fast_first([("mlp_bn", "relu"), ("cnn", "relu"), ("model_d", "tanh"),
                                                   ("model_d", "sigmoid")], multi=True))
def test_big_activations_reduced_as_they_come_give_the_same_numbers(family, act, monkeypatch):
    """Activations above probes.BIG values are reduced in the forward hook (memory); the numbers are the same."""
    shared, members = FAMILIES[family]
    cfgs = [tiny(*shared, *own, "device=cpu", "epochs=2", f"act={act}") for own in members[:2]]
    kept = api.run(cfgs[0]).layers
    monkeypatch.setattr("deeprun.probes.BIG", 0)
    reduced = api.run(cfgs[0]).layers
    assert reduced.act_mean.notna().any()
    assert (reduced.saturated_frac if act != "relu" else reduced.dead_frac).notna().any()
    assert_close(kept, reduced, f"{family}: solo, reduced as they come")


def test_big_activations_in_a_stack(monkeypatch, tmp_path):
    shared, members = FAMILIES["cnn"]
    cfgs = [tiny(*shared, *own, "device=cpu", "epochs=2") for own in members[:2]]
    api.run_group(cfgs, [tmp_path / "a0", tmp_path / "a1"])
    monkeypatch.setattr("deeprun.probes.BIG", 0)
    api.run_group(cfgs, [tmp_path / "b0", tmp_path / "b1"])
    for i in range(2):
        assert_close(read_run(tmp_path / f"a{i}")[2], read_run(tmp_path / f"b{i}")[2], f"member {i}")
