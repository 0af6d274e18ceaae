"""The torch thread count a run picks when `device.threads` leaves it open (api.threads_for)."""

from __future__ import annotations

import pytest

import deeprun
from deeprun import api


def threads(*overrides: str, rows: int | None = None, members: int = 1) -> int:
    cfg = deeprun.compose(["device=cpu", "log.progress=false", *overrides])
    data = deeprun.build_data(cfg, "cpu")
    return api.threads_for(deeprun.build_model(cfg, data), data, rows or cfg.batch_size, members)


@pytest.mark.skipif(api.DEFAULT_THREADS < 2, reason="a one-core machine has nothing to choose")
def test_threads_follow_the_size_of_the_net_and_of_its_layers():
    assert threads("model.widths=[8,8,8,8,8,8,8,8]") == 1  # model D: small all through
    # 200 layers of width 32 are 26 M multiply-adds a step on 128 rows, over SMALL_WORK, but each layer's
    # 131 k are too few to split: one thread (on a busy machine two were 2-8x slower)
    assert threads("depth=200", "width=32", rows=128) == 1
    assert threads("model=resnet", "depth=100", "width=256", rows=128) == api.DEFAULT_THREADS  # 8 M a layer
    assert threads("depth=2", "width=512", rows=1024) == api.DEFAULT_THREADS
    # a stack's members multiply every op: 20 members of width 256 on 128 rows are big ops
    assert threads("depth=2", "width=256", rows=16) == 1
    assert threads("depth=2", "width=256", rows=16, members=20) == api.DEFAULT_THREADS


def test_a_run_records_the_threads_it_picked():
    before = api.torch.get_num_threads()
    try:
        summary = deeprun.run(deeprun.compose(["device=cpu", "log.progress=false", "epochs=1", "depth=200",
                                               "width=32", "data.n=256"])).summary  # over SMALL_WORK
        assert summary["threads"] == 1 == api.torch.get_num_threads()
    finally:
        api.torch.set_num_threads(before)
