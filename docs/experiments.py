#!/usr/bin/env python3
"""Regenerate docs/experiments.md: run every seed preset, report it with deeprun-report, set it beside the seed.

    make experiments                                  # all presets (about 7 minutes on 2 CPU cores)
    .venv/bin/python docs/experiments.py --only width_vs_depth --only init_comparison
    .venv/bin/python docs/experiments.py --render     # rewrite the page from the sweeps already there

For each preset NAME this runs `deeprun -m experiment=NAME hydra.sweep.dir=outputs/experiments/NAME` (a fresh
directory: a re-run starts over), then `deeprun-report` on it for the tables (`--out *.md`) and the plots
(`--plot`, copied to docs/img/NAME/), and writes docs/experiments.md from those, the sweep's results.csv and
the seeds' own numbers, which are kept below as data. Every claim on the page is checked against this run's
numbers, so the page says when a claim does not hold.

Torch-free: deeprun runs in its own processes; this script reads their records with pandas.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's console scripts: deeprun, deeprun-report
OUT = ROOT / "outputs" / "experiments"
IMG = ROOT / "docs" / "img"
PAGE = ROOT / "docs" / "experiments.md"
MAX_PNG = 200_000  # bytes: PNGs are checked in


# --- what each preset reports ------------------------------------------------------------------------

@dataclass
class Report:
    """One deeprun-report call: its arguments, the markdown table it writes, the PNGs kept (name -> new name)."""
    args: list[str]
    caption: str
    plots: dict[str, str] = field(default_factory=dict)
    folded: bool = False  # a long per-run table: shown folded (<details>); the plots stay outside
    show_table: bool = True


@dataclass
class Check:
    """A claim, and a function of the results that says whether it holds and shows the numbers."""
    claim: str
    test: Callable[[pd.DataFrame], tuple[bool, str]]


@dataclass
class Preset:
    name: str
    title: str
    seeds: str
    question: str                 # what the seed did and found
    reports: list[Report]
    checks: list[Check]
    comparison: Callable[[pd.DataFrame], str]  # the seed's numbers beside deeprun's, as markdown
    notes: str                    # agreement and differences, in words
    seed_numbers: bool = True     # False: the seed reports none; the comparison table is deeprun's alone


def num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2g}" if abs(x) < 1e-3 and x != 0 else f"{x:.4g}"


def seeds_of(frame: pd.DataFrame, column: str) -> str:
    """The column's values over the seeds, in seed order: `0.069 / 0.16 / 2.1`."""
    return " / ".join(num(v) for v in col(frame.sort_values("seed"), column))


def mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return "-"
    return num(values.mean()) + ("" if len(values) < 2 else f" ± {num(values.std())}")


def col(frame: pd.DataFrame, name: str) -> pd.Series:
    """frame[name], or NaNs where the runs lack that column (a loss@ epoch past the end, say)."""
    return frame[name] if name in frame else pd.Series(math.nan, index=frame.index)


def rows(frame: pd.DataFrame, **where) -> pd.DataFrame:
    for key, value in where.items():
        column = frame[key.replace("__", ".")]
        frame = frame[column.isna()] if value is None else frame[column == value]
    return frame


def table(header: list[str], body: list[list[str]]) -> str:
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, body)])


# --- seed 001: vanishing gradients -------------------------------------------------------------------

D = "[8, 8, 8, 8, 8, 8, 8, 8]"
MODELS_001 = {"A": "[4]", "B": "[6, 6]", "C": "[8, 8, 8, 8]", "D": D}
SEED_001 = {  # (model, act): loss@200, final loss, grad norm first layer, grad norm last hidden layer
    ("A", "relu"): (0.4938, 0.1115, 0.045217, 0.045217),
    ("B", "relu"): (0.3220, 0.0728, 0.036609, 0.021441),
    ("C", "relu"): (0.8620, 0.0304, 0.023876, 0.016801),
    ("D", "relu"): (1.6349, 0.0528, 0.429784, 0.621290),
    ("D", "sigmoid"): (1.7439, 1.7439, 0.000006, 0.000006),
}


def compare_001(r: pd.DataFrame) -> str:
    body = []
    for (model, act), seed in SEED_001.items():
        run = rows(r, model__widths=MODELS_001[model], act=act)
        body.append([f"{model} {act}", f"{seed[0]:.4g}", seeds_of(run, "loss@200"), f"{seed[1]:.4g}",
                     seeds_of(run, "final_train_loss"), f"{seed[2]:.2g}", seeds_of(run, "grad_norm_first"),
                     f"{seed[3]:.2g}", seeds_of(run, "grad_norm_last")])
    return table(["model", "loss@200 seed", "deeprun (seeds 0/1/2)", "final seed", "deeprun",
                  "grad first seed", "deeprun", "grad last seed", "deeprun"], body)


def check_001_sigmoid(r):
    d = rows(r, model__widths=D, act="sigmoid")
    return bool((d.grad_norm_first < 1e-4).all()), f"grad_norm_first {seeds_of(d, 'grad_norm_first')} (seed: 6e-6)"


