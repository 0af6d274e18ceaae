"""hydra/launcher=batched, the launcher of `deeprun -m`: a sweep's jobs in groups, each group one `api.run_group`.

Hydra's basic launcher composes every job from scratch (twice: once when the sweeper checks
the batch, once to launch it) and runs them one at a time. This one:

- composes with Hydra once per distinct set of *structural* overrides (config group choices,
  ``+``/``++``/``~`` overrides, hydra overrides) and derives the other jobs from that template,
  as Hydra itself applies ``key=value`` overrides after composing (:class:`FastConfigLoader`);
- writes each job directory as Hydra's ``run_job`` does (``.hydra/config.yaml``, ``hydra.yaml``,
  ``overrides.yaml``), so deeprun-report, resume and ``records._overrides`` read it as before;
- skips what ``resume=true`` finds finished, groups the rest by ``stack.group_key`` and hands
  each group to ``api.run_group``, in this process or as one submitit task (``submitit: local|slurm``);
- prints one line per job and updates results.csv once per group.

Hydra only instantiates plugins under the ``hydra_plugins`` namespace package: the class Hydra
sees is ``hydra_plugins.deeprun_launcher.BatchedLauncher``, a thin shell around :class:`Batched`.
No torch here: it loads with ``api``, when the first group trains.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import logging
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override, filter_overrides, setup_globals
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf, flag_override, open_dict, read_write

from . import sweep
from .config import ConfigError
from .records import SUMMARY

TRAIN_GROUP = "deeprun.api:run_group"  # how a group of deeprun's jobs runs; deeprun-diagnose's task names its own

log = logging.getLogger(__name__)

SUBMITIT_KINDS = ("local", "slurm")
# submitit's own parameters, shared by every executor; the rest are slurm's (passed as slurm_<key>)
BASE_PARAMS = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
               "stderr_to_stdout")
EXECUTOR_INIT = ("max_num_timeout",)  # given to the executor itself, not to update_parameters


# --- composition ---------------------------------------------------------------------------


class _ClassPickler(pickle.Pickler):
    """Pickles classes by identity: a config's structured types need not be importable (make_dataclass)."""

    def __init__(self, file: io.BytesIO, classes: list) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.classes = classes

    def persistent_id(self, obj: Any) -> Optional[int]:
        if isinstance(obj, type) and not _importable(obj):
            self.classes.append(obj)
            return len(self.classes) - 1
        return None


def _importable(cls: type) -> bool:
    """Whether pickle finds `cls` by its name (a class made by make_dataclass says module `types`)."""
    obj: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


class _ClassUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, classes: list) -> None:
        super().__init__(io.BytesIO(data))
        self.classes = classes

    def persistent_load(self, pid: int) -> type:
        return self.classes[pid]


class _Template:
    """A composed config, kept pickled: unpickling copies it in a fifth of deepcopy's time."""

    def __init__(self, cfg: DictConfig) -> None:
        self.classes: list = []
        buffer = io.BytesIO()
        _ClassPickler(buffer, self.classes).dump(cfg)
        self.data = buffer.getvalue()

    def copy(self) -> DictConfig:
        return _ClassUnpickler(self.data, self.classes).load()


