"""deeprun against a hand-written PyTorch loop on the same work, as ratios.

Same initial weights, same data tensors, same optimiser; the plain loop does what
a careful person writes by hand: per epoch, the training steps and one
validation forward pass, with the optimiser built as a user writes it
(`torch.optim.SGD(model.parameters(), lr=...)`). deeprun adds its probes and
records on top. Runs
alternate (plain, deeprun, plain, ...) and the ratio is the median of the
per-pair ratios, so a noisy neighbour slows both sides of a pair alike.

    python bench/bench.py [--repeats 5] [--only model_d|resnet]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import deeprun
from deeprun.data import LOSSES

CASES = {
    # seed 001 model D: [3]+[8]*8+[1], full batch, 1000 epochs of plain SGD
    "model_d": ["depth=8", "width=8", "init=uniform", "optimizer=sgd", "lr=0.01", "epochs=1000", "data.n=400"],
    # seed 000's residual MLP at depth 100, minibatches of 256
    "resnet": ["model=resnet", "depth=100", "width=256", "batch_size=256", "epochs=10", "data.n=1280",
               "act=leaky_relu", "optimizer=adam", "lr=0.001"],
}
# An 8-wide net gains nothing from intra-op threads; on a shared machine they only add
# spin-wait noise, so the tiny case runs on one thread (both sides alike).
THREADS = {"model_d": 1, "resnet": None}
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


def bench(case: str, variant: list[str], repeats: int) -> tuple[float, float, float]:
    torch.set_num_threads(THREADS[case] or os.cpu_count())
    cfg = deeprun.compose([*CASES[case], *variant, "log.progress=false"])
    plain_loop(cfg), deeprun_run(cfg)  # warm-up: first optimiser, allocator, caches
    ratios, plains, ours = [], [], []
    for _ in range(repeats):
        p, d = plain_loop(cfg), deeprun_run(cfg)
        plains.append(p)
        ours.append(d)
        ratios.append(d / p)
    return statistics.median(ratios), statistics.median(plains), statistics.median(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=list(CASES))
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"medians of {args.repeats} alternating pairs")
    print(f"{'case':10} {'threads':>7} {'variant':26} {'ratio':>7} {'plain s':>9} {'deeprun s':>10}")
    for case in [args.only] if args.only else CASES:
        for name, variant in VARIANTS.items():
            ratio, p, d = bench(case, variant, args.repeats)
            print(f"{case:10} {torch.get_num_threads():7} {name:26} {ratio:7.3f} {p:9.3f} {d:10.3f}", flush=True)


if __name__ == "__main__":
    main()
