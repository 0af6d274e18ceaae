"""deeprun-diagnose: the per-layer numbers at initialisation against autograd, the verdict's rules, the
records, the CLI (one run, a sweep, bad input) and a training run's verdict@init."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

import deeprun
from conftest import background, compose, run_cli
from deeprun import diagnosis as dg
from deeprun.probes import Probes

MODEL_D = ["model.widths=[8,8,8,8,8,8,8,8]", "init=uniform", "init.a=0.5", "data.val_fraction=0"]
QUICK = ["log.progress=false", "diagnose.draws=2"]


def cpu(*overrides: str):
    return compose(["device=cpu", *QUICK, *overrides])


def built(*overrides: str):
    cfg = cpu(*overrides)
    data = deeprun.build_data(cfg, "cpu")
    return cfg, data, deeprun.build_model(cfg, data)


def test_gradient_and_signal_profile_equal_autograd(one_thread):
    """The oracle: each layer's gradient norm is autograd's on the same weights and rows; the
    pre-activation and activation numbers are those of the layer's own output, walked by hand."""
    cfg, data, model = built(*MODEL_D, "act=sigmoid")
    x, y = data.x_train[:256], data.y_train[:256]
    layers, blocks = dg.measure(model, Probes(model, x), x, y, data.task)
    weights = [m.weight for m in deeprun.models.weight_layers(model).values()]
    grads = torch.autograd.grad(torch.nn.functional.mse_loss(model(x), y), weights)
    assert [r["grad_norm"] for r in layers] == pytest.approx([g.norm().item() for g in grads], rel=1e-5)
    h = x
    for i, layer in enumerate(list(deeprun.models.weight_layers(model).values())[:-1]):
        pre = layer(h)
        h = torch.sigmoid(pre)
        assert layers[i]["pre_mean"] == pytest.approx(pre.mean().item(), rel=1e-5, abs=1e-7)
        assert layers[i]["pre_std"] == pytest.approx(pre.std().item(), rel=1e-5)
        assert layers[i]["act_std"] == pytest.approx(h.std().item(), rel=1e-4)
    assert math.isnan(layers[-1]["pre_mean"])  # the head: no activation follows it
    assert blocks == []
    # the deep-MLP notebook's finding, at initialisation: sigmoid's gradient shrinks layer by layer towards the input
    assert layers[0]["grad_norm"] < 1e-3 * layers[-2]["grad_norm"]


def test_model_d_sigmoid_vanishes_and_relu_he_is_healthy(one_thread):
    d = dg.diagnose(cpu(*MODEL_D, "act=sigmoid"))
    row = d.row
    assert row["verdict@init"] == "vanishing" and row["status"] == "completed"
    assert row["grad_ratio@init"] < dg.VANISHING and 0 < row["grad_decay@init"] < 1
    assert "10^-" in row["evidence"] and "act=relu" in row["fixes"]
    assert row["mean_field"] == "applicable" and row["chi_1"] < 1 and row["phase"] == "ordered"
    assert row["sigma_w2"] == pytest.approx(8 * 0.25 / 3)  # U(-a, a): fan_in a^2 / 3
    assert len(d.layers) == 9 and {"grad_norm", "grad_norm_std", "pre_std", "act_std_std"} <= set(d.layers.columns)
    assert row["draws"] == 2 and row["rows"] == 128  # diagnose.rows of the 400
    healthy = dg.diagnose(cpu("depth=10", "width=64", "act=relu")).row
    assert healthy["verdict@init"] == "healthy", healthy["evidence"]
    assert healthy["chi_1"] == pytest.approx(1.0, rel=1e-6)  # He init: sigma_w2 = 2, chi_1 = sigma_w2 / 2


def test_draws_are_independent_and_draw_zero_is_the_trained_net(one_thread):
    cfg, data, model = built("depth=3", "width=16", "act=tanh")
    d = dg.diagnose(cfg.copy())
    assert (d.layers["grad_norm_std"] > 0).all()  # the draws differ
    solo = deeprun.run(compose(["device=cpu", "depth=3", "width=16", "act=tanh", "epochs=1",
                                "log.progress=false", f"batch_size={cfg.diagnose.rows}"]))
    at_init = solo.layers[solo.layers.epoch == 0]
    one = dg.diagnose(cpu("depth=3", "width=16", "act=tanh", "diagnose.draws=1"))
    assert one.layers["grad_norm"].to_numpy() == pytest.approx(at_init["grad_norm"].to_numpy(), rel=1e-5)


