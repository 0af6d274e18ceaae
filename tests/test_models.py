"""Every option of every config group trains end to end, and does what its name says.

The group options are read from conf/<group>/*.yaml, so a new file is covered
without touching this module; the option-specific checks are oracles written
from docs/config.md and torch's documented formulas, not from deeprun's code.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deeprun
from deeprun import config, models, stack
from deeprun.config import ConfigError
from deeprun.train import OPTIMIZERS, build_optimizer

from conftest import ROOT, fast_first, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = ROOT / "conf"
NEEDS_EXTRA_KEYS = {"custom", "csv"}  # options that cannot run without keys of the user's


def options(group: str) -> list[str]:
    """The option names of a config group, from its YAML files."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem not in NEEDS_EXTRA_KEYS)


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]):
    return tiny(*overrides, "device=cpu")


def cpu(*overrides: str):
    """tiny(*overrides) on the CPU; each distinct config is composed once (Hydra's compose is the slow part)."""
    return copy.deepcopy(_composed(overrides))


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def forward_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The leaf modules of `model` in the order a forward pass calls them."""
    calls: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def assert_trained(result, status: str = "completed") -> None:
    assert result.summary["status"] == status, result.summary["error"]
    assert result.summary["error"] is None
    assert math.isfinite(result.summary["final_train_loss"])
    assert list(result.epochs.epoch) == list(range(result.summary["epochs"] + 1))


# --- registries agree with conf/ ------------------------------------------------------

def test_conf_groups_match_the_registries():
    assert set(options("act")) == set(models.ACTIVATIONS) == set(config.ACTIVATION_NAMES)
    assert set(options("init")) == set(config.INIT_NAMES)
    assert set(config.INIT_NAMES) == set(models.INITS) | {"auto", "torch_default", "checkpoint"}
    assert set(options("norm")) == set(models.NORMS) == set(config.CHOICES["norm.name"])
    assert set(options("optimizer")) == set(config.CHOICES["optimizer.name"])
    assert set(options("scheduler")) == set(config.CHOICES["scheduler.name"])
    assert set(options("model")) == set(models.MODELS)


# --- activations -----------------------------------------------------------------------

@pytest.mark.parametrize("act", fast_first(options("act"), keep={"relu", "tanh"}))
def test_every_activation_trains_and_is_used_after_each_hidden_layer(act):
    cfg = cpu(f"act={act}")  # init=auto, the default
    result = deeprun.run(cfg)
    assert_trained(result)
    assert result.summary["act"] == act
    assert_auto_init(act, cfg, result)
    cls = models.ACTIVATIONS[act]
    used = [m for m in result.model.modules() if type(m) is cls]
    assert len(used) == cfg.depth
    order = forward_order(result.model, torch.zeros(2, 3))
    for i, m in enumerate(order[:-1]):
        if isinstance(m, nn.Linear):
            assert type(order[i + 1]) is cls  # norm=none: Linear -> act


def test_leaky_relu_slope_reaches_the_module_and_the_kaiming_gain():
    cfg = cpu("act=leaky_relu", "act.slope=0.2", "width=256", "init=kaiming_normal")
    data = deeprun.build_data(cfg, "cpu")
    model = deeprun.build_model(cfg, data)
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 2 and all(m.negative_slope == pytest.approx(0.2) for m in acts)
    w = model.fc1.weight  # 256 x 256
    gain = math.sqrt(2 / (1 + 0.2 ** 2))
    assert w.std().item() == pytest.approx(gain / math.sqrt(256), rel=0.05)


# --- initialisation --------------------------------------------------------------------

AUTO_INIT = {  # docs/config.md (init=auto): Kaiming for the ReLU family, Xavier for tanh/sigmoid, LeCun-normal for SELU
    "relu": "kaiming_normal", "leaky_relu": "kaiming_normal", "elu": "kaiming_normal", "gelu": "kaiming_normal",
    "silu": "kaiming_normal", "mish": "kaiming_normal", "tanh": "xavier_uniform", "sigmoid": "xavier_uniform",
    "softplus": "xavier_uniform", "identity": "xavier_uniform", "selu": "lecun_normal",
}


def init_overrides(init: str, tmp_path) -> list[str]:
    """init=NAME; init=checkpoint also gets a state dict of the same model to load."""
    if init != "checkpoint":
        return [f"init={init}"]
    cfg = cpu()
    torch.save(deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu")).state_dict(), tmp_path / "w.pt")
    return ["init=checkpoint", f"init.path={tmp_path / 'w.pt'}"]


@pytest.mark.parametrize("init", fast_first(options("init"), keep={"auto", "kaiming_normal"}))
def test_every_init_trains_and_is_recorded(init, tmp_path):
    result = deeprun.run(cpu(*init_overrides(init, tmp_path)))
    assert_trained(result)
    assert result.summary["init"] == (AUTO_INIT["relu"] if init == "auto" else init)


@pytest.mark.parametrize("init", fast_first([i for i in options("init") if i not in ("torch_default", "checkpoint")],
                                             keep={"kaiming_normal", "uniform"}))
def test_every_init_but_torch_default_zeroes_the_biases(init):
    cfg = cpu(f"init={init}")
    model = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))
    for layer in linears(model):
        assert torch.count_nonzero(layer.bias) == 0
        assert torch.count_nonzero(layer.weight) == layer.weight.numel()


def test_torch_default_leaves_torchs_own_biases():
    cfg = cpu("init=torch_default")
    model = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))
    for layer in linears(model):
        bound = 1 / math.sqrt(layer.in_features)  # torch's Linear.reset_parameters
        assert torch.count_nonzero(layer.bias) == layer.bias.numel()
        assert layer.bias.abs().max() <= bound


def wide_layer(*overrides: str) -> torch.Tensor:
    """fc1's weight of a width-256 MLP: fan_in = fan_out = 256, 65536 samples."""
    cfg = cpu("width=256", *overrides)
    model = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))
    assert torch.count_nonzero(model.fc1.bias) == 0
    return model.fc1.weight.detach()