class FastConfigLoader:
    """Hydra's config loader, composing once per distinct set of structural overrides.

    `load_sweep_config` gives what Hydra's own gives (`OmegaConf.to_container(resolve=False)`
    equal, hydra node included): it composes with Hydra only the overrides that shape the
    defaults list or that Hydra applies in an order that matters (group choices, ``+``/``++``/``~``,
    hydra overrides), then applies the job's plain ``key=value`` overrides to a copy of that
    template with Hydra's own `_apply_overrides_to_config`, and sets the per-job fields Hydra's
    `_load_configuration_impl` sets (`hydra.overrides.task`, `hydra.job.override_dirname`). Results
    are memoised by the whole override list, so a launch reuses what the sweeper's check composed.
    Anything else goes to the wrapped loader; so does any job the fast path cannot derive, and
    then Hydra's own error is what the user sees.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.compositions = 0  # Hydra compositions so far (tests)
        self._parser = OverridesParser.create()
        self._templates: dict[tuple, tuple[_Template, _Template]] = {}  # (whole config, task config) per structure
        self._repos: dict[tuple, Any] = {}
        self._parsed: dict[str, Override] = {}
        self._memo: dict[tuple, tuple[DictConfig, Any]] = {}  # overrides -> _derive's result, until the launch takes it
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        self._fast = isinstance(inner, ConfigLoaderImpl)  # the private methods used below are that class's

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        _freeze_heap()  # the sweeper's check of a batch: the launch thaws it
        key = self._key(master_config, sweep_overrides)
        if key not in self._memo:
            self._memo[key] = self._derive(master_config, list(sweep_overrides))
        return self._memo[key][0]

    def take(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> tuple[DictConfig, DictConfig]:
        """(the job's whole config, its task config without the hydra node), for the launch, which changes
        them: the memoised config (forgotten here, so that nothing else sees those changes) or a new one."""
        entry = self._memo.pop(self._key(master_config, sweep_overrides), None)
        cfg, task = entry if entry is not None else self._derive(master_config, list(sweep_overrides))
        return cfg, task() if task is not None else _without_hydra(cfg)

    @staticmethod
    def _key(master_config: DictConfig, sweep_overrides: Sequence[str]) -> tuple:
        hydra_overrides = OmegaConf.to_container(master_config.hydra.overrides.hydra)  # as typed: `${...}` unresolved
        return master_config.hydra.job.config_name, tuple(hydra_overrides), tuple(sweep_overrides)

    def _derive(self, master_config: DictConfig, sweep_overrides: List[str]) -> tuple[DictConfig, Any]:
        """(config, a function making its task config, or None: copy the config without its hydra node)."""
        if not self._fast:
            self.compositions += 1
            return self.inner.load_sweep_config(master_config, sweep_overrides), None
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        name = master_config.hydra.job.config_name
        hydra_overrides = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))
        try:
            parsed = [self._parse(line) for line in hydra_overrides + sweep_overrides]
            plain = self._plain(parsed, self._groups_of(name, hydra_overrides))
            structural = tuple(o.input_line for o, p in zip(parsed, plain) if not p)
            templates = self._templates.get((name, structural))
            if templates is None:
                self.compositions += 1
                composed = self.inner.load_configuration(config_name=name, overrides=list(structural),
                                                         run_mode=RunMode.RUN)
                templates = self._templates[(name, structural)] = (_Template(composed),
                                                                   _Template(_without_hydra(composed)))
            changes = [o for o, p in zip(parsed, plain) if p]
            cfg = templates[0].copy()
            ConfigLoaderImpl._apply_overrides_to_config(changes, cfg)
            app = [o for o in parsed if not o.is_hydra_override()]
            cfg.hydra.overrides.task = [o.input_line for o in app]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        except Exception:  # Hydra's own composition: its result, or its error
            self.compositions += 1
            return self.inner.load_sweep_config(master_config, sweep_overrides), None
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)  # ${now:} and such: the sweep's values

        def task() -> DictConfig:  # as deepcopy(cfg) less hydra, but from a template: no hydra node to copy
            task_cfg = templates[1].copy()
            ConfigLoaderImpl._apply_overrides_to_config(changes, task_cfg)
            OmegaConf.copy_cache(from_config=master_config, to_config=task_cfg)
            return task_cfg
        return cfg, task

    def _parse(self, line: str) -> Override:
        """One override, parsed once per sweep: the same `epochs=1` recurs in every job."""
        if line not in self._parsed:
            self._parsed[line] = self._parser.parse_override(line)
        return self._parsed[line]

    def _groups_of(self, name: Optional[str], hydra_overrides: List[str]) -> Any:
        """group_exists(key) of the repository Hydra composes from (hydra.searchpath applied), memoised."""
        key = (name, tuple(hydra_overrides))
        if key not in self._repos:
            repo = self.inner._parse_overrides_and_create_caching_repo(name, hydra_overrides)[1]
            known: dict[str, bool] = {}

            def group_exists(group: str) -> bool:
                if group not in known:
                    known[group] = repo.group_exists(group)
                return known[group]
            self._repos[key] = group_exists
        return self._repos[key]

    @staticmethod
    def _plain(parsed: List[Override], group_exists: Any) -> List[bool]:
        """Which overrides are plain `key=value` changes of a non-group key, safe to apply to a template."""
        def group_choice(o: Override) -> bool:  # as Hydra's defaults list tells them (defaults_list.Overrides)
            return group_exists(o.key_or_group) and not isinstance(o.value(), dict)

        def hydra_key(o: Override) -> bool:
            return o.is_hydra_override() or o.key_or_group == "hydra"

        simple = [o.type == OverrideType.CHANGE and o.package is None and not o.is_sweep_override()
                  and not hydra_key(o) and not group_choice(o) for o in parsed]
        # Hydra applies its config overrides in command-line order: a plain one before a structural
        # one (`x=1 ++x=2`, `x=1 ~x`) must be composed with it, not after it
        last = max((i for i, o in enumerate(parsed) if not simple[i] and not hydra_key(o) and not group_choice(o)),
                   default=-1)
        return [s and i > last for i, s in enumerate(simple)]


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """The task's config, as run_job makes it: a deep copy without the hydra node."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _hydra_view(config: DictConfig) -> DictConfig:
    """What HydraConfig.set_config makes of a job's config ({hydra: its hydra node, read-only, whose
    parent is the job's config}), sharing the node instead of copying it: nothing changes it from here on."""
    OmegaConf.set_readonly(config.hydra, True)
    view = OmegaConf.create()
    with flag_override(view, "no_deepcopy_set_nodes", True):
        view.hydra = config._get_node("hydra")
    view.hydra._set_parent(config)
    return view


def _freeze_heap() -> None:
    """gc.freeze(): the cyclic collector stops rescanning what already lives (torch, Hydra: most of the
    heap) on every full collection while a sweep allocates its jobs' configs, a large part of a job's overhead."""
    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)


