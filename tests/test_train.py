"""The training loop against a hand-written PyTorch loop, and the records a run leaves behind.

Conventions checked here (docs/records.md and deeprun/train.py): epoch 0 is the model
at initialisation, measured by a pass of its own (the loss and gradient of the first
batch_size rows in their stored order, the whole set when full batch, in train mode; no
step; BatchNorm's running statistics put back after it); epoch e >= 1 computes its own
gradients and records the mean training loss of its steps, weighted by batch size;
minibatches follow torch.randperm(n) of a generator seeded with cfg.seed, one permutation
per epoch, and a trailing batch of one joins the one before; dropout draws its masks from
another generator seeded with cfg.seed (torch.Generator().manual_seed(cfg.seed)), from
epoch 0's pass on; the model is in train mode while training and in eval mode while
validating; loss@<e> is epoch e's training loss; a NaN/Inf loss stops the run as
`diverged`; records are written atomically.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import json
import math
import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deeprun
from deeprun import stack

from conftest import compose, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCH_COLUMNS = ["epoch", "train_loss", "val_loss", "val_r2", "val_rmse", "lr", "seconds"]
LAYER_COLUMNS = ["epoch", "layer", "name", "grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std",
                 "dead_frac", "saturated_frac"]


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]):
    return tiny(*overrides, "device=cpu")


def cpu(*overrides: str):
    """tiny(*overrides) on the CPU; each distinct config is composed once."""
    return copy.deepcopy(_composed(overrides))


def batches_by_hand(n: int, batch_size, gen: torch.Generator) -> list[torch.Tensor]:
    if batch_size is None or batch_size >= n:
        return [torch.arange(n)]
    perm = torch.randperm(n, generator=gen)
    bounds = list(range(0, n, batch_size)) + [n]
    if bounds[-1] - bounds[-2] == 1:  # a trailing batch of one joins the one before
        del bounds[-2]
    return [perm[a:b] for a, b in zip(bounds, bounds[1:])]


class SeededDropout(nn.Module):
    """The oracle's dropout: each forward in train mode keeps an element with probability 1 - p, drawn
    from `generator` (the run's own, seeded with cfg.seed), and scales the kept ones by 1 / (1 - p)."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep / (1 - self.p)


def seeded_dropout(model: nn.Module, seed: int) -> nn.Module:
    """`model` with each nn.Dropout replaced by a SeededDropout drawing from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, SeededDropout(child.p, generator))
    return model


def same_state(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0) for k in a)


def csv_rows(path, drop: str = "seconds") -> list[list[str]]:
    """The CSV file's cells as written, without the `drop` column (wall-clock time) where it has one."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if drop not in rows[0]:
        return rows
    i = rows[0].index(drop)
    return [r[:i] + r[i + 1:] for r in rows]


# --- the loop is a plain PyTorch loop -------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [None, 16, 25])  # 51 training rows: 16 leaves 3; 25 leaves 1 (merged)
def test_loss_curve_equals_a_hand_written_loop(batch_size):
    epochs, lr = 20, 0.05
    cfg = cpu("depth=3", "width=8", f"epochs={epochs}", "optimizer=sgd", f"lr={lr}", f"batch_size={batch_size or 'null'}")
    data = deeprun.build_data(cfg, "cpu")
    assert len(data.x_train) == 51
    model = deeprun.build_model(cfg, data)
    init = copy.deepcopy(model.state_dict())
    assert same_state(init, deeprun.build_model(cfg, data).state_dict())  # the builder is seeded: run sees these

    result = deeprun.run(cfg)
    assert result.summary["status"] == "completed"

    x, y, n = data.x_train, data.y_train, len(data.x_train)
    with torch.no_grad():  # epoch 0: the first batch_size rows, at initialisation, without a step
        first = slice(0, batch_size)
        init_loss = F.mse_loss(model(x[first]), y[first]).item()
        init_val = F.mse_loss(model(data.x_val), data.y_val).item()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in batches_by_hand(n, batch_size, gen):
            loss = F.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / n)

    ep = result.epochs
    assert list(ep.epoch) == list(range(epochs + 1))
    assert ep.train_loss[0] == pytest.approx(init_loss, rel=1e-5)
    assert ep.val_loss[0] == pytest.approx(init_val, rel=1e-5)
    assert list(ep.train_loss[1:]) == pytest.approx(losses, rel=1e-5)
    assert losses[-1] < 0.5 * losses[0]  # it learnt something: the comparison is not of two flat lines
    assert same_state(result.model.state_dict(), model.state_dict(), atol=1e-5)
    with torch.no_grad():
        pred = model(data.x_val)
        val = F.mse_loss(pred, data.y_val).item()
        r2 = 1 - ((data.y_val - pred) ** 2).sum().item() / ((data.y_val - data.y_val.mean()) ** 2).sum().item()
    assert ep.val_loss.iloc[-1] == pytest.approx(val, rel=1e-5)
    assert ep.val_r2.iloc[-1] == pytest.approx(r2, rel=1e-4, abs=1e-6)
    assert result.summary["final_train_loss"] == pytest.approx(losses[-1], rel=1e-5)
    assert result.summary["final_val_loss"] == pytest.approx(val, rel=1e-5)
    assert result.summary["best_val_loss"] == pytest.approx(ep.val_loss[1:].min())