def check_001_flat(r):
    d = rows(r, model__widths=D, act="sigmoid")
    moved = (d["loss@200"] - d.final_train_loss).abs() / d["loss@200"]
    return bool((moved < 0.01).all()), (f"loss@200 {seeds_of(d, 'loss@200')}, final {seeds_of(d, 'final_train_loss')}"
                                        " (seed: 1.744 and 1.744)")


def check_001_relu_d(r):
    d = rows(r, model__widths=D, act="relu")
    trained = int((d.final_train_loss < 0.25).sum())
    return trained >= 2, f"{trained} of {len(d)} seeds end below 0.25: final {seeds_of(d, 'final_train_loss')}"


def check_001_ratio(r):
    s, d = rows(r, model__widths=D, act="sigmoid"), rows(r, model__widths=D, act="relu")
    ratio = d.sort_values("seed").grad_norm_first.to_numpy() / s.sort_values("seed").grad_norm_first.to_numpy()
    return bool((ratio > 100).all()), "ReLU / sigmoid first-layer gradient: " + " / ".join(f"{x:.0f}x" for x in ratio)


def check_001_shallow(r):
    ok = [rows(r, model__widths=MODELS_001[m], act="relu") for m in "ABC"]
    return all((m.final_train_loss < 0.25).all() for m in ok), "final " + "; ".join(
        f"{m} {seeds_of(x, 'final_train_loss')}" for m, x in zip("ABC", ok))


# --- seed 004: width vs depth, init ------------------------------------------------------------------

SEED_004_WIDTH = {"[2]": (0.3863, 0.0935, 0.065020), "[8]": (0.4278, None, 0.024271), "[16]": (0.2583, None, 0.000498)}
ARCHS = {"[2]": "4→2→4", "[8]": "4→8→4", "[16]": "4→16→4", "[4, 4]": "4→4→4→4", "[8, 8]": "4→8→8→4"}


def compare_width(r: pd.DataFrame) -> str:
    body = []
    for widths, arch in ARCHS.items():
        sgd, adam = rows(r, model__widths=widths, optimizer="sgd"), rows(r, model__widths=widths, optimizer="adam")
        seed = SEED_004_WIDTH.get(widths, (None, None, None))
        x2 = lambda v: "-" if v is None else f"{v:.4g} ({2 * v:.4g})"  # noqa: E731
        body.append([arch, x2(seed[0]), mean_std(col(sgd, "loss@1")), x2(seed[1]), mean_std(col(sgd, "loss@51")),
                     x2(seed[2]), mean_std(sgd.final_train_loss), mean_std(adam.final_train_loss)])
    return table(["net", "epoch 0 seed (x2)", "loss@1 deeprun", "epoch 50 seed (x2)", "loss@51 deeprun",
                  "final seed (x2)", "final deeprun, SGD", "final deeprun, Adam"], body) + (
        "\n\nThe seed's numbers are 0.5·MSE; in brackets, twice that, the MSE deeprun reports. deeprun: mean ± std "
        "over seeds 0, 1, 2. The seed printed only the 1-hidden-layer nets; its PyTorch (Adam) listing printed no "
        "numbers.")


def _final(r, widths, optimizer="sgd"):
    return rows(r, model__widths=widths, optimizer=optimizer).final_train_loss


def check_width_2(r):
    w2, w8, w16 = (_final(r, w) for w in ("[2]", "[8]", "[16]"))
    return bool(w2.min() > max(w8.max(), w16.max())), (f"SGD final: width 2 {mean_std(w2)}, width 8 {mean_std(w8)}, "
                                                       f"width 16 {mean_std(w16)}")


def check_width_16(r):
    w8, w16 = _final(r, "[8]"), _final(r, "[16]")
    return bool(w16.mean() < 0.5 * w8.mean()), f"SGD final: width 8 {mean_std(w8)}, width 16 {mean_std(w16)}"


def check_width_16_early(r):
    w8, w16 = (col(rows(r, model__widths=w, optimizer="sgd"), "loss@51") for w in ("[8]", "[16]"))
    return bool(w16.mean() < w8.mean()), f"SGD loss@51: width 8 {mean_std(w8)}, width 16 {mean_std(w16)}"


def check_depth(r):
    one, two = _final(r, "[8]"), _final(r, "[8, 8]")
    return bool(two.mean() > one.mean()), f"SGD final: 4→8→4 {mean_std(one)}, 4→8→8→4 {mean_std(two)}"


def check_depth_narrow(r):
    wide, deep = _final(r, "[8]"), _final(r, "[4, 4]")
    return bool(deep.mean() > wide.mean()), f"SGD final: 4→8→4 {mean_std(wide)}, 4→4→4→4 {mean_std(deep)}"


SEED_004_INIT = {  # arm: name in the seed, epoch 0 loss, epoch 99 loss (0.5*MSE)
    "small_sigma": ("Small random (σ=0.01)", 0.2302, 0.0984),
    "large_sigma": ("Large random (σ=1.0)", 1.3312, 0.0658),
    "xavier_gain1": ("Xavier √(2/(n_in+n_out))", 0.3532, 0.0305),
    "xavier": ("(deeprun's xavier_normal, ReLU gain √2)", None, None),
    "he": ("He (Kaiming) √(2/n_in)", 0.5485, 0.0244),
}


