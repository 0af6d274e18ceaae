"""deeprun against a hand-written PyTorch loop and a Lightning Trainer on the same work, as ratios.

Same initial weights, same data tensors, same optimiser; the plain loop does what
a careful person writes by hand: per epoch, the training steps and one
validation forward pass, with the optimiser built as a user writes it
(`torch.optim.SGD(model.parameters(), lr=...)`: torch's default implementation,
a loop per parameter off CUDA). deeprun steps with torch's fused or foreach
kernels (train.FUSED_ABOVE) and adds its probes and records. So that the probes' own
cost is seen apart from that saving, a second plain loop steps with deeprun's
choice of kernels. The three run in lockstep: deeprun calls back at each logged
epoch, the plain loops catch up to that epoch there, and each side's time is
counted apart; a noisy neighbour, which on this machine changes a loop's speed
by a tenth from one second to the next, then weighs on all sides alike. Each
ratio is the median over rounds; beside it, the middle half of the rounds'
ratios shows how noisy the run was. Also: a Lightning Trainer on the same model and batches (logger,
checkpoints, progress bar and model summary off), the GFLOP/s the resnets reach
next to this machine's float32 matmul rate, and start-up times.

    python bench/bench.py [--repeats 5] [--only model_d|resnet|resnet_wide|cnn] [--skip lightning,startup]
                          [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

import deeprun
from deeprun.data import LOSSES
from deeprun.models import count_params
from deeprun.train import implementation

CASES = {
    # the deep-MLP notebook's model D: [3]+[8]*8+[1], full batch, 1000 epochs of plain SGD
    "model_d": ["depth=8", "width=8", "init=uniform", "optimizer=sgd", "lr=0.01", "epochs=1000", "data.n=400"],
    # the residual-network notebook's residual MLP at depth 100, epochs of 8 minibatches of 256
    "resnet": ["model=resnet", "depth=100", "width=256", "batch_size=256", "epochs=10", "data.n=2560",
               "act=leaky_relu", "optimizer=adam", "lr=0.001"],
    # the same at the residual-network notebook's width: 210 M weights, compute-bound; epochs of 8 steps, as the
    # 256-wide case
    "resnet_wide": ["model=resnet", "depth=100", "width=1024", "batch_size=256", "epochs=2", "data.n=2560",
                    "act=leaky_relu", "optimizer=adam", "lr=0.0001"],
    # the CNN notebook's CNN on synthetic 16x16 images
    "cnn": ["model=cnn", "data=images", "depth=6", "width=16", "batch_size=64", "epochs=5", "data.n=1280",
            "optimizer=adam", "lr=0.001"],
}
# An 8-wide net gains nothing from intra-op threads; on a shared machine they only add
# spin-wait noise, so the tiny case runs on one thread (both sides alike).
THREADS = {"model_d": 1, "resnet": None, "resnet_wide": None, "cnn": None}
# The cases use each optimiser's default settings but lr; a hand-written loop takes torch's
# default implementation (a loop per parameter off CUDA)
PLAIN_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
TURN = 0.2  # seconds deeprun runs before the plain loops catch up (at least a logged epoch; see lockstep)
VARIANTS = {"probes every epoch": ["log.every=1"], "probes every 10th epoch": ["log.every=10"]}


def drain(device: str) -> None:
    """Wait for the work queued on `device`: a GPU runs it after the Python call returns."""
    if device == "cuda":
        torch.cuda.synchronize()


def users_optimizer(cfg, model) -> torch.optim.Optimizer:
    return PLAIN_OPTIMIZERS[cfg.optimizer.name](model.parameters(), lr=cfg.lr)  # as a user writes it


def deepruns_optimizer(cfg, model) -> torch.optim.Optimizer:
    """The same optimiser stepping with the kernels deeprun picks for it (train.implementation:
    fused or foreach); the cases use each optimiser's default settings but lr, as deeprun's configs."""
    how = implementation(cfg.optimizer.name, count_params(model))
    return PLAIN_OPTIMIZERS[cfg.optimizer.name](model.parameters(), lr=cfg.lr, **how)


def clear_grads(params: list[torch.Tensor]) -> None:
    """Gradients cleared as deeprun's training step clears them: set to None, without
    optimizer.zero_grad's profiler bookkeeping (4 us against 40 us a model D epoch)."""
    for p in params:
        p.grad = None


