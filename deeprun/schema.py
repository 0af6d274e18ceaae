"""The results schema: every column deeprun's records hold, whether it is config or outcome, its place and meaning.

One declaration, read by everything that needs to know a column: the results table's order (records.py),
which columns describe the config and may be swept (display.py), deeprun-report's checks of the columns it
is given (report.py), which columns `expect.*` can bound (config.py), and docs/records.md, whose column
tables are generated from it (`write_docs` rewrites them; tests/test_schema.py fails when
they drift). No torch and no pandas here: `deeprun --help` and composing import it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

SUMMARY, DIAGNOSIS, RESULTS = "summary.json", "diagnosis.json", "results.csv"
EPOCHS, LAYERS = "epochs.csv", "layers.csv"
DIAGNOSIS_LAYERS, DIAGNOSIS_BLOCKS, DIAGNOSIS_JACOBIAN = "diagnosis_layers.csv", "diagnosis_blocks.csv", "diagnosis_jacobian.csv"
GROUPS = ("model", "act", "init", "norm", "optimizer", "scheduler", "data", "device")  # config groups in a row
# (norm's one key, position, is the row's norm_position: no norm.<key> columns)
BOTH = (SUMMARY, DIAGNOSIS)

CONFIG = "config"  # chosen by whoever ran it (on the command line or in conf/): what a sweep varies
OUTCOME = "outcome"  # what the run measured, or what the data and deeprun decided for it (task, params, threads)
RECORD = "record"  # which record or row it is and where it was made: not a result to compare runs by
KINDS = (CONFIG, OUTCOME, RECORD)


@dataclass(frozen=True)
class Column:
    name: str  # the column, or a family of them: `loss@<epoch>`, `model.<key>`
    kind: str  # one of KINDS
    meaning: str  # one line, as docs/records.md shows it
    files: tuple[str, ...] = (SUMMARY,)  # the records that hold it (results.csv holds every row file's columns)
    diagnosis: str = ""  # its meaning in diagnosis.json, where that differs from summary.json's
    pattern: str = ""  # a family's names, as a regular expression
    expect: bool = False  # a run can be held to it: expect.<name>_below=<x> / expect.<name>_above=<x>


def _config(name: str, meaning: str) -> Column:
    return Column(name, CONFIG, meaning, BOTH)


def _group(group: str, examples: str) -> Column:
    return Column(f"{group}.<key>", CONFIG, f"every key of the {group} option but its name{examples}; a list as a "
                  "JSON string", BOTH, pattern=re.escape(group) + r"\..+")


VERDICT_NAMES = "`healthy`, `vanishing`, `exploding`, `dead units`, `saturated`, `ordered`, `chaotic` or `bottleneck`"
STATUSES = ("completed", "diverged", "failed", "interrupted", "running")  # a row's `status`, in the order shown

# A results row (summary.json, diagnosis.json; results.csv adds `overrides` and `run`), in the order of its
# columns: the config, what deeprun decided for the run, then the outcome. results.csv sorts by it.
ROW: tuple[Column, ...] = (
    _config("model", "the model option: `mlp`, `resnet`, `cnn`, `resnet_cnn` or `custom`"),
    _config("depth", "hidden layers (mlp), conv layers (cnn) or residual blocks; with `model.widths`, its length"),
    _config("width", "units per hidden layer (cnn, resnet_cnn: channels of the first stage); null with "
                     "`model.widths`"),
    _config("act", "the activation"),
    _config("init", "the init scheme used: with `init=auto`, the one it picked for the activation"),
    _config("norm", "`none`, `batch` or `layer`"),
    _config("norm_position", "`pre` (Linear-Norm-Act) or `post` (Linear-Act-Norm)"),
    _config("optimizer", "the optimizer"),
    _config("scheduler", "the learning-rate scheduler"),
    _config("lr", "the learning rate"),
    _config("batch_size", "the minibatch size; null: full batch"),
    _config("epochs", "the epochs asked for"),
    _config("dropout", "the dropout probability"),
    _config("grad_clip", "the maximum global gradient norm; null: no clipping"),
    _config("data", "the data option"),
    _config("seed", "the seed of init, dropout and shuffling (`data.seed` fixes the data)"),
    _config("device", "the device used: with `device=auto`, the one it picked (`cpu`, `cuda`, `mps`)"),
    Column("config_key", RECORD, "a 12-character hash of the run's whole config without `resume`, `strict`, "
           "`expect`, `log.progress`, `logger` and `diagnose`: equal keys, equal runs; `resume=true` finds "
           "finished jobs by it", BOTH,
           diagnosis="as summary.json's, of the diagnosis: a diagnosis and a training run of one config have "
                     "different keys, so `resume=true` tells them apart"),
    _group("model", ", e.g. `model.widths`, `model.residual_scale`, `model._target_`"),
    _group("act", ", e.g. `act.slope`"),
    _group("init", ", e.g. `init.a`, `init.sigma_w2`, `init.path`"),
    _group("optimizer", ", e.g. `optimizer.momentum`, `optimizer.betas`, `optimizer.weight_decay`"),
    _group("scheduler", ", e.g. `scheduler.step_size`"),
    _group("data", ", e.g. `data.n`, `data.path`, `data.seed`, `data.max_rows`"),
    _group("device", ": `device.threads`, `device.spread`"),
    Column("task", OUTCOME, "`regression`, `binary` or `multiclass`, as the data decided", BOTH),
    Column("n_classes", OUTCOME, "the number of classes; null for regression"),
    Column("loss_units", OUTCOME, "regression: `standardised` (losses in standardised target units, "
           "`data.scale_target=true`) or `target` (the target's own units); null for classification"),
    Column("params", OUTCOME, "trainable parameters", BOTH),
    Column("rows_dropped", OUTCOME, "CSV rows `data.missing=drop` left out (0 otherwise)"),
    Column("threads", OUTCOME, "the torch CPU threads the run used: `device.threads` when set, else one for a "
           "small net (under 2^24 multiply-adds a step, `api.SMALL_WORK`) or one whose largest layer has under 2^21 "
           "(`api.SMALL_OP`), and one per core otherwise",
           BOTH),
    Column("status", OUTCOME, "`completed`, `diverged`, `failed` or `interrupted` (`running` while in progress)",
           BOTH, diagnosis="`completed`, or `failed` with `error` (`interrupted` after Ctrl-C)"),
    Column("diverged_epoch", OUTCOME, "the epoch whose training loss was NaN or Inf; training stopped there"),
    Column("draws", OUTCOME, "the initialisations measured (1 for `init=checkpoint`: the weights are given)",
           (DIAGNOSIS,)),
    Column("rows", OUTCOME, "the training rows measured on", (DIAGNOSIS,)),
    Column("final_train_loss", OUTCOME, "the last epoch's training loss", expect=True),
    Column("final_val_loss", OUTCOME, "the last epoch's validation loss", expect=True),
    Column("best_val_loss", OUTCOME, "the lowest validation loss over epochs 1 and later", expect=True),
    Column("val_r2", OUTCOME, "regression: the validation R^2 at the last epoch, the mean over target columns "
           "of 1 - MSE / Var(y_val)", expect=True),
    Column("val_accuracy", OUTCOME, "classification: the validation accuracy at the last epoch", expect=True),
    Column("val_rmse", OUTCOME, "regression: the validation RMSE at the last epoch in the target's own units, "
           "the mean over target columns of sqrt(MSE_j) * std_j", expect=True),
    Column("loss@<epoch>", OUTCOME, "the training loss at each epoch of `log.loss_at` (the first epoch is 1)",
           pattern=r"loss@\d+"),
    Column("grad_norm_first", OUTCOME, "`grad_norm` of the first layer at the last probed epoch", expect=True),
    Column("grad_norm_last", OUTCOME, "`grad_norm` of the last hidden layer, the one before the output head, "
           "at the last probed epoch", expect=True),
    Column("grad_ratio", OUTCOME, "`grad_norm_first / grad_norm_last`: far below 1, vanishing gradients; far "
           "above, exploding", expect=True),
    Column("grad_norm_first@init", OUTCOME, "`grad_norm_first` at initialisation (epoch 0, before any step)",
           BOTH, diagnosis="the first layer's gradient norm, the mean over the draws"),
    Column("grad_norm_last@init", OUTCOME, "`grad_norm_last` at initialisation", BOTH,
           diagnosis="the last hidden layer's gradient norm, the mean over the draws"),
    Column("grad_ratio@init", OUTCOME, "`grad_ratio` at initialisation: a long run can end with every layer's "
           "gradient vanished and `grad_ratio` near 1, where this still shows the decay that stopped training",
           BOTH, diagnosis="`grad_norm_first@init / grad_norm_last@init`, the geometric mean over the draws"),
    Column("grad_decay@init", OUTCOME, "`grad_ratio@init^(1/(L-2))` for L weight layers: the gradient's factor "
           "per layer", (DIAGNOSIS,)),
    Column("signal_growth@init", OUTCOME, "`act_std` of the last hidden layer squared over the first's",
           (DIAGNOSIS,)),
    Column("dead_frac_max@init", OUTCOME, "the largest per-layer `dead_frac`, the mean over the draws",
           (DIAGNOSIS,)),
    Column("dead_layer@init", OUTCOME, "the layer `dead_frac_max@init` is in", (DIAGNOSIS,)),
    Column("saturated_frac_max@init", OUTCOME, "the largest per-layer `saturated_frac`, the mean over the draws",
           (DIAGNOSIS,)),
    Column("saturated_layer@init", OUTCOME, "the layer `saturated_frac_max@init` is in", (DIAGNOSIS,)),
    Column("dead_frac_max", OUTCOME, "the largest `dead_frac` over layers at the last probed epoch", expect=True),
    Column("saturated_frac_max", OUTCOME, "the largest `saturated_frac` over layers at the last probed epoch",
           expect=True),
    Column("narrowest", OUTCOME, "the fewest units of a hidden fully connected layer; null where a hidden layer "
           "is not a Linear", (DIAGNOSIS,)),
    Column("target_rank", OUTCOME, "regression: the dimensions the training targets span (the rank of the "
           "centred targets); null for classification. Fewer `narrowest` units: `bottleneck`", (DIAGNOSIS,)),
    Column("jac_sv_max", OUTCOME, "the input-output Jacobian's largest singular value over the samples",
           (DIAGNOSIS,)),
    Column("jac_sv_min", OUTCOME, "its smallest singular value", (DIAGNOSIS,)),
    Column("jac_sv_mean_sq", OUTCOME, "its mean squared singular value, ‖J‖_F^2 / n", (DIAGNOSIS,)),
    Column("jac_condition", OUTCOME, "`jac_sv_max / jac_sv_min`", (DIAGNOSIS,)),
    Column("jac_method", OUTCOME, "`exact` or `estimated` (Golub-Kahan-Lanczos), or `not applicable: <why>`",
           (DIAGNOSIS,)),
    Column("jac_dims", OUTCOME, "the Jacobian's shape", (DIAGNOSIS,)),
    Column("mean_field", OUTCOME, "`applicable`, or `not applicable: <why>` (residual blocks, a norm, dropout, "
           "a conv net, a user's model, an activation the theory lacks)", (DIAGNOSIS,)),
    Column("sigma_w2", OUTCOME, "the hidden layers' weight variance times fan-in, as the init gives it",
           (DIAGNOSIS,)),
    Column("sigma_b2", OUTCOME, "the hidden layers' bias variance", (DIAGNOSIS,)),
    Column("critical_sigma_w2", OUTCOME, "the `sigma_w2` where `chi_1` = 1 at this `sigma_b2`", (DIAGNOSIS,)),
    Column("q_star", OUTCOME, "the fixed point of the length map", (DIAGNOSIS,)),
    Column("chi_1", OUTCOME, "sigma_w2 E[phi'(sqrt(q*) z)^2]: below 1 ordered, above 1 chaotic", (DIAGNOSIS,)),
    Column("c_star", OUTCOME, "the correlation map's stable fixed point", (DIAGNOSIS,)),
    Column("chi_c", OUTCOME, "the correlation map's slope at `c_star`", (DIAGNOSIS,)),
    Column("xi_q", OUTCOME, "the depth scale over which the length approaches `q_star`", (DIAGNOSIS,)),
    Column("xi_c", OUTCOME, "the depth scale over which two inputs' correlation approaches `c_star`",
           (DIAGNOSIS,)),
    Column("trainable_depth", OUTCOME, "6 `xi_c`: the depth mean-field theory says trains", (DIAGNOSIS,)),
    Column("phase", OUTCOME, "`ordered` (chi_1 < 1), `chaotic` or `critical` (abs(chi_1 - 1) < 1e-4)",
           (DIAGNOSIS,)),
    Column("verdict@init", OUTCOME, "the diagnosis's verdict on the run's own epoch 0 (one draw, the first "
           f"`batch_size` rows), by the rules of the diagnosis: {VERDICT_NAMES}", BOTH,
           diagnosis=f"the verdict: {VERDICT_NAMES}"),
    Column("evidence", OUTCOME, "the numbers behind the verdict, in words", (DIAGNOSIS,)),
    Column("fixes", OUTCOME, "what to try against the verdict's trouble, less the fixes that are only settings the "
           "config already has", (DIAGNOSIS,)),
    Column("seconds", OUTCOME, "wall-clock time of the whole run; trained in a stack, its share: the stack's "
           "time / `stack_size`", BOTH, diagnosis="wall-clock time of the diagnosis", expect=True),
    Column("stack_size", RECORD, "how many jobs trained together as one stacked model (the batched launcher, "
           "the default of `deeprun -m`); 1 for a run on its own"),
    Column("host", RECORD, "the machine's network name (`platform.node()`)", BOTH),
    Column("torch", RECORD, "the torch version the run used", BOTH),
    Column("error", OUTCOME, "`ExceptionType: message` for a failed run, `KeyboardInterrupt` for an interrupted "
           "one, otherwise null", BOTH, diagnosis="for a failed diagnosis, why"),
    Column("expect_missed", OUTCOME, "only with `expect.*`: the first expectation the run missed, as one line, "
           "or null when it met them all"),
    Column("overrides", RECORD, "the run's command-line overrides as Hydra recorded them (`act=tanh depth=8`)",
           (RESULTS,)),
    Column("run", RECORD, "the run's directory (in a sweep's results.csv, relative to the sweep's)", (RESULTS,)),
)

# epochs.csv, one row per epoch (epoch 0: the model at initialisation)
EPOCH_ROW: tuple[Column, ...] = (
    Column("epoch", RECORD, "0 for the model at initialisation, then 1, 2, ...", (EPOCHS,)),
    Column("train_loss", OUTCOME, "the mean of the epoch's minibatch losses, each before its step, weighted "
           "by batch size (epoch 0: the loss of the first batch at initialisation)", (EPOCHS,)),
    Column("val_loss", OUTCOME, "the validation loss after the epoch's steps, in eval mode", (EPOCHS,)),
    Column("val_r2", OUTCOME, "regression: the validation R^2, as `val_loss`", (EPOCHS,)),
    Column("val_accuracy", OUTCOME, "classification: the validation accuracy, as `val_loss`", (EPOCHS,)),
    Column("val_rmse", OUTCOME, "regression: the validation RMSE in the target's own units", (EPOCHS,)),
    Column("lr", OUTCOME, "the learning rate the epoch trained with", (EPOCHS,)),
    Column("seconds", OUTCOME, "wall-clock time of the epoch (in a stack, its share: the stack's epoch time / "
           "`stack_size`)", (EPOCHS,)),
)

# layers.csv, one row per (probed epoch, layer); the outcome columns are the probes' (records.LAYER_COLUMNS)
LAYER_ROW: tuple[Column, ...] = (
    Column("epoch", RECORD, "the probed epoch: 0, every `log.every`-th and the last", (LAYERS,)),
    Column("layer", RECORD, "the layer's index in forward order, 0 first", (LAYERS,)),
    Column("name", RECORD, "its module path (`fc0`, `blocks.41.f.fc1`, `head`)", (LAYERS,)),
    Column("grad_norm", OUTCOME, "L2 norm of the layer's weight gradient, before clipping, averaged over the "
           "epoch's optimiser steps (full batch: the one step); at epoch 0, the gradient of epoch 0's batch at "
           "initialisation", (LAYERS,)),
    Column("weight_norm", OUTCOME, "norm of the weight at the end of the epoch", (LAYERS,)),
    Column("update_ratio", OUTCOME, "`‖W_after - W_before‖ / ‖W_before‖` over the epoch; empty at epoch 0",
           (LAYERS,)),
    Column("act_mean", OUTCOME, "mean of the output of the activation that follows the layer, on the probe batch "
           "(the first 8192 validation rows, or training rows without a validation set), in eval mode, over "
           "all samples and units", (LAYERS,)),
    Column("act_std", OUTCOME, "its standard deviation, as `act_mean`", (LAYERS,)),
    Column("dead_frac", OUTCOME, "share of units never positive on any probe sample. ReLU family only (relu, "
           "leaky_relu, elu, selu, gelu, silu, mish); in a conv net a unit is a channel map, dead when never "
           "positive at any position", (LAYERS,)),
    Column("saturated_frac", OUTCOME, "share of unit-sample pairs in the flat tails: tanh `abs(a) > 0.99`, "
           "sigmoid `a < 0.01` or `a > 0.99`. tanh and sigmoid only", (LAYERS,)),
)



def _over_draws(file: str, name: str, meaning: str) -> tuple[Column, Column]:
    """A diagnosis number (its mean over the draws) and its spread, `<name>_std`."""
    return (Column(name, OUTCOME, f"{meaning}: the mean over the draws", (file,)),
            Column(f"{name}_std", OUTCOME, f"`{name}`'s spread: its standard deviation over the draws (ddof 0)", (file,)))


# diagnosis_layers.csv, one row per weight layer: the numbers of layers.csv's epoch 0, on each draw
DIAGNOSIS_LAYER_ROW: tuple[Column, ...] = (
    Column("layer", RECORD, "the layer's index in forward order, 0 first", (DIAGNOSIS_LAYERS,)),
    Column("name", RECORD, "its module path, as layers.csv's", (DIAGNOSIS_LAYERS,)),
    *_over_draws(DIAGNOSIS_LAYERS, "pre_mean", "mean of the input of the activation that follows the layer (its "
                 "pre-activation), on the first `diagnose.rows` training rows in training mode"),
    *_over_draws(DIAGNOSIS_LAYERS, "pre_std", "its standard deviation, as `pre_mean`"),
    *_over_draws(DIAGNOSIS_LAYERS, "act_mean", "layers.csv's `act_mean`, on the rows of `pre_mean`"),
    *_over_draws(DIAGNOSIS_LAYERS, "act_std", "layers.csv's `act_std`, on the rows of `pre_mean`"),
    *_over_draws(DIAGNOSIS_LAYERS, "grad_norm", "L2 norm of the layer's weight gradient of the loss on those rows"),
    *_over_draws(DIAGNOSIS_LAYERS, "dead_frac", "layers.csv's `dead_frac`, on those rows"),
    *_over_draws(DIAGNOSIS_LAYERS, "saturated_frac", "layers.csv's `saturated_frac`, on those rows"),
)

# diagnosis_blocks.csv, residual nets only: one row per block (Brock, De & Smith 2021)
DIAGNOSIS_BLOCK_ROW: tuple[Column, ...] = (
    Column("block", RECORD, "the residual block's index, 0 first", (DIAGNOSIS_BLOCKS,)),
    Column("name", RECORD, "`block<index>`", (DIAGNOSIS_BLOCKS,)),
    *_over_draws(DIAGNOSIS_BLOCKS, "avg_sq_mean", "the mean over channels of the squared channel mean of the "
                 "block's output (a channel's statistics over the batch and its positions)"),
    *_over_draws(DIAGNOSIS_BLOCKS, "avg_var", "the mean over channels of the channel variance of the block's output"),
    *_over_draws(DIAGNOSIS_BLOCKS, "branch_var", "`avg_var` of the residual branch f(x)"),
)

DIAGNOSIS_JACOBIAN_ROW: tuple[Column, ...] = (
    Column("singular_value", OUTCOME, "a singular value of the input-output Jacobian of draw 0 (the net this `seed` "
           "trains), pooled over its `diagnose.jacobian_samples` samples", (DIAGNOSIS_JACOBIAN,)),
)

FILE_ROWS = {SUMMARY: ROW, DIAGNOSIS: ROW, RESULTS: ROW, EPOCHS: EPOCH_ROW, LAYERS: LAYER_ROW,
             DIAGNOSIS_LAYERS: DIAGNOSIS_LAYER_ROW, DIAGNOSIS_BLOCKS: DIAGNOSIS_BLOCK_ROW,
             DIAGNOSIS_JACOBIAN: DIAGNOSIS_JACOBIAN_ROW}
EXPECT_COLUMNS = tuple(c.name for c in ROW if c.expect)  # config.ExpectConfig: <column>_below / _above


def _same_name(column: Column, name: str) -> bool:
    return re.fullmatch(column.pattern, name) is not None if column.pattern else column.name == name


@functools.lru_cache(maxsize=4096)
def _find(name: str, file: str) -> int | None:
    """The index in FILE_ROWS[file] of the column (or family) `name` is, or None."""
    return next((i for i, c in enumerate(FILE_ROWS[file]) if _same_name(c, name)), None)


def column(name: str, file: str = RESULTS) -> Column | None:
    """The schema's entry for column `name` of `file` (a family's for `loss@200`), or None for one it lacks."""
    i = _find(str(name), file)
    return None if i is None else FILE_ROWS[file][i]


def select(*names: str, file: str = RESULTS) -> tuple[str, ...]:
    """`names`, a module's own choice of columns (what a table shows first), each checked to be a column
    of `file`: a column renamed or dropped here fails at import, not as a silently empty table cell."""
    unknown = [n for n in names if column(n, file) is None]
    if unknown:
        raise KeyError(f"not columns of {file} in deeprun/schema.py: {', '.join(unknown)}")
    return names


def kind(name: str) -> str | None:
    """CONFIG, OUTCOME or RECORD for a results column; None for one the schema lacks (an older record's)."""
    found = column(name)
    return found.kind if found else None


def is_config(name: str) -> bool:
    return kind(name) == CONFIG


_STATUS = next(i for i, c in enumerate(ROW) if c.name == "status")


def describes_run(name: str) -> bool:
    """Whether results column `name` says which run it is, not how it went: one of ROW's before `status` (the
    config, `config_key`, and what the data and deeprun decided for the run: `task`, `params`, `threads`)."""
    i = _find(str(name), RESULTS)
    return i is not None and i < _STATUS


def config_columns(names) -> list[str]:
    """The config columns among `names`, in their order."""
    return [n for n in names if is_config(n)]


_UNKNOWN = next(i for i, c in enumerate(ROW) if c.files == (RESULTS,))  # where a column the schema lacks goes


def order(names) -> list[str]:
    """`names` (each once) in the schema's order of ROW; columns of one family, and columns the schema lacks
    (placed before `overrides` and `run`), in the order `names` gives them."""
    names = list(dict.fromkeys(names))
    place = {n: (i if (i := _find(str(n), RESULTS)) is not None else _UNKNOWN - 0.5) for n in names}
    return sorted(names, key=place.__getitem__)  # stable: a family's members keep their order


# --- docs/records.md -------------------------------------------------------------------------

BEGIN, END = "<!-- columns: {file} (generated: deeprun.schema.write_docs()) -->", "<!-- /columns -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "records.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(file: str) -> str:
    """The column table of `file` as docs/records.md shows it: one row per column (a family as one)."""
    lines = ["| column | kind | meaning |", "|---|---|---|"]
    columns = [c for c in FILE_ROWS[file] if file in c.files or file == RESULTS]
    if file == DIAGNOSIS:  # its config columns are summary.json's: one row names them
        config = [c for c in columns if c.kind == CONFIG]
        lines.append(f"| {', '.join(f'`{c.name}`' for c in config)} | config | as summary.json's |")
        columns = [c for c in columns if c.kind != CONFIG]
    if file == RESULTS:  # every row file's columns, then its own
        lines.append("| every column of summary.json and diagnosis.json | theirs | merged in deeprun/schema.py's order "
                     "(`ROW`): the config columns first, whichever rows have them; a column the schema lacks (an "
                     "older record's) before `overrides` |")
        columns = [c for c in columns if c.files == (RESULTS,)]
    for c in columns:
        meaning = c.meaning
        if file == DIAGNOSIS:
            meaning = c.diagnosis or ("as summary.json's" if SUMMARY in c.files else c.meaning)
        lines.append(f"| `{c.name}` | {c.kind} | {_cell(meaning)} |")
    return "\n".join(lines)


def render(text: str) -> str:
    """`text` (docs/records.md) with each generated column table replaced by the schema's."""
    for file in FILE_ROWS:
        begin = BEGIN.format(file=file)
        block = re.compile(re.escape(begin) + r"\n.*?" + re.escape(END), re.S)
        text = block.sub(lambda _: f"{begin}\n{markdown(file)}\n{END}", text)
    return text


def write_docs(path: Path = DOC) -> bool:
    """Regenerate the column tables of docs/records.md; whether that changed it."""
    before = path.read_text()
    after = render(before)
    if after != before:
        path.write_text(after)
    return after != before