FAN = 256


def test_uniform_init_a():
    w = wide_layer("init=uniform", "init.a=0.5")
    assert w.min() >= -0.5 and w.max() <= 0.5
    assert w.abs().max() > 0.49  # fills the range
    assert w.std().item() == pytest.approx(0.5 / math.sqrt(3), rel=0.05)
    w = wide_layer("init=uniform", "init.a=0.1")
    assert w.abs().max() <= 0.1 and w.abs().max() > 0.098


def test_normal_init_std():
    w = wide_layer("init=normal", "init.std=0.01")
    assert w.std().item() == pytest.approx(0.01, rel=0.1)
    assert w.mean().abs() < 0.001


def test_mean_field_init_variances():
    """init=mean_field: weights N(0, sigma_w2 / fan_in) and biases N(0, sigma_b2), every layer."""
    cfg = cpu("width=256", "depth=3", "act=tanh", "init=mean_field", "init.sigma_w2=1.76", "init.sigma_b2=0.05")
    model = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))
    assert model.fc1.weight.var().item() * FAN == pytest.approx(1.76, rel=0.03)
    assert model.fc0.weight.var().item() * 3 == pytest.approx(1.76, rel=0.4)  # fan_in 3: 768 samples
    biases = torch.cat([model.fc1.bias, model.fc2.bias]).detach()
    assert biases.var().item() == pytest.approx(0.05, rel=0.15)  # 512 samples
    assert wide_layer("init=mean_field").var().item() * FAN == pytest.approx(1.0, rel=0.03)  # sigma_b2=0: zero biases


def test_lecun_normal_std_is_one_over_sqrt_fan_in():
    w = wide_layer("init=lecun_normal", "act=selu")
    assert w.std().item() == pytest.approx(1 / math.sqrt(FAN), rel=0.05)


@pytest.mark.parametrize("act,gain", [("relu", math.sqrt(2)), ("leaky_relu", math.sqrt(2 / (1 + 0.01 ** 2))),
                                      ("tanh", 5 / 3)])
def test_kaiming_normal_std(act, gain):
    w = wide_layer("init=kaiming_normal", f"act={act}")
    assert w.std().item() == pytest.approx(gain / math.sqrt(FAN), rel=0.05)


def test_kaiming_normal_leaky_relu_slope_gain():
    w = wide_layer("init=kaiming_normal", "act=leaky_relu", "act.slope=0.2")
    assert w.std().item() == pytest.approx(math.sqrt(2 / (1 + 0.04)) / math.sqrt(FAN), rel=0.05)