def plain_epochs(cfg, deeprun_kernels: bool = False) -> Iterator[None]:
    """The hand-written loop, a step at a time: it yields once set up (data, model, optimiser),
    then after each epoch. `deeprun_kernels`: step with deeprun's choice of optimiser kernels and
    clear the gradients as deeprun does (clear_grads), instead of as users write it."""
    data = deeprun.build_data(cfg)
    model = deeprun.build_model(cfg, data)  # the same initial weights deeprun starts from
    opt = (deepruns_optimizer if deeprun_kernels else users_optimizer)(cfg, model)
    params = list(model.parameters())
    loss_fn = LOSSES[data.task]
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    gen = torch.Generator().manual_seed(cfg.seed)
    yield
    for _ in range(cfg.epochs):
        model.train()
        if cfg.batch_size is None:
            parts = [(x, y)]
        else:
            perm = torch.randperm(n, generator=gen).to(x.device)  # deeprun's batches, on the data's device
            parts = [(x[i], y[i]) for i in perm.split(cfg.batch_size)]
        for xb, yb in parts:
            if deeprun_kernels:
                clear_grads(params)
            else:
                opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            loss_fn(model(data.x_val), data.y_val)
        yield


def plain_deepruns_step(cfg) -> Iterator[None]:
    """The plain loop stepping with deeprun's choice of torch's optimiser kernels: against it,
    deeprun's ratio is what its probes and records cost."""
    return plain_epochs(cfg, deeprun_kernels=True)


def lockstep(cfg, rivals, turn_epochs: int) -> list[list[float]]:
    """deeprun.run, with each rival loop brought to the epoch deeprun has just logged, from inside
    deeprun's on_log, every `turn_epochs` epochs; each side's seconds per turn, deeprun's first.
    Turn 0 is the set-up and epoch 0, then turns of `turn_epochs` epochs (a multiple of log.every;
    the last may be shorter). Taking turns a fraction of a second long, all sides meet the same
    neighbours on this shared machine, whose load changes a loop's speed twofold from one tenth
    of a second to the next; much shorter turns would cost each side its warm caches."""
    loops = [rival(cfg) for rival in rivals]
    done = [0] * len(loops)  # how far each loop has come: 1 once set up, 1 + k after epoch k
    turns: list[list[float]] = [[] for _ in range(1 + len(loops))]
    began = [0.0]  # when deeprun's turn began

    def advance(row: dict) -> None:
        epoch = row["epoch"]
        if epoch % turn_epochs and epoch < cfg.epochs:
            return
        now = time.perf_counter()
        turns[0].append(now - began[0])
        for i, loop in enumerate(loops):
            for _ in range(epoch + 1 - done[i]):
                next(loop)
            done[i] = epoch + 1
            drain(cfg.device.name)  # deeprun's turn ends in its host read; a plain loop's, only here
            turns[i + 1].append(time.perf_counter() - now)
            now = time.perf_counter()
        began[0] = time.perf_counter()

    began[0] = time.perf_counter()
    result = deeprun.run(cfg, progress=False, on_log=advance)
    turns[0][-1] += time.perf_counter() - began[0]  # deeprun's records after its last epoch
    assert result.summary["status"] == "completed" and done == [cfg.epochs + 1] * len(loops), result.summary
    return turns


def deeprun_run(cfg) -> float:
    """deeprun.run, in memory (no records on disk); seconds."""
    start = time.perf_counter()
    result = deeprun.run(cfg, progress=False)  # ends in a host read: nothing left queued on a GPU
    assert result.summary["status"] == "completed", result.summary
    return time.perf_counter() - start