def init_arm(r: pd.DataFrame, arm: str) -> pd.DataFrame:
    std = {"small_sigma": 0.01, "large_sigma": 1.0, "xavier_gain1": 0.408248}
    if arm in std:
        return r[(r.init == "normal") & ((r["init.std"] - std[arm]).abs() < 1e-6)]
    return rows(r, init={"xavier": "xavier_normal", "he": "kaiming_normal"}[arm])


def compare_init(r: pd.DataFrame) -> str:
    body = []
    for arm, (label, start, end) in SEED_004_INIT.items():
        run = init_arm(r, arm)
        x2 = lambda v: "-" if v is None else f"{v:.4g} ({2 * v:.4g})"  # noqa: E731
        body.append([f"`{arm}`", label, x2(start), mean_std(col(run, "loss@1")), x2(end),
                     mean_std(col(run, "loss@100"))])
    return table(["arm", "the seed's init", "epoch 0 seed (x2)", "loss@1 deeprun", "epoch 99 seed (x2)",
                  "loss@100 deeprun"], body) + (
        "\n\nThe seed's losses are 0.5·MSE; in brackets, twice that, the MSE deeprun reports. deeprun: mean ± std "
        "over seeds 0, 1, 2.")


def check_init_large(r):
    large = init_arm(r, "large_sigma")["loss@1"]
    others = r[~r.index.isin(large.index)]["loss@1"]
    return bool(large.min() > others.max()), (f"loss@1: large σ {mean_std(large)}, the others at most "
                                               f"{num(others.max())}")


def check_init_small(r):
    small = init_arm(r, "small_sigma")["loss@100"]
    others = {a: init_arm(r, a)["loss@100"].mean() for a in ("xavier_gain1", "xavier", "he")}
    return bool(small.mean() > max(others.values())), (f"loss@100: small σ {mean_std(small)}; "
                                                       + ", ".join(f"{a} {num(v)}" for a, v in others.items()))


def check_init_he(r):
    means = {a: init_arm(r, a)["loss@100"].mean() for a in SEED_004_INIT}
    best = min(means, key=means.get)
    return best == "he", "loss@100 means: " + ", ".join(f"{a} {num(v)}" for a, v in means.items())


# --- seed 000: BN placement, plain vs residual, very deep ---------------------------------------------

ARMS_000 = {"bn_after": ("batch", "post"), "bn_before": ("batch", "pre"), "no_norm": ("none", "pre")}


def bn_arm(r, act, arm):
    norm, position = ARMS_000[arm]
    return rows(r, act=act, norm=norm, norm_position=position)


def compare_bn(r: pd.DataFrame) -> str:
    body = []
    for act in ("tanh", "leaky_relu", "elu", "selu"):
        for arm in ARMS_000:
            run = bn_arm(r, act, arm)
            body.append([act, f"`{arm}`", run.init.iloc[0], mean_std(run.final_train_loss),
                         mean_std(run.best_val_loss), mean_std(run.val_accuracy), mean_std(run.grad_norm_first)])
    return table(["act", "arm", "init", "final_train_loss", "best_val_loss", "val_accuracy", "grad_norm_first"],
                 body) + "\n\nmean ± std over seeds 0, 1. Chance: loss ln 2 = 0.693, accuracy 0.5."


def check_bn_tanh(r):
    after, before = bn_arm(r, "tanh", "bn_after"), bn_arm(r, "tanh", "bn_before")
    return bool(after.final_train_loss.min() > before.final_train_loss.max()
                and after.final_train_loss.min() > math.log(2) - 0.02), (
        f"tanh final_train_loss: BN after {mean_std(after.final_train_loss)}, BN before "
        f"{mean_std(before.final_train_loss)}; val accuracy {mean_std(after.val_accuracy)} vs "
        f"{mean_std(before.val_accuracy)}")


def check_bn_alternatives(*acts):
    def check(r):
        parts, ok = [], True
        for act in acts:
            run = bn_arm(r, act, "no_norm")
            ok &= bool(run.final_train_loss.mean() < math.log(2) - 0.1)
            parts.append(f"{act} {mean_std(run.final_train_loss)}")
        return ok, "final_train_loss without norm: " + ", ".join(parts)
    return check


def check_bn_selu(r):
    selu, tanh = bn_arm(r, "selu", "no_norm"), bn_arm(r, "tanh", "bn_before")
    return bool(selu.best_val_loss.mean() <= tanh.best_val_loss.mean()), (
        f"best_val_loss: SELU without norm {mean_std(selu.best_val_loss)}, tanh with BN before "
        f"{mean_std(tanh.best_val_loss)}")


def compare_residual(r: pd.DataFrame) -> str:
    body = []
    for depth in sorted(r.depth.unique()):
        plain, res = rows(r, model="mlp", depth=depth), rows(r, model="resnet", depth=depth)
        body.append([str(depth), num(plain.final_train_loss.mean()), num(res.final_train_loss.mean()),
                     num(plain.val_accuracy.mean()), num(res.val_accuracy.mean()),
                     num(plain.grad_norm_first.mean()), num(res.grad_norm_first.mean())])
    return table(["depth", "final_train_loss plain", "residual", "val_accuracy plain", "residual",
                  "grad_norm_first plain", "residual"], body) + (
        "\n\nSeed 000 gives no numbers: its user reports that the 100-layer net is stuck where a 10-layer one "
        "reaches nearly 100% training precision. Chance: loss ln 2 = 0.693, accuracy 0.5.")