def _thaw_heap() -> None:
    """Back to normal collection: what became garbage meanwhile is collected as before."""
    if _FROZEN:
        gc.unfreeze()
        _FROZEN.clear()


_FROZEN: list = []


# --- the launcher ----------------------------------------------------------------------------


@dataclass
class _Job:
    idx: int
    overrides: List[str]
    config: DictConfig  # the whole config, hydra node included
    cfg: DictConfig  # the task's config, without it
    hydra_cfg: Optional[DictConfig] = None  # HydraConfig's view of the job: {hydra: ...}
    out: Optional[Path] = None
    key: str = ""  # records.config_key
    group: Optional[str] = None  # stack.group_key; None: alone
    error: Optional[BaseException] = None  # strict=true, validate() refused it: it runs alone, and says why
    summary: Optional[dict] = None


class Batched:
    """The launcher's work; `hydra_plugins.deeprun_launcher.BatchedLauncher` is what Hydra instantiates."""

    def __init__(self, submitit: Optional[str] = None, group_size: Optional[int] = None, **submitit_params: Any) -> None:
        self.submitit = submitit
        self.group_size = group_size
        self.submitit_params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                                for k, v in submitit_params.items()}
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self.runner, self.record = TRAIN_GROUP, SUMMARY

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if self.submitit is not None and self.submitit not in SUBMITIT_KINDS:
            raise ConfigError(f"hydra.launcher.submitit={self.submitit}: choose null (train here), local or slurm")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"hydra.launcher.group_size={self.group_size}: must be >= 1 or null (no limit)")
        if self.submitit is not None:
            import importlib.util

            if importlib.util.find_spec("submitit") is None:
                raise ConfigError(f"hydra.launcher.submitit={self.submitit} needs submitit, which is not installed; "
                                  f"pip install 'deeprun[slurm]'")
        if not isinstance(hydra_context.config_loader, FastConfigLoader):
            # the sweeper holds this same context: its validate_batch_is_legal composes through it too
            hydra_context.config_loader = FastConfigLoader(hydra_context.config_loader)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        # deeprun trains a group with api.run_group; deeprun-diagnose's task names its own runner and record
        self.runner = getattr(task_function, "deeprun_group", TRAIN_GROUP)
        self.record = getattr(task_function, "deeprun_record", SUMMARY)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        _freeze_heap()
        try:
            return self._launch(job_overrides, initial_job_idx)
        finally:
            _thaw_heap()

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        top = Path(str(self.config.hydra.sweep.dir))
        top.mkdir(parents=True, exist_ok=True)
        loader = self.hydra_context.config_loader
        jobs = []
        for i, overrides in enumerate(job_overrides):
            if isinstance(loader, FastConfigLoader):
                config, task = loader.take(self.config, overrides)
            else:  # another plugin replaced the loader after setup
                config = loader.load_sweep_config(self.config, list(overrides))
                task = _without_hydra(config)
            jobs.append(self._prepare(_Job(initial_job_idx + i, list(overrides), config, task)))
        groups = self._groups(jobs, top)
        log.info(f"Launching {len(jobs)} jobs locally in {len(groups)} group{'' if len(groups) == 1 else 's'}"
                 if self.submitit is None else
                 f"Launching {len(jobs)} jobs in {len(groups)} submitit {self.submitit} task{'' if len(groups) == 1 else 's'}")
        runtime = HydraConfig.instance().cfg
        try:
            if self.submitit is None:
                for group in groups:
                    self._run_here(group, top)
            else:
                self._run_submitit(groups, top)
        finally:
            HydraConfig.instance().cfg = runtime
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [self._job_return(job) for job in jobs]

    # -- per job ---------------------------------------------------------------------------

    def _prepare(self, job: _Job) -> _Job:
        """What run_job does before calling the task: job numbers, output dir, the task's config."""
        from .config import validate
        from .records import config_key
        from .stack import group_key

        config = job.config
        with open_dict(config):
            config.hydra.job.id = job.idx
            config.hydra.job.num = job.idx
        # ${hydra:...} in hydra.sweep.subdir reads this job's hydra node (HydraConfig.get() is cfg.hydra)
        HydraConfig.instance().cfg = config
        out = os.path.join(str(config.hydra.sweep.dir), str(OmegaConf.select(config, "hydra.sweep.subdir")))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(out)
        job.hydra_cfg = _hydra_view(config)  # what run_job saves as hydra.yaml and returns
        job.out = Path(out)
        job.key = config_key(job.cfg, self.record)
        if job.cfg.strict:  # a job that cannot start fails alone, before any later job starts
            try:
                validate(job.cfg)
            except Exception as e:  # run_group records it `failed`
                job.error = e
                return job
        try:
            job.group = group_key(job.cfg)
        except Exception:  # a config stack.group_key cannot read: alone, where api.run says what is wrong
            job.group = None
        return job

    def _write_hydra_files(self, job: _Job) -> None:
        """`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`, as run_job writes them."""
        config = job.config
        job.out.mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            hydra_dir = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            hydra_dir.mkdir(parents=True, exist_ok=True)
            for name, node in (("config.yaml", job.cfg), ("hydra.yaml", job.hydra_cfg),
                               ("overrides.yaml", config.hydra.overrides.task)):
                with open(hydra_dir / name, "w", encoding="utf-8") as f:
                    f.write(OmegaConf.to_yaml(node))

    def _job_return(self, job: _Job) -> JobReturn:
        ret = JobReturn()
        ret.overrides = OmegaConf.to_container(job.config.hydra.overrides.task)
        ret.cfg = job.cfg
        ret.hydra_cfg = job.hydra_cfg
        ret.working_dir = os.getcwd()
        ret.task_name = JobRuntime.instance().get("name")
        ret.status = JobStatus.COMPLETED
        ret.return_value = sweep.objective(job.cfg, job.summary if job.summary is not None else {"status": "failed"})
        return ret

    # -- groups ----------------------------------------------------------------------------

    def _groups(self, jobs: List[_Job], top: Path) -> List[List[_Job]]:
        """resume=true: skip the finished; the rest in groups of equal stack.group_key, by first job.
        strict=true: a group gathers only consecutive jobs, so no job after the first failure starts
        (but the failing job's own group-mates)."""
        finished = sweep.finished_runs(top) if any(job.cfg.resume for job in jobs) else {}
        groups: List[List[_Job]] = []
        open_groups: dict[str, List[_Job]] = {}
        last: Optional[str] = None
        for job in jobs:
            if job.cfg.resume and job.key in finished:
                done, job.summary = finished[job.key]
                job.out = done
                print(f"deeprun: job {job.idx} skipped: finished before, in {done}", file=sys.stderr)
                last = None
                continue
            group = job.group if job.error is None else None
            if group is None:
                groups.append([job])
                last = None
                continue
            members = open_groups.get(group)
            if members is None or (job.cfg.strict and last != group) or \
                    (self.group_size is not None and len(members) >= self.group_size):
                members = open_groups[group] = []
                groups.append(members)
            members.append(job)
            last = group
        return groups

    def _start(self, group: List[_Job]) -> None:
        for job in group:
            log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}")  # as the basic launcher logs a job
            self._write_hydra_files(job)
            if self._hooked("on_job_start"):
                HydraConfig.instance().cfg = job.hydra_cfg
                self.hydra_context.callbacks.on_job_start(config=job.config, task_function=self.task_function)

    def _hooked(self, hook: str) -> bool:
        """Whether a user's Hydra callback implements `hook` (deeprun's own only has on_multirun_start)."""
        from hydra.experimental.callback import Callback

        callbacks = getattr(self.hydra_context.callbacks, "callbacks", None)
        if callbacks is None:  # not Hydra's Callbacks: call it, whatever it is
            return True
        return any(getattr(type(c), hook, None) not in (None, getattr(Callback, hook)) for c in callbacks)

    def _run_here(self, group: List[_Job], top: Path) -> None:
        self._start(group)
        run_group = _runner(self.runner)
        first = group[0].config
        HydraConfig.instance().cfg = group[0].hydra_cfg  # HydraConfig.get() in a user's model: the group's first job
        configure_log(first.hydra.job_logging, first.hydra.verbose)  # as run_job does around the task
        try:
            with env_override(OmegaConf.to_container(first.hydra.job.env_set)):
                summaries = run_group([job.cfg for job in group], [job.out for job in group], threads=None, job=group[0].idx)
        except Exception as e:  # run_group should not raise (a record it could not write, say): the sweep goes on
            summaries = [_record_lost(job.out, f"{type(e).__name__}: {e}", self.record) for job in group]
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        self._finish(group, summaries, top)

    def _finish(self, group: List[_Job], summaries: List[dict], top: Path) -> None:
        """After a group: its results.csv rows, one line per job, callbacks; strict: stop at a failure."""
        for job, summary in zip(group, summaries):
            job.summary = summary
        sweep.add_results(top, [job.out for job in group])
        failed = None
        for job in group:
            line = self._line(job)
            print(line, file=sys.stderr)
            if self._hooked("on_job_end"):
                HydraConfig.instance().cfg = job.hydra_cfg
                self.hydra_context.callbacks.on_job_end(config=job.config, job_return=self._job_return(job))
            if failed is None and job.summary.get("status") == "failed":
                failed = job
        if failed is not None and failed.cfg.strict:
            raise sweep.JobFailed(f"job {failed.idx} failed and strict=true: sweep stopped")

    @staticmethod
    def _line(job: _Job) -> str:
        """The line cli._sweep_job prints when a job ends."""
        summary, cfg = job.summary, job.cfg
        if summary.get("status") == "failed":
            if job.error is not None:
                from .cli import one_line

                why = one_line(job.error) if isinstance(job.error, ConfigError) else \
                    f"{type(job.error).__name__}: {job.error}"
            else:  # a user's mistake reads as one_line(ConfigError) does: the message's first line
                why = str(summary.get("error"))
                if why.startswith(("ConfigError: ", "OutOfMemory: ")):
                    why = why.partition(": ")[2].strip().splitlines()[0]
            return f"deeprun: job {job.idx} failed: {why} ({job.out.name})"
        if "verdict@init" in summary and "final_train_loss" not in summary:  # a diagnosis
            return f"deeprun: job {job.idx} {summary.get('status')}: {summary['verdict@init']} ({job.out.name})"
        shown = summary.get(cfg.objective)  # the run's own number; a sweeper gets the penalty for a diverged job
        shown = f"{shown:.4g}" if isinstance(shown, float) else shown
        return f"deeprun: job {job.idx} {summary.get('status')}, {cfg.objective} {shown} ({job.out.name})"

    # -- submitit --------------------------------------------------------------------------

    def _executor(self):
        """submitit's executor for the groups, with the launcher's keys as hydra/launcher=submitit_* passes them."""
        import submitit

        params = dict(self.submitit_params)
        folder = params.pop("submitit_folder")
        init = {f"{self.submitit}_{k}": params.pop(k) for k in EXECUTOR_INIT if k in params}
        if self.submitit == "local":
            update = {k: v for k, v in params.items() if k in BASE_PARAMS}
        else:
            update = {k if k in BASE_PARAMS else f"slurm_{k}": v for k, v in params.items()}
        try:
            executor = submitit.AutoExecutor(cluster=self.submitit, folder=folder,
                                             **(init if self.submitit == "slurm" else {}))
            executor.update_parameters(**update)
        except (RuntimeError, ValueError, TypeError) as e:  # off a cluster: 'Could not detect "srun"'
            raise ConfigError(f"hydra.launcher.submitit={self.submitit}: {_first_line(e)}") from None
        return executor

    def _run_submitit(self, groups: List[List[_Job]], top: Path) -> None:
        """Each group one submitit task (`api.run_group` there); lines and results.csv as each task ends."""
        if not groups:
            return
        import submitit

        executor = self._executor()  # before any job directory: off a cluster, nothing is left behind
        for group in groups:
            self._start(group)
        tasks = executor.map_array(_train_group, [self.runner] * len(groups), [[job.cfg for job in g] for g in groups],
                                   # absolute: a node's cwd
                                   [[str(job.config.hydra.runtime.output_dir) for job in g] for g in groups])
        log.info(f"submitit {self.submitit} tasks: {', '.join(t.job_id for t in tasks)} (in {top / '.submitit'})")
        by_task = {id(t): g for t, g in zip(tasks, groups)}
        try:
            for task in submitit.helpers.as_completed(tasks, poll_frequency=0.5):
                group = by_task[id(task)]
                try:
                    summaries = task.result()
                except Exception as e:  # the task itself died (killed, timed out): its jobs' records say so
                    summaries = [_record_lost(job.out, f"submitit task {task.job_id} failed: {_last_line(e)}",
                                              self.record) for job in group]
                self._finish(group, summaries, top)
        except BaseException:
            for task in tasks:  # the local executor forwards SIGINT: run_group records its jobs `interrupted`
                with contextlib.suppress(Exception):
                    task.cancel(check=False)
            raise


def _runner(name: str):
    """The group runner `module:function` names (api.run_group, diagnose.diagnose_group)."""
    import importlib

    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _train_group(runner: str, cfgs: List[DictConfig], out_dirs: List[str]) -> List[dict]:
    """A submitit task: one group's training (or diagnosis), in the worker."""
    return _runner(runner)(cfgs, [Path(d) for d in out_dirs], threads=None)


def _last_line(e: BaseException) -> str:
    """A failed submitit task's error: its message ends with the worker's traceback, whose last line says what."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _record_lost(out: Path, why: str, record: str = SUMMARY) -> dict:
    """A job whose group ended without its final record (a submitit task killed, run_group raising): the
    record says `failed`, with why; a record that is final stays as it is."""
    from .records import FINISHED, write_summary

    summary: dict = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((out / record).read_text())
    if summary.get("status") in (*FINISHED, "failed", "interrupted"):
        return summary
    summary = {**summary, "status": "failed", "error": why}
    with contextlib.suppress(OSError):
        write_summary(out, summary, record)
    return summary