def test_kaiming_uniform_bound_relu():
    w = wide_layer("init=kaiming_uniform", "act=relu")
    bound = math.sqrt(2) * math.sqrt(3 / FAN)
    assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.98 * bound


def test_xavier_uniform_bound_tanh():
    w = wide_layer("init=xavier_uniform", "act=tanh")
    bound = 5 / 3 * math.sqrt(6 / (FAN + FAN))
    assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.98 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_xavier_normal_std_sigmoid():
    w = wide_layer("init=xavier_normal", "act=sigmoid")  # calculate_gain('sigmoid') == 1
    assert w.std().item() == pytest.approx(math.sqrt(2 / (FAN + FAN)), rel=0.05)


def test_orthogonal_rows_are_orthogonal_with_the_activations_gain():
    w = wide_layer("init=orthogonal", "act=relu")
    assert torch.allclose(w @ w.T, 2 * torch.eye(FAN), atol=1e-4)  # gain sqrt(2)


def assert_auto_init(act, auto_cfg, result):
    """init=auto records its pick and initialises exactly as that init named explicitly."""
    assert auto_cfg.init.name == "auto"
    expected = AUTO_INIT.get(act)
    if expected is None:  # a new activation: auto must still pick a real scheme
        expected = result.summary["init"]
        assert expected in set(config.INIT_NAMES) - {"auto"}
    assert result.summary["init"] == expected
    named_cfg = cpu(f"act={act}", f"init={expected}")
    data = deeprun.build_data(auto_cfg, "cpu")
    auto, named = deeprun.build_model(auto_cfg, data), deeprun.build_model(named_cfg, data)
    for (k, a), (_, b) in zip(auto.state_dict().items(), named.state_dict().items()):
        assert torch.equal(a, b), k


# --- normalisation ----------------------------------------------------------------------

NORM_CLASSES = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("norm", options("norm"))
def test_every_norm_at_both_positions(norm, position):
    cfg = cpu(f"norm={norm}", f"norm.position={position}", "act=tanh")
    result = deeprun.run(cfg)
    assert_trained(result)
    assert (result.summary["norm"], result.summary["norm_position"]) == (norm, position)
    model = result.model
    cls = NORM_CLASSES.get(norm, models.NORMS[norm])
    order = forward_order(model, torch.randn(4, 3))
    hidden = [i for i, m in enumerate(order) if isinstance(m, nn.Linear)][:-1]  # all but the head
    assert len(hidden) == cfg.depth
    for i in hidden:
        following = [type(m) for m in order[i + 1:i + 3]]
        if cls is None:
            assert following[0] is nn.Tanh
            assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in model.modules())
        elif position == "pre":  # Linear -> Norm -> Act
            assert following == [cls, nn.Tanh]
        else:  # Linear -> Act -> Norm
            assert following == [nn.Tanh, cls]
    if cls is not None:
        norms = [m for m in model.modules() if isinstance(m, cls)]
        assert len(norms) == cfg.depth
        assert all((m.num_features if cls is nn.BatchNorm1d else m.normalized_shape[0]) == cfg.width for m in norms)


def test_unknown_norm_position_is_a_config_error():
    with pytest.raises(ConfigError, match=r"norm.position='middle': must be one of: pre, post"):
        cpu("norm.position=middle")


# --- optimisers ------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_builds_its_torch_class_and_trains(optimizer, tmp_path):
    cfg = cpu(f"optimizer={optimizer}", "lr=0.01", "save.checkpoints=[init]")
    data = deeprun.build_data(cfg, "cpu")
    model = deeprun.build_model(cfg, data)
    opt, bind, groups = build_optimizer([cfg], model, stacked=False)
    assert type(opt).__name__.lower() == optimizer  # SGD, Adam, AdamW, RMSprop
    assert len(opt.param_groups) == 1 and groups == [0]  # a solo run: one group, the model's own parameters
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.01)
    assert group["weight_decay"] == pytest.approx(cfg.optimizer.weight_decay)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    result = deeprun.run(cfg, out_dir=tmp_path)
    assert_trained(result)
    assert result.summary["optimizer"] == optimizer
    assert result.summary["final_train_loss"] < result.epochs.train_loss[0]
    init = torch.load(tmp_path / "init.pt", weights_only=True)  # the run's own weights before its first step
    assert init.keys() == model.state_dict().keys()
    assert all(torch.equal(init[k], v) for k, v in model.state_dict().items())  # the model built above, at init
    moved = {k: not torch.equal(init[k], v) for k, v in result.model.state_dict().items()}
    assert all(moved.values()), moved


