"""deeprun against a hand-written PyTorch loop and a Lightning Trainer on the same work, as ratios.

Same initial weights, same data tensors, same optimiser; the plain loop does what
a careful person writes by hand: per epoch, the training steps and one
validation forward pass, with the optimiser built as a user writes it
(`torch.optim.SGD(model.parameters(), lr=...)`). deeprun adds its probes and
records on top. Runs alternate (plain, deeprun, plain, ...) and the ratio is the
median of the per-pair ratios, so a noisy neighbour slows both sides of a pair
alike; beside it, the middle half of the pairs' ratios shows how noisy the run
was. Also: a Lightning Trainer on the same model and batches (logger,
checkpoints, progress bar and model summary off), the GFLOP/s the resnets reach
next to this machine's float32 matmul rate, and start-up times.

    python bench/bench.py [--repeats 5] [--only model_d|resnet|resnet_wide|cnn] [--skip lightning,startup]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import deeprun
from deeprun.data import LOSSES

CASES = {
    # seed 001 model D: [3]+[8]*8+[1], full batch, 1000 epochs of plain SGD
    "model_d": ["depth=8", "width=8", "init=uniform", "optimizer=sgd", "lr=0.01", "epochs=1000", "data.n=400"],
    # seed 000's residual MLP at depth 100, epochs of 8 minibatches of 256
    "resnet": ["model=resnet", "depth=100", "width=256", "batch_size=256", "epochs=10", "data.n=2560",
               "act=leaky_relu", "optimizer=adam", "lr=0.001"],
    # the same at seed 000's width: 210 M weights, compute-bound
    "resnet_wide": ["model=resnet", "depth=100", "width=1024", "batch_size=256", "epochs=2", "data.n=640",
                    "act=leaky_relu", "optimizer=adam", "lr=0.0001"],
    # seed 002's CNN on synthetic 16x16 images
    "cnn": ["model=cnn", "data=images", "depth=6", "width=16", "batch_size=64", "epochs=5", "data.n=1280",
            "optimizer=adam", "lr=0.001"],
}
# An 8-wide net gains nothing from intra-op threads; on a shared machine they only add
# spin-wait noise, so the tiny case runs on one thread (both sides alike).
THREADS = {"model_d": 1, "resnet": None, "resnet_wide": None, "cnn": None}
# The cases use each optimiser's default settings but lr; deeprun asks for foreach=True, the
# plain loop takes torch's default (a loop per parameter off CUDA), as a hand-written loop does
PLAIN_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
VARIANTS = {"probes every epoch": ["log.every=1"], "probes every 10th epoch": ["log.every=10"]}


def plain_loop(cfg) -> float:
    """The hand-written loop; returns seconds, counted like deeprun's from building the data on."""
    start = time.perf_counter()
    data = deeprun.build_data(cfg)
    model = deeprun.build_model(cfg, data)  # the same initial weights deeprun starts from
    opt = PLAIN_OPTIMIZERS[cfg.optimizer.name](model.parameters(), lr=cfg.lr)  # as a user writes it: torch's defaults
    loss_fn = LOSSES[data.task]
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        model.train()
        if cfg.batch_size is None:
            parts = [(x, y)]
        else:
            perm = torch.randperm(n, generator=gen)
            parts = [(x[i], y[i]) for i in perm.split(cfg.batch_size)]
        for xb, yb in parts:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            loss_fn(model(data.x_val), data.y_val)
    return time.perf_counter() - start


def deeprun_run(cfg) -> float:
    """deeprun.run, in memory (no records on disk); seconds."""
    start = time.perf_counter()
    result = deeprun.run(cfg, progress=False)
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
            return PLAIN_OPTIMIZERS[cfg.optimizer.name](self.parameters(), lr=cfg.lr)

    trainer = L.Trainer(max_epochs=cfg.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), train_dataloaders=Batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed),
                val_dataloaders=Batches(data.x_val, data.y_val, None, cfg.seed))
    return time.perf_counter() - start


def bench(case: str, variant: list[str], repeats: int, rival=plain_loop) -> tuple[list[float], float, float]:
    """(deeprun / rival of each alternating pair, rival's median seconds, deeprun's)."""
    torch.set_num_threads(THREADS[case] or os.cpu_count())
    cfg = deeprun.compose([*CASES[case], *variant, "log.progress=false"])
    rival(cfg), deeprun_run(cfg)  # warm-up: first optimiser, allocator, caches
    ratios, theirs, ours = [], [], []
    for _ in range(repeats):
        r, d = rival(cfg), deeprun_run(cfg)
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


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 matmul rate on large square matrices (the best of several)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
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
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    cases = [args.only] if args.only else list(CASES)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"medians of {args.repeats} alternating pairs")
    peak = matmul_gflops()
    print(f"float32 matmul (2048x2048, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s")
    print(f"\n{'case':12} {'threads':>7} {'variant':26} {'ratio (middle half)':>19} {'plain s':>9} {'deeprun s':>10} "
          f"{'GFLOP/s':>8}")
    for case in cases:
        for name, variant in VARIANTS.items():
            ratios, p, d = bench(case, variant, args.repeats)
            rate = training_flops(deeprun.compose(CASES[case])) / d / 1e9 if case.startswith("resnet") else None
            shown = f"{rate:8.1f}" if rate else f"{'':8}"
            print(f"{case:12} {torch.get_num_threads():7} {name:26} {spread(ratios):>19} {p:9.3f} {d:10.3f} {shown}",
                  flush=True)
    if "lightning" not in skip:
        print(f"\n{'case':12} {'variant':26} {'deeprun / Lightning':>20} {'Lightning s':>12} {'deeprun s':>10}")
        for case in [c for c in cases if c in ("model_d", "resnet")]:
            for name, variant in VARIANTS.items():
                ratios, lit, d = bench(case, variant, args.repeats, rival=lightning_run)
                print(f"{case:12} {name:26} {spread(ratios):>20} {lit:12.3f} {d:10.3f}", flush=True)
    if "startup" not in skip:
        help_s, tiny_s = startup()
        print(f"\nstart-up: deeprun --help {help_s:.2f} s; a 1-epoch tiny run, start to exit {tiny_s:.2f} s")


if __name__ == "__main__":
    main()
