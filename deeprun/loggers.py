"""logger=tensorboard | mlflow: each training job's numbers, also where those tools read them.

deeprun's own records (summary.json, epochs.csv, layers.csv) stay the record; a logger copies what
they hold as it comes, per job (each member of a stack to its own run), never inside a training step:

- at each logged epoch's host sync (api._train_jobs's on_log), the epochs since the last one:
  `train_loss`, `val_loss`, the metric (`val_r2` / `val_accuracy`), `val_rmse` (regression) and `lr`,
  step = epoch; and that logged epoch's layer probes as `<layers.csv column>/<layer name>`
  (`grad_norm/fc0`, `act_std/head`, ...), step = epoch. Both tools take the same names;
- before the first epoch (MLflow) or when the job ends (TensorBoard's HParams), the config half of the
  results row (records.config_row and what the run adds: init's pick, device, params, threads) as
  hyper-parameters;
- when the job ends, whatever epochs a Ctrl-C left unsynced, then the outcome half's numbers as
  `summary/<column>` at the last epoch (`@` is written `_at_`: `summary/loss_at_200`,
  `summary/grad_ratio_at_init`), and its status.

NaN values (a statistic a layer has not: dead_frac of a tanh layer, update_ratio at epoch 0; the
validation columns without a validation set) are left out. A logger that cannot open its store or
folder fails the job before it trains (ConfigError: one line, exit 2); one that fails later prints one
warning line and stops logging, and the job trains on: its own records are whole either way.

torch, tensorboard and mlflow are imported only when a logger opens: logger=none costs nothing.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from . import schema
from .config import ConfigError
from .records import LAYER_COLUMNS, config_key

EPOCH_SKIP = schema.select("epoch", "seconds", file=schema.EPOCHS)  # epochs.csv columns not logged: the step, timing
FLUSH_METRICS = 1000  # MLflow: buffered metrics written in one log_batch (its limit a call); a batch costs
FLUSH_SECONDS = 5.0  # ... about what 10 small ones do, so they wait for 1000 or for this long, whichever first
MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
HPARAMS_STATUS = {"completed": "STATUS_SUCCESS", "diverged": "STATUS_SUCCESS", "failed": "STATUS_FAILURE",
                  "interrupted": "STATUS_ABORTED"}
TEXT_COLUMNS = schema.select("verdict@init", "error", "expect_missed")  # outcome strings: MLflow tags deeprun.<name>
# While a tracking server is first reached: a wrong host or port fails in seconds, not in MLflow's
# 7 retries with backoff (4 minutes); the user's own settings of these win
OPENING_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def open_logger(cfg: DictConfig, out: Optional[Path]) -> Optional["Logger"]:
    """The job's logger (None for logger=none), its store or folder opened: a ConfigError if it cannot be."""
    name = OmegaConf.select(cfg, "logger.name", default="none")
    if name == "none":
        return None
    out = Path(out).resolve() if out is not None else None
    kind = {"tensorboard": TensorBoard, "mlflow": MLflow}[name]
    try:
        return kind(cfg, out, sweep_dir(out))
    except ConfigError:
        raise
    except Exception as e:  # a bad URI, a folder that cannot be made: the user's to fix, before any training
        raise ConfigError(f"logger={name}: cannot open {kind.where(cfg)}: {one_line(e)}") from e


def one_line(e: BaseException) -> str:
    """An exception's first line (SQLAlchemy's and MLflow's messages go on for several)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def sweep_dir(out: Optional[Path]) -> Optional[Path]:
    """The sweep directory of a job of a sweep (a multirun), None for a single run.

    In the process Hydra runs the job in, HydraConfig says (the batched launcher sets it to the
    group's first job: the same sweep); elsewhere (a batched launcher's submitit task) the job's
    .hydra/hydra.yaml, written before it starts, says whether it is a multirun, and the sweep is
    then the job directory's parent. A job directory outside HydraConfig's sweep dir (a stale
    HydraConfig in a notebook or a test) is not that sweep's."""
    if out is None:
        return None
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.get()
            if hydra_cfg.mode == RunMode.MULTIRUN:
                top = Path(str(hydra_cfg.sweep.dir)).resolve()
                if out != top and out.is_relative_to(top):
                    return top
    except Exception:  # a HydraConfig that cannot be read: the job's own files say
        pass
    path = out / ".hydra" / "hydra.yaml"
    try:
        multirun = re.search(r"^\s+mode: MULTIRUN\s*$", path.read_text(), re.MULTILINE) is not None
    except OSError:
        return None
    return out.parent if multirun else None


