"""`deeprun-diagnose`: why a network will not train, told at initialisation, before it trains.

For a config (the same groups, keys and errors as `deeprun`) it builds the data and the model and
trains nothing. It measures, averaged over `diagnose.draws` initialisations, each weight layer's
forward signal (the mean and std of the pre-activation and of the activation that follow it), its
weight gradient on the first `diagnose.rows` training rows, and its dead and saturated fractions
(probes.py's definitions, as layers.csv); for residual nets, Brock et al. (2021)'s signal-propagation
numbers per block; the input-output Jacobian's singular values (jacobian.py); mean-field theory where
it applies (meanfield.py). `judge` turns them into a verdict with its evidence and the fixes the
seed experiments name; a training run's `verdict@init` is the same judge on its epoch 0.

Records, in the run directory: diagnosis.json (one results row), diagnosis_layers.csv,
diagnosis_blocks.csv (residual nets) and diagnosis_jacobian.csv (the singular values).
"""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import jacobian, meanfield, schema
from .config import ACTIVATION_TABLE, validate
from .data import build_data, resolve_device
from .models import GAINS, Residual, build_model, count_params, init_weights, resolve_init, weight_layers
from .probes import ACTIVATION_MODULES, Probes
from .records import (DIAGNOSIS, DIAGNOSIS_BLOCKS, DIAGNOSIS_JACOBIAN, DIAGNOSIS_LAYERS, config_key, config_row,
                      write_summary, write_table)
from .train import MEMBER_LOSS


def _measured_numbers(row: tuple) -> tuple[str, ...]:
    """The numbers each draw measures of a diagnosis table (schema.py): its outcome columns but the spreads."""
    spreads = {f"{c.name}_std" for c in row}
    return tuple(c.name for c in row if c.kind == schema.OUTCOME and c.name not in spreads)


SIGNAL = _measured_numbers(schema.DIAGNOSIS_LAYER_ROW)  # per weight layer
BLOCK_SIGNAL = _measured_numbers(schema.DIAGNOSIS_BLOCK_ROW)  # Brock et al. 2021, per residual block

# The verdict's rules (README, "The verdict"): the first that holds names the net's trouble.
DEAD = 0.5  # a layer whose units are half or more dead (never positive on the measured rows)
# ... for an activation flat below zero only: a never-positive leaky_relu, elu, selu, gelu, silu or mish unit
# still passes a gradient, so it can recover (and leaky_relu and elu are the dead-unit fix below)
DEAD_ACTS = tuple(name for name, a in ACTIVATION_TABLE.items() if a.dies)
SATURATED = 0.5  # a layer with half or more of its activations in the flat tails
VANISHING = 1e-2  # grad_ratio@init (first layer's gradient over the last hidden layer's) below it
EXPLODING = 1e2  # ... above it
SIGNAL_LOST = 1e-4  # the last hidden layer's activation variance over the first's, below it: vanishing too
SIGNAL_BLOWN = 1e4  # above it (or its residual blocks' output variance grows so): exploding
VERDICTS = ("healthy", "vanishing", "exploding", "dead units", "saturated", "ordered", "chaotic", "bottleneck")
FIXES = {
    "vanishing": "act=relu with init=auto, norm=batch norm.position=pre, model=resnet",
    "exploding": "init=auto (a smaller weight variance), norm=batch norm.position=pre, model=resnet "
                 "model.residual_scale=rezero, grad_clip=1",
    "dead units": "act=leaky_relu or act=elu, init=auto (kaiming), norm=batch norm.position=pre",
    "saturated": "init=auto (xavier for tanh and sigmoid), norm=batch norm.position=pre, act=relu",
    "ordered": "a larger weight variance (init=mean_field init.sigma_w2 near {critical}), a smaller depth (<= {depth}), model=resnet",
    "chaotic": "a smaller weight variance (init=mean_field init.sigma_w2 near {critical}), a smaller depth (<= {depth}), norm=batch",
    "bottleneck": "hidden layers at least {rank} wide (width={rank}, or model.widths with no entry below {rank})",
}


@dataclass
class Diagnosis:
    row: dict  # diagnosis.json: the config, then the verdict and its numbers
    layers: pd.DataFrame  # diagnosis_layers.csv: per weight layer, mean and spread over the draws
    blocks: pd.DataFrame  # diagnosis_blocks.csv: per residual block (empty for other nets)
    singular_values: np.ndarray  # of the input-output Jacobian of draw 0, pooled over its samples