def solo_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser a solo run (E = 1) builds for `model`."""
    return build_optimizer([cfg], model, stacked=False)[0]


def test_optimizer_keys_reach_torch():
    cfg = cpu("optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true", "optimizer.weight_decay=0.001")
    opt = solo_optimizer(cfg, deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu")))
    group = opt.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 0.001)
    cfg = cpu("optimizer=adam", "optimizer.betas=[0.8,0.99]")
    assert solo_optimizer(cfg, nn.Linear(2, 2)).param_groups[0]["betas"] == (0.8, 0.99)
    cfg = cpu("optimizer=adamw")
    assert solo_optimizer(cfg, nn.Linear(2, 2)).param_groups[0]["weight_decay"] == pytest.approx(0.01)
    cfg = cpu("optimizer=rmsprop", "optimizer.alpha=0.9", "optimizer.momentum=0.5")
    group = solo_optimizer(cfg, nn.Linear(2, 2)).param_groups[0]
    assert (group["alpha"], group["momentum"]) == (0.9, 0.5)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_stacked_members_of_other_settings_step_as_their_solo_optimizers(name):
    """E = 3 members, two sharing lr and weight decay and one not: one param group per run of equal
    settings, groups[e] names member e's, and after bind() each member's rows of every parameter step
    as that member's solo optimiser steps its own model."""
    momentum = ["optimizer.momentum=0.9"] if name in ("sgd", "rmsprop") else []
    cfgs = [cpu(f"optimizer={name}", *momentum, f"seed={seed}", f"lr={lr}", f"optimizer.weight_decay={wd}")
            for seed, lr, wd in ((0, 0.01, 0.0), (1, 0.01, 0.0), (2, 0.05, 0.1))]
    data = deeprun.build_data(cfgs[0], "cpu")
    models_ = [deeprun.build_model(c, data) for c in cfgs]
    net = stack.stack(models_, [torch.Generator().manual_seed(0)] * 3)
    opt, bind, groups = build_optimizer(cfgs, net, stacked=True)
    assert groups == [0, 0, 1] and len(opt.param_groups) == 2
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.05]
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.0, 0.1])
    init = [copy.deepcopy(m.state_dict()) for m in models_]
    solos = [(m, solo_optimizer(c, m)) for m, c in zip(models_, cfgs)]
    x, y = data.x_train, data.y_train
    for _ in range(3):
        for p in net.parameters():
            p.grad = None
        F.mse_loss(net(x.expand(3, *x.shape)), y.expand(3, *y.shape), reduction="none").mean((1, 2)).sum().backward()
        bind()
        opt.step()
        for model, o in solos:
            o.zero_grad()
            F.mse_loss(model(x), y).backward()
            o.step()
    for e, (model, _) in enumerate(solos):
        mine = stack.member_state(net, e)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(mine[key], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"member {e} {key}: {m}")
        assert not torch.equal(mine["head.weight"], init[e]["head.weight"])  # the steps moved it