def test_batchnorm_dropout_minibatches_and_clipping_equal_a_hand_written_loop():
    """Epoch 0 is a pass of its own on the first 16 rows, in train mode: it draws dropout masks from
    the run's dropout generator (the first draws of it) and moves no BatchNorm statistic for good, so
    epoch 0 is validated with the initial statistics and epochs 1.. go on as the plain loop does."""
    epochs, lr, clip = 3, 0.05, 0.5
    cfg = cpu("depth=2", "width=8", "norm=batch", "dropout=0.2", f"epochs={epochs}", "optimizer=sgd",
              "optimizer.momentum=0.9", f"lr={lr}", f"grad_clip={clip}", "batch_size=16")
    data = deeprun.build_data(cfg, "cpu")
    model = seeded_dropout(deeprun.build_model(cfg, data), cfg.seed)
    with torch.no_grad():
        init_val = F.mse_loss(model.eval()(data.x_val), data.y_val).item()
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    init_state = copy.deepcopy(model.state_dict())
    with torch.no_grad():  # epoch 0: the first 16 rows as stored, train mode, no step
        init_loss = F.mse_loss(model.train()(x[:16]), y[:16]).item()
    assert not same_state(model.state_dict(), init_state)  # the pass moved the running statistics...
    model.load_state_dict(init_state)  # ...which deeprun puts back
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for idx in batches_by_hand(n, 16, gen):
            opt.zero_grad()
            loss = F.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
    model.eval()

    result = deeprun.run(cfg)
    ep = result.epochs
    assert ep.train_loss[0] == pytest.approx(init_loss, rel=1e-5)
    assert ep.val_loss[0] == pytest.approx(init_val, rel=1e-5)
    assert list(ep.train_loss[1:]) == pytest.approx(losses, rel=1e-5)
    assert same_state(result.model.state_dict(), model.state_dict(), atol=1e-5)  # BatchNorm buffers included
    assert result.model.state_dict()["norm0.num_batches_tracked"].item() == epochs * 4  # 51 rows: 4 batches