@dataclass
class Verdict:
    name: str  # one of VERDICTS
    evidence: str
    fixes: str


def diagnose(cfg: DictConfig, out_dir: Optional[str | Path] = None, data=None, threads: Optional[int] = None) -> Diagnosis:
    """Diagnose the net `cfg` builds, at initialisation; with `out_dir`, write the records there.
    A config error raises ConfigError (as `deeprun`); diagnose_group records a sweep job's failure."""
    # a vanishing gradient of a deep net reaches float32's denormals, whose arithmetic is 100x slower
    # on CPUs (a 200-layer GELU net: a minute instead of a second); flushed, they read as 0
    flushed = torch.set_flush_denormal(True)
    try:
        return _diagnose(cfg, out_dir, data, threads)
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _diagnose(cfg: DictConfig, out_dir: Optional[str | Path], data, threads: Optional[int]) -> Diagnosis:
    start = time.perf_counter()
    validate(cfg)
    row = _config_part(cfg, resolve_init(cfg.init, cfg.act))
    device = resolve_device(cfg.device.name, None)
    row["device"] = str(device)
    data = data if data is not None else build_data(cfg, device)
    model = build_model(cfg, data)
    from .api import threads_for  # the thread count a training run of this net gets

    torch.set_num_threads(cfg.device.threads or threads or threads_for(model, data, cfg.diagnose.rows))
    draws = 1 if row["init"] == "checkpoint" else cfg.diagnose.draws  # given weights: one net to measure
    rows = slice(0, cfg.diagnose.rows)
    x, y = data.x_train[rows], data.y_train[rows]
    probes = Probes(model, x)
    per_draw, blocks = [], []
    for d in range(draws):
        if d > 0:  # draw 0 is the net `deeprun` trains with this seed; the others re-draw its weights in place
            redraw(model, cfg, cfg.seed + d)
        layers, block = measure(model, probes, x, y, data.task)
        per_draw.append(layers)
        blocks.append(block)
        if d == 0:  # the Jacobian of the net this seed trains (one call: its set-up costs as much as a sample)
            spectrum = jacobian.spectrum(model, x, samples=cfg.diagnose.jacobian_samples, seed=cfg.seed)
    table = _spread(per_draw, probes.names)
    block_table = _spread(blocks, [f"block{i}" for i in range(len(blocks[0]))]) if blocks[0] else pd.DataFrame()
    theory = mean_field(cfg, model)
    row.update(task=data.task, params=count_params(model), threads=torch.get_num_threads(), status="completed",
               draws=draws, rows=len(x))
    row.update(init_columns(per_draw), narrowest=narrowest(model), target_rank=target_rank(data))
    row.update(_jacobian_columns(spectrum))
    row.update({k: v for k, v in theory.items() if k != "singular_values"})
    verdict = judge(row, theory, depth=_depth(cfg), act=cfg.act.name, blocks=block_table,
                    draw0=init_columns(per_draw[:1]) if draws > 1 else None)
    row.update({"verdict@init": verdict.name, "evidence": verdict.evidence, "fixes": untried(verdict.fixes, cfg),
                "seconds": time.perf_counter() - start, "host": platform.node(), "torch": torch.__version__,
                "error": None})
    result = Diagnosis(row, table, block_table, np.asarray(spectrum["singular_values"], dtype=np.float64))
    if out_dir is not None:
        write(Path(out_dir), result)
    return result


def diagnose_group(cfgs: list[DictConfig], out_dirs: list[str | Path], threads: Optional[int] = None,
                   job: Optional[int] = None) -> list[dict]:
    """The batched launcher's group runner for deeprun-diagnose -m: each job diagnosed in turn; one
    that fails is recorded `failed` with its error, and the others go on."""
    rows = []
    for cfg, out in zip(cfgs, out_dirs):
        try:
            rows.append(diagnose(cfg, out, threads=threads).row)
        except KeyboardInterrupt:
            write_summary(Path(out), _failed_row(cfg, status="interrupted", error="KeyboardInterrupt"), DIAGNOSIS)
            raise
        except Exception as e:
            why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            row = _failed_row(cfg, status="failed", error=why)
            Path(out).mkdir(parents=True, exist_ok=True)
            write_summary(Path(out), row, DIAGNOSIS)
            rows.append(row)
    return rows