def test_residual_net_has_brock_numbers_and_no_mean_field(one_thread):
    d = dg.diagnose(cpu("model=resnet", "depth=6", "width=16", "norm=none", "act=relu"))
    assert list(d.blocks["block"]) == list(range(6))
    assert {"avg_sq_mean", "avg_var", "branch_var", "avg_var_std"} <= set(d.blocks.columns)
    assert (d.blocks["avg_var"] > 0).all()
    # without a norm each block adds its branch's variance to the skip's: the signal grows with depth
    assert d.blocks["avg_var"].iloc[-1] > d.blocks["avg_var"].iloc[0]
    assert d.row["mean_field"] == "not applicable: residual blocks"


@pytest.mark.parametrize("row,theory,expected,act", [
    ({"grad_ratio@init": 0.5, "signal_growth@init": 1.0, "dead_frac_max@init": 0.0}, {}, "healthy", "tanh"),
    ({"grad_ratio@init": 1e-4, "grad_decay@init": 0.3, "signal_growth@init": 1.0}, {}, "vanishing", "tanh"),
    ({"grad_ratio@init": 0.5, "signal_growth@init": 1e-6}, {}, "vanishing", "tanh"),
    ({"grad_ratio@init": 1e3, "signal_growth@init": 1.0}, {}, "exploding", "tanh"),
    ({"grad_ratio@init": 1.0, "signal_growth@init": 1e6}, {}, "exploding", "tanh"),
    ({"grad_ratio@init": 1e-4, "dead_frac_max@init": 0.75, "dead_layer@init": 3}, {}, "dead units", "relu"),
    # never positive is not dead where the activation still has a slope below zero: the other rules judge
    ({"grad_ratio@init": 1e-4, "dead_frac_max@init": 0.75, "dead_layer@init": 3}, {}, "vanishing", "leaky_relu"),
    ({"grad_ratio@init": 0.5, "dead_frac_max@init": 0.75, "dead_layer@init": 3}, {}, "healthy", "selu"),
    ({"grad_ratio@init": 1e-4, "saturated_frac_max@init": 0.9, "saturated_layer@init": 1}, {}, "saturated", "tanh"),
    ({"grad_ratio@init": 0.5}, {"mean_field": "applicable", "chi_1": 0.9, "trainable_depth": 20.0,
                               "phase": "ordered", "critical_sigma_w2": 1.76}, "ordered", "tanh"),
    ({"grad_ratio@init": 2.0}, {"mean_field": "applicable", "chi_1": 1.2, "trainable_depth": 30.0,
                               "phase": "chaotic", "critical_sigma_w2": 1.76}, "chaotic", "tanh"),
    ({"grad_ratio@init": 0.5}, {"mean_field": "applicable", "chi_1": 0.99, "trainable_depth": 600.0,
                               "phase": "ordered", "critical_sigma_w2": 1.76}, "healthy", "tanh"),
])
def test_verdict_rules(row, theory, expected, act):
    v = dg.judge(row, theory, depth=50, act=act)
    assert v.name == expected
    assert v.name in dg.VERDICTS and v.evidence
    if expected in ("ordered", "chaotic"):
        assert "1.76" in v.fixes and "mean-field" in v.evidence
    if expected == "dead units":
        assert "75% of layer 3's units" in v.evidence


def test_draw_0s_dead_units_count_only_where_the_mean_is_healthy_and_the_activation_dies():
    healthy = {"grad_ratio@init": 0.5, "signal_growth@init": 1.0, "dead_frac_max@init": 0.2, "draws": 8}
    draw0 = {"grad_ratio@init": 0.25, "grad_decay@init": 0.5, "dead_frac_max@init": 0.5, "dead_layer@init": 2}
    v = dg.judge(healthy, {}, depth=4, act="relu", draw0=draw0)
    assert v.name == "dead units" and v.fixes == dg.FIXES["dead units"]
    assert v.evidence.startswith("on draw 0, the net this seed trains: 50% of layer 2's units never fire")
    assert "10^-0.6 of the last hidden layer's (x0.5 per layer)" in v.evidence  # draw 0's own gradient
    assert v.evidence.endswith("(the mean over the 8 draws is healthy)")
    assert dg.judge(healthy, {}, depth=4, act="relu").name == "healthy"  # one draw: no second reading
    assert dg.judge(healthy, {}, depth=4, act="leaky_relu", draw0=draw0).name == "healthy"  # it still has a slope
    vanishing = healthy | {"grad_ratio@init": 1e-4}  # a trouble of the mean comes first
    assert dg.judge(vanishing, {}, depth=4, act="relu", draw0=draw0).name == "vanishing"