def test_epoch_0_is_the_model_at_init_and_grad_norm_is_before_clipping():
    # full batch, no dropout: epoch 1's one step sees the same gradient as epoch 0's probe
    lr, clip = 0.1, 1e-3
    cfg = cpu("optimizer=sgd", f"lr={lr}", f"grad_clip={clip}", "epochs=2")
    data = deeprun.build_data(cfg, "cpu")
    model = deeprun.build_model(cfg, data)
    F.mse_loss(model(data.x_train), data.y_train).backward()
    weights = [m for m in model.modules() if isinstance(m, nn.Linear)]
    grads = [m.weight.grad.norm().item() for m in weights]
    assert min(grads) > clip  # clipping is active

    result = deeprun.run(cfg)
    layers = result.layers
    at = {e: layers[layers.epoch == e] for e in (0, 1, 2)}
    assert list(at[0].name) == ["fc0", "fc1", "head"]
    assert list(at[0].grad_norm) == pytest.approx(grads, rel=1e-5)
    assert list(at[1].grad_norm) == pytest.approx(grads, rel=1e-5)  # unclipped
    assert list(at[0].weight_norm) == pytest.approx([m.weight.norm().item() for m in weights], rel=1e-6)
    assert at[0].update_ratio.isna().all()  # nothing updated at init
    # the step itself was clipped: the global update norm is at most lr * clip
    moved = sum((r * w) ** 2 for r, w in zip(at[1].update_ratio, at[0].weight_norm)) ** 0.5
    assert 0 < moved <= lr * clip * (1 + 1e-4)


def test_epoch_0_is_the_first_rows_as_stored_and_epoch_1_computes_its_own_gradients():
    """Minibatches: epoch 0's loss and grad_norm are those of the first batch_size rows, in their stored
    order, at initialisation; epoch 1's grad_norm is the mean over its own steps of its shuffled batches'
    gradient norms, not epoch 0's gradient again."""
    lr, batch_size = 0.05, 16
    cfg = cpu("optimizer=sgd", f"lr={lr}", f"batch_size={batch_size}", "epochs=1")
    data = deeprun.build_data(cfg, "cpu")
    model = deeprun.build_model(cfg, data)
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    loss = F.mse_loss(model(x[:batch_size]), y[:batch_size])
    loss.backward()
    init_loss, init_grads = loss.item(), [w.grad.norm().item() for w in weights]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    steps = []
    for idx in batches_by_hand(n, batch_size, torch.Generator().manual_seed(cfg.seed)):
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        steps.append([w.grad.norm().item() for w in weights])
        opt.step()
    assert len(steps) == 4  # 51 rows: 16, 16, 16, 3
    epoch_1 = [sum(column) / len(steps) for column in zip(*steps)]

    result = deeprun.run(cfg)
    at = {e: result.layers[result.layers.epoch == e] for e in (0, 1)}
    assert result.epochs.train_loss[0] == pytest.approx(init_loss, rel=1e-5)
    assert list(at[0].grad_norm) == pytest.approx(init_grads, rel=1e-5)
    assert list(at[1].grad_norm) == pytest.approx(epoch_1, rel=1e-5)
    assert epoch_1 != pytest.approx(init_grads, rel=1e-3)  # two different numbers: the comparison tells them apart


def test_activation_stats_are_of_the_validation_set_after_the_epoch():
    cfg = cpu("act=tanh", "epochs=3", "lr=0.01")
    result = deeprun.run(cfg)
    data = deeprun.build_data(cfg, "cpu")
    model = result.model.eval()
    with torch.no_grad():
        a0 = torch.tanh(model.fc0(data.x_val))
        a1 = torch.tanh(model.fc1(a0))
    last = result.layers[result.layers.epoch == 3].reset_index(drop=True)
    for i, a in enumerate((a0, a1)):
        assert last.act_mean[i] == pytest.approx(a.mean().item(), abs=1e-6)
        assert last.act_std[i] == pytest.approx(a.std().item(), rel=1e-5)
        assert last.saturated_frac[i] == pytest.approx((a.abs() > 0.99).sum().item() / a.numel(), abs=1e-7)
        assert math.isnan(last.dead_frac[i])
    assert last.iloc[2][["act_mean", "act_std", "dead_frac", "saturated_frac"]].isna().all()


def test_no_validation_set():
    result = deeprun.run(cpu("data.val_fraction=0", "act=relu"))
    assert result.summary["status"] == "completed"
    assert result.epochs.val_loss.isna().all() and result.epochs.val_r2.isna().all()
    assert math.isnan(result.summary["final_val_loss"]) and math.isnan(result.summary["best_val_loss"])
    hidden = result.layers[result.layers.name != "head"]
    assert hidden.act_mean.notna().all() and hidden.dead_frac.notna().all()  # probed on the training set