def _config_part(cfg: DictConfig, init: Optional[str] = None) -> dict:
    """The config half of a diagnosis row; `init` the scheme used (None: as the config names it)."""
    return {**config_row(cfg, init or cfg.init.name, cfg.device.name), "config_key": config_key(cfg, DIAGNOSIS)}


def _failed_row(cfg: DictConfig, **outcome) -> dict:
    """The row of a job that could not be diagnosed: as much of the config as it gives, then why."""
    try:
        return {**_config_part(cfg), **outcome}
    except Exception:  # a config too broken for config_row: the row says only what happened
        return outcome


def write(out: Path, result: Diagnosis) -> None:
    """The records, the row last: a row that says completed means the rest is there."""
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / DIAGNOSIS_LAYERS, result.layers)
    if len(result.blocks):
        write_table(out / DIAGNOSIS_BLOCKS, result.blocks)
    write_table(out / DIAGNOSIS_JACOBIAN, pd.DataFrame({"singular_value": result.singular_values}))
    write_summary(out, result.row, DIAGNOSIS)


def redraw(model: nn.Module, cfg: DictConfig, seed: int) -> None:
    """New weights for `model`, from `seed`, by its init scheme: an independent draw without building
    the model again (which would draw torch's default init first, then the scheme's)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        if resolve_init(cfg.init, cfg.act) == "torch_default":
            for layer in weight_layers(model).values():
                layer.reset_parameters()
    init_weights(model, cfg.init, cfg.act)


# --- one draw -------------------------------------------------------------------------------

def measure(model: nn.Module, probes: Probes, x: torch.Tensor, y: torch.Tensor, task: str) -> tuple[list[dict], list[dict]]:
    """One forward and backward pass in training mode, as epoch 0's: per weight layer the SIGNAL
    numbers, per residual block the BLOCK_SIGNAL ones."""
    model.train()
    for p in model.parameters():
        p.grad = None
    probes.start_epoch(steps=False)
    with probes.capture(), _pre_activations(model, probes) as pre, _residual_blocks(model) as blocks:
        loss = MEMBER_LOSS[task](model(x).unsqueeze(0), y.unsqueeze(0))[0]
    loss.backward()
    probes.after_backward()
    layers = probes.read(updated=False)
    numbers = torch.stack([*pre, *blocks]).tolist() if pre or blocks else []  # one host read
    for layer in layers:
        layer["pre_mean"] = layer["pre_std"] = math.nan
    pre_numbers, block_numbers = numbers[:len(pre)], numbers[len(pre):]
    for (_, _, index), std, mean in zip(probes.acts, pre_numbers[0::2], pre_numbers[1::2]):
        layers[index].update(pre_mean=mean, pre_std=std)
    return [{k: layer[k] for k in SIGNAL} for layer in layers], \
        [dict(zip(BLOCK_SIGNAL, block_numbers[i:i + 3])) for i in range(0, len(block_numbers), 3)]


# Two passes (the mean, then the centred values' norm) rather than torch.std_mean / var_mean: as stable, and
# 3-4x faster on CPU, where Welford's one pass was a sixth of a 100-block resnet's diagnosis.
def _std_mean(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.std_mean(h) (unbiased), flat over every element."""
    mean = h.mean()
    return torch.linalg.vector_norm(h - mean) / max(h.numel() - 1, 1) ** 0.5, mean


