"""deeprun's Hydra launcher plugin: `hydra/launcher=batched`, the default launcher of `deeprun -m`.

Hydra imports every module under the `hydra_plugins` namespace package when it starts, for any
app: this one stays light (no deeprun, no torch) and loads deeprun.launcher when a sweep launches.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class BatchedLauncherConf:
    """hydra/launcher=batched. The submitit keys mirror hydra/launcher=submitit_slurm's and are read only
    with `submitit: local|slurm`."""

    _target_: str = "hydra_plugins.deeprun_launcher.BatchedLauncher"
    group_size: Optional[int] = None  # the most jobs one group trains at once; null: no limit
    submitit: Optional[str] = None  # null: groups train in this process; local | slurm: each group one submitit task
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 60
    cpus_per_task: Optional[int] = None
    gpus_per_node: Optional[int] = None
    tasks_per_node: int = 1
    mem_gb: Optional[int] = None
    nodes: int = 1
    name: str = "${hydra.job.name}"
    stderr_to_stdout: bool = False
    partition: Optional[str] = None
    qos: Optional[str] = None
    comment: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    gres: Optional[str] = None
    cpus_per_gpu: Optional[int] = None
    gpus_per_task: Optional[int] = None
    mem_per_gpu: Optional[str] = None
    mem_per_cpu: Optional[str] = None
    account: Optional[str] = None
    signal_delay_s: int = 120
    max_num_timeout: int = 0
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    array_parallelism: int = 256
    setup: Optional[List[str]] = None


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="deeprun")


class BatchedLauncher(Launcher):
    """Gathers a sweep's jobs into groups of equal `deeprun.stack.group_key`; each group one `api.run_group`."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.impl: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from deeprun.launcher import Batched

        self.impl = Batched(**self.params)
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.impl.launch(job_overrides, initial_job_idx)
