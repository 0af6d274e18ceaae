#!/usr/bin/env python3
"""Regenerate docs/experiments.md: run every seed preset, report it with deeprun-report, set it beside the notebook.

    make experiments                                  # all presets and their diagnoses (about 10 minutes on 2 CPU cores)
    .venv/bin/python docs/experiments.py --only width_vs_depth --only init_comparison
    .venv/bin/python docs/experiments.py --render     # rewrite the page from the sweeps already there

For each preset NAME this runs `deeprun -m experiment=NAME hydra.sweep.dir=outputs/experiments/NAME` (a fresh
directory: a re-run starts over) and `deeprun-diagnose -m experiment=NAME` on the same grid into
outputs/experiments/NAME-diagnosis (every job at initialisation, nothing trained), then `deeprun-report` on the
training sweep for the tables (`--out *.md`) and the plots (`--plot`, copied to docs/img/NAME/), and writes
docs/experiments.md from those, the sweeps' results.csv and the notebooks' own numbers, which are kept below as
data. Every claim on the page is checked against this run's numbers, so the page says when a claim does not
hold; the last section sets each job's verdict at initialisation against what its training did.

Torch-free: deeprun runs in its own processes; this script reads their records with pandas (and draws the
criticality heat map with matplotlib and deeprun.meanfield, which is numpy only).
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
from typing import Callable, Optional

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's console scripts: deeprun, deeprun-report
OUT = ROOT / "outputs" / "experiments"
IMG = ROOT / "docs" / "img"
PAGE = ROOT / "docs" / "experiments.md"
MAX_PNG = 200_000  # bytes: PNGs are checked in
DIAGNOSIS = "-diagnosis"  # outputs/experiments/NAME-diagnosis: deeprun-diagnose on the same grid


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
    question: str                 # what the notebook did and found
    reports: list[Report]
    checks: list[Check]
    comparison: Callable[[pd.DataFrame], str]  # the notebook's numbers beside deeprun's, as markdown
    notes: str                    # agreement and differences, in words
    seed_numbers: bool = True     # False: the notebook reports none; the comparison table is deeprun's alone
    # what "trains" means for a job of this preset, for the diagnosis section: (per job True/False, the rule in words)
    trains: Optional[Callable[[pd.DataFrame], tuple[pd.Series, str]]] = None
    paper: str = ""               # a paper's preset, not a seed's: its heading names the paper
    extra: Optional[Callable[[pd.DataFrame], str]] = None  # more markdown after the claims (a heat map)

    @property
    def heading(self) -> str:
        """The section's heading: the title, and the paper where the preset is one's."""
        return f"{self.title} ({self.paper})" if self.paper else self.title


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


# --- the vanishing-gradient experiment -------------------------------------------------------------------

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
    return table(["model", "loss@200 notebook", "deeprun (seeds 0/1/2)", "final notebook", "deeprun",
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


# --- the diagonal-flip experiments: width vs depth, init ------------------------------------------------------------------

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
    return table(["net", "epoch 0 notebook (x2)", "loss@1 deeprun", "epoch 50 notebook (x2)", "loss@51 deeprun",
                  "final notebook (x2)", "final deeprun, SGD", "final deeprun, Adam"], body) + (
        "\n\nThe seed's numbers are 0.5·MSE; in brackets, twice that, the MSE deeprun reports. deeprun: mean ± std "
        "over seeds 0, 1, 2. The notebook printed only the 1-hidden-layer nets; its PyTorch (Adam) listing printed no "
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


SEED_004_INIT = {  # arm: name in the notebook, epoch 0 loss, epoch 99 loss (0.5*MSE)
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
    return table(["arm", "the notebook's init", "epoch 0 notebook (x2)", "loss@1 deeprun", "epoch 99 notebook (x2)",
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


# --- the deep tanh MLP experiments: BN placement, plain vs residual, very deep ---------------------------------------------

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
        "\n\nThe residual-network notebook gives no numbers: its user reports that the 100-layer net is stuck where a 10-layer one "
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


# --- what "trains" means, per preset: the outcome the diagnosis at initialisation is set against -------

def target_variance(name: str) -> float:
    """The mean squared error of predicting each target column's training mean (Var(y) for one target): the
    loss a net that learns nothing but the mean ends at. Read from the preset's own data by deeprun, in a
    process of its own (this script stays torch-free); cached in the sweep's directory."""
    cache = OUT / name / "target_variance.txt"
    if not cache.is_file():
        code = ("import sys, deeprun; y = deeprun.build_data(deeprun.compose(sys.argv[1:]), 'cpu').y_train; "
                "print(float((y - y.mean(0)).square().mean()))")
        proc = subprocess.run([str(BIN / "python"), "-c", code, f"experiment={name}"], cwd=ROOT, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            sys.exit(f"experiments: the target variance of {name}: {proc.stderr}")
        cache.write_text(proc.stdout)
    return float(cache.read_text())


def completed(r: pd.DataFrame) -> pd.Series:
    return r.status == "completed"  # a diverged or failed job did not train


def trains_when(limit: float, why: str, column: str = "final_train_loss", above: bool = False):
    def trains(r):
        if above:
            return completed(r) & (col(r, column) >= limit), f"`{column}` ≥ {num(limit)}: {why}"
        return completed(r) & (col(r, column) < limit), f"`{column}` < {num(limit)}: {why}"
    return trains


def trains_vg(r):
    v = target_variance("vanishing_gradients")
    return trains_when(0.25, f"the page's own \"train\" for models A-D (Var(y) = {num(v)})")(r)


def trains_flip(name: str, why: str):
    def trains(r):
        v = target_variance(name)
        return trains_when(0.5 * v, f"half the variance of the targets ({num(v)}, the MSE of predicting each "
                                    f"pixel's mean): {why}")(r)
    return trains


def trains_vd(r):
    v = target_variance("very_deep")
    return trains_when(0.25 * v, f"a quarter of Var(y) = {num(v)}, the plain net's plateau (\"does not "
                                  "train\"); a diverged job does not train")(r)


CHANCE_2, CHANCE_8 = math.log(2), math.log(8)

# --- Schoenholz et al. 2017: the order-to-chaos phase diagram ----------------------------------------

SIGMA_B2 = 0.05        # conf/experiment/criticality.yaml's init.sigma_b2
TRAINED_ACCURACY = 0.5  # a criticality job "trained": val_accuracy at least this, five times chance (10 classes)


def six_xi_c(sigma_w2: float) -> float:
    """Mean-field theory's trainable depth 6 xi_c of the preset's tanh nets (inf at the critical point)."""
    from deeprun import meanfield  # numpy only: no torch in this process

    return meanfield.analyse("tanh", float(sigma_w2), SIGMA_B2)["trainable_depth"]


def critical_sigma_w2() -> float:
    from deeprun import meanfield

    return meanfield.critical_sigma_w2("tanh", SIGMA_B2)


def crit_cells(r: pd.DataFrame) -> pd.DataFrame:
    """One row per (depth, sigma_w2): accuracy, loss, "trained", 6 xi_c and "depth <= 6 xi_c"."""
    cells = r[["depth", "init.sigma_w2", "status", "val_accuracy", "final_train_loss"]].rename(
        columns={"init.sigma_w2": "sigma_w2"}).sort_values(["depth", "sigma_w2"]).reset_index(drop=True)
    cells["trained"] = completed(cells) & (cells.val_accuracy >= TRAINED_ACCURACY)
    cells["six_xi_c"] = [six_xi_c(s) for s in cells.sigma_w2]
    cells["predicted"] = cells.depth <= cells.six_xi_c
    cells["agrees"] = cells.trained == cells.predicted
    return cells


def compare_crit(r: pd.DataFrame) -> str:
    cells = crit_cells(r)
    sigmas = sorted(cells.sigma_w2.unique())
    body = [["**6 ξ_c**", *[num(six_xi_c(s)) if math.isfinite(six_xi_c(s)) else "∞" for s in sigmas]]]
    for depth, row in cells.groupby("depth"):
        row = row.set_index("sigma_w2")
        body.append([str(depth), *[f"{row.val_accuracy[s]:.2f}" + ("" if row.agrees[s] else " ✗") for s in sigmas]])
    return table(["depth \\ σ_w²", *[num(s) for s in sigmas]], body) + (
        f"\n\nval_accuracy after training (chance 0.1); a cell trained when it is at least {TRAINED_ACCURACY}; ✗: "
        "trained and \"depth ≤ 6 ξ_c\" disagree. The first row is mean-field theory's 6 ξ_c at each σ_w² "
        f"(σ_b² = {SIGMA_B2}).")


def check_crit_agreement(r):
    cells = crit_cells(r)
    share = cells.agrees.mean()
    return bool(share >= 0.9), f"{cells.agrees.sum()} of {len(cells)} cells ({share:.0%})"


def check_crit_band(r):
    counts = crit_cells(r).groupby("depth").trained.sum()
    return bool((counts.diff().dropna() <= 0).all()), "trained σ_w² values per depth: " + ", ".join(
        f"{d}: {int(c)}" for d, c in counts.items())


def check_crit_edge(r):
    cells = crit_cells(r)
    edge = cells[(cells.sigma_w2 - critical_sigma_w2()).abs() == (cells.sigma_w2 - critical_sigma_w2()).abs().min()]
    return bool(edge.trained.all()), (f"σ_w² = {num(edge.sigma_w2.iloc[0])}: val_accuracy "
                                      + " / ".join(f"{a:.2f}" for a in edge.val_accuracy) + " at depths "
                                      + ", ".join(str(d) for d in edge.depth))


def check_crit_phases(r):
    cells = crit_cells(r)
    deepest = cells[cells.depth == cells.depth.max()]
    ends = deepest[deepest.sigma_w2.isin([deepest.sigma_w2.min(), deepest.sigma_w2.max()])]
    return bool(not ends.trained.any()), f"depth {deepest.depth.iloc[0]}: " + ", ".join(
        f"σ_w² = {num(s)} val_accuracy {a:.2f}" for s, a in zip(ends.sigma_w2, ends.val_accuracy))


def check_crit_diagnosis(r):
    diag = OUT / f"criticality{DIAGNOSIS}" / "results.csv"
    if not diag.is_file():
        return False, f"no diagnosis sweep (outputs/experiments/criticality{DIAGNOSIS})"
    d = pd.read_csv(diag)[["depth", "init.sigma_w2", "verdict@init"]].rename(columns={"init.sigma_w2": "sigma_w2"})
    cells = crit_cells(r).merge(d, on=["depth", "sigma_w2"])
    stuck = cells[~cells.trained]
    ordered = stuck[stuck.sigma_w2 < critical_sigma_w2()]
    chaotic = stuck[stuck.sigma_w2 > critical_sigma_w2()]
    ok = ordered["verdict@init"].isin(["vanishing", "ordered"]).all() and \
        chaotic["verdict@init"].isin(["exploding", "chaotic"]).all()
    count = lambda f: ", ".join(f"{k} {v}" for k, v in f["verdict@init"].value_counts().items()) or "none"  # noqa: E731
    return bool(ok), (f"the cells that do not train: ordered side ({len(ordered)}): {count(ordered)}; chaotic side "
                      f"({len(chaotic)}): {count(chaotic)}")


def plot_criticality(r: pd.DataFrame, path: Path) -> None:
    """The heat map of val_accuracy over (sigma_w2, depth), 6 xi_c over a fine sigma_w2 grid on it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cells = crit_cells(r)
    acc = cells.pivot(index="depth", columns="sigma_w2", values="val_accuracy")
    s, d = acc.columns.to_numpy(float), acc.index.to_numpy(float)

    def edges(v):  # cell borders half-way between grid values (the grids are not evenly spaced)
        mid = (v[1:] + v[:-1]) / 2
        return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    xs, ys = edges(s), edges(d)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    mesh = ax.pcolormesh(xs, ys, acc.to_numpy(), cmap="viridis", vmin=0, vmax=1, shading="flat")
    for c in cells.itertuples():
        i, j = list(d).index(c.depth), list(s).index(c.sigma_w2)
        ax.text(c.sigma_w2, c.depth, f"{c.val_accuracy:.2f}", ha="center", va="center", fontsize=7,
                color="black" if c.val_accuracy > 0.6 else "white")
        if not c.agrees:  # the cells where "trained" and "depth <= 6 xi_c" disagree
            ax.add_patch(Rectangle((xs[j], ys[i]), xs[j + 1] - xs[j], ys[i + 1] - ys[i], fill=False, ec="red", lw=2))
    fine = np.linspace(xs[0], xs[-1], 600)
    ax.plot(fine, [min(six_xi_c(x), 1e6) for x in fine], color="white", ls="--", lw=1.5,
            label="6 ξ_c (mean-field): trainable below")
    ax.axvline(critical_sigma_w2(), color="white", ls=":", lw=1, label=f"critical σ_w² = {critical_sigma_w2():.3f}")
    ax.set(xlim=(xs[0], xs[-1]), ylim=(ys[0], ys[-1]), xlabel="σ_w² (init=mean_field, σ_b² = 0.05)",
           ylabel="depth (hidden tanh layers)",
           title="val_accuracy after training (digits, chance 0.1); red: disagrees with 6 ξ_c")
    ax.legend(loc="upper right", fontsize=8, facecolor="grey", framealpha=0.6, labelcolor="white")
    fig.colorbar(mesh, ax=ax, label="val_accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    if path.stat().st_size > MAX_PNG:
        print(f"experiments: warning: {path} is {path.stat().st_size // 1000} kB (over {MAX_PNG // 1000} kB)")


def extra_crit(r: pd.DataFrame) -> str:
    """The heat map, the agreement in words and each cell where "trained" and "depth <= 6 xi_c" part."""
    png = IMG / "criticality" / "phase_diagram.png"
    plot_criticality(r, png)
    cells = crit_cells(r)
    loss_trained = completed(cells) & (cells.final_train_loss < 0.5 * math.log(10))
    loss_share = ((loss_trained == cells.predicted).mean())
    differ = cells[loss_trained != cells.trained]  # trained by one criterion, not by the other
    ratios = span(differ.depth / differ.six_xi_c, lambda v: f"{v:.2f}")
    out = [f"![criticality: val_accuracy over (σ_w², depth) with 6 ξ_c](img/criticality/phase_diagram.png)", "",
           f"**Agreement with 6 ξ_c.** A cell *trained* when its val_accuracy is at least {TRAINED_ACCURACY} (five "
           f"times chance); theory says it trains when depth ≤ 6 ξ_c. The two coincide on {cells.agrees.sum()} of "
           f"{len(cells)} cells ({cells.agrees.mean():.0%}). Judged by the training loss instead (final_train_loss "
           f"below half of chance, ½ ln 10), they coincide on {loss_share:.0%}; the two criteria part on "
           f"{len(differ)} cells, partly trained ones at depth / 6 ξ_c = {ratios}.", ""]
    apart = cells[~cells.agrees]
    diag = OUT / f"criticality{DIAGNOSIS}" / "results.csv"
    verdicts = pd.read_csv(diag) if diag.is_file() else pd.DataFrame()
    for c in apart.itertuples():
        said = ""
        if len(verdicts):
            v = verdicts[(verdicts.depth == c.depth) & ((verdicts["init.sigma_w2"] - c.sigma_w2).abs() < 1e-9)]
            if len(v):
                said = (f" `deeprun-diagnose` calls this net {v['verdict@init'].iloc[0]} (its first layer's gradient "
                        f"{num(v['grad_ratio@init'].iloc[0])}x the last hidden layer's)"
                        + (": the gradient rule sees what 6 ξ_c does not." if v["verdict@init"].iloc[0] != "healthy"
                           and not c.trained else "."))
        side = "chaotic" if c.sigma_w2 > critical_sigma_w2() else "ordered"
        ratio = c.depth / c.six_xi_c
        why = (f"A cell this close to the boundary is decided by the training budget: 6 ξ_c is the paper's fit to "
               f"long training, this preset trains {int(r.epochs.iloc[0])} epochs." if 0.8 <= ratio <= 1.25
               else "Not near the boundary: not explained by the budget.")
        out.append(f"- depth {c.depth}, σ_w² = {num(c.sigma_w2)} ({side} side): 6 ξ_c = {num(c.six_xi_c)}, so "
                   f"depth / 6 ξ_c = {ratio:.2f}; theory says it {'trains' if c.predicted else 'does not'}, "
                   f"and it ended at val_accuracy {c.val_accuracy:.2f}. {why}{said}")
    return "\n".join(out)

# --- the presets, in the page's order ----------------------------------------------------------------

PRESETS = [
    Preset(
        "vanishing_gradients", "Vanishing gradients in deep sigmoid nets",
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
        [Check("D with sigmoid: the first layer's gradient is about 1e-5 or less, as the notebook's 6e-6",
               check_001_sigmoid),
         Check("D with sigmoid: the loss never moves after epoch 200", check_001_flat),
         Check("D's first-layer gradient with ReLU is orders of magnitude (>100x) above sigmoid's, every seed",
               check_001_ratio),
         Check("A, B and C with ReLU train (final loss below 0.25, every seed)", check_001_shallow),
         Check("D with ReLU trains (final loss below 0.25) on most seeds", check_001_relu_d)],
        compare_001,
        "The shape agrees. Deep sigmoid D stalls at the variance of y on every seed with a first-layer gradient "
        "of a few 1e-6, the order of the notebook's 6e-6; it is the only net whose first layer is 4 to 5 decades "
        "below the ReLU nets'. The ReLU nets A, B and C train on every seed, to losses near the notebook's. "
        "Deep narrow ReLU D is the one result that hangs on the draw: the notebook's D trained slowly (1.63 at epoch "
        "200, 0.053 at the end); deeprun's D trains on some seeds and dies on others (its units go dead: "
        "`dead_frac_max`), and its loss@200 is still near the variance where the notebook's had started to fall. "
        "Digits differ because the data and weights come from another RNG (the notebook's NumPy `seed(42)`, "
        "deeprun's torch seeds 0, 1, 2 and `data.seed=0`); the notebook's D sigmoid loss (1.744) is the variance of "
        "its own sample of y, deeprun's (2.07) that of its sample.",
        trains=trains_vg),
    Preset(
        "width_vs_depth", "Width vs depth on the diagonal flip",
        "The 16 binary 2×2 images mapped to their transpose. 4→w→4 ReLU nets with He init trained by per-sample "
        "SGD (lr 0.05 on 0.5·MSE) for 200 epochs: width 2 stays at 0.065, width 8 reaches 0.024, width 16 "
        "0.0005. The notebook's text adds that the 2-hidden-layer nets (4→4→4→4, 4→8→8→4) converge slower than "
        "one hidden layer on this task, and its PyTorch listing trains all five with full-batch Adam lr 0.01.",
        [Report(["--pivot", "model.widths", "optimizer", "final_train_loss"],
                "final_train_loss by hidden widths and optimizer (sgd: the notebook's per-sample SGD; adam: its "
                "PyTorch listing), mean ± std over seeds 0, 1, 2",
                {"pivot_final_train_loss_by_model.widths_and_optimizer.png": "final_train_loss.png"}),
         Report(["--filter", "optimizer=sgd"], "per-sample SGD, the notebook's NumPy listing: the loss curves",
                {"loss.png": "loss_sgd.png"}, show_table=False),
         Report(["--filter", "optimizer=adam"], "full-batch Adam, the notebook's PyTorch listing: the loss curves",
                {"loss.png": "loss_adam.png"}, show_table=False),
         Report(["--columns", "model.widths,optimizer,lr,batch_size,seed,params,loss@1,loss@51,final_train_loss,"
                 "grad_norm_first,dead_frac_max", "--sort", "optimizer,depth,model.widths,seed"],
                "every run", folded=True)],
        [Check("width 2 ends highest of the three widths (every seed)", check_width_2),
         Check("width 16 ends far below width 8 (half or less)", check_width_16),
         Check("width 16 gets there faster: below width 8 at the notebook's epoch 50", check_width_16_early),
         Check("a second hidden layer converges slower: 4→8→8→4 ends above 4→8→4", check_depth),
         Check("4→4→4→4 ends above 4→8→4", check_depth_narrow)],
        compare_width,
        "The shape agrees where the notebook is firm: width 2 cannot learn the flip (about 0.2 MSE on every seed, the "
        "notebook's 0.13) while widths 8 and 16 nearly can, width 16 fastest (ahead of width 8 at the notebook's epoch 50), "
        "and the 2-hidden-layer nets end above the 1-hidden-layer one of width 8. One difference: by epoch 200 "
        "deeprun's width 8 has caught up with width 16, where the notebook's width 8 stalled at 0.024 (0.049 MSE), "
        "50x above its width 16. The notebook ran one draw (`np.random.seed(42)`, the images in a fixed order); "
        "deeprun reshuffles the images every epoch and runs three torch seeds, so its width 8 is the typical "
        "case rather than that draw. deeprun's lr is 0.025 because its loss is MSE: the same steps as the "
        "notebook's lr 0.05 on 0.5·MSE.",
        trains=trains_flip("width_vs_depth", "width 2's plateau is the page's \"cannot learn the flip\"")),
    Preset(
        "init_comparison", "Initialisation on the diagonal flip",
        "The same task with 4→8→4: the loss at epoch 0 and epoch 99 for N(0, 0.01²), N(0, 1), Xavier and He. "
        "Large σ starts worst (1.33), small σ ends worst (0.098), He ends best (0.024), Xavier close (0.031).",
        [Report(["--columns", "init,init.std,seed,loss@1,loss@100,grad_norm_first,dead_frac_max",
                 "--sort", "init,init.std,seed"], "every run",
                {"loss.png": "loss.png", "grad_norm.png": "grad_norm.png"}, folded=True)],
        [Check("large σ starts worst: its loss@1 is above every other init's, every seed", check_init_large),
         Check("small σ ends worst: its mean loss@100 is above Xavier's and He's", check_init_small),
         Check("He ends best: the lowest mean loss@100", check_init_he)],
        compare_init,
        "The order agrees: large σ starts far above the rest, as in the notebook (its size is a random draw of "
        "a large-weight net), small σ starts at the loss of predicting zero (0.46, exactly the "
        "notebook's 0.23 x 2) and ends worst, and He and Xavier end lowest. deeprun's `xavier` is Xavier with ReLU's "
        "gain √2 (σ 0.58 here, close to He's 0.71 and 0.5), so it lands next to He; the notebook's own Xavier has "
        "no gain (σ = √(2/12) = 0.41), the `xavier_gain1` arm. Digits differ with the RNG (the notebook's one NumPy "
        "draw, deeprun's three torch seeds).",
        trains=trains_flip("init_comparison", "as width_vs_depth (the same data and net)")),
    Preset(
        "bn_placement", "Where BatchNorm goes in a deep tanh MLP, and its alternatives",
        "A 100-layer tanh MLP (width 1024, Xavier init, 20 inputs, one binary output) with BatchNorm after the "
        "activation (Linear → Tanh → Linear → BN) does not train, while a 10-layer one does. The notebook's fixes: "
        "BatchNorm before the activation; LeakyReLU, ELU or SELU (SELU with LeCun-normal init and no "
        "BatchNorm); residual blocks (the next preset). It reports no numbers.",
        [Report(["--filter", "act=tanh", "--columns", "norm,norm_position,seed,loss@5,final_train_loss,best_val_loss,"
                 "val_accuracy,grad_norm_first,saturated_frac_max", "--sort", "norm,norm_position,seed"],
                "tanh only: the notebook's three arms (the plots show these runs)",
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
        "The notebook's main claim reproduces at half its depth: tanh with BatchNorm after the activation stays at "
        "chance on every seed, with exploding first-layer gradients, and moving BatchNorm before the activation "
        "makes the same net learn. LeakyReLU and ELU without norm train too, as the notebook says. Two results the "
        "notebook does not predict: BatchNorm (either place) does not rescue the deep LeakyReLU net here (its "
        "gradients explode at initialisation, a known effect of deep BatchNorm nets), and SELU without norm, "
        "the notebook's \"best option\", learns slowest of the alternatives at this depth and budget. The notebook gives "
        "no numbers, and its data are unknown; deeprun uses its own 20-feature binary set, 50 layers of 64 units.",
        seed_numbers=False,
        trains=trains_when(CHANCE_2 - 0.1, "well below chance (ln 2), the page's own \"train\" for this preset")),
    Preset(
        "plain_vs_residual", "Plain vs residual MLP with depth",
        "The deep-MLP notebook: deep plain nets stop training; ResNetVanilla, blocks of Linear-BN-LeakyReLU-Linear-BN plus the "
        "identity, with Kaiming init, makes 100 blocks of width 1024 trainable. The residual-network notebook: deeper plain nets "
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
        "hundreds of thousands of parameters overfit, which is the notebook's point about always keeping a "
        "validation set. Width 64 instead of the notebook's 1024 (`width=1024` on a GPU).",
        seed_numbers=False,
        trains=trains_when(CHANCE_2 - 0.1, "well below chance (ln 2), as bn_placement (the same data); the deep plain "
                                           "net \"stays at chance\"")),
    Preset(
        "cnn_vs_resnet_cnn", "Plain CNN vs conv ResNet with depth",
        "The CNN notebook builds CNNs of Conv-BN-ReLU blocks with global average pooling and recommends residual "
        "connections past about 10 layers; the residual-network notebook builds a conv net of BN layers and a conv ResNet (identity "
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
        "notebooks' claim is about optimisation, and they give no numbers.",
        seed_numbers=False,
        trains=trains_when(0.5 * CHANCE_8, "half of chance (ln 8): the deep plain CNN's plateau is the page's "
                                           "\"degrades\"")),
    Preset(
        "very_deep", "1000 layers: plain vs residual with ReZero",
        "The deep-MLP notebook's question at depth 1000: the plain ReLU MLP, and residual MLPs whose blocks add their branch "
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
        seed_numbers=False,
        trains=trains_vd),
    Preset(
        "criticality", "The order-to-chaos phase diagram of deep tanh nets",
        "Schoenholz, Gilmer, Ganguli & Sohl-Dickstein, \"Deep information propagation\" (ICLR 2017): in a random "
        "tanh MLP with weights N(0, σ_w²/fan_in) and biases N(0, σ_b²), the correlation of two inputs approaches "
        "its fixed point over ξ_c layers, and ξ_c diverges at the order-to-chaos edge (χ_1 = 1). Trained on MNIST "
        "and CIFAR-10 over a grid of σ_w² and depth, their nets train where the depth is below about 6 ξ_c and "
        "not beyond: a band around the critical σ_w² that narrows as the depth grows. Their backpropagation "
        "theory adds that the ordered phase is the one of vanishing gradients, the chaotic one of exploding "
        "gradients.",
        [Report(["--pivot", "depth", "init.sigma_w2", "final_train_loss"],
                "final_train_loss by depth and σ_w² (chance: ln 10 = 2.30)"),
         Report(["--columns", "depth,init.sigma_w2,status,final_train_loss,val_accuracy,grad_norm_first,grad_ratio,"
                 "saturated_frac_max,verdict@init,seconds", "--sort", "depth,init.sigma_w2"],
                "every run", folded=True)],
        [Check("\"trained\" (val_accuracy ≥ 0.5) and \"depth ≤ 6 ξ_c\" coincide on at least 90% of the cells",
               check_crit_agreement),
         Check("the trainable band narrows as the depth grows: no depth trains more σ_w² values than a shallower one",
               check_crit_band),
         Check("at the critical σ_w² every depth trains", check_crit_edge),
         Check("far from the edge, on either side, the deepest nets do not train", check_crit_phases),
         Check("the deep nets that do not train are vanishing or ordered on the ordered side, exploding or chaotic "
               "on the chaotic side (deeprun-diagnose)", check_crit_diagnosis)],
        compare_crit,
        "The phase diagram's shape reproduces on CPU-sized data: the band of σ_w² that trains is widest at "
        "depth 10 and closes in on the critical point as the nets deepen, and the mean-field curve 6 ξ_c, "
        "computed with no training at all, traces its edge on both sides. What differs from the paper: the "
        "data (scikit-learn's 8x8 digits, not MNIST) and the budget (a few epochs of plain SGD on a 256-unit "
        "net), so the cells next to the 6 ξ_c line, partly trained, are the ones a longer run could flip.",
        seed_numbers=False,
        paper="Schoenholz et al. 2017",
        extra=extra_crit,
        trains=trains_when(TRAINED_ACCURACY, "five times chance (10 classes), as the phase diagram above",
                            column="val_accuracy", above=True)),
]


# --- the diagnosis at initialisation against training -------------------------------------------------

DIAG_COLUMNS = ("verdict@init", "evidence", "grad_ratio@init", "signal_growth@init", "dead_frac_max@init", "chi_1",
                "trainable_depth", "status", "error")


def joined(p: Preset) -> tuple[pd.DataFrame, str]:
    """The training sweep's rows, each with the diagnosis of the same job (its `diag:` columns, matched by the
    job's overrides), and: `trains` (the preset's rule), `healthy` (the diagnosis's prediction: trains),
    `one_draw` (the training run's own verdict@init, on its one draw, says healthy) and `job` (the overrides
    without experiment=NAME). Also the rule, in words."""
    train = pd.read_csv(OUT / p.name / "results.csv")
    diag = pd.read_csv(OUT / f"{p.name}{DIAGNOSIS}" / "results.csv")
    diag = diag[["overrides", *[c for c in DIAG_COLUMNS if c in diag]]].rename(
        columns=lambda c: c if c == "overrides" else f"diag:{c}")
    j = train.merge(diag, on="overrides", how="left", validate="one_to_one")
    j["trains"], rule = p.trains(j)
    j["healthy"] = j["diag:verdict@init"] == "healthy"  # a failed diagnosis gives no verdict: not healthy
    j["one_draw"] = col(j, "verdict@init") == "healthy"
    j["job"] = [" ".join(o for o in str(x).split() if not o.startswith("experiment=")) for x in j.overrides]
    return j, rule


def jobs_label(g: pd.DataFrame) -> str:
    """The jobs of a group in one phrase: the overrides they share, then the ones that vary as key ∈ {...}."""
    parsed = [dict(o.split("=", 1) for o in job.split()) for job in g.job]
    keys = list(dict.fromkeys(k for d in parsed for k in d))
    same = [f"{k}={parsed[0][k]}" for k in keys if all(d.get(k) == parsed[0].get(k) for d in parsed)]
    vary = [f"{k} ∈ {{{', '.join(sorted({d.get(k, '-') for d in parsed}))}}}" for k in keys
            if not all(d.get(k) == parsed[0].get(k) for d in parsed)]
    return f"`{' '.join(same)}`" + (f" ({', '.join(vary)}; {len(g)} jobs)" if vary else "")


def span(values: pd.Series, form: Callable[[float], str] = lambda v: f"{v:.3g}") -> str:
    """The values' range, `lo-hi` (one value if they are equal), each as `form` writes it."""
    values = pd.Series(values).dropna()
    if not len(values):
        return "-"
    lo, hi = form(values.min()), form(values.max())
    return lo if lo == hi else f"{lo}-{hi}"


def pct(v: float) -> str:
    return f"{v:.0%}"


def ended(g: pd.DataFrame) -> str:
    return "diverged" if (g.status != "completed").all() else f"final_train_loss {span(g.final_train_loss)}"


def _curve(name: str, run: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    sweep = OUT / name / run
    return pd.read_csv(sweep / "epochs.csv"), pd.read_csv(sweep / "layers.csv")


def why_one_layer_slow(g):
    slow = ("sigmoid's slope is at most 1/4" if (g.act == "sigmoid").all() else
            "N(0, 0.01²) weights start next to the flat saddle at zero" if (col(g, "init.std") == 0.01).all() else
            "a slow start")
    return (f"{jobs_label(g)}: one hidden layer, so nothing can vanish or explode through depth and the diagnosis "
            f"says healthy; the nets do learn, slowly, and stop at {ended(g)}, above the threshold: {slow}, a "
            "matter of speed, which is not what the verdict measures")


def why_relu_d(g):
    said = "; ".join(sorted({e.split(";")[0] for e in g["diag:evidence"]}))
    return (f"{jobs_label(g)}: the diagnosis says {' / '.join(sorted(set(g['diag:verdict@init'])))} ({said}), "
            f"and the net trains all the same, to {ended(g)}, with {span(g.dead_frac_max, pct)} of a layer's units "
            "dead by the end: a ReLU layer at the rule's 50% still carries the signal through its other half, so "
            "the rule marks a net that is crippled on this draw, not one that cannot train")


def why_selu(g):
    parts = []
    for run in g.run:
        epochs, layers = _curve("bn_placement", run)
        first = layers[layers.layer == layers.layer.min()].set_index("epoch").grad_norm
        parts.append(f"the loss falls to {num(epochs.train_loss.min())} at epoch {int(epochs.train_loss.idxmin())} "
                     f"and ends at {num(epochs.train_loss.iloc[-1])}, the first layer's gradient going from "
                     f"{num(first.iloc[0])} to {num(first.iloc[-1])}")
    return (f"{jobs_label(g)}: healthy at initialisation (gradient ratio {span(g['diag:grad_ratio@init'])}, "
            f"chi_1 = {span(g['diag:chi_1'])}, 6 ξ_c = {span(g['diag:trainable_depth'])} against depth 50), and the "
            f"nets do start to learn, then lose it in training ({'; '.join(parts)}): the failure is made during "
            "training, after the initialisation the diagnosis judges (see the SELU paragraph below)")


def why_tanh_chaotic(g):
    limit, share = span(g["diag:trainable_depth"]), span(g.depth / g["diag:trainable_depth"], lambda v: f"{v:.2f}")
    return (f"{jobs_label(g)}: mean-field theory puts depth {span(g.depth)} inside 6 ξ_c = {limit} (chaotic, "
            f"chi_1 = {span(g['diag:chi_1'])}) and the gradient grows x{span(g['diag:grad_ratio@init'])} towards the "
            f"input, under the 100x rule, so healthy; the nets stall at {ended(g)}: at {share} of 6 ξ_c on the "
            f"chaotic side a {span(g.epochs)}-epoch budget is not enough, as the boundary cells of the criticality "
            "section show")


# Which explanation a disagreement gets: (preset, which of its disagreeing jobs, the sentence over them).
# They are tested in order; a job none fits is listed as unexplained, so a new disagreement cannot hide.
EXPLAIN: list[tuple[str, Callable[[pd.DataFrame], pd.Series], Callable[[pd.DataFrame], str]]] = [
    ("vanishing_gradients", lambda j: j.depth == 1, why_one_layer_slow),
    ("init_comparison", lambda j: j.depth == 1, why_one_layer_slow),
    ("vanishing_gradients", lambda j: (j.act == "relu") & (j.depth == 8), why_relu_d),
    ("bn_placement", lambda j: (j.act == "selu") & (j.norm == "none"), why_selu),
    ("bn_placement", lambda j: (j.act == "tanh") & (j.norm == "none"), why_tanh_chaotic),
]


def disagreements(p: Preset, j: pd.DataFrame) -> list[str]:
    """One sentence per group of disagreeing jobs that share an explanation; the rest one by one."""
    left = j[j.healthy != j.trains]
    out = []
    for name, which, why in EXPLAIN:
        if name != p.name or not len(left):
            continue
        g = left[which(left).fillna(False).astype(bool)]
        if len(g):
            out.append(why(g))
            left = left.drop(g.index)
    for _, x in left.iterrows():
        out.append(f"`{x.job}`: the diagnosis said {x['diag:verdict@init']} ({x['diag:evidence']}); the job "
                   f"{'trained' if x.trains else 'did not train'} ({ended(x.to_frame().T)}); not explained yet")
    return out


def confusion_row(label: str, j: pd.DataFrame) -> list[str]:
    h, t = j.healthy, j.trains
    return [label, str(len(j)), str(int((h & t).sum())), str(int((h & ~t).sum())), str(int((~h & t).sum())),
            str(int((~h & ~t).sum())), f"**{(h == t).mean():.0%}**", f"{(j.one_draw == t).mean():.0%}"]


def width_claim(j: pd.DataFrame) -> str:
    """What the diagnosis says about width 8 against width 16 (the notebook's claim that does not reproduce)."""
    w8, w16 = (j[j["model.widths"] == w] for w in ("[8]", "[16]"))
    sgd8, sgd16 = (w[w.optimizer == "sgd"].final_train_loss for w in (w8, w16))
    dead8, dead16 = (span(w["diag:dead_frac_max@init"], pct) for w in (w8, w16))
    verdicts = sorted(set(w8["diag:verdict@init"]) | set(w16["diag:verdict@init"]))
    return ("**Width 16 vs width 8** (`width_vs_depth`, the claim \"width 16 ends far below width 8\"). The "
            f"diagnosis calls every job of both widths {' / '.join(verdicts)}, both optimizers and every seed. With "
            "one hidden layer it has little to measure: the gradient ratio is 1 by definition, and the Jacobian it "
            "takes (from the first layer's output to the head's input) is the identity. The one number that "
            f"differs is the share of a layer's units that never fire on the 16 images, {dead8} at width 8 against "
            f"{dead16} at width 16 (the mean over the draws, far from the 50% rule). So it predicts that both widths "
            f"train, and both do (SGD final_train_loss {mean_std(sgd8)} at width 8, {mean_std(sgd16)} at width 16). "
            "It does not explain the notebook's gap, and no diagnosis at initialisation could: the notebook's width 8 "
            "stalled on its one draw, a matter of that draw and its training, and deeprun's three draws of width 8 "
            "do not stall.")


def selu_claim(j: pd.DataFrame) -> str:
    """What the diagnosis says about SELU without norm at depth 50 (the notebook's claim that does not reproduce)."""
    g = j[(j.act == "selu") & (j.norm == "none")]
    drift, dead = [], []
    for run in g.run:
        _, layers = _curve("bn_placement", run)
        at = layers.pivot_table(index="epoch", columns="layer", values="act_mean")
        drift.append(f"{at.iloc[0].abs().max():.2f} to {at.iloc[-1].abs().max():.2f}")
        dead.append(layers[layers.epoch == layers.epoch.max()].dead_frac.max())
    limit = span(g["diag:trainable_depth"])
    times = span(g["diag:trainable_depth"] / g.depth, lambda v: f"{v:.1f}")
    return ("**SELU without norm at depth 50** (`bn_placement`, the claims \"SELU with LeCun-normal init and no "
            "norm trains\" and \"generalises at least as well as tanh with BN before\"). At initialisation the "
            f"diagnosis finds nothing wrong: {' / '.join(sorted(set(g['diag:verdict@init'])))} on both seeds, the "
            f"first layer's gradient {span(g['diag:grad_ratio@init'])} times the last hidden layer's, the "
            f"activation variance kept (x{span(g['diag:signal_growth@init'])} from the first hidden layer to the "
            f"last), and mean-field theory just on the chaotic side (chi_1 = {span(g['diag:chi_1'])}) with "
            f"6 ξ_c = {limit} layers, {times} times the depth. What goes wrong happens in training, in the records "
            "of layers.csv: the activations leave SELU's self-normalising fixed point of mean 0 (the largest "
            f"|act_mean| of a layer goes from {' and '.join(drift)} over the seeds) and by the end up to "
            f"{span(pd.Series(dead), pct)} of a layer's units never fire. So the diagnosis does not explain the "
            "outcome, and it rightly says that the initialisation is not its cause: LeCun-normal init gives SELU "
            "the signal propagation it needs, and the training moves the net off it, which a measurement before "
            "training cannot see.")


DIAGNOSIS_TITLE = "Diagnosis at initialisation against training"


DRAWS_NOTE = (
    "The rules read the mean over the draws, and two see what a mean cannot: `bottleneck`, a hidden layer with "
    "fewer units than the dimensions the targets span (width 2 against the diagonal flip's four pixels: no "
    "training fits them), and, in a ReLU net whose mean is healthy, half of a layer dead on draw 0, the net the "
    "seed trains (a unit that never fires gets no gradient, so it stays dead). Judging every rule on draw 0 alone "
    "agreed on fewer jobs (97 of 108, 90%, on an earlier run of these presets): a gradient ratio or a variance moves "
    "in training, and one draw's reading of it is noisier than the mean.")


def diagnosis_section(n: int) -> str:
    seeds = [p for p in PRESETS if not p.paper]
    rows, rules, said, frames = [], [], [], {}
    for p in PRESETS:
        j, rule = joined(p)
        frames[p.name] = j
        rules.append([f"`{p.name}`", rule])
        if p in seeds:
            rows.append(confusion_row(f"`{p.name}`", j))
            said += [f"- {s}." for s in disagreements(p, j)]
    everything = pd.concat([frames[p.name] for p in seeds], ignore_index=True)
    crit = [p for p in PRESETS if p.paper]
    header = ["preset", "jobs", "healthy, trains", "healthy, does not", "not healthy, trains",
              "not healthy, does not", "agreement", "one draw"]
    body = rows + [confusion_row("**all seven**", everything)] + [
        confusion_row(f"`{p.name}` (not in the total)", frames[p.name]) for p in crit]
    failed = everything[everything["diag:status"] != "completed"]
    diag_wall = sum(wall(OUT / f"{p.name}{DIAGNOSIS}") for p in seeds)
    train_wall = sum(wall(OUT / p.name) for p in seeds)
    agreement = (everything.healthy == everything.trains).mean()
    out = [f"## {n}. {DIAGNOSIS_TITLE}", "",
           "Every job of every preset, diagnosed before it trains (`deeprun-diagnose -m experiment=NAME "
           f"hydra.sweep.dir=outputs/experiments/NAME{DIAGNOSIS}`: the same grid, nothing trained, 8 draws of the "
           "weights on the first 128 training rows), set against what the same job's training did. The prediction "
           "is *trains* where the verdict is `healthy` and *does not* for any other verdict (a diagnosis that "
           "fails gives no verdict and counts as *does not*); the outcome is *trains* by each preset's threshold "
           f"below. Diagnosing the seven notebook presets' {len(everything)} jobs took {diag_wall / train_wall:.0%} of the "
           "wall time of training them.", "",
           "**What \"trains\" means, per preset**", "", table(["preset", "trains when"], rules), "",
           f"**The confusion table.** The diagnosis agrees with training on {agreement:.0%} of the seven notebook presets' "
           f"{len(everything)} jobs. *one draw*: the agreement of each training run's own `verdict@init` (the "
           "same rules on its epoch 0: the one draw it trains, on its first batch) instead.", "",
           table(header, body), "", DRAWS_NOTE, ""]
    if len(failed):
        out += ["Diagnoses that failed (counted as *does not*): " + "; ".join(
            f"`{x.job}` ({x['diag:error']}; its training: {x.status})" for _, x in failed.iterrows()) + ".", ""]
    out += ["**Each disagreement**", "", *(said or ["- none."]), "",
            "**The two notebook claims that do not reproduce, as the diagnosis sees them**", "",
            width_claim(frames["width_vs_depth"]), "", selu_claim(frames["bn_placement"])]
    return "\n".join(out)


# --- running, reporting, writing -------------------------------------------------------------------

def run_sweep(p: Preset, program: str = "deeprun", suffix: str = "") -> float:
    """`PROGRAM -m experiment=NAME` into outputs/experiments/NAME+SUFFIX (fresh); its wall time in seconds."""
    sweep = OUT / f"{p.name}{suffix}"
    if sweep.exists():
        shutil.rmtree(sweep)
    sweep.parent.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / program), "-m", f"experiment={p.name}", f"hydra.sweep.dir={sweep.relative_to(ROOT)}"]
    print("$", program, " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: a job failed or missed an expectation; the page says which
        sys.exit(f"experiments: {program} -m experiment={p.name} exited {proc.returncode}")
    (sweep / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def run_diagnosis(p: Preset) -> float:
    """`deeprun-diagnose -m experiment=NAME`: every job of the grid at initialisation, into NAME-diagnosis."""
    return run_sweep(p, "deeprun-diagnose", DIAGNOSIS)


def wall(sweep: Path) -> float:
    f = sweep / "wall_seconds.txt"
    return float(f.read_text()) if f.is_file() else math.nan


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
    statuses = ", ".join(f"{k} {v}" for k, v in results.status.value_counts().items())
    reports = run_reports(p)  # first: it empties docs/img/NAME, where p.extra draws
    out = [f"## {n}. {p.heading}", "", f"**{'The paper' if p.paper else 'The notebook'}.** {p.question}", "",
           "```", f"deeprun -m experiment={p.name}", "```", "",
           f"{len(results)} jobs ({statuses}) in {wall(sweep) / 60:.1f} minutes, "
           f"{results.seconds.sum() / 60:.1f} of them training. The grid and the settings are in "
           f"[`conf/experiment/{p.name}.yaml`](../conf/experiment/{p.name}.yaml).", "",
           "**The notebook's numbers beside deeprun's**" if p.seed_numbers
           else "**deeprun's numbers**" + ("" if p.paper else " (the notebook gives none)"),
           "", p.comparison(results), "",
           "**The claims, checked on this run**", ""]
    for c in p.checks:
        ok, detail = c.test(results)
        out.append(f"- {'✓ holds' if ok else '✗ does not hold'}: {c.claim}. {detail}.")
    if p.extra:
        out += ["", p.extra(results)]
    out += ["", f"**Agreement.** {p.notes}", "", "**deeprun-report**", ""]
    for r, md, pngs in reports:
        command = f"deeprun-report outputs/experiments/{p.name} {' '.join(r.args)}"
        images = [f"![{p.name}: {Path(png).stem}]({png})" for png in pngs]
        body = [f"`{command}`", ""] + ([md.strip(), ""] if r.show_table else [])
        if r.folded:
            out += [f"<details><summary>{r.caption}</summary>", "", *body, "</details>", "", *images, ""]
        else:
            out += [f"*{r.caption}*", "", *body, *images, ""]
    return "\n".join(out)


HEADER = """# The notebook experiments, reproduced

Generated by `make experiments` ([`docs/experiments.py`](experiments.py)); do not edit by hand. Each
of the user's notebooks is a preset, `conf/experiment/NAME.yaml`, that runs with one command:

```
deeprun -m experiment=NAME                  # the preset's sweep, into outputs/sweeps/<stamp>
deeprun -m experiment=NAME seed=0 epochs=50 hydra.sweep.dir=mine    # your overrides come after it
deeprun-report outputs/sweeps/<stamp> --pivot depth act final_train_loss --plot plots/
deeprun-diagnose -m experiment=NAME         # every job of the grid at initialisation, in seconds
```

Each section runs one preset into `outputs/experiments/NAME`, reports it with `deeprun-report` (the
tables below are its `--out` markdown, the plots its `--plot` PNGs) and sets the notebook's own numbers beside
deeprun's. The notebooks drew their data and weights from other random streams (NumPy's `seed(42)`, one
draw), so compare shape and order, not digits; where one draw could decide a result, the presets run
several seeds. Every claim below is checked on this run's numbers and marked ✓ or ✗. One preset comes
from a paper rather than a notebook: `criticality`, Schoenholz et al. 2017's phase diagram. The last section
diagnoses every job of the seven notebook presets at initialisation (`deeprun-diagnose` on the same grid, into
`outputs/experiments/NAME-diagnosis`) and sets each verdict against what the job's training did.

{toc}

Machine: {machine}. Wall times are for the default batched launcher (jobs that build the same shapes
train as one stacked model) on a machine shared with other work, so they vary.
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
            run_diagnosis(p)
    missing = [p.name for p in PRESETS if not all((OUT / f"{p.name}{suffix}" / "results.csv").is_file()
                                                  for suffix in ("", DIAGNOSIS))]
    if missing:
        sys.exit(f"experiments: no results (training or diagnosis) for {', '.join(missing)} under {OUT}; run them: "
                 + " ".join(f"--only {m}" for m in missing))
    n_diag = len(PRESETS) + 1
    toc = "\n".join([f"{n}. [{p.heading}](#{n}-{anchor(p.heading)}): `experiment={p.name}`"
                     for n, p in enumerate(PRESETS, 1)]
                    + [f"{n_diag}. [{DIAGNOSIS_TITLE}](#{n_diag}-{anchor(DIAGNOSIS_TITLE)}): every job's verdict "
                       "at initialisation against its training"])
    page = HEADER.format(toc=toc, machine=machine()) + "\n" + "\n\n".join(
        [section(n, p) for n, p in enumerate(PRESETS, 1)] + [diagnosis_section(n_diag)]) + "\n"
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)} and {IMG.relative_to(ROOT)}/")


def anchor(heading: str) -> str:
    """GitHub's anchor of the section heading `n. HEADING`, without the number."""
    return "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")


if __name__ == "__main__":
    main()