def _channel_var_mean(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's variance (biased) and mean over the batch and positions of a (B, C, ...) tensor."""
    over = [0, *range(2, t.dim())]
    mean = t.mean(over, keepdim=True)
    return (t - mean).square().mean(over), mean.flatten()


@contextlib.contextmanager
def _pre_activations(model: nn.Module, probes: Probes):
    """The std and mean of the input of each activation call the probes follow (a layer's pre-activation),
    flat: std, mean, std, mean, ..."""
    followed = {call for call, _, _ in probes.acts}
    found: list[torch.Tensor] = []
    calls = [0]

    def take(module, inp, out):
        if calls[0] in followed:
            found.extend(_std_mean(inp[0].detach()))
        calls[0] += 1
    modules = {m: None for m in model.modules() if isinstance(m, ACTIVATION_MODULES)}
    handles = [m.register_forward_hook(take) for m in modules]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _residual_blocks(model: nn.Module):
    """Brock et al.'s signal-propagation numbers of each residual block's output, flat, three a block: the
    average over channels of the squared channel mean and of the channel variance, and the residual branch
    f(x)'s average channel variance (a channel's statistics are over the batch and its positions)."""
    found: list[torch.Tensor] = []
    branch: dict[nn.Module, torch.Tensor] = {}

    def on_branch(module, inp, out):
        branch[module] = _channel_var_mean(out.detach())[0].mean()

    def on_block(module, inp, out):
        var, mean = _channel_var_mean(out.detach())
        found.extend((mean.square().mean(), var.mean(), branch.pop(module.f)))
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    handles = [m.f.register_forward_hook(on_branch) for m in blocks] + [m.register_forward_hook(on_block) for m in blocks]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def _spread(draws: list[list[dict]], names: list[str]) -> pd.DataFrame:
    """Per row (layer or block): each number's mean over the draws and, as `<number>_std`, its spread."""
    values = pd.DataFrame([{"draw": d, "index": i, **row} for d, rows in enumerate(draws) for i, row in enumerate(rows)])
    numbers = [c for c in values.columns if c not in ("draw", "index")]
    grouped = values.groupby("index", sort=True)[numbers]
    mean, std = grouped.mean(), grouped.std(ddof=0)
    kind = "layer" if names and not names[0].startswith("block") else "block"
    table = pd.DataFrame({kind: mean.index, "name": [names[i] for i in mean.index]})
    for c in numbers:
        table[c] = mean[c].to_numpy()
        table[f"{c}_std"] = std[c].to_numpy()
    return table


# --- the numbers of the row -----------------------------------------------------------------

def init_columns(per_draw: list[list[dict]]) -> dict:
    """The gradient and activation columns of the row at init, as a training run's epoch 0 names them:
    grad_norm_first@init, grad_norm_last@init (the last hidden layer), grad_ratio@init (their ratio,
    the geometric mean over draws), grad_decay@init (the ratio per layer between them), dead and
    saturated maxima over layers of the draws' means."""
    firsts = [d[0]["grad_norm"] for d in per_draw]
    lasts = [d[max(len(d) - 2, 0)]["grad_norm"] for d in per_draw]
    logs = [math.log10(f / l) if f > 0 and l > 0 else (-math.inf if l > 0 else math.nan) for f, l in zip(firsts, lasts)]
    ratio = 10 ** float(np.mean(logs)) if logs and not any(math.isnan(v) for v in logs) else math.nan
    steps = len(per_draw[0]) - 2  # layers from the first to the last hidden one
    spread = _layer_means(per_draw, "act_std")  # the head has no activation: NaN
    hidden = spread[np.isfinite(spread)]
    with np.errstate(all="ignore"):
        growth = float(hidden[-1] ** 2 / hidden[0] ** 2) if len(hidden) > 1 else math.nan
    dead, saturated = (_layer_means(per_draw, k) for k in ("dead_frac", "saturated_frac"))
    return {"grad_norm_first@init": float(np.mean(firsts)), "grad_norm_last@init": float(np.mean(lasts)),
            "grad_ratio@init": ratio, "grad_decay@init": ratio ** (1 / steps) if steps > 0 and ratio >= 0 else math.nan,
            "signal_growth@init": growth,
            "dead_frac_max@init": _nanmax(dead), "dead_layer@init": _argmax(dead),
            "saturated_frac_max@init": _nanmax(saturated), "saturated_layer@init": _argmax(saturated)}


def _layer_means(per_draw: list[list[dict]], key: str) -> np.ndarray:
    """Each layer's mean of `key` over the draws; NaN for a layer that has none (no such activation)."""
    values = np.array([[layer[key] for layer in d] for d in per_draw], dtype=np.float64)
    counts = np.isfinite(values).sum(0)
    return np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), np.nan)


def _nanmax(values: np.ndarray) -> float:
    return float(np.nanmax(values)) if np.isfinite(values).any() else math.nan


def _argmax(values: np.ndarray) -> Optional[int]:
    return int(np.nanargmax(values)) if np.isfinite(values).any() else None