# --- determinism -----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU here (CI has none); checked on a lent GPU machine"))])
def test_same_seed_same_records_and_another_seed_differs(tmp_path, device):
    """Byte for byte on the CPU and on a GPU: no probe adds with atomics in a run-dependent order."""
    overrides = ("epochs=4", "batch_size=16", "dropout=0.2", "log.every=2", f"device={device}")
    a = deeprun.run(cpu(*overrides), out_dir=tmp_path / "a")
    b = deeprun.run(cpu(*overrides), out_dir=tmp_path / "b")
    for name in ("epochs.csv", "layers.csv"):
        rows = csv_rows(tmp_path / "a" / name)
        assert len(rows) > 5 and rows == csv_rows(tmp_path / "b" / name), name
    assert same_state(a.model.state_dict(), b.model.state_dict())
    c = deeprun.run(cpu(*overrides, "seed=1"))
    assert not any(c.epochs.train_loss[1:].to_numpy() == a.epochs.train_loss[1:].to_numpy())
    assert c.summary["seed"] == 1


# --- Ctrl-C ----------------------------------------------------------------------------------------

def test_ctrl_c_between_logged_epochs_keeps_every_finished_epoch(tmp_path, monkeypatch):
    """KeyboardInterrupt in epoch 23 of a run logged every 10th epoch: epochs.csv still holds
    epochs 0-22 (read at the interrupt, not only up to the last logged epoch 20), with the losses
    an uninterrupted run gets; layers.csv holds the logged epochs 0, 10, 20; status interrupted."""
    cfg = cpu("epochs=40", "log.every=10", "data.n=100")  # full batch: 80 training rows, 20 validation rows
    whole = deeprun.run(cfg)
    build = deeprun.api.build_model

    def interrupted_model(cfg, data):
        model = build(cfg, data)
        passes = iter(range(1, 10 ** 6))

        def hook(module, inputs):
            # one training pass an epoch, epoch 0's included: the 24th is epoch 23's
            if len(inputs[0]) == 80 and next(passes) == 24:
                raise KeyboardInterrupt
        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(deeprun.api, "build_model", interrupted_model)
    with pytest.raises(KeyboardInterrupt):
        deeprun.run(cfg, out_dir=tmp_path)
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    assert list(epochs.epoch) == list(range(23))
    # the same numbers; on a many-core machine a matmul's last bit can follow the memory it lands in
    assert epochs.train_loss.tolist() == pytest.approx(whole.epochs.train_loss[:23].tolist(), rel=1e-6, abs=0)
    assert epochs.val_loss.tolist() == pytest.approx(whole.epochs.val_loss[:23].tolist(), rel=1e-6, abs=0)
    assert sorted(set(pd.read_csv(tmp_path / "layers.csv").epoch)) == [0, 10, 20]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["final_train_loss"] == epochs.train_loss.iloc[-1]


# --- divergence ------------------------------------------------------------------------------------

@pytest.mark.parametrize("every", [1, 5])
def test_divergence_stops_the_run_and_is_recorded(tmp_path, every):
    cfg = cpu("optimizer=sgd", "lr=1e6", "epochs=30", f"log.every={every}")
    result = deeprun.run(cfg, out_dir=tmp_path)
    s = result.summary
    assert s["status"] == "diverged"
    assert isinstance(s["diverged_epoch"], int) and 1 <= s["diverged_epoch"] < 30
    d = s["diverged_epoch"]
    ep = result.epochs
    assert list(ep.epoch) == list(range(d + 1))
    assert not math.isfinite(ep.train_loss.iloc[-1]) or not math.isfinite(ep.val_loss.iloc[-1])
    assert ep.train_loss.iloc[:-1].map(math.isfinite).all()
    on_disk = pd.read_csv(tmp_path / "epochs.csv")
    assert list(on_disk.epoch) == list(range(d + 1))
    # layers.csv: no logged epoch past the divergence
    assert pd.read_csv(tmp_path / "layers.csv").epoch.max() <= d

    def no_constants(name):
        raise AssertionError(f"summary.json holds {name}: not strict JSON")

    written = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_constants)
    assert written["status"] == "diverged" and written["diverged_epoch"] == d
    for key in ("final_train_loss", "final_val_loss"):
        value = written[key]
        assert value is None or math.isfinite(value), key
    assert written["final_train_loss"] is None or written["final_val_loss"] is None
    for key, value in written.items():
        assert not (isinstance(value, float) and not math.isfinite(value)), key