def test_fixes_leave_out_what_the_config_already_has():
    post = deeprun.compose(["depth=100", "act=tanh", "norm=batch", "norm.position=post"])  # seed 000's net
    assert dg.untried(dg.FIXES["exploding"], post) == \
        "norm=batch norm.position=pre, model=resnet model.residual_scale=rezero, grad_clip=1"  # init=auto is its own
    pre = deeprun.compose(["norm=batch", "norm.position=pre", "grad_clip=1", "init=kaiming_normal"])
    assert dg.untried(dg.FIXES["exploding"], pre) == \
        "init=auto (a smaller weight variance), model=resnet model.residual_scale=rezero"
    relu = deeprun.compose(["act=relu", "init=auto"])  # both settings of "act=relu with init=auto" are there
    assert dg.untried(dg.FIXES["vanishing"], relu) == "norm=batch norm.position=pre, model=resnet"
    critical = deeprun.compose(["init=mean_field"])  # a fix in words stays, whatever settings it names
    ordered = dg.FIXES["ordered"].format(critical="1.76", depth=20)
    assert dg.untried(ordered, critical) == ordered
    assert dg.untried("", critical) == ""


def test_a_layer_narrower_than_the_targets_is_a_bottleneck(one_thread):
    """The diagonal flip's targets span 4 dimensions: through 2 hidden units no training fits them, through 4 it can."""
    narrow = dg.diagnose(cpu("data=diag_flip", "model.widths=[2]", "init=kaiming_normal")).row
    assert (narrow["narrowest"], narrow["target_rank"]) == (2, 4)
    assert narrow["verdict@init"] == "bottleneck" and "2 units, fewer than the 4 dimensions" in narrow["evidence"]
    assert "at least 4 wide" in narrow["fixes"]
    wide = dg.diagnose(cpu("data=diag_flip", "model.widths=[8]", "init=kaiming_normal")).row
    assert (wide["narrowest"], wide["target_rank"], wide["verdict@init"]) == (8, 4, "healthy")
    classes = dg.diagnose(cpu("data=classification", "depth=2", "width=2")).row
    assert classes["target_rank"] is None and classes["verdict@init"] != "bottleneck"  # logits need no full rank
    cfg, data, model = built("model=cnn", "data=images", "depth=2", "width=4")
    assert dg.narrowest(model) is None and dg.target_rank(data) is None


def test_dead_units_on_the_draw_a_seed_trains_are_dead_units(one_thread):
    """In a 4-4 ReLU net the draw decides: seed 1's own weights leave half of layer 0 dead on the 16 images,
    which the mean over 8 draws (22%) hides; seed 0's own draw has fewer, and stays healthy."""
    flip = ("data=diag_flip", "model.widths=[4,4]", "act=relu", "init=kaiming_normal", "diagnose.draws=8")
    doomed = dg.diagnose(cpu(*flip, "seed=1")).row
    assert doomed["verdict@init"] == "dead units"
    assert doomed["dead_frac_max@init"] < dg.DEAD  # the mean over draws alone would say healthy
    assert doomed["evidence"].startswith("on draw 0, the net this seed trains: 50% of layer 0's units never fire")
    assert "(the mean over the 8 draws is healthy)" in doomed["evidence"]
    assert dg.diagnose(cpu(*flip, "seed=0")).row["verdict@init"] == "healthy"
    one = dg.diagnose(cpu(*flip, "seed=1", "diagnose.draws=1")).row  # one draw: the main rule judges it
    assert one["verdict@init"] == "dead units" and not one["evidence"].startswith("on draw 0")


def test_an_overflowing_net_is_exploding(one_thread):
    """A plain skip without norm doubles its variance each block: 200 blocks overflow float32."""
    row = dg.diagnose(cpu("model=resnet", "depth=200", "width=4", "norm=none", "diagnose.draws=1")).row
    assert row["verdict@init"] == "exploding" and "overflows float32" in row["evidence"]


def test_records_and_results_row(tmp_path, one_thread):
    out = tmp_path / "run"
    dg.diagnose(cpu(*MODEL_D, "act=sigmoid"), out_dir=out)
    row = json.loads((out / "diagnosis.json").read_text())
    assert row["verdict@init"] == "vanishing" and row["config_key"]
    layers = pd.read_csv(out / deeprun.records.DIAGNOSIS_LAYERS)
    assert list(layers["name"][:2]) == ["fc0", "fc1"] and len(layers) == 9
    assert len(pd.read_csv(out / deeprun.records.DIAGNOSIS_JACOBIAN)) > 0
    frame = deeprun.records.results_frame([tmp_path])
    assert len(frame) == 1 and frame["verdict@init"].iloc[0] == "vanishing"