class Batches:
    """Index slices of a fresh permutation each epoch, as Lightning's train_dataloaders: the same
    batches the plain loop takes, without a DataLoader (which would cost Lightning 3.5x here)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size, seed: int):
        self.x, self.y, self.batch_size, self.gen = x, y, batch_size, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return 1 if self.batch_size is None else -(-len(self.x) // self.batch_size)

    def __iter__(self):
        if self.batch_size is None:
            return iter([(self.x, self.y)])
        return ((self.x[i], self.y[i]) for i in torch.randperm(len(self.x), generator=self.gen).split(self.batch_size))


def lightning_run(cfg) -> float:
    """The same model, batches, optimiser and validation pass under lightning.Trainer; seconds."""
    import lightning as L

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # its start-up notes
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    start = time.perf_counter()
    data = deeprun.build_data(cfg)
    model = deeprun.build_model(cfg, data)
    loss_fn = LOSSES[data.task]

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, _):
            return loss_fn(self.net(batch[0]), batch[1])

        def validation_step(self, batch, _):
            return loss_fn(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return users_optimizer(cfg, self)

    trainer = L.Trainer(max_epochs=cfg.epochs, accelerator=cfg.device.name, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(Module(), train_dataloaders=Batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed),
                val_dataloaders=Batches(data.x_val, data.y_val, None, cfg.seed))
    drain(cfg.device.name)
    return time.perf_counter() - start


class Rounds(NamedTuple):
    """Each side's seconds per turn in each round (deeprun first, then the rivals)."""

    turns: list[list[list[float]]]  # [round][side][turn]

    def seconds(self, side: int) -> float:
        return statistics.median(sum(r[side]) for r in self.turns)

    def ratios(self, rival: int) -> list[float]:
        """deeprun / rival of each round's whole run."""
        return [sum(r[0]) / sum(r[rival]) for r in self.turns]

    def quiet(self, rival: int) -> float:
        """deeprun / rival of the runs the rounds' quietest turns make: per side, each turn's
        fastest time over the rounds, summed. Noise on a shared machine only ever adds time
        (timeit's documentation takes the minimum for that reason); taken turn by turn, a
        neighbour's burst in one turn of one round does not decide the figure."""
        def fastest(side: int) -> float:
            return sum(min(times) for times in zip(*(r[side] for r in self.turns)))
        return fastest(0) / fastest(rival)


def case_config(case: str, variant: list[str], device: str):
    """The case's config on `device`; sets the case's torch thread count."""
    torch.set_num_threads(THREADS[case] or os.cpu_count())
    return deeprun.compose([*CASES[case], *variant, "log.progress=false", f"device={device}"])


def bench(case: str, variant: list[str], repeats: int, device: str) -> Rounds:
    """deeprun against the plain loop and the plain loop with deeprun's step, in lockstep."""
    cfg = case_config(case, variant, device)
    rivals = (plain_epochs, plain_deepruns_step)
    every = cfg.log.every
    warm = lockstep(cfg, rivals, every)  # warm-up (first optimiser, allocator, caches); times an epoch
    per_epoch = sum(warm[0][1:]) / cfg.epochs
    turn_epochs = every * max(1, math.ceil(TURN / per_epoch / every))
    return Rounds([lockstep(cfg, rivals, turn_epochs) for _ in range(repeats)])


def against_lightning(case: str, variant: list[str], repeats: int, device: str) -> tuple[list[float], float, float]:
    """deeprun / Lightning of alternating runs (a Trainer cannot be stepped an epoch at a time
    from outside); Lightning's median seconds; deeprun's."""
    cfg = case_config(case, variant, device)
    lightning_run(cfg), deeprun_run(cfg)  # warm-up
    ratios, theirs, ours = [], [], []
    for _ in range(repeats):
        r, d = lightning_run(cfg), deeprun_run(cfg)
        theirs.append(r)
        ours.append(d)
        ratios.append(d / r)
    return ratios, statistics.median(theirs), statistics.median(ours)


def spread(ratios: list[float]) -> str:
    """The median ratio and, so that noise is seen, the middle half of the pairs' ratios."""
    if len(ratios) < 4:
        return f"{statistics.median(ratios):.3f}"
    low, mid, high = statistics.quantiles(ratios, n=4)
    return f"{mid:.3f} ({low:.2f}-{high:.2f})"