def _jacobian_columns(spectrum: dict) -> dict:
    """The Jacobian's numbers of the row: spectrum's, less the singular values themselves."""
    if not str(spectrum.get("jac_method", "")).startswith(("exact", "estimated")):
        return {"jac_method": spectrum.get("jac_method")}
    return {k: v for k, v in spectrum.items() if k != "singular_values"}


def narrowest(model: nn.Module) -> Optional[int]:
    """The fewest outputs of a hidden fully connected layer (every weight layer but the head); None where
    a hidden layer is not a Linear (a convolution's outputs are per position)."""
    hidden = list(weight_layers(model).values())[:-1]
    if not hidden or not all(isinstance(m, nn.Linear) for m in hidden):
        return None
    return min(m.out_features for m in hidden)


def target_rank(data) -> Optional[int]:
    """The dimensions the training targets span (the numerical rank of the centred targets, torch's
    default tolerance), for regression; None for classification."""
    if data.task != "regression":
        return None
    y = data.y_train.reshape(len(data.y_train), -1).double()
    return int(torch.linalg.matrix_rank(y - y.mean(0)))


def _depth(cfg: DictConfig) -> int:
    widths = OmegaConf.select(cfg, "model.widths")
    return len(widths) if widths else cfg.depth


def mean_field(cfg: DictConfig, model: nn.Module) -> dict:
    """Mean-field numbers of the net (meanfield.analyse) with the weight and bias variances its init
    gives, or `mean_field: not applicable: <why>` where the theory does not describe it."""
    why = _not_mean_field(cfg)
    if why:
        return {"mean_field": f"not applicable: {why}"}
    sigma_w2, sigma_b2 = init_variances(cfg, model)
    return {"mean_field": "applicable", **_theory(cfg.act.name, sigma_w2, sigma_b2, float(cfg.act.get("slope", 0.01)))}


@functools.lru_cache(maxsize=1024)  # a sweep's jobs share it (seeds, lrs): up to 90 ms (gelu's critical point)
def _theory(act: str, sigma_w2: float, sigma_b2: float, slope: float) -> dict:
    """meanfield.analyse, and meanfield.critical_sigma_w2 (NaN where the activation has no critical point)."""
    try:
        critical = meanfield.critical_sigma_w2(act, sigma_b2, slope=slope)
    except ValueError:
        critical = math.nan
    return {"sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "critical_sigma_w2": critical,
            **meanfield.analyse(act, sigma_w2, sigma_b2, slope=slope)}


def _not_mean_field(cfg: DictConfig) -> Optional[str]:
    if "_target_" in cfg.model:
        return "a user's own model"
    if cfg.model.name != "mlp":
        return {"resnet": "residual blocks", "cnn": "a convolutional net", "resnet_cnn": "a convolutional residual net"
                }.get(cfg.model.name, cfg.model.name)
    if cfg.norm.name != "none":
        return f"norm={cfg.norm.name} (the theory is of plain layers)"
    if cfg.dropout > 0:
        return "dropout (it rescales the length map)"
    if cfg.act.name not in meanfield.ACTIVATIONS:
        return f"act={cfg.act.name}"
    return None


def init_variances(cfg: DictConfig, model: nn.Module) -> tuple[float, float]:
    """(sigma_w2, sigma_b2) of the hidden layers, fan_in * Var(W) and Var(b), as the init scheme
    gives them (measured from the weights for init=checkpoint and unequal widths' schemes alike: the
    mean over the hidden layers)."""
    scheme = resolve_init(cfg.init, cfg.act)
    hidden = [m for m in weight_layers(model).values()][1:-1] or list(weight_layers(model).values())[:1]
    gain2 = nn.init.calculate_gain(GAINS[cfg.act.name], float(cfg.act.get("slope", 0.0))) ** 2
    per_layer = []
    for layer in hidden:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        per_layer.append({
            "kaiming_normal": lambda: (gain2, 0.0), "kaiming_uniform": lambda: (gain2, 0.0),
            "xavier_normal": lambda: (gain2 * 2 * fan_in / (fan_in + fan_out), 0.0),
            "xavier_uniform": lambda: (gain2 * 2 * fan_in / (fan_in + fan_out), 0.0),
            "orthogonal": lambda: (gain2 * fan_in / max(fan_in, fan_out), 0.0),
            "lecun_normal": lambda: (1.0, 0.0),
            "uniform": lambda: (fan_in * cfg.init.a ** 2 / 3, 0.0),
            "normal": lambda: (fan_in * cfg.init.std ** 2, 0.0),
            "mean_field": lambda: (float(cfg.init.sigma_w2), float(cfg.init.sigma_b2)),
            "torch_default": lambda: (1 / 3, 1 / (3 * fan_in)),  # kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in))
        }.get(scheme, lambda: _measured(layer))())
    return float(np.mean([w for w, _ in per_layer])), float(np.mean([b for _, b in per_layer]))