@pytest.mark.parametrize("size", [(4, 3), (1100, 1000)])  # below and above FOREACH_LIMIT parameters
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers_take_the_fastest_implementation_and_match_torchs_default_loop(name, size):
    """deeprun asks for torch's fused or foreach implementation (torch's default off CUDA is a
    loop per parameter); they must train alike: foreach exactly, fused to within rounding."""
    cfg = cpu(f"optimizer={name}", "lr=0.01", *(["optimizer.momentum=0.9"] if name in ("sgd", "rmsprop") else []))
    ours, theirs = nn.Linear(*size), nn.Linear(*size)
    theirs.load_state_dict(ours.state_dict())
    opt = solo_optimizer(cfg, ours)
    start = copy.deepcopy(ours.state_dict())
    small = size == (4, 3)
    expected = {("adam", True): "fused", ("adamw", True): "fused", ("sgd", True): "foreach",
                ("rmsprop", True): "foreach", ("adam", False): "fused", ("adamw", False): "fused",
                ("sgd", False): "fused", ("rmsprop", False): None}[name, small]
    assert [k for k in ("fused", "foreach") if opt.defaults.get(k)] == ([expected] if expected else [])
    # the group's settings (lr and the member options live there, not in opt.defaults); AdamW sets decoupled itself
    settings = {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "decoupled_weight_decay")}
    assert settings["lr"] == 0.01
    ref = type(opt)(theirs.parameters(), **{**settings, "foreach": False, **({"fused": False} if "fused" in settings else {})})
    x = torch.randn(16, size[0], generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for model, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            model(x).pow(2).mean().backward()
            o.step()
    assert not torch.equal(ours.weight, start["weight"])  # the steps moved the weights
    for a, b in zip(ours.parameters(), theirs.parameters()):
        if expected == "fused":  # its own float rounding: a few weights where Adam's m / (sqrt(v) + eps) is 0/0-like
            torch.testing.assert_close(a, b, rtol=0, atol=0.01 * 0.01)  # a hundredth of one step of lr=0.01
        else:
            assert torch.equal(a, b)  # foreach: the loop's numbers exactly


def test_nesterov_without_momentum_is_a_config_error():
    cfg = cpu("optimizer=sgd", "optimizer.nesterov=true")
    with pytest.raises(ConfigError, match=r"optimizer.nesterov=true: needs optimizer.momentum > 0"):
        solo_optimizer(cfg, nn.Linear(2, 2))
    members = [cpu("optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true"), cfg]
    with pytest.raises(ConfigError, match=r"optimizer.nesterov=true: needs optimizer.momentum > 0"):
        build_optimizer(members, nn.Linear(2, 2), stacked=True)  # any member's mistake


# --- schedulers: the lr column of epochs.csv is the lr each epoch trained with ------------------

def trained_lrs(result) -> list[float]:
    return list(result.epochs.lr[result.epochs.epoch >= 1])


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_scheduler_trains(scheduler):
    result = deeprun.run(cpu(f"scheduler={scheduler}", "epochs=4"))
    assert_trained(result)
    assert result.summary["scheduler"] == scheduler
    lrs = trained_lrs(result)
    assert lrs[0] == pytest.approx(1e-3)  # the first epoch trains with cfg.lr
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))  # none of them raises the lr


def test_no_scheduler_keeps_lr():
    result = deeprun.run(cpu("scheduler=none", "epochs=5", "lr=0.003"))
    assert list(result.epochs.lr) == pytest.approx([0.003] * 6)


def test_step_scheduler_halves_every_epoch():
    result = deeprun.run(cpu("scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5", "epochs=5", "lr=0.001"))
    assert_trained(result)
    assert result.epochs.lr[0] == pytest.approx(0.001)  # epoch 0: the model at init
    assert trained_lrs(result) == pytest.approx([0.001, 0.0005, 0.00025, 0.000125, 0.0000625], rel=1e-9)


def test_step_scheduler_step_size():
    result = deeprun.run(cpu("scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.1", "epochs=5", "lr=0.01"))
    assert trained_lrs(result) == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001], rel=1e-9)


def test_cosine_scheduler_anneals_to_eta_min():
    lr, eta_min, epochs = 0.01, 0.001, 10
    result = deeprun.run(cpu("scheduler=cosine", f"scheduler.eta_min={eta_min}", f"epochs={epochs}", f"lr={lr}"))
    assert_trained(result)
    expected = [eta_min + (lr - eta_min) * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2 for e in range(1, epochs + 1)]
    assert trained_lrs(result) == pytest.approx(expected, rel=1e-6)
    last = trained_lrs(result)[-1]
    assert eta_min < last < eta_min + 0.03 * (lr - eta_min)  # the last epoch trains within 3% of eta_min


@pytest.mark.parametrize("val_fraction", [0.2, 0.0])  # on val loss; on train loss without a validation set
def test_plateau_scheduler_cuts_lr_after_patience_epochs_without_improvement(val_fraction):
    # lr so small that no epoch improves the loss by the default relative threshold of 1e-4
    lr, factor, patience = 1e-6, 0.5, 2
    result = deeprun.run(cpu("optimizer=sgd", f"lr={lr}", "scheduler=plateau", f"scheduler.factor={factor}",
                             f"scheduler.patience={patience}", f"data.val_fraction={val_fraction}", "epochs=8"))
    assert_trained(result)
    # epoch 1 sets the best loss; epochs 2..4 are bad epochs 1..3, and 3 > patience cuts the lr after epoch 4
    assert trained_lrs(result) == pytest.approx([lr] * 4 + [lr * factor] * 3 + [lr * factor ** 2], rel=1e-9)