def check_residual_deep(r):
    plain, res = rows(r, model="mlp", depth=100), rows(r, model="resnet", depth=100)
    p, q = plain.final_train_loss.mean(), res.final_train_loss.mean()
    return bool(p > math.log(2) - 0.02 and q < p - 0.2), (f"depth 100 final_train_loss: plain {num(p)}, "
                                                           f"residual {num(q)}")


def check_residual_shallow(r):
    plain = rows(r, model="mlp", depth=10)
    loss = plain.final_train_loss.mean()
    return bool(loss < 0.3), f"depth 10 plain final_train_loss {num(loss)}"


def compare_cnn(r: pd.DataFrame) -> str:
    body = []
    for depth in sorted(r.depth.unique()):
        plain, res = rows(r, model="cnn", depth=depth), rows(r, model="resnet_cnn", depth=depth)
        body.append([str(depth), num(plain.final_train_loss.mean()), num(res.final_train_loss.mean()),
                     num(plain.val_accuracy.mean()), num(res.val_accuracy.mean())])
    return table(["depth", "final_train_loss cnn", "resnet_cnn", "val_accuracy cnn", "resnet_cnn"], body) + (
        "\n\nSeeds 002 and 003 give no training numbers (003 prints the log-softmax of one untrained forward "
        "pass). Chance: loss ln 8 = 2.08, accuracy 0.125.")


def check_cnn_degrades(r):
    plain = rows(r, model="cnn").set_index("depth").final_train_loss
    return bool(plain[plain.index.max()] > plain.min() + 0.3), "cnn final_train_loss by depth: " + ", ".join(
        f"{d}: {num(v)}" for d, v in plain.sort_index().items())


def check_cnn_resnet(r):
    plain = rows(r, model="cnn").set_index("depth").final_train_loss
    res = rows(r, model="resnet_cnn").set_index("depth").final_train_loss
    deepest = plain.index.max()
    return bool(res[deepest] < plain[deepest] - 0.3), (f"depth {deepest}: cnn {num(plain[deepest])}, resnet_cnn "
                                                       f"{num(res[deepest])}")


def compare_very_deep(r: pd.DataFrame) -> str:
    body = []
    for arm, scale in {"plain": None, "skip": "1", "rezero": "rezero"}.items():
        x = r[r.model == "mlp"].iloc[0] if scale is None else _arm(r, scale)
        body.append([f"`{arm}`", x.status, "-" if pd.isna(x.get("diverged_epoch")) else str(int(x.diverged_epoch)),
                     num(x.get("loss@10")), num(x.final_train_loss), num(x.val_r2), num(x.grad_norm_first),
                     num(x.seconds)])
    return table(["arm", "status", "diverged at epoch", "loss@10", "final_train_loss", "val_r2", "grad_norm_first",
                  "seconds"], body) + "\n\nThe variance of y (the loss of a constant prediction) is about 2.1."


def _arm(r, scale):
    return r[(r.model == "resnet") & (r["model.residual_scale"].astype(str) == scale)].iloc[0]


def check_vd_plain(r):
    plain = r[r.model == "mlp"].iloc[0]
    return bool(plain.final_train_loss > 1.9), (f"plain: final_train_loss {num(plain.final_train_loss)}, "
                                                f"grad_norm_first {num(plain.grad_norm_first)}")


def check_vd_rezero(r):
    plain, rezero = r[r.model == "mlp"].iloc[0], _arm(r, "rezero")
    return bool(rezero.final_train_loss < 0.25 * plain.final_train_loss), (
        f"rezero: final_train_loss {num(rezero.final_train_loss)}, val_r2 {num(rezero.val_r2)}")


def check_vd_skip(r):
    skip = _arm(r, "1")
    return skip.status == "diverged" or not skip.final_train_loss < 1.0, f"skip: {skip.status}"


# --- the presets, in the page's order ----------------------------------------------------------------