def matmul_gflops(device: str, n: int, repeats: int = 10) -> float:
    """The device's float32 matmul rate on n x n matrices (the best of several)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def product():
        a @ b
        drain(device)
    product()
    best = min(_seconds(product) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def training_flops(cfg) -> float:
    """Multiply-adds x 2 of the Linear layers, forward and backward (x3), over the run's training
    and validation passes (BatchNorm, activations and the optimiser are left out: a lower bound)."""
    data = deeprun.build_data(cfg)
    model = deeprun.build_model(cfg, data)
    per_sample = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return per_sample * (3 * len(data.x_train) * cfg.epochs + len(data.x_val) * (cfg.epochs + 1))


def startup() -> tuple[float, float]:
    """Seconds of `deeprun --help` and of a 1-epoch tiny run, each a fresh process (medians of 3)."""
    exe = Path(sys.executable).with_name("deeprun")
    with tempfile.TemporaryDirectory() as d:
        def wall(*args: str) -> float:
            return statistics.median(_seconds(lambda: subprocess.run([str(exe), *args], cwd=d, check=True,
                                                                     capture_output=True)) for _ in range(3))
        return wall("--help"), wall("epochs=1", "data.n=64", "log.progress=false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=list(CASES))
    parser.add_argument("--skip", default="", help="comma-separated: lightning, startup")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    skip = set(filter(None, args.skip.split(",")))
    cases = [args.only] if args.only else list(CASES)
    size = 8192 if gpu else 2048  # big enough to reach the device's rate
    card = f", {torch.cuda.get_device_name()}" if gpu else ""
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores{card}, torch {torch.__version__}; "
          f"medians of {args.repeats} rounds")
    peak = matmul_gflops(args.device, size)
    on = "the GPU" if gpu else f"{torch.get_num_threads()} threads"
    print(f"float32 matmul ({size} square, {on}): {peak:.0f} GFLOP/s")
    print("\n/ plain: deeprun against the loop as users write it; / same step: against that loop stepping with\n"
          "deeprun's optimiser kernels (what the probes and records cost). Each: the ratio of the rounds' quietest\n"
          "turns, then the median of the rounds' ratios with their middle half.")
    print(f"\n{'case':12} {'threads':>7} {'variant':26} {'/ plain':>26} {'/ same step':>26} {'plain s':>8} "
          f"{'same s':>7} {'deeprun s':>9} {'GFLOP/s':>8}")
    for case in cases:
        for name, variant in VARIANTS.items():
            rounds = bench(case, variant, args.repeats, args.device)
            d = rounds.seconds(0)
            rate = training_flops(deeprun.compose(CASES[case])) / d / 1e9 if case.startswith("resnet") else None
            shown = f"{rate:8.1f}" if rate else f"{'':8}"
            mine, same = (f"{rounds.quiet(i):.3f}; {spread(rounds.ratios(i))}" for i in (1, 2))
            print(f"{case:12} {torch.get_num_threads():7} {name:26} {mine:>26} {same:>26} {rounds.seconds(1):8.3f} "
                  f"{rounds.seconds(2):7.3f} {d:9.3f} {shown}", flush=True)
    if "lightning" not in skip:
        print(f"\n{'case':12} {'variant':26} {'deeprun / Lightning':>20} {'Lightning s':>12} {'deeprun s':>10}")
        for case in [c for c in cases if c in ("model_d", "resnet")]:
            for name, variant in VARIANTS.items():
                ratios, lit, d = against_lightning(case, variant, args.repeats, args.device)
                print(f"{case:12} {name:26} {spread(ratios):>20} {lit:12.3f} {d:10.3f}", flush=True)
    if "startup" not in skip:
        help_s, tiny_s = startup()
        print(f"\nstart-up: deeprun --help {help_s:.2f} s; a 1-epoch tiny run, start to exit {tiny_s:.2f} s")


if __name__ == "__main__":
    main()