def test_plateau_scheduler_keeps_lr_while_the_loss_improves():
    result = deeprun.run(cpu("optimizer=adam", "lr=0.01", "scheduler=plateau", "scheduler.patience=0",
                             "data.val_fraction=0", "epochs=6"))
    losses = list(result.epochs.train_loss)
    assert all(b < a for a, b in zip(losses[1:], losses[2:]))  # improves every epoch...
    assert trained_lrs(result) == pytest.approx([0.01] * 6)  # ...so the lr stays


# --- data sets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data", fast_first(options("data"), keep={"regression", "images"}))
def test_every_data_set_trains(data):
    cfg = cpu(f"data={data}")
    result = deeprun.run(cfg)
    assert_trained(result)
    assert result.summary["data"] == data
    built = deeprun.build_data(cfg, "cpu")
    assert result.model(built.x_train[:2]).shape == (2, built.n_out)
    assert len(built.x_train) == len(built.y_train) > 0 and len(built.x_val) == len(built.y_val)
    if built.task == "regression":
        assert "val_r2" in result.summary
    else:
        assert "val_accuracy" in result.summary


def test_regression_data_is_the_deep_mlp_notebooks_function():
    cfg = cpu("data.n=100", "data.val_fraction=0.2")
    data = deeprun.build_data(cfg, "cpu")
    assert (data.n_in, data.n_out, data.task) == (3, 1, "regression")
    assert (len(data.x_train), len(data.x_val)) == (80, 20)
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    assert x.min() >= -2 and x.max() <= 2
    assert torch.allclose(y[:, 0], torch.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 - 0.8 * x[:, 2], atol=1e-6)


def test_diag_flip_is_all_16_images_and_their_transpose():
    data = deeprun.build_data(cpu("data=diag_flip"), "cpu")
    assert (data.n_in, data.n_out, len(data.x_train), len(data.x_val)) == (4, 4, 16, 0)
    assert {tuple(r) for r in data.x_train.int().tolist()} == {(a, b, c, d) for a in (0, 1) for b in (0, 1)
                                                                for c in (0, 1) for d in (0, 1)}
    assert torch.equal(data.y_train, data.x_train[:, [0, 2, 1, 3]])
    result = deeprun.run(cpu("data=diag_flip"))
    assert result.epochs.val_loss.isna().all()  # no validation set