PRESETS = [
    Preset(
        "vanishing_gradients", "Vanishing gradients in deep sigmoid nets", "001",
        "A NumPy MLP on y = sin(x0) + 0.5 x1² - 0.8 x2 (400 points), models A [3,4,1], B [3,6,6,1], "
        "C [3,8,8,8,8,1] and D [3,8×8,1], weights U(-0.5, 0.5), zero biases, full-batch SGD lr 0.01, MSE, "
        "1000 epochs. Its finding: model D with sigmoid never moves its loss and its first layer gets a "
        "gradient of 6e-6, while the ReLU nets, D included, train.",
        [Report(["--pivot", "depth", "act", "final_train_loss"],
                "final_train_loss by depth (hidden layers: A 1, B 2, C 4, D 8) and activation, mean ± std over "
                "seeds 0, 1, 2",
                {"pivot_final_train_loss_by_depth_and_act.png": "final_train_loss.png", "loss.png": "loss.png",
                 "grad_norm.png": "grad_norm.png"}),
         Report(["--pivot", "depth", "act", "grad_norm_first"],
                "grad_norm_first (the first layer's gradient norm at the last epoch) by depth and activation",
                {"pivot_grad_norm_first_by_depth_and_act.png": "grad_norm_first.png"}),
         Report(["--columns", "model.widths,act,seed,loss@200,final_train_loss,grad_norm_first,grad_norm_last,"
                 "grad_ratio,dead_frac_max,saturated_frac_max", "--sort", "depth,act,seed"],
                "every run", folded=True)],
        [Check("D with sigmoid: the first layer's gradient is about 1e-5 or less, as the seed's 6e-6",
               check_001_sigmoid),
         Check("D with sigmoid: the loss never moves after epoch 200", check_001_flat),
         Check("D's first-layer gradient with ReLU is orders of magnitude (>100x) above sigmoid's, every seed",
               check_001_ratio),
         Check("A, B and C with ReLU train (final loss below 0.25, every seed)", check_001_shallow),
         Check("D with ReLU trains (final loss below 0.25) on most seeds", check_001_relu_d)],
        compare_001,
        "The shape agrees. Deep sigmoid D stalls at the variance of y on every seed with a first-layer gradient "
        "of a few 1e-6, the order of the seed's 6e-6; it is the only net whose first layer is 4 to 5 decades "
        "below the ReLU nets'. The ReLU nets A, B and C train on every seed, to losses near the seed's. "
        "Deep narrow ReLU D is the one result that hangs on the draw: the seed's D trained slowly (1.63 at epoch "
        "200, 0.053 at the end); deeprun's D trains on some seeds and dies on others (its units go dead: "
        "`dead_frac_max`), and its loss@200 is still near the variance where the seed's had started to fall. "
        "Digits differ because the data and weights come from another RNG (the seed's NumPy `seed(42)`, "
        "deeprun's torch seeds 0, 1, 2 and `data.seed=0`); the seed's D sigmoid loss (1.744) is the variance of "
        "its own sample of y, deeprun's (2.07) that of its sample."),
    Preset(
        "width_vs_depth", "Width vs depth on the diagonal flip", "004",
        "The 16 binary 2×2 images mapped to their transpose. 4→w→4 ReLU nets with He init trained by per-sample "
        "SGD (lr 0.05 on 0.5·MSE) for 200 epochs: width 2 stays at 0.065, width 8 reaches 0.024, width 16 "
        "0.0005. The seed's text adds that the 2-hidden-layer nets (4→4→4→4, 4→8→8→4) converge slower than "
        "one hidden layer on this task, and its PyTorch listing trains all five with full-batch Adam lr 0.01.",
        [Report(["--pivot", "model.widths", "optimizer", "final_train_loss"],
                "final_train_loss by hidden widths and optimizer (sgd: the seed's per-sample SGD; adam: its "
                "PyTorch listing), mean ± std over seeds 0, 1, 2",
                {"pivot_final_train_loss_by_model.widths_and_optimizer.png": "final_train_loss.png"}),
         Report(["--filter", "optimizer=sgd"], "per-sample SGD, the seed's NumPy listing: the loss curves",
                {"loss.png": "loss_sgd.png"}, show_table=False),
         Report(["--filter", "optimizer=adam"], "full-batch Adam, the seed's PyTorch listing: the loss curves",
                {"loss.png": "loss_adam.png"}, show_table=False),
         Report(["--columns", "model.widths,optimizer,lr,batch_size,seed,params,loss@1,loss@51,final_train_loss,"
                 "grad_norm_first,dead_frac_max", "--sort", "optimizer,depth,model.widths,seed"],
                "every run", folded=True)],
        [Check("width 2 ends highest of the three widths (every seed)", check_width_2),
         Check("width 16 ends far below width 8 (half or less)", check_width_16),
         Check("width 16 gets there faster: below width 8 at the seed's epoch 50", check_width_16_early),
         Check("a second hidden layer converges slower: 4→8→8→4 ends above 4→8→4", check_depth),
         Check("4→4→4→4 ends above 4→8→4", check_depth_narrow)],
        compare_width,
        "The shape agrees where the seed is firm: width 2 cannot learn the flip (about 0.2 MSE on every seed, the "
        "seed's 0.13) while widths 8 and 16 nearly can, width 16 fastest (ahead of width 8 at the seed's epoch 50), "
        "and the 2-hidden-layer nets end above the 1-hidden-layer one of width 8. One difference: by epoch 200 "
        "deeprun's width 8 has caught up with width 16, where the seed's width 8 stalled at 0.024 (0.049 MSE), "
        "50x above its width 16. The seed ran one draw (`np.random.seed(42)`, the images in a fixed order); "
        "deeprun reshuffles the images every epoch and runs three torch seeds, so its width 8 is the typical "
        "case rather than that draw. deeprun's lr is 0.025 because its loss is MSE: the same steps as the "
        "seed's lr 0.05 on 0.5·MSE."),
    Preset(
        "init_comparison", "Initialisation on the diagonal flip", "004",
        "The same task with 4→8→4: the loss at epoch 0 and epoch 99 for N(0, 0.01²), N(0, 1), Xavier and He. "
        "Large σ starts worst (1.33), small σ ends worst (0.098), He ends best (0.024), Xavier close (0.031).",
        [Report(["--columns", "init,init.std,seed,loss@1,loss@100,grad_norm_first,dead_frac_max",
                 "--sort", "init,init.std,seed"], "every run",
                {"loss.png": "loss.png", "grad_norm.png": "grad_norm.png"}, folded=True)],
        [Check("large σ starts worst: its loss@1 is above every other init's, every seed", check_init_large),
         Check("small σ ends worst: its mean loss@100 is above Xavier's and He's", check_init_small),
         Check("He ends best: the lowest mean loss@100", check_init_he)],
        compare_init,
        "The order agrees: large σ starts far above the rest, as in the seed (its size is a random draw of "
        "a large-weight net), small σ starts at the loss of predicting zero (0.46, exactly the "
        "seed's 0.23 x 2) and ends worst, and He and Xavier end lowest. deeprun's `xavier` is Xavier with ReLU's "
        "gain √2 (σ 0.58 here, close to He's 0.71 and 0.5), so it lands next to He; the seed's own Xavier has "
        "no gain (σ = √(2/12) = 0.41), the `xavier_gain1` arm. Digits differ with the RNG (the seed's one NumPy "
        "draw, deeprun's three torch seeds)."),
    Preset(
        "bn_placement", "Where BatchNorm goes in a deep tanh MLP, and its alternatives", "000",
        "A 100-layer tanh MLP (width 1024, Xavier init, 20 inputs, one binary output) with BatchNorm after the "
        "activation (Linear → Tanh → Linear → BN) does not train, while a 10-layer one does. The seed's fixes: "
        "BatchNorm before the activation; LeakyReLU, ELU or SELU (SELU with LeCun-normal init and no "
        "BatchNorm); residual blocks (the next preset). It reports no numbers.",
        [Report(["--filter", "act=tanh", "--columns", "norm,norm_position,seed,loss@5,final_train_loss,best_val_loss,"
                 "val_accuracy,grad_norm_first,saturated_frac_max", "--sort", "norm,norm_position,seed"],
                "tanh only: the seed's three arms (the plots show these runs)",
                {"loss.png": "loss_tanh.png", "grad_norm.png": "grad_norm_tanh.png"}),
         Report(["--filter", "norm=batch", "--pivot", "act", "norm_position", "best_val_loss"],
                "best_val_loss with BatchNorm after (post) and before (pre) the activation, by activation, mean "
                "± std over seeds 0, 1",
                {"pivot_best_val_loss_by_act_and_norm_position.png": "best_val_loss_bn.png"}),
         Report(["--columns", "act,init,norm,norm_position,seed,loss@5,final_train_loss,best_val_loss,val_accuracy,"
                 "grad_norm_first,dead_frac_max,saturated_frac_max", "--sort", "act,norm,norm_position,seed"],
                "every run", folded=True)],
        [Check("tanh with BN after the activation stays at chance; BN before learns (every seed)", check_bn_tanh),
         Check("LeakyReLU and ELU without norm train (mean final loss well below ln 2)",
               check_bn_alternatives("leaky_relu", "elu")),
         Check("SELU with LeCun-normal init and no norm trains (mean final loss well below ln 2)",
               check_bn_alternatives("selu")),
         Check("SELU without norm generalises at least as well as tanh with BN before", check_bn_selu)],
        compare_bn,
        "The seed's main claim reproduces at half its depth: tanh with BatchNorm after the activation stays at "
        "chance on every seed, with exploding first-layer gradients, and moving BatchNorm before the activation "
        "makes the same net learn. LeakyReLU and ELU without norm train too, as the seed says. Two results the "
        "seed does not predict: BatchNorm (either place) does not rescue the deep LeakyReLU net here (its "
        "gradients explode at initialisation, a known effect of deep BatchNorm nets), and SELU without norm, "
        "the seed's \"best option\", learns slowest of the alternatives at this depth and budget. The seed gives "
        "no numbers, and its data are unknown; deeprun uses its own 20-feature binary set, 50 layers of 64 units.",
        seed_numbers=False),
    Preset(
        "plain_vs_residual", "Plain vs residual MLP with depth", "000, 003",
        "Seed 000: deep plain nets stop training; ResNetVanilla, blocks of Linear-BN-LeakyReLU-Linear-BN plus the "
        "identity, with Kaiming init, makes 100 blocks of width 1024 trainable. Seed 003: deeper plain nets "
        "degrade, identity shortcuts let a net go deeper without losing accuracy.",
        [Report(["--pivot", "depth", "model", "final_train_loss"], "final_train_loss by depth and model",
                {"pivot_final_train_loss_by_depth_and_model.png": "final_train_loss.png", "loss.png": "loss.png",
                 "grad_norm.png": "grad_norm.png"}),
         Report(["--columns", "model,depth,params,loss@5,final_train_loss,best_val_loss,val_accuracy,grad_norm_first,"
                 "grad_ratio,seconds", "--sort", "model,depth"], "every run", folded=True)],
        [Check("the 100-layer plain MLP stays at chance while the 100-block residual MLP's loss falls",
               check_residual_deep),
         Check("the 10-layer plain MLP trains", check_residual_shallow)],
        compare_residual,
        "Agrees: with the same BatchNorm, activation and init, the plain MLP trains at depth 10 and not at "
        "depth 50 or 100 (loss at chance, first-layer gradients exploding by orders of magnitude), and the "
        "residual MLP trains at every depth. Its validation loss is another matter: 800 training rows and "
        "hundreds of thousands of parameters overfit, which is the seed's point about always keeping a "
        "validation set. Width 64 instead of the seed's 1024 (`width=1024` on a GPU).",
        seed_numbers=False),
    Preset(
        "cnn_vs_resnet_cnn", "Plain CNN vs conv ResNet with depth", "002, 003",
        "Seed 002 builds CNNs of Conv-BN-ReLU blocks with global average pooling and recommends residual "
        "connections past about 10 layers; seed 003 builds a conv net of BN layers and a conv ResNet (identity "
        "shortcut added to the stacked layers) for 10-class images, on the argument that deeper plain nets "
        "degrade.",
        [Report(["--pivot", "depth", "model", "final_train_loss"], "final_train_loss by depth and model",
                {"pivot_final_train_loss_by_depth_and_model.png": "final_train_loss.png", "loss.png": "loss.png"}),
         Report(["--pivot", "depth", "model", "val_accuracy"], "val_accuracy by depth and model",
                {"pivot_val_accuracy_by_depth_and_model.png": "val_accuracy.png"}),
         Report(["--columns", "model,depth,params,loss@5,final_train_loss,final_val_loss,val_accuracy,"
                 "grad_norm_first,seconds", "--sort", "model,depth"], "every run", folded=True)],
        [Check("the plain CNN degrades with depth: the deepest ends above the best shallower one",
               check_cnn_degrades),
         Check("at the greatest depth the conv ResNet's training loss is far below the plain CNN's",
               check_cnn_resnet)],
        compare_cnn,
        "Agrees on training: the 48-layer plain CNN ends far above the shallower ones, and the conv ResNet of "
        "48 blocks, though it too ends above its shallower versions, stays far below the plain CNN. At 1000 "
        "small noisy images both deep nets overfit, so the validation columns favour the shallow nets; the "
        "seeds' claim is about optimisation, and they give no numbers.",
        seed_numbers=False),
    Preset(
        "very_deep", "1000 layers: plain vs residual with ReZero", "000",
        "Seed 000's question at depth 1000: the plain ReLU MLP, and residual MLPs whose blocks add their branch "
        "plainly (x + f(x)) or with ReZero (x + a·f(x), a learnable and 0 at the start), no normalisation.",
        [Report(["--sort", "model,model.residual_scale", "--columns", "model,model.residual_scale,status,"
                 "diverged_epoch,loss@10,final_train_loss,val_r2,grad_norm_first,grad_ratio,dead_frac_max,seconds"],
                "every run",
                {"loss.png": "loss.png", "grad_norm.png": "grad_norm.png"})],
        [Check("the plain 1000-layer ReLU MLP does not train (loss at the variance of y)", check_vd_plain),
         Check("the plain skip without norm does not train either (it diverges)", check_vd_skip),
         Check("ReZero trains at depth 1000 (final loss below a quarter of the plain net's)", check_vd_rezero)],
        compare_very_deep,
        "Through 1000 layers nearly all the plain net's ReLU units die (`dead_frac_max` near 1), no gradient "
        "reaches its first layer, and its loss stays at the variance of y. A plain skip without norm adds each block's variance "
        "to the next and overflows within the first epochs. ReZero starts as the stem and head alone and "
        "trains, with a validation R² (`val_r2`) near 1.",
        seed_numbers=False),
]