# --- logging cadence and loss@ ----------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "sgd"])  # fused, foreach (train.implementation)
def test_update_ratio_spans_only_the_logged_epoch_when_probing_every_nth(optimizer):
    """log.every=3: the update ratio of logged epoch 3 is ||W_3 - W_2|| / ||W_2||, the one a run
    probing every epoch records, not a ratio reaching back to the last logged epoch (fused
    optimisers step without bumping the weights' version counters, so nothing may rely on them)."""
    every_epoch, every_3rd = (deeprun.run(cpu("epochs=7", f"optimizer={optimizer}", f"log.every={n}")).layers
                              for n in (1, 3))
    assert sorted(set(every_3rd.epoch)) == [0, 3, 6, 7]
    for epoch in (3, 6, 7):
        mine = every_3rd[every_3rd.epoch == epoch].update_ratio.tolist()
        theirs = every_epoch[every_epoch.epoch == epoch].update_ratio.tolist()
        assert mine == pytest.approx(theirs, rel=1e-5), epoch


def test_log_every_probes_at_0_multiples_and_the_last_epoch(tmp_path):
    result = deeprun.run(cpu("log.every=5", "epochs=12"), out_dir=tmp_path)
    assert list(result.epochs.epoch) == list(range(13))
    assert sorted(set(result.layers.epoch)) == [0, 5, 10, 12]
    assert list(result.layers.groupby("epoch").size()) == [3, 3, 3, 3]
    on_disk = pd.read_csv(tmp_path / "layers.csv")
    assert list(on_disk.columns) == LAYER_COLUMNS
    assert sorted(set(on_disk.epoch)) == [0, 5, 10, 12]
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert list(epochs.epoch) == list(range(13))
    assert epochs.train_loss.notna().all() and epochs.val_loss.notna().all()


def test_on_log_gets_each_logged_epochs_row_as_it_is_read():
    rows = []
    result = deeprun.run(cpu("log.every=5", "epochs=12"), on_log=rows.append, progress=False)
    assert [row["epoch"] for row in rows] == [0, 5, 10, 12]
    logged = result.epochs.set_index("epoch")
    for row in rows:
        assert (row["train_loss"], row["val_loss"]) == (logged.train_loss[row["epoch"]], logged.val_loss[row["epoch"]])


def test_loss_at_epochs():
    result = deeprun.run(cpu("log.loss_at=[2,3,200]", "epochs=3"))
    loss = dict(zip(result.epochs.epoch, result.epochs.train_loss))
    assert result.summary["loss@2"] == loss[2] and result.summary["loss@3"] == loss[3]
    assert result.summary["loss@2"] != loss[1]  # the first epoch is 1, not 0
    assert "loss@200" not in result.summary
    assert "loss@200" not in deeprun.run(cpu()).summary  # the default [200] with a 3-epoch run


def test_summary_grad_norms_are_the_last_logged_epochs():
    result = deeprun.run(cpu("depth=3", "epochs=4", "log.every=3"))
    last = result.layers[result.layers.epoch == 4]
    assert list(last.name) == ["fc0", "fc1", "fc2", "head"]
    s = result.summary
    assert s["grad_norm_first"] == last.grad_norm.iloc[0]
    assert s["grad_norm_last"] == last.grad_norm.iloc[-2]  # the last hidden layer, before the head
    assert s["grad_ratio"] == pytest.approx(last.grad_norm.iloc[0] / last.grad_norm.iloc[-2])
    assert s["dead_frac_max"] == pytest.approx(last.dead_frac.max())