@pytest.mark.parametrize("n_classes,task,n_out", [(2, "binary", 1), (3, "multiclass", 3)])
def test_classification_data(n_classes, task, n_out):
    cfg = cpu("data=classification", "data.n=300", "data.n_features=5", f"data.n_classes={n_classes}")
    data = deeprun.build_data(cfg, "cpu")
    assert (data.n_in, data.n_out, data.task) == (5, n_out, task)
    assert (len(data.x_train), len(data.x_val)) == (240, 60)
    labels = torch.cat([data.y_train, data.y_val]).flatten().long()
    assert torch.bincount(labels).tolist() == [300 // n_classes] * n_classes
    result = deeprun.run(cfg)
    assert_trained(result)
    assert 0 <= result.summary["val_accuracy"] <= 1


# --- models ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", options("model"))
def test_every_model_trains(model):
    images = ["data=images", "data.n=64", "data.image_size=8"] if model in config.IMAGE_MODELS else []  # conv nets
    cfg = cpu(f"model={model}", *images)
    result = deeprun.run(cfg)
    assert_trained(result)
    assert result.summary["model"] == model
    assert isinstance(result.model, models.MODELS[model])
    assert result.summary["params"] == sum(p.numel() for p in result.model.parameters())


def test_mlp_model_d_of_the_deep_mlp_notebook():
    result = deeprun.run(cpu("depth=8", "width=8"))
    assert_trained(result)
    shapes = [tuple(m.weight.shape) for m in linears(result.model)]
    assert shapes == [(8, 3)] + [(8, 8)] * 7 + [(1, 8)]  # [3] + [8]*8 + [1]
    assert result.summary["params"] == 3 * 8 + 8 + 7 * (64 + 8) + 8 + 1 == 545
    assert list(result.layers.name[result.layers.epoch == 0]) == [f"fc{i}" for i in range(8)] + ["head"]


def test_mlp_widths_give_model_b():
    result = deeprun.run(cpu("model.widths=[6,6]"))
    assert_trained(result)
    assert [tuple(m.weight.shape) for m in linears(result.model)] == [(6, 3), (6, 6), (1, 6)]
    assert result.summary["params"] == 3 * 6 + 6 + 6 * 6 + 6 + 6 + 1 == 73
    assert result.summary["depth"] == 2


@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_dropout_adds_dropout_modules(model):
    cfg = cpu(f"model={model}", "dropout=0.3", "depth=3")
    result = deeprun.run(cfg)
    assert_trained(result)
    built = deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))
    drops = [m for m in built.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(m.p == pytest.approx(0.3) for m in drops)
    # the trained model: the same places, each dropout now drawing from the run's own generator
    trained = [m for m in result.model.modules() if isinstance(m, (nn.Dropout, stack.Dropout))]
    assert len(trained) == 3 and all(type(m) is stack.Dropout and m.p == pytest.approx([0.3]) for m in trained)
    no_drop = deeprun.run(cpu(f"model={model}", "depth=3")).model
    assert not any(isinstance(m, (nn.Dropout, stack.Dropout)) for m in no_drop.modules())
    assert not any(isinstance(m, nn.Dropout) for m in deeprun.build_model(cpu(f"model={model}", "depth=3"),
                                                                          deeprun.build_data(cfg, "cpu")).modules())


def test_resnet_layers_in_forward_order():
    result = deeprun.run(cpu("model=resnet", "depth=3"))
    assert_trained(result)
    assert len(linears(result.model)) == 2 + 2 * 3
    blocks = [f"blocks.{i}.f.{fc}" for i in range(3) for fc in ("fc1", "fc2")]
    assert list(result.layers.name[result.layers.epoch == 0]) == ["stem", *blocks, "head"]
    assert result.summary["norm"] == "batch"  # the residual-network notebook's default for model=resnet


def test_resnet_block_is_act_of_x_plus_f_x_without_norm():
    result = deeprun.run(cpu("model=resnet", "depth=3", "norm=none"))
    model = result.model.eval()
    torch.manual_seed(1)
    x = torch.randn(5, 3)
    with torch.no_grad():
        h = F.relu(F.linear(x, model.stem.weight, model.stem.bias))
        for block in model.blocks:
            fc1, fc2 = block.f.fc1, block.f.fc2
            fx = F.linear(F.relu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
            out = F.relu(h + fx)
            assert torch.allclose(block(h), out, atol=1e-6)
            h = out
        expected = F.linear(h, model.head.weight, model.head.bias)
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_resnet_block_with_batchnorm_in_eval_mode():
    result = deeprun.run(cpu("model=resnet", "depth=2", "norm=batch", "norm.position=pre"))
    model = result.model.eval()

    def bn(m: nn.BatchNorm1d, z):
        return (z - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    torch.manual_seed(2)
    h = torch.randn(6, 8)
    with torch.no_grad():
        for block in model.blocks:
            f = block.f
            assert isinstance(f.norm, nn.BatchNorm1d) and isinstance(f.norm2, nn.BatchNorm1d)
            assert f.norm.num_batches_tracked > 0  # trained: running stats are not the defaults
            fx = bn(f.norm2, f.fc2(F.relu(bn(f.norm, f.fc1(h)))))
            assert torch.allclose(block(h), F.relu(h + fx), atol=1e-5)


# --- a user's own model and data through _target_ ----------------------------------------------------

PLUGIN = "deeprun_test_models_plugin"
PLUGIN_SOURCE = '''
import numpy as np
import torch
from torch import nn

CALLS = []


class TwoLayer(nn.Module):
    def __init__(self, n_in, n_out, width, hidden=5):
        super().__init__()
        CALLS.append(dict(n_in=n_in, n_out=n_out, width=width, hidden=hidden))
        self.fc = nn.Linear(n_in, hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x)))


class TakesAll(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        CALLS.append(kwargs)
        self.fc = nn.Linear(kwargs["n_in"], kwargs["width"])
        self.act = kwargs["act"]()
        self.out = nn.Linear(kwargs["width"], kwargs["n_out"])

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


def make_data(n=50, seed=0, classes=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2))
    if classes:
        y = np.arange(n) % classes
    else:
        y = x[:, 0] - 2 * x[:, 1]
    CALLS.append(dict(n=n, seed=seed, classes=classes))
    return x, y
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.delitem(sys.modules, PLUGIN, raising=False)
        import importlib

        module = importlib.import_module(PLUGIN)
        yield module
        sys.modules.pop(PLUGIN, None)


def test_custom_model_gets_its_own_keys_and_only_the_shared_args_it_names(plugin):
    plugin.CALLS.clear()
    cfg = cpu("model=custom", f"model._target_={PLUGIN}.TwoLayer", "+model.hidden=7")
    result = deeprun.run(cfg)
    assert_trained(result)
    assert plugin.CALLS[-1] == dict(n_in=3, n_out=1, width=8, hidden=7)  # depth, act, norm, dropout not passed
    assert isinstance(result.model, plugin.TwoLayer)
    assert result.model.fc.out_features == 7
    assert result.summary["model"] == "custom"
    assert result.summary["params"] == 3 * 7 + 7 + 7 + 1
    assert list(result.layers.name[result.layers.epoch == 0]) == ["fc", "out"]
    assert result.summary["final_train_loss"] < result.epochs.train_loss[0]


def test_custom_model_with_kwargs_gets_every_shared_arg(plugin):
    plugin.CALLS.clear()
    result = deeprun.run(cpu("model=custom", f"model._target_={PLUGIN}.TakesAll", "act=tanh", "dropout=0.1"))
    assert_trained(result)
    kwargs = plugin.CALLS[-1]
    assert {"n_in", "n_out", "depth", "width", "act", "norm", "dropout"} <= set(kwargs)
    assert (kwargs["n_in"], kwargs["n_out"], kwargs["depth"], kwargs["width"], kwargs["dropout"]) == (3, 1, 2, 8, 0.1)
    assert isinstance(kwargs["act"](), nn.Tanh)


def test_custom_model_missing_or_bad_target_is_a_config_error(plugin):
    with pytest.raises(ConfigError, match=r"model._target_: required with model=custom"):
        cpu("model=custom")
    cfg = cpu("model=custom", f"model._target_={PLUGIN}.NoSuchNet")
    with pytest.raises(ConfigError, match=rf"model._target_='{PLUGIN}.NoSuchNet': cannot import it"):
        deeprun.build_model(cfg, deeprun.build_data(cfg, "cpu"))


@pytest.mark.parametrize("classes,task,n_out", [(0, "regression", 1), (3, "multiclass", 3)])
def test_custom_data_target(plugin, classes, task, n_out):
    plugin.CALLS.clear()
    cfg = cpu("data=custom", f"data._target_={PLUGIN}.make_data", "+data.n=40", f"+data.classes={classes}",
              "data.seed=5")
    data = deeprun.build_data(cfg, "cpu")
    assert plugin.CALLS[-1] == dict(n=40, seed=5, classes=classes)  # the node's keys, and data.seed
    assert (data.n_in, data.n_out, data.task) == (2, n_out, task)
    assert (len(data.x_train), len(data.x_val)) == (32, 8)
    x, y = plugin.make_data(n=40, seed=5, classes=classes)
    x_all = torch.cat([data.x_train, data.x_val]).double().numpy()
    assert sorted(map(tuple, x_all.round(5))) == sorted(map(tuple, x.round(5)))
    result = deeprun.run(cfg)
    assert_trained(result)
    assert result.summary["data"] == "custom"
    assert ("val_r2" if task == "regression" else "val_accuracy") in result.summary


def test_custom_data_with_one_class_names_the_function(plugin):
    """The targets' errors name the user's data._target_, not a data.target the user never set."""
    cfg = cpu("data=custom", f"data._target_={PLUGIN}.make_data", "+data.n=40", "+data.classes=1")
    with pytest.raises(ConfigError) as e:
        deeprun.build_data(cfg, "cpu")
    assert str(e.value) == f"data._target_='{PLUGIN}.make_data': y: one class only (0); classification needs two or more"