# --- running, reporting, writing -------------------------------------------------------------------

def run_sweep(p: Preset) -> float:
    """`deeprun -m experiment=NAME` into outputs/experiments/NAME (fresh); its wall time in seconds."""
    sweep = OUT / p.name
    if sweep.exists():
        shutil.rmtree(sweep)
    sweep.parent.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "deeprun"), "-m", f"experiment={p.name}", f"hydra.sweep.dir={sweep.relative_to(ROOT)}"]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: a job failed or missed an expectation; the page says which
        sys.exit(f"experiments: deeprun -m experiment={p.name} exited {proc.returncode}")
    (sweep / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def run_reports(p: Preset) -> list[tuple[Report, str, list[str]]]:
    """Each report's markdown table and the PNGs it kept (paths relative to docs/)."""
    sweep, work, img = OUT / p.name, OUT / p.name / "report", IMG / p.name
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(img, ignore_errors=True)
    img.mkdir(parents=True)
    done = []
    for i, r in enumerate(p.reports):
        md, plots = work / f"table_{i}.md", work / f"plots_{i}"
        args = [str(sweep), *r.args, "--out", str(md)] + (["--plot", str(plots)] if r.plots else [])
        proc = subprocess.run([str(BIN / "deeprun-report"), *args], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"})
        if proc.returncode != 0:
            sys.exit(f"experiments: deeprun-report {' '.join(args)}\n{proc.stderr}")
        kept = []
        for source, target in r.plots.items():
            shutil.copyfile(plots / source, img / target)
            size = (img / target).stat().st_size
            if size > MAX_PNG:
                print(f"experiments: warning: {img / target} is {size // 1000} kB (over {MAX_PNG // 1000} kB)")
            kept.append(f"img/{p.name}/{target}")
        done.append((r, md.read_text(), kept))
    return done


def section(n: int, p: Preset) -> str:
    sweep = OUT / p.name
    results = pd.read_csv(sweep / "results.csv")
    wall = float((sweep / "wall_seconds.txt").read_text()) if (sweep / "wall_seconds.txt").exists() else math.nan
    statuses = ", ".join(f"{k} {v}" for k, v in results.status.value_counts().items())
    out = [f"## {n}. {p.title} (seed {p.seeds})", "", f"**The seed.** {p.question}", "",
           "```", f"deeprun -m experiment={p.name}", "```", "",
           f"{len(results)} jobs ({statuses}) in {wall / 60:.1f} minutes, "
           f"{results.seconds.sum() / 60:.1f} of them training. The grid and the settings are in "
           f"[`conf/experiment/{p.name}.yaml`](../conf/experiment/{p.name}.yaml).", "",
           "**The seed's numbers beside deeprun's**" if p.seed_numbers
           else "**deeprun's numbers** (the seed gives none)",
           "", p.comparison(results), "",
           "**The claims, checked on this run**", ""]
    for c in p.checks:
        ok, detail = c.test(results)
        out.append(f"- {'✓ holds' if ok else '✗ does not hold'}: {c.claim}. {detail}.")
    out += ["", f"**Agreement.** {p.notes}", "", "**deeprun-report**", ""]
    for r, md, pngs in run_reports(p):
        command = f"deeprun-report outputs/experiments/{p.name} {' '.join(r.args)}"
        images = [f"![{p.name}: {Path(png).stem}]({png})" for png in pngs]
        body = [f"`{command}`", ""] + ([md.strip(), ""] if r.show_table else [])
        if r.folded:
            out += [f"<details><summary>{r.caption}</summary>", "", *body, "</details>", "", *images, ""]
        else:
            out += [f"*{r.caption}*", "", *body, *images, ""]
    return "\n".join(out)


HEADER = """# The seed experiments, reproduced

Generated by `make experiments` ([`docs/experiments.py`](experiments.py)); do not edit by hand. Each
notebook in the seeds is a preset, `conf/experiment/NAME.yaml`, that runs with one command:

```
deeprun -m experiment=NAME                  # the preset's sweep, into outputs/sweeps/<stamp>
deeprun -m experiment=NAME seed=0 epochs=50 hydra.sweep.dir=mine    # your overrides come after it
deeprun-report outputs/sweeps/<stamp> --pivot depth act final_train_loss --plot plots/
```

Each section runs one preset into `outputs/experiments/NAME`, reports it with `deeprun-report` (the
tables below are its `--out` markdown, the plots its `--plot` PNGs) and sets the seed's own numbers beside
deeprun's. The seeds drew their data and weights from other random streams (NumPy's `seed(42)`, one
draw), so compare shape and order, not digits; where one draw could decide a result, the presets run
several seeds. Every claim below is checked on this run's numbers and marked ✓ or ✗.

{toc}

Machine: {machine}. Wall times are for the basic launcher (one job after another) on a machine
shared with other work, so they vary; add `hydra/launcher=joblib` to use every core.
"""


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    probe = "import torch; print(torch.__version__, torch.cuda.is_available())"
    try:
        version, gpu = subprocess.run([str(BIN / "python"), "-c", probe], capture_output=True, text=True,
                                      check=True).stdout.split()
    except (OSError, ValueError, subprocess.CalledProcessError):
        version, gpu = "?", "False"
    return f"{cores} CPU cores{', a GPU' if gpu == 'True' else ', no GPU'}, torch {version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=[p.name for p in PRESETS],
                        help="run only this preset (repeat for several); the page keeps the others' last results")
    parser.add_argument("--render", action="store_true", help="do not run the sweeps; rewrite the page from "
                        "outputs/experiments/")
    args = parser.parse_args()
    for p in PRESETS:
        if not args.render and (args.only is None or p.name in args.only):
            run_sweep(p)
    missing = [p.name for p in PRESETS if not (OUT / p.name / "results.csv").is_file()]
    if missing:
        sys.exit(f"experiments: no results for {', '.join(missing)} under {OUT}; run them: "
                 + " ".join(f"--only {m}" for m in missing))
    toc = "\n".join(f"{n}. [{p.title}](#{n}-{anchor(p)}) (seed {p.seeds}): `experiment={p.name}`"
                    for n, p in enumerate(PRESETS, 1))
    page = HEADER.format(toc=toc, machine=machine()) + "\n" + "\n\n".join(
        section(n, p) for n, p in enumerate(PRESETS, 1)) + "\n"
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)} and {IMG.relative_to(ROOT)}/")


def anchor(p: Preset) -> str:
    """GitHub's anchor of the section heading `n. title (seed s)`, without the number."""
    text = f"{p.title} (seed {p.seeds})".lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


if __name__ == "__main__":
    main()