def _measured(layer: nn.Module) -> tuple[float, float]:
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else w.new_zeros(1)
    return float(w[0].numel() * w.square().mean()), float(b.square().mean())


# --- the verdict ------------------------------------------------------------------------------

def judge(row: dict, theory: dict, depth: int, act: str, blocks: Optional[pd.DataFrame] = None,
          draw0: Optional[dict] = None) -> Verdict:
    """The first rule that holds, in VERDICTS' order of trouble: dead units (ReLU), saturated, vanishing,
    exploding (measured), bottleneck, then ordered or chaotic (mean-field: deeper than 6 xi_c); then dead
    units on `draw0` alone (init_columns of draw 0, the net this seed trains; given with several draws);
    else healthy. `row` holds init_columns of the draws' mean."""
    ratio, growth = row.get("grad_ratio@init", math.nan), row.get("signal_growth@init", math.nan)
    saturated = row.get("saturated_frac_max@init", math.nan)
    notes = [_mean_field_note(theory, depth)] if theory.get("mean_field") == "applicable" else []
    if isinstance(blocks, pd.DataFrame) and len(blocks) > 1 and blocks["avg_var"].iloc[0] > 0:
        block_growth = float(blocks["avg_var"].iloc[-1] / blocks["avg_var"].iloc[0])
        if math.isfinite(block_growth):
            notes.append(f"the residual blocks' output variance grows x{block_growth:.3g} from the first to the last")
    else:
        block_growth = math.nan
    gradient = _gradient_text(row)

    def verdict(name: str, evidence: str, **fill) -> Verdict:
        text = "; ".join(filter(None, [evidence, *notes]))
        return Verdict(name, text, FIXES[name].format(**fill) if name in FIXES else "")
    overflow = [k for k in ("grad_norm_first@init", "grad_norm_last@init") if not math.isfinite(row.get(k, 0.0))]
    if overflow or str(row.get("jac_method") or "").startswith("not finite"):
        return verdict("exploding", "the signal or the gradient overflows float32 at initialisation")
    if _dead(row, act):
        return verdict("dead units", _dead_text(row))
    if saturated >= SATURATED:
        return verdict("saturated", f"{saturated:.0%} of layer {row.get('saturated_layer@init')}'s activations sit in "
                                    f"{act}'s flat tails" + (f"; {gradient}" if gradient else ""))
    if ratio <= VANISHING or growth <= SIGNAL_LOST:
        lost = f"the activation variance falls x{growth:.2g} from the first hidden layer to the last" \
            if growth <= SIGNAL_LOST else ""
        return verdict("vanishing", "; ".join(filter(None, [gradient, lost])))
    if ratio >= EXPLODING or growth >= SIGNAL_BLOWN or block_growth >= SIGNAL_BLOWN:
        blown = f"the activation variance grows x{growth:.3g} from the first hidden layer to the last" \
            if growth >= SIGNAL_BLOWN else ""
        return verdict("exploding", "; ".join(filter(None, [gradient if ratio >= EXPLODING else "", blown])))
    width, rank = row.get("narrowest"), row.get("target_rank")
    if width is not None and rank is not None and width < rank:
        return verdict("bottleneck", f"a hidden layer has {width} units, fewer than the {rank} dimensions the "
                                     f"targets span: every output is a function of {width} numbers, so no training "
                                     f"fits them (a limit of capacity)", rank=rank)
    if theory.get("mean_field") == "applicable" and depth > theory.get("trainable_depth", math.inf):
        fill = dict(critical=f"{theory.get('critical_sigma_w2', math.nan):.3g}",
                    depth=int(theory["trainable_depth"]))
        phase = "chaotic" if theory.get("chi_1", 1.0) > 1 else "ordered"
        return verdict(phase, gradient, **fill)
    # a ReLU unit dead on the net this seed trains gets no gradient, so it stays dead whatever the other draws
    # do (in narrow layers the draw decides); scales (gradient ratio, variance) move in training: judged on the mean
    if draw0 is not None and _dead(draw0, act):
        return verdict("dead units", f"on draw 0, the net this seed trains: {_dead_text(row | draw0)} (the mean over "
                                     f"the {row.get('draws', 'several')} draws is healthy)")
    return verdict("healthy", gradient or "gradients and activations keep their scale through the net")