def test_summary_grad_norms_at_init_are_epoch_0s():
    result = deeprun.run(cpu("depth=3", "epochs=4", "log.every=3"))
    init = result.layers[result.layers.epoch == 0]
    s = result.summary
    assert s["grad_norm_first@init"] == init.grad_norm.iloc[0]
    assert s["grad_norm_last@init"] == init.grad_norm.iloc[-2]
    assert s["grad_ratio@init"] == pytest.approx(init.grad_norm.iloc[0] / init.grad_norm.iloc[-2])
    assert s["grad_norm_first@init"] != s["grad_norm_first"]  # epoch 4's weights moved


@pytest.mark.slow
def test_grad_ratio_at_init_shows_the_vanishing_that_the_last_epoch_hides(one_thread):
    """The deep-MLP notebook's model D (sigmoid, U(-0.5, 0.5), SGD) after 1000 epochs: every layer's gradient has
    vanished, so the last epoch's ratio is near 1; at initialisation it is 1e-5."""
    cfg = compose(["depth=8", "width=8", "act=sigmoid", "init=uniform", "optimizer=sgd", "lr=0.01",
                   "epochs=1000", "log.every=1000", "log.progress=false", "device=cpu"])
    s = deeprun.run(cfg).summary
    assert s["grad_ratio"] > 0.1 and s["grad_norm_last"] < 1e-4, s
    assert s["grad_ratio@init"] < 1e-3 and s["grad_norm_last@init"] > 0.1, s

# --- records on disk ---------------------------------------------------------------------------------

def test_checkpoints_init_and_final(tmp_path):
    cfg = cpu("save.checkpoints=[init,final]", "lr=0.01")
    result = deeprun.run(cfg, out_dir=tmp_path)
    init = torch.load(tmp_path / "init.pt", weights_only=True)
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    fresh = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu")).state_dict()
    assert same_state(init, fresh)
    assert same_state(final, result.model.state_dict())
    assert not same_state(init, final)
    model = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))
    model.load_state_dict(final)  # a plain state dict of the configured model
    none = tmp_path / "none"
    deeprun.run(cpu(), out_dir=none)
    assert not list(none.glob("*.pt"))


def test_summary_json_is_one_flat_pandas_readable_row(tmp_path):
    cfg = cpu("act=tanh")
    result = deeprun.run(cfg, out_dir=tmp_path)
    text = (tmp_path / "summary.json").read_text()
    summary = json.loads(text)
    assert summary["status"] == "completed" and summary["error"] is None
    assert not any(isinstance(v, (dict, list)) for v in summary.values())  # flat
    for key in ("model", "depth", "width", "act", "init", "norm", "optimizer", "lr", "batch_size", "epochs", "data",
                "seed", "device", "params", "status", "final_train_loss", "final_val_loss", "best_val_loss", "val_r2",
                "grad_norm_first", "grad_norm_last", "grad_ratio", "dead_frac_max", "saturated_frac_max", "seconds",
                "error"):
        assert key in summary, key
    row = pd.json_normalize(summary)
    assert row.shape[0] == 1 and list(row.columns) == list(summary)
    table = pd.read_json(io.StringIO("[" + text + "]"))
    assert table.loc[0, "act"] == "tanh" and table.loc[0, "depth"] == 2
    assert table.loc[0, "final_train_loss"] == pytest.approx(result.summary["final_train_loss"])
    assert (summary["device"], summary["init"]) == ("cpu", "xavier_uniform")
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    pd.testing.assert_frame_equal(epochs.drop(columns="seconds"), result.epochs.drop(columns="seconds"),
                                  check_dtype=False)
    layers = pd.read_csv(tmp_path / "layers.csv")
    pd.testing.assert_frame_equal(layers, result.layers, check_dtype=False)
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert leftovers == []
    assert sorted(f for f in os.listdir(tmp_path)) == ["epochs.csv", "layers.csv", "summary.json"]


# --- the vanishing-gradient experiment's claim, as a property over seeds -----------------------------------

