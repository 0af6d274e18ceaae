"""The notebooks' experiments as presets (conf/experiment/NAME.yaml, `deeprun -m experiment=NAME`), and one
paper's: criticality, Schoenholz et al. 2017's phase diagram.

Every job of every preset's grid composes and validates; each preset then runs shrunk (fewer
epochs, narrower, fewer jobs) as a user would, and the notebook's claim is checked on the numbers
in its results.csv, per seed where one draw could decide it. The full-size runs and the notebooks'
own numbers are in docs/experiments.md (`make experiments`).

The shrunk sweeps are background jobs (conftest.background), started with the session; each test
reads its own.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

import deeprun
from conftest import ROOT, background, compose as preset, fast_first, run_cli
from deeprun.config import conf_dir

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# jobs per full grid: the number the header comment of each preset promises
JOBS = {"vanishing_gradients": 24, "width_vs_depth": 30, "init_comparison": 15, "bn_placement": 24,
        "plain_vs_residual": 6, "cnn_vs_resnet_cnn": 6, "very_deep": 3, "criticality": 50}
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "250"}


# --- every job of every grid composes ----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _grid(name: str) -> tuple[tuple[str, ...], ...]:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return tuple(itertools.product(*axes))


@functools.lru_cache(maxsize=None)
def composed(name: str) -> dict[tuple[str, ...], object]:
    """Each distinct job of the preset's grid (seeds aside: they change no config structure) composed and
    validated: {job's overrides less seed=: config}. As the batched launcher composes a sweep's jobs, Hydra
    composes once per distinct list of group choices and the plain overrides go on a copy (conftest.compose,
    the same configs as deeprun.compose: tests/test_launcher.py); shared by the tests."""
    distinct = {tuple(o for o in job if not o.startswith("seed=")) for job in _grid(name)}
    return {job: preset([f"experiment={name}", *job]) for job in sorted(distinct)}


def grid(name: str) -> list[list[str]]:
    """The overrides of each job `deeprun -m experiment=NAME` launches, expanded from the preset's
    hydra.sweeper.params as Hydra's basic sweeper does (the last key varies fastest)."""
    return [list(job) for job in _grid(name)]


def test_the_presets_are_the_seven_notebook_experiments_and_criticality():
    assert PRESETS == sorted(JOBS)


@pytest.mark.parametrize("name", fast_first(PRESETS, keep={"criticality"}))
def test_every_job_of_the_grid_composes(name):
    jobs = grid(name)
    assert len(jobs) == JOBS[name]
    assert len({tuple(j) for j in jobs}) == len(jobs)  # no job twice
    # seeds change no config structure: each distinct job composed once (composed() validates it)
    for cfg in composed(name).values():
        assert cfg.epochs >= 1 and "experiment" not in cfg  # a preset sets keys, it adds none


def test_vanishing_gradients_holds_the_deep_mlp_notebooks_five_runs():
    jobs = grid("vanishing_gradients")
    configs = {(j[0], j[1]) for j in jobs}
    for widths in ("[4]", "[6,6]", "[8,8,8,8]", "[8,8,8,8,8,8,8,8]"):
        assert (f"model.widths={widths}", "act=relu") in configs
    assert ("model.widths=[8,8,8,8,8,8,8,8]", "act=sigmoid") in configs
    cfg = preset(["experiment=vanishing_gradients", "model.widths=[8,8,8,8,8,8,8,8]", "act=sigmoid"])
    assert (cfg.init.name, cfg.init.a, cfg.optimizer.name, cfg.lr, cfg.epochs) == ("uniform", 0.5, "sgd", 0.01, 1000)
    assert cfg.batch_size is None and cfg.data.val_fraction == 0 and cfg.data.name == "regression"


def test_criticality_grid_is_sigma_w2_across_the_edge_by_depth():
    """The YAML's grid: tanh MLPs, init=mean_field with sigma_b2 0.05, 10 values of sigma_w2 on both sides of
    the critical point by 5 depths from 10 to 100; the sigma_w2 of one depth differ in init only, so the
    batched launcher trains each depth as one stack (5 stacks, not 50 runs)."""
    from deeprun import meanfield
    from deeprun.stack import group_key

    jobs = grid("criticality")
    depths = sorted({int(o.split("=")[1]) for j in jobs for o in j if o.startswith("depth=")})
    sigmas = sorted({float(o.split("=")[1]) for j in jobs for o in j if o.startswith("init.sigma_w2=")})
    assert depths == [10, 20, 40, 70, 100] and len(sigmas) == 10 and len(jobs) == 50
    critical = meanfield.critical_sigma_w2("tanh", 0.05)
    assert critical == pytest.approx(1.761, abs=1e-3)
    assert min(sigmas) < critical < max(sigmas) and sum(s < critical for s in sigmas) >= 3
    # the grid reaches both phases' untrainable side at the deepest depth, and the edge is in it
    assert meanfield.analyse("tanh", min(sigmas), 0.05)["trainable_depth"] < max(depths)
    assert meanfield.analyse("tanh", max(sigmas), 0.05)["trainable_depth"] < max(depths)
    assert any(abs(s - critical) < 0.01 for s in sigmas)
    keys = set()
    configs = composed("criticality")  # every job: the grid has no seed axis
    assert len(configs) == len(jobs)
    for cfg in configs.values():
        assert (cfg.act.name, cfg.init.name, cfg.init.sigma_b2, cfg.model.name, cfg.norm.name, cfg.dropout) == \
            ("tanh", "mean_field", 0.05, "mlp", "none", 0.0)
        assert cfg.data.name == "digits" and cfg.optimizer.name == "sgd"
        keys.add(group_key(cfg))
    assert len(keys) == len(depths)


def test_uniform_init_draws_the_deep_mlp_notebooks_weights_and_zero_biases(one_thread):
    cfg = preset(["experiment=vanishing_gradients", "model.widths=[8,8,8,8,8,8,8,8]", "act=sigmoid"])
    model = deeprun.build_model(cfg, deeprun.build_data(cfg))
    linears = [m for m in model.modules() if hasattr(m, "weight") and m.weight.dim() == 2]
    assert [tuple(m.weight.shape) for m in linears] == [(8, 3)] + [(8, 8)] * 7 + [(1, 8)]
    for m in linears:
        assert m.weight.abs().max() <= 0.5 and m.weight.abs().max() > 0.3
        assert (m.bias == 0).all()


def test_arm_options_set_what_their_names_say():
    cfg = preset(["experiment=init_comparison", "experiment/init_comparison=xavier_gain1"])
    assert cfg.init.name == "normal" and math.isclose(cfg.init.std, math.sqrt(2 / (4 + 8)), rel_tol=1e-5)
    assert preset(["experiment=init_comparison", "experiment/init_comparison=large_sigma"]).init.std == 1.0
    after = preset(["experiment=bn_placement", "experiment/bn_placement=bn_after"]).norm
    assert (after.name, after.position) == ("batch", "post")
    sgd = preset(["experiment=width_vs_depth", "experiment/width_vs_depth=sgd"])
    assert (sgd.optimizer.name, sgd.lr, sgd.batch_size, sgd.data.name) == ("sgd", 0.025, 1, "diag_flip")
    adam = preset(["experiment=width_vs_depth", "experiment/width_vs_depth=adam"])
    assert (adam.optimizer.name, adam.lr, adam.batch_size) == ("adam", 0.01, None)
    # without -m a preset is one job of its grid: the one set outside hydra.sweeper.params
    single = preset(["experiment=vanishing_gradients"])
    assert (list(single.model.widths), single.act.name) == ([8] * 8, "sigmoid")
    single = preset(["experiment=bn_placement"])
    assert (single.act.name, single.norm.name, single.norm.position, single.depth) == ("tanh", "batch", "post", 50)
    rezero = preset(["experiment=very_deep"])  # the default arm
    assert (rezero.model.name, rezero.model.residual_scale, rezero.norm.name, rezero.depth) == \
        ("resnet", "rezero", "none", 1000)


# --- the shrunk sweeps, in the background ---------------------------------------------------------

SWEEPS = {  # name -> the command line after `deeprun -m`
    "vanishing_gradients": ["experiment=vanishing_gradients", "epochs=30", "model.widths=[8,8,8,8,8,8,8,8]"],
    "width_vs_depth": ["experiment=width_vs_depth", "epochs=40", "model.widths=[2],[16]",
                       "experiment/width_vs_depth=sgd"],
    "init_comparison": ["experiment=init_comparison", "epochs=30",
                        "experiment/init_comparison=small_sigma,large_sigma,he"],
    "bn_placement": ["experiment=bn_placement", "act=tanh", "experiment/bn_placement=bn_after,bn_before",
                     "depth=30", "width=32", "epochs=8", "seed=0,1,2"],
    "plain_vs_residual": ["experiment=plain_vs_residual", "depth=50", "width=32", "epochs=15", "seed=0,1"],
    "very_deep": ["experiment=very_deep", "width=8", "epochs=10", "experiment/very_deep=plain,rezero"],
    "cnn_vs_resnet_cnn": ["experiment=cnn_vs_resnet_cnn", "depth=24", "width=8", "data.n=480", "epochs=6",
                          "seed=0,1"],
    "criticality": ["experiment=criticality", "depth=40", "width=64", "lr=0.01", "epochs=8",
                    "init.sigma_w2=0.5,1.76,6.0"],
}


def _run(name: str, d: Path) -> pd.DataFrame:
    proc = run_cli("-m", *SWEEPS[name], "hydra.sweep.dir=sweep", cwd=d, env=ENV, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = pd.read_csv(d / "sweep" / "results.csv")
    assert (results.status == "completed").all(), results[["status", "error"]]
    return results


for _name in SWEEPS:  # a background fixture per preset, {name}_results: the shrunk sweep's results.csv
    globals()[f"{_name}_results"] = background(lambda d, _name=_name: _run(_name, d), name=f"{_name}_results",
                                               result=True)


def by(results: pd.DataFrame, column: str, value) -> pd.DataFrame:
    return results[results[column] == value].set_index("seed").sort_index()


def test_vanishing_gradients_deep_sigmoid_first_layer_gets_no_gradient(vanishing_gradients_results):
    """The deep-MLP notebook: model D with sigmoid: ~6e-6 at the first layer, orders of magnitude below D with ReLU,
    and 4 to 5 decades below its own last hidden layer; on every seed."""
    results = vanishing_gradients_results
    sigmoid, relu = by(results, "act", "sigmoid"), by(results, "act", "relu")
    assert list(sigmoid.index) == list(relu.index) == [0, 1, 2]
    assert (sigmoid.grad_norm_first < 1e-4).all(), sigmoid.grad_norm_first
    assert (relu.grad_norm_first > 100 * sigmoid.grad_norm_first).all(), results[["act", "seed", "grad_norm_first"]]
    assert (sigmoid.grad_ratio < 1e-3).all() and (relu.grad_ratio > 0.1).all(), results[["act", "seed", "grad_ratio"]]


def test_width_vs_depth_width_16_ends_far_below_width_2(width_vs_depth_results):
    """The diagonal flip: 4->16->4 learns it, 4->2->4 cannot (too few ReLU regions); every seed."""
    results = width_vs_depth_results
    narrow, wide = by(results, "model.widths", "[2]"), by(results, "model.widths", "[16]")
    assert list(narrow.index) == list(wide.index) == [0, 1, 2]
    assert (wide.final_train_loss < narrow.final_train_loss / 3).all(), \
        results[["model.widths", "seed", "final_train_loss"]]
    assert (narrow.final_train_loss > 0.1).all()  # width 2 plateaus (the notebook: 0.065 of 0.5*MSE, MSE 0.13)


def test_init_comparison_large_sigma_starts_worst_small_sigma_ends_worst(init_comparison_results):
    """The init comparison on the diagonal flip: N(0, 1) starts far above the others (loss@1), N(0, 0.01^2)
    ends above He."""
    results = init_comparison_results
    small, large = by(results, "init.std", 0.01), by(results, "init.std", 1.0)
    he = by(results, "init", "kaiming_normal")
    assert len(small) == len(large) == len(he) == 3
    assert (large["loss@1"] > 2 * small["loss@1"]).all() and (large["loss@1"] > 2 * he["loss@1"]).all(), \
        results[["init", "init.std", "seed", "loss@1"]]
    assert (he.final_train_loss < 0.7 * small.final_train_loss).all(), \
        results[["init", "init.std", "seed", "final_train_loss"]]


def test_bn_placement_bn_before_tanh_trains_bn_after_does_not(bn_placement_results):
    """The residual-network notebook: a deep tanh MLP with BatchNorm after the activation stays at chance;
    before it, it learns."""
    results = bn_placement_results
    after, before = by(results, "norm_position", "post"), by(results, "norm_position", "pre")
    assert list(after.index) == list(before.index) == [0, 1, 2]
    assert (after.final_train_loss > math.log(2) - 0.01).all(), after.final_train_loss  # no better than chance
    assert (before.final_train_loss < after.final_train_loss - 0.03).all(), \
        results[["norm_position", "seed", "final_train_loss"]]
    assert (before.final_val_loss < after.final_val_loss).all()


def test_plain_vs_residual_deep_plain_mlp_stalls_residual_trains(plain_vs_residual_results):
    """The deep-MLP and residual-network notebooks: at depth 50 the plain MLP (same BN, act and init) stays at chance with exploding
    first-layer gradients; the residual MLP's training loss falls."""
    results = plain_vs_residual_results
    plain, residual = by(results, "model", "mlp"), by(results, "model", "resnet")
    assert list(plain.index) == list(residual.index) == [0, 1]
    assert (plain.final_train_loss > math.log(2) - 0.01).all(), plain.final_train_loss
    assert (residual.final_train_loss < plain.final_train_loss - 0.05).all(), \
        results[["model", "seed", "final_train_loss"]]
    assert (plain.grad_norm_first > 50 * residual.grad_norm_first).all()


def test_very_deep_rezero_trains_at_depth_1000_where_the_plain_mlp_cannot(very_deep_results):
    """1000 layers: the plain ReLU MLP's loss does not fall below the variance of y (its first layer
    gets no gradient at all); the ReZero residual MLP's does, well below."""
    results = very_deep_results
    plain, rezero = by(results, "model", "mlp").iloc[0], by(results, "model", "resnet").iloc[0]
    assert plain.depth == rezero.depth == 1000
    assert plain.final_train_loss > 2.0 and plain.grad_norm_first < 1e-6, plain
    assert rezero.final_train_loss < 0.5 * plain.final_train_loss, results[["model", "final_train_loss"]]


def test_cnn_vs_resnet_cnn_deep_conv_resnet_trains_far_better(cnn_vs_resnet_cnn_results):
    """The CNN and residual-network notebooks: at 24 conv layers the plain CNN's training loss stays high (chance: ln 8 = 2.08); the
    conv ResNet of 24 blocks gets it far lower in the same epochs; every seed."""
    results = cnn_vs_resnet_cnn_results
    plain, residual = by(results, "model", "cnn"), by(results, "model", "resnet_cnn")
    assert list(plain.index) == list(residual.index) == [0, 1]
    assert (residual.final_train_loss < plain.final_train_loss - 0.3).all(), \
        results[["model", "seed", "final_train_loss"]]


def test_criticality_only_the_edge_trains_at_depth_40(criticality_results):
    """Schoenholz et al. 2017: depth 40 is beyond 6 xi_c on both sides of the edge at sigma_w2 = 0.5 (7 layers)
    and 6 (33 layers), and there the net stays at chance (0.1 on 10 digits); at the critical sigma_w2 it trains."""
    results = criticality_results.set_index("init.sigma_w2").sort_index()
    assert list(results.index) == [0.5, 1.76, 6.0]
    assert results.val_accuracy[1.76] > 0.6, results[["val_accuracy", "final_train_loss"]]
    assert results.val_accuracy[0.5] < 0.3 and results.val_accuracy[6.0] < 0.3, results.val_accuracy
    assert results.final_train_loss[1.76] < 0.5 * min(results.final_train_loss[0.5], results.final_train_loss[6.0])