def untried(fixes: str, cfg: DictConfig) -> str:
    """`fixes` (FIXES' comma-separated list) less each fix that is only settings `cfg` already has: no
    `norm=batch` for a net with BatchNorm. A fix that says more than key=value keeps its place."""
    return ", ".join(fix for fix in fixes.split(", ") if not _already(fix, cfg)) if fixes else fixes


def _already(fix: str, cfg: DictConfig) -> bool:
    words = re.sub(r"\([^)]*\)", "", fix).split()  # a remark in parentheses only explains
    settings = [w.split("=", 1) for w in words if w != "with"]
    return bool(settings) and all(len(s) == 2 and _same(_setting(cfg, s[0]), s[1]) for s in settings)


def _setting(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default=None)
    return value.get("name") if isinstance(value, DictConfig) else value  # a group: its option's name


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def _dead(columns: dict, act: str) -> bool:
    """The dead-units rule: a layer half or more dead, for an activation flat below zero (DEAD_ACTS)."""
    return columns.get("dead_frac_max@init", math.nan) >= DEAD and act in DEAD_ACTS


def _dead_text(columns: dict) -> str:
    gradient = _gradient_text(columns)
    return (f"{columns['dead_frac_max@init']:.0%} of layer {columns.get('dead_layer@init')}'s units never fire on the "
            f"{columns.get('rows', 'measured')} rows" + (f"; {gradient}" if gradient else ""))


def _gradient_text(columns: dict) -> str:
    """The gradient's evidence: the first layer's gradient against the last hidden layer's, and per layer."""
    ratio, decay = columns.get("grad_ratio@init", math.nan), columns.get("grad_decay@init", math.nan)
    if ratio == 0:
        return "the first layer's gradient is 0"
    if not (ratio > 0 and math.isfinite(ratio)):
        return ""
    return f"the first layer's gradient is 10^{math.log10(ratio):.1f} of the last hidden layer's" + \
        (f" (x{decay:.2g} per layer)" if math.isfinite(decay) else "")


def _mean_field_note(theory: dict, depth: int) -> str:
    depth_text = "any depth" if not math.isfinite(theory.get("trainable_depth", math.inf)) \
        else f"about {theory['trainable_depth']:.3g} layers"
    return (f"mean-field: {theory.get('phase')} phase (chi_1 = {theory.get('chi_1', math.nan):.3g}), "
            f"trainable to {depth_text} (6 xi_c), depth {depth}")


def verdict_at_init(cfg: DictConfig, layers: pd.DataFrame, model: Optional[nn.Module],
                    rank: Optional[int] = None) -> Optional[str]:
    """A training run's verdict@init: `judge` on its epoch-0 layers.csv rows (one draw, the first batch),
    with mean-field numbers where they apply, and `rank`, the data's `target_rank`, for the bottleneck
    rule; None without epoch-0 rows."""
    at = layers[layers.epoch == 0] if len(layers) else layers
    if not len(at) or model is None:
        return None
    draw = [dict(r) | {"pre_mean": math.nan, "pre_std": math.nan} for r in at.to_dict("records")]
    row = init_columns([draw]) | {"narrowest": narrowest(model), "target_rank": rank}
    if cfg.norm.name == "batch":  # epoch 0's activations are probed in eval mode, through untrained running statistics
        row.update({"signal_growth@init": math.nan, "dead_frac_max@init": math.nan, "saturated_frac_max@init": math.nan})
    theory = mean_field(cfg, model) if _not_mean_field(cfg) is None else {}
    return judge(row, theory, depth=_depth(cfg), act=cfg.act.name).name