MODEL_D = ("depth=8", "width=8", "init=uniform", "init.a=0.5", "optimizer=sgd", "lr=0.01", "epochs=1000",
            "data.n=400", "data.val_fraction=0", "log.every=100")
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def model_d():
    """The deep-MLP notebook's model D with sigmoid and with ReLU, at each seed: {(act, seed): summary}."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {(act, seed): deeprun.run(cpu(*MODEL_D, f"act={act}", f"seed={seed}")).summary
                for act in ("sigmoid", "relu") for seed in SEEDS}
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_model_d_deep_sigmoid_gradient_vanishes_and_its_loss_never_moves(model_d, seed):
    sig, relu = model_d[("sigmoid", seed)], model_d[("relu", seed)]
    assert sig["status"] == relu["status"] == "completed"
    assert sig["params"] == relu["params"] == 545
    assert sig["init"] == "uniform"
    # orders of magnitude: the deep-MLP notebook saw 6e-6 (sigmoid) against 0.43 (ReLU)
    assert sig["grad_norm_first"] < 1e-4
    assert 100 * sig["grad_norm_first"] <= relu["grad_norm_first"], (sig["grad_norm_first"], relu["grad_norm_first"])
    assert abs(sig["final_train_loss"] - sig["loss@200"]) <= 0.05 * sig["loss@200"]
    assert math.isnan(sig["final_val_loss"])  # data.val_fraction=0: no validation set


@pytest.mark.slow
def test_model_d_deep_relu_trains(model_d):
    """Deep ReLU gets well below its loss@200 by epoch 1000. Not every draw does: with this data
    set seed 0 stays on the plateau (loss 2.069 at 200, 2.066 at 1000; seeds 1..7 give 6 of 8
    that train), so the property is asserted for most seeds, not each."""
    outcome = {seed: (model_d[("relu", seed)]["loss@200"], model_d[("relu", seed)]["final_train_loss"]) for seed in SEEDS}
    trained = [seed for seed, (at200, final) in outcome.items() if final < 0.5 * at200]
    assert len(trained) >= 2, outcome


def test_device_threads_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the autouse fixture already set 1: start elsewhere so the run must change it
        result = deeprun.run(tiny("device.threads=1"))
        assert torch.get_num_threads() == 1
        assert result.summary["device.threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_a_users_module_sees_train_while_training_and_eval_while_validating(monkeypatch):
    """A class deeprun does not know may read self.training: every training pass (epoch 0's too) runs
    in train mode and every validation pass in eval mode, so its train and val losses are of two
    different functions, each checked against the model run by hand."""

    calls = []  # (rows, self.training) of every forward pass

    class Reads(nn.Module):
        def forward(self, x):
            calls.append((len(x), self.training))
            return x if self.training else -x

    build = deeprun.api.build_model
    monkeypatch.setattr(deeprun.api, "build_model", lambda cfg, data: nn.Sequential(build(cfg, data), Reads()))
    cfg = cpu("epochs=2", "optimizer=sgd", "lr=1e-12")  # the weights stay at init (to float32), the oracle's
    data = deeprun.build_data(cfg, "cpu")
    n_train, n_val = len(data.x_train), len(data.x_val)
    assert len({n_train, n_val, 2}) == 3  # 2: the probes' look at the model's layers
    result = deeprun.run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    assert [mode for rows, mode in calls if rows == n_train] == [True] * 3  # epochs 0, 1, 2
    assert [mode for rows, mode in calls if rows == n_val] == [False] * 3
    plain = build(cfg, data).eval()
    with torch.no_grad():
        train_loss = F.mse_loss(plain(data.x_train), data.y_train).item()  # no norm, no dropout: mode-free
        val_loss = F.mse_loss(-plain(data.x_val), data.y_val).item()
    assert list(result.epochs.train_loss) == pytest.approx([train_loss] * 3, rel=1e-5)
    assert list(result.epochs.val_loss) == pytest.approx([val_loss] * 3, rel=1e-5)
    assert train_loss != pytest.approx(F.mse_loss(-plain(data.x_train), data.y_train).item(), rel=1e-3)


def test_trained_dropout_modules_draw_from_the_runs_own_generator(monkeypatch):
    """A solo run's nn.Dropout modules become deeprun.stack.Dropout (same rate, same place) drawing from
    torch.Generator().manual_seed(cfg.seed): torch's global generator is not what decides its masks."""
    cfg = cpu("dropout=0.3", "depth=3", "epochs=2", "batch_size=16")
    built = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))
    result = deeprun.run(cfg)
    built_places = [name for name, m in built.named_modules() if isinstance(m, nn.Dropout)]
    trained = {name: m for name, m in result.model.named_modules() if isinstance(m, (nn.Dropout, stack.Dropout))}
    assert list(trained) == built_places == ["drop0", "drop1", "drop2"]
    assert all(type(m) is stack.Dropout and m.p == pytest.approx([0.3]) for m in trained.values())
    build = deeprun.api.build_model

    def build_then_reseed(cfg, data):
        model = build(cfg, data)  # build_model seeds torch's global generator itself...
        torch.manual_seed(12345)  # ...so move it after: training starts from another global state
        return model
    monkeypatch.setattr(deeprun.api, "build_model", build_then_reseed)
    again = deeprun.run(cfg)
    assert list(again.epochs.train_loss) == list(result.epochs.train_loss)
    assert same_state(again.model.state_dict(), result.model.state_dict())