def tag_name(column: str) -> str:
    """A results column as a metric, tag or param name both tools take (MLflow refuses `@`)."""
    return column.replace("@", "_at_")


class Logger:
    """What both loggers share: which epochs and layer stats of the History are logged already, and
    the rule that a failure after opening is one warning, after which the logger is silent."""

    name = ""

    def __init__(self, out: Optional[Path]):
        self.out = out
        self._epochs = self._logged = 0  # h.epochs, h.logged written so far
        self._last_step = 0
        self.broken = False

    @staticmethod
    def where(cfg: DictConfig) -> str:
        raise NotImplementedError

    # the calls api makes --------------------------------------------------------------

    def start(self, row: dict) -> None:
        """Training starts: `row` is the config half of the results row, complete."""
        self._guard(self._start, row)

    def log(self, history) -> None:
        """At a logged epoch's sync: the History's epochs and layer stats not yet logged."""
        self._guard(self._log, history)

    def _log(self, history) -> None:
        rows, new = history.epochs[self._epochs:], history.logged[self._logged:]
        self._epochs, self._logged = len(history.epochs), len(history.logged)
        if rows or new:
            steps = scalars(rows, history.probes.table(new, history.member) if new else None)
            self._last_step = max(self._last_step, *steps)
            self._write(steps)

    def finish(self, history, summary: dict) -> None:
        """The job ended (records written): what is left in the History, the summary, the status; then close."""
        self.log(history)
        self._guard(self._finish, summary, self._last_step)
        try:
            self._close()
        except Exception as e:
            self._warn(e)

    # each logger's own ---------------------------------------------------------------

    def _start(self, row: dict) -> None:
        pass

    def _write(self, steps: dict[int, dict[str, float]]) -> None:
        raise NotImplementedError

    def _finish(self, summary: dict, step: int) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _guard(self, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as e:
            self._warn(e)

    def _warn(self, e: Exception) -> None:
        if not self.broken:
            self.broken = True
            run = f" ({self.out})" if self.out is not None else ""
            print(f"deeprun: warning: logger={self.name} stopped logging{run}: {one_line(e)}; "
                  f"the run's own records are whole", file=sys.stderr)


def scalars(rows: list[dict], table: Optional[dict]) -> dict[int, dict[str, float]]:
    """step (epoch) -> {name: value} of epochs.csv rows and a layers.csv table; NaN left out."""
    steps: dict[int, dict[str, float]] = {}
    for row in rows:
        values = steps.setdefault(int(row["epoch"]), {})
        for key, value in row.items():
            if key not in EPOCH_SKIP and value is not None and not math.isnan(value):
                values[key] = float(value)
    if table is not None:
        for i, epoch in enumerate(table["epoch"].tolist()):
            values, layer = steps.setdefault(int(epoch), {}), table["name"][i]
            for column in LAYER_COLUMNS:
                value = float(table[column][i])
                if not math.isnan(value):
                    values[f"{column}/{layer}"] = value
    return steps


def split_summary(summary: dict) -> tuple[dict, dict, dict]:
    """(config half, outcome numbers as summary/<column>, outcome strings) of a results row: the config half
    is the columns that describe the run (schema.describes_run: ROW's before `status`), the rest its outcome."""
    config = {k: v for k, v in summary.items() if schema.describes_run(k)}
    numbers, texts = {}, {}
    for k, v in summary.items():
        if k in config or k == "status":
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            numbers[f"summary/{tag_name(k)}"] = float(v)
        elif isinstance(v, str) and k in TEXT_COLUMNS:
            texts[tag_name(k)] = v
    return config, numbers, texts


def run_name(out: Optional[Path], sweep: Optional[Path]) -> Optional[str]:
    """A sweep job: its directory under the sweep's (`3_act=tanh,depth=8`); a single run: its directory,
    relative to the working directory if below it (`outputs/runs/<day>/<time>`)."""
    if out is None:
        return None
    base = sweep if sweep is not None else Path.cwd().resolve()
    return str(out.relative_to(base)) if out.is_relative_to(base) else str(out)


# --- TensorBoard ----------------------------------------------------------------------------


def tensorboard_dir(root: Optional[str], out: Optional[Path]) -> Path:
    """logger.dir null: <run dir>/tensorboard. Set: a root, as `tensorboard --logdir` takes it; each run
    writes below it to its run directory's path relative to the working directory (its absolute path's
    parts below / when not under it), or to the root itself when the run has no directory."""
    if root is None:
        if out is None:
            raise ConfigError("logger=tensorboard: this run has no directory to write its events to "
                              "(api.run without out_dir); set logger.dir")
        return out / "tensorboard"
    if out is None:
        return Path(root)
    cwd = Path.cwd().resolve()
    return Path(root) / (out.relative_to(cwd) if out.is_relative_to(cwd) else out.relative_to(out.anchor))


class TensorBoard(Logger):
    """torch.utils.tensorboard's SummaryWriter: scalars, one event per epoch; HParams when the job ends."""

    name = "tensorboard"

    def __init__(self, cfg: DictConfig, out: Optional[Path], sweep: Optional[Path]):
        super().__init__(out)
        from torch.utils.tensorboard import SummaryWriter

        self.dir = tensorboard_dir(cfg.logger.dir, out)
        self.writer = SummaryWriter(str(self.dir))  # makes the folder and its event file: or fails here

    @staticmethod
    def where(cfg: DictConfig) -> str:
        return f"logger.dir={cfg.logger.dir}" if cfg.logger.dir is not None else "<run dir>/tensorboard"

    def _write(self, steps: dict[int, dict[str, float]]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        now = time.time()
        for step, values in steps.items():  # one Summary per epoch with all its values: a sixth of add_scalar's time
            summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
            self.writer.file_writer.add_summary(summary, step, now)

    def _finish(self, summary: dict, step: int) -> None:
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams

        config, numbers, _ = split_summary(summary)
        config = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}  # a null is left out
        exp, ssi, sei = hparams(config, numbers)
        data = HParamsPluginData.FromString(sei.value[0].metadata.plugin_data.content)
        data.session_end_info.status = Status.Value(HPARAMS_STATUS.get(summary.get("status"), "STATUS_UNKNOWN"))
        sei.value[0].metadata.plugin_data.content = data.SerializeToString()
        for part in (exp, ssi, sei):
            self.writer.file_writer.add_summary(part, step)
        self._write({step: numbers})  # the HParams table reads its metrics from these scalars

    def _close(self) -> None:
        self.writer.close()


# --- MLflow -------------------------------------------------------------------------------------

_PARENTS: dict[tuple[str, str, str], str] = {}  # (tracking uri, experiment, sweep dir) -> parent run, this process
_CHILDREN: collections.Counter = collections.Counter()  # parent run -> its runs open in this process


def tracking_uri(uri: str) -> str:
    """A sqlite:/// URI with its path made absolute (relative: to the working directory) and its folder made."""
    prefix = "sqlite:///"
    path, sep, query = uri[len(prefix):].partition("?")
    if not uri.startswith(prefix) or path in ("", ":memory:"):
        return uri
    path = Path(path) if Path(path).is_absolute() else Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{path}{sep}{query}"


class MLflow(Logger):
    """MlflowClient (never the fluent API: its one active run cannot be a stack's several): a run per job,
    a child of the sweep's parent run in a sweep."""

    name = "mlflow"

    def __init__(self, cfg: DictConfig, out: Optional[Path], sweep: Optional[Path]):
        super().__init__(out)
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg.logger.tracking_uri)
        with _environ(OPENING_HTTP), _quiet("mlflow.store.db.utils", "alembic"):  # a new store's "Creating tables"
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self._experiment(cfg.logger.experiment)
        tags = {"deeprun.config_key": config_key(cfg)}
        if out is not None:
            tags["deeprun.run_dir"] = str(out)
        self.parent = None
        if sweep is not None:
            self.parent = self._parent(experiment, sweep)
            tags.update({"mlflow.parentRunId": self.parent, "deeprun.sweep_dir": str(sweep)})
        self.run_id = self.client.create_run(experiment, tags=tags, run_name=run_name(out, sweep)).info.run_id
        if self.parent is not None:
            _CHILDREN[self.parent] += 1
        self.buffer: list = []
        self.flushed = time.monotonic()

    @staticmethod
    def where(cfg: DictConfig) -> str:
        return f"logger.tracking_uri={cfg.logger.tracking_uri}"

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process made it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _parent(self, experiment: str, sweep: Path) -> str:
        """The sweep's parent run: found by its tag deeprun.sweep (a hash of the sweep dir) or made, under
        the sweep dir's lock, so that jobs in several processes (joblib, submitit) find one parent; then
        remembered in this process (the batched and basic launchers train every job in one)."""
        from . import sweep as sweeps

        key = (self.uri, experiment, str(sweep))
        parent = _PARENTS.get(key)
        if parent is None:
            tag = hashlib.sha1(str(sweep).encode()).hexdigest()[:16]
            with sweeps._locked(sweep):
                found = self.client.search_runs([experiment], filter_string=f"tags.`deeprun.sweep` = '{tag}'",
                                                order_by=["attributes.start_time ASC"], max_results=1)
                if found:
                    parent = found[0].info.run_id
                    if found[0].info.status != "RUNNING":
                        self.client.update_run(parent, status="RUNNING")
                else:
                    parent = self.client.create_run(experiment, run_name=sweep.name, tags={
                        "deeprun.sweep": tag, "deeprun.sweep_dir": str(sweep)}).info.run_id
            _PARENTS[key] = parent
        elif not _CHILDREN[parent]:  # it was marked finished when this process's last job ended
            self.client.update_run(parent, status="RUNNING")
        return parent

    def _start(self, row: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, param_value(v)) for k, v in row.items()]
        for i in range(0, len(params), 100):  # MLflow's limit of params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _write(self, steps: dict[int, dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer += [Metric(k, v, now, step) for step, values in steps.items() for k, v in values.items()]
        if time.monotonic() - self.flushed >= FLUSH_SECONDS:
            self._flush()
        while len(self.buffer) >= FLUSH_METRICS:  # full batches now, the rest with the next
            self._flush(FLUSH_METRICS)

    def _flush(self, n: Optional[int] = None) -> None:
        """Write the first n buffered metrics (all of them: None), in batches of at most FLUSH_METRICS."""
        n = len(self.buffer) if n is None else n
        for i in range(0, n, FLUSH_METRICS):
            self.client.log_batch(self.run_id, metrics=self.buffer[i:min(i + FLUSH_METRICS, n)])
        del self.buffer[:n]
        self.flushed = time.monotonic()

    def _finish(self, summary: dict, step: int) -> None:
        from mlflow.entities import RunTag

        _, numbers, texts = split_summary(summary)
        self._write({step: numbers})
        self._flush()
        status = summary.get("status")
        tags = [RunTag("deeprun.status", str(status))] + [RunTag(f"deeprun.{k}", v[:5000]) for k, v in texts.items()]
        self.client.log_batch(self.run_id, tags=tags)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))

    def _close(self) -> None:
        if self.broken:  # a run left RUNNING says nothing true: try to end it
            with contextlib.suppress(Exception):
                self.client.set_terminated(self.run_id, "FAILED")
        if self.parent is not None:
            _CHILDREN[self.parent] -= 1
            if not _CHILDREN[self.parent]:  # the parent's end time: its last job's, so far
                self.client.set_terminated(self.parent, "FINISHED")


@contextlib.contextmanager
def _environ(defaults: dict[str, str]):
    """os.environ with `defaults` for the variables that are not set, inside the block."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _quiet(*names: str):
    """The named loggers say only warnings and errors inside the block."""
    found = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in found]
    for lg in found:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(found, levels):
            lg.setLevel(level)


def param_value(value: Any) -> str:
    """A config value as an MLflow param (a string), spelt as in the config: null, true, 0.001."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)[:6000]  # MLflow's limit of a param's length