def test_training_summary_has_the_verdict_at_init(one_thread):
    summary = deeprun.run(compose(["device=cpu", *MODEL_D, "act=sigmoid", "epochs=2",
                                   "log.progress=false"])).summary
    assert summary["verdict@init"] == "vanishing"


def test_pivot_of_a_verdict(tmp_path):
    from deeprun.report import pivot_frame, pivot_stats

    frame = pd.DataFrame({"depth": [2, 2, 50, 50, 50], "act": ["relu", "tanh", "relu", "tanh", "tanh"],
                          "seed": [0, 0, 0, 0, 1], "status": "completed",
                          "verdict@init": ["healthy", "healthy", "healthy", "vanishing", "vanishing"]})
    stats = pivot_stats(frame, "depth", "act", "verdict@init")
    table = pivot_frame(stats, "depth", "act")
    assert list(table["act=tanh"]) == ["healthy", "vanishing"]


@background
def diagnose_bad_input(d):
    """`deeprun-diagnose diagnose.draws=0` as a user's shell runs it: the console script."""
    return run_cli("diagnose.draws=0", cwd=d, env={"COLUMNS": "200"}, program="deeprun-diagnose")


@pytest.mark.slow
def test_cli_one_run_a_sweep_and_bad_input(tmp_path, main, monkeypatch, one_thread, diagnose_bad_input):
    monkeypatch.setenv("COLUMNS", "200")
    one = main(*MODEL_D, "act=sigmoid", program="deeprun-diagnose")
    assert one.code == 0, one.err
    assert "vanishing" in one.out and "Try:" in one.out and "records:" in one.out
    runs = list((tmp_path / "outputs").rglob("diagnosis.json"))
    assert len(runs) == 1 and (runs[0].parent / ".hydra" / "config.yaml").exists()
    sweep = main("-m", "act=tanh,relu", "depth=2,20", "width=16", "hydra.sweep.dir=sw", program="deeprun-diagnose")
    assert sweep.code == 0, sweep.err
    results = pd.read_csv(tmp_path / "sw" / "results.csv")
    assert len(results) == 4 and set(results["verdict@init"]) <= set(dg.VERDICTS)
    assert "verdict@init" in sweep.out
    from deeprun.report import main as report

    report([str(tmp_path / "sw"), "--pivot", "depth", "act", "verdict@init", "--plot", str(tmp_path / "plots")])
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"diagnosis.png", "pivot_verdict@init_by_depth_and_act.png"}
    assert all(p.stat().st_size > 10_000 for p in (tmp_path / "plots").iterdir())
    bad = diagnose_bad_input.result
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "diagnose.draws" in bad.stderr and ">= 1" in bad.stderr


def test_a_training_run_too_narrow_for_its_targets_is_a_bottleneck_at_init(tmp_path, one_thread):
    """verdict@init of `deeprun` has the bottleneck rule too: width 2 on the diagonal flip's 4 pixels."""
    flip = ["data=diag_flip", "init=kaiming_normal", "epochs=2", "log.progress=false", "device=cpu"]
    narrow = deeprun.run(compose([*flip, "model.widths=[2]"]), tmp_path / "narrow").summary
    wide = deeprun.run(compose([*flip, "model.widths=[16]"]), tmp_path / "wide").summary
    assert (narrow["verdict@init"], wide["verdict@init"]) == ("bottleneck", "healthy")
    assert json.loads((tmp_path / "narrow" / "summary.json").read_text())["verdict@init"] == "bottleneck"


@pytest.mark.slow  # Hydra's help page composes the config and lists every group's options
def test_diagnose_help_is_its_own_page_with_deeprun_groups(monkeypatch, capsys):
    from deeprun import cli

    monkeypatch.setattr("sys.argv", ["deeprun-diagnose", "--help"])
    with pytest.raises(SystemExit) as exit:
        cli.diagnose_main()
    out = capsys.readouterr().out
    assert exit.value.code == 0
    assert out.startswith("deeprun-diagnose: say at initialisation whether a network will train")
    assert "\nact: elu, gelu" in out and "diagnosis.json" in out and "train a network and record" not in out