def test_dropout_is_off_when_validating():
    """With the switch, validation runs in eval mode: val_loss is deterministic for a dropout net."""
    result = deeprun.run(cpu("dropout=0.5", "epochs=2"))
    data_cfg = cpu("dropout=0.5", "epochs=2")
    model = result.model.eval()
    data = deeprun.build_data(data_cfg)
    with torch.no_grad():
        val = F.mse_loss(model(data.x_val), data.y_val).item()
    assert result.epochs.val_loss.iloc[-1] == pytest.approx(val, rel=1e-5)


def test_read_run_gives_back_what_the_run_returned(tmp_path):
    from deeprun.records import read_run

    result = deeprun.run(cpu("act=tanh", "epochs=4"), out_dir=tmp_path)
    summary, epochs, layers = read_run(tmp_path)
    assert summary["status"] == "completed" and summary["final_train_loss"] == result.summary["final_train_loss"]
    pd.testing.assert_frame_equal(epochs, result.epochs, check_dtype=False)
    pd.testing.assert_frame_equal(layers, result.layers, check_dtype=False)


def test_records_csv_is_pandas_to_csv_text_and_float32_reads_back_exactly():
    import numpy as np

    from deeprun.records import csv_text

    floats = [0.1, 1e-5, 1.5e-300, 123456789012.0, 1e22, -0.0, np.inf, -np.inf, np.nan, 3.0, 2.5e-7, 0.30000000000000004]
    frame = pd.DataFrame({
        "float": floats, "int": range(12), "bool": [True, False] * 6,
        "text": ["x,y", 'say "hi"', "net.0", None, "", " a b", "é", "1", "two\nlines", "m", np.nan, "p"],
        "mixed": [1, "a", None, 2.5, True, np.nan, "x", 3, 4, 5, 6, 7],
        "Int64": pd.array([1, None] * 6, dtype="Int64"), "string": pd.array(["a", None] * 6, dtype="string")})
    assert csv_text(frame) == frame.to_csv(index=False, lineterminator="\n")
    assert csv_text(frame.iloc[:0]) == frame.iloc[:0].to_csv(index=False, lineterminator="\n")
    assert csv_text(frame[["text"]]) == frame[["text"]].to_csv(index=False, lineterminator="\n")
    f32 = (np.random.default_rng(0).standard_normal(10_001) * 10.0 ** np.arange(-5, 5).repeat(1001)[:10_001]).astype(np.float32)
    f32[-1] = np.nan
    back = pd.read_csv(io.StringIO(csv_text(pd.DataFrame({"x": f32}))))
    np.testing.assert_array_equal(back.x.to_numpy().astype(np.float32), f32)
