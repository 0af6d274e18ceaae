"""Probe numbers against oracles computed by hand from autograd and the activations themselves.

Definitions (docs/records.md, layers.csv): a layer is each module holding a weight matrix, in
forward order; grad_norm is the L2 norm of its weight gradient averaged over the
epoch's steps; update_ratio is ||W_after - W_before|| / ||W_before||; dead_frac is
the share of units never positive on any probe sample (ReLU family);
saturated_frac is the share of unit-sample pairs with tanh |a| > 0.99 or
sigmoid a < 0.01 or a > 0.99. The epoch's
protocol: start_epoch(); after_backward() after each backward; capture() around
the probe forward; then one read of every layer's LAYER_COLUMNS.

Probes work on a solo model (members=None) and on a stack of E members (deeprun.stack.stack,
members=E, inputs (E, B, ...)). Tests marked with MEMBERS run both ways: the oracles are checked
on the solo model, and in the stacked case member e's numbers must also equal those of model e
probed alone.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deeprun
from deeprun import stack
from deeprun.probes import LAYER_COLUMNS, Probes

from conftest import tiny

GRAD, WEIGHT, RATIO, MEAN, STD, DEAD, SAT = range(7)  # LAYER_COLUMNS order
MEMBERS = pytest.mark.parametrize("members", [None, 2], ids=["solo", "stacked"])


def rows_of(rows: list[dict]) -> torch.Tensor:
    return torch.tensor([[r[c] for c in LAYER_COLUMNS] for r in rows], dtype=torch.float64)


def read(probes: Probes, updated: bool = True, member: int = 0) -> torch.Tensor:
    """(n_layers, 7): the epoch's LAYER_COLUMNS per layer, through Probes.read."""
    rows = probes.read(updated, member)
    assert [r["name"] for r in rows] == probes.names
    return rows_of(rows)


def read_all(probes: Probes, updated: bool = True) -> list[torch.Tensor]:
    """Every member's (n_layers, 7) from one collect, as the trainer reads them (collect, logged, table)."""
    if probes.members is None:
        return [read(probes, updated)]
    raw = torch.cat(probes.collect()).tolist()
    logged = probes.logged(1 if updated else 0, raw)  # epoch 0: nothing updated yet
    tables = [probes.table([logged], e) for e in range(probes.members)]
    assert all(list(t["name"]) == probes.names for t in tables)
    return [torch.tensor([[float(t[c][i]) for c in LAYER_COLUMNS] for i in range(len(probes.names))],
                         dtype=torch.float64) for t in tables]


def batch(n: int = 32, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def mlp(act: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 1))


def tanh_mlp(seed: int) -> nn.Sequential:
    return mlp(nn.Tanh, seed)


def layers_of(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def inputs(x: torch.Tensor, members: int | None) -> torch.Tensor:
    """x as the net takes it: (E, B, ...) for a stack, every member the same samples."""
    return x if members is None else x.expand(members, *x.shape)


def loss_of(net: nn.Module, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
    """Each member's mean squared output, summed: every member gets its solo model's gradient."""
    return net(inputs(x, members)).pow(2).flatten(0 if members is None else 1).mean(-1).sum()


def stacked(models: list[nn.Module]) -> nn.Module:
    return stack.stack(models, [torch.Generator().manual_seed(0)] * len(models))


def probe(build, x: torch.Tensor, protocol, members: int | None):
    """Run protocol(net, probes, members) -> (reads, extra), where reads is a list of read_all() results,
    on build(0) alone (members None), or on the stack of build(0) .. build(E - 1) (members E), checking
    that member e's reads equal those of build(e) probed alone (rel 1e-5) and that the members differ.
    Returns build(0)'s solo (reads, one (n_layers, 7) tensor each; extra; the model)."""
    if members is None:
        model = build(0)
        probes = Probes(model, x)
        reads, extra = protocol(model, probes, None)
        return [r[0] for r in reads], extra, model
    net = stacked([build(e) for e in range(members)])
    probes = Probes(net, inputs(x, members), members)
    reads, _ = protocol(net, probes, members)
    solo = [probe(lambda seed, e=e: build(e), x, protocol, None) for e in range(members)]
    assert probes.names == Probes(build(0), x).names
    for e, (own, _, _) in enumerate(solo):
        assert len(reads) == len(own)
        for i, (mine, theirs) in enumerate(zip(reads, own)):
            # atol 1e-6: act_std comes from sums of squares, whose float32 cancellation differs by summation order
            torch.testing.assert_close(mine[e], theirs, rtol=1e-5, atol=1e-6, equal_nan=True,
                                       msg=lambda m: f"member {e}, read {i}: {m}")
    assert not torch.allclose(reads[-1][0], reads[-1][1], equal_nan=True)  # each member is read as itself
    return solo[0]


def stats(x: torch.Tensor):
    """The protocol of an epoch with no step whose probe forward is net(x)."""
    def protocol(net, probes, members):
        probes.start_epoch()
        with torch.no_grad(), probes.capture():
            net(inputs(x, members))
        return [read_all(probes, updated=False)], None
    return protocol


def values(v) -> torch.Tensor:
    if isinstance(v, (list, tuple)):
        return torch.stack([values(t).reshape(()) for t in v])
    return torch.as_tensor(v).detach().float()


def close(a, b, atol=1e-6) -> bool:
    a, b = values(a), values(b)
    assert a.shape == b.shape, (a.shape, b.shape)  # no broadcasting one number over a column
    return torch.allclose(a, b, atol=atol, rtol=1e-5, equal_nan=True)


def test_layer_columns():
    assert LAYER_COLUMNS == ("grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std", "dead_frac",
                             "saturated_frac")


# --- gradients, weights, updates ----------------------------------------------------------

@MEMBERS
@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.1, foreach=False),
    lambda params: torch.optim.Adam(params, lr=0.1, fused=True),  # steps without bumping version counters
], ids=["sgd", "fused_adam"])
def test_consecutive_epochs_and_weights_changed_between_them(make_optimizer, members):
    """W_before is the weights at each start_epoch: consecutive probed epochs, and epochs after a
    step the probes never saw (an unprobed epoch between two logged ones), each span their own epoch."""
    def protocol(net, probes, members):
        opt = make_optimizer(net.parameters())
        reads, expected = [], []
        for epoch in range(4):
            if epoch == 2:  # an unprobed step between epochs 1 and 2
                opt.zero_grad()
                loss_of(net, batch(seed=9), members).backward()
                opt.step()
            probes.start_epoch()
            before = [w.detach().clone() for w in probes.weights]
            opt.zero_grad()
            loss_of(net, batch(seed=epoch), members).backward()
            probes.after_backward()
            opt.step()
            reads.append(read_all(probes))
            after = [w.detach().clone() for w in probes.weights]
            expected.append(([a.norm() for a in after], [((a - b).norm() / b.norm()).item() for a, b in zip(after, before)]))
        return reads, expected

    reads, expected, _ = probe(tanh_mlp, batch(), protocol, members)
    for epoch, (out, (norms, ratios)) in enumerate(zip(reads, expected)):
        assert close(out[:, WEIGHT], norms), epoch
        assert close(out[:, RATIO], ratios), epoch
        assert all(r > 0 for r in ratios), epoch


@MEMBERS
def test_grad_weight_and_update_norms_of_one_sgd_step(members):
    x = batch()

    def protocol(net, probes, members):
        probes.start_epoch()
        before = [w.detach().clone() for w in probes.weights]
        loss_of(net, x, members).backward()
        probes.after_backward()
        grads = [w.grad.norm().item() for w in probes.weights]
        with torch.no_grad():  # one SGD step by hand
            for p in net.parameters():
                p -= 0.1 * p.grad
        return [read_all(probes)], (before, grads)

    (out,), (before, grads), model = probe(tanh_mlp, x, protocol, members)
    assert Probes(model, x).names == ["0", "2", "4"]
    assert out.shape == (3, 7)
    assert grads == [m.weight.grad.norm().item() for m in layers_of(model)]  # autograd's own
    after = [m.weight.detach() for m in layers_of(model)]
    assert close(out[:, GRAD], grads)
    assert close(out[:, WEIGHT], [w.norm() for w in after])
    ratios = [((a - b).norm() / b.norm()).item() for a, b in zip(after, before)]
    assert close(out[:, RATIO], ratios)
    assert all(r > 0 for r in ratios)


@MEMBERS
def test_grad_norm_is_the_mean_over_the_epochs_steps(members):
    x1, x2 = batch(seed=1), batch(seed=2)

    def protocol(net, probes, members):
        probes.start_epoch()
        norms = []
        for x in (x1, x2):
            net.zero_grad(set_to_none=True)
            loss_of(net, x, members).backward()
            probes.after_backward()
            norms.append([w.grad.norm().item() for w in probes.weights])
        first = read_all(probes)
        # a new epoch starts from scratch: one step, its own norm
        probes.start_epoch()
        net.zero_grad(set_to_none=True)
        loss_of(net, x1, members).backward()
        probes.after_backward()
        return [first, read_all(probes)], norms

    (out, again), norms, _ = probe(tanh_mlp, x1, protocol, members)
    assert norms[0] != pytest.approx(norms[1])  # different batches, different gradients
    assert close(out[:, GRAD], [(a + b) / 2 for a, b in zip(*norms)])
    assert close(out[:, RATIO], [0.0] * 3)  # no step was taken: nothing moved
    assert close(again[:, GRAD], norms[0])


@MEMBERS
def test_norms_of_a_wide_layer_keep_their_digits(members):
    """A 512 x 512 layer: its weight norm and update ratio agree with float64 to a few parts in a
    million, as torch's own float32 norms do (an update of 1e-4 of the weights shows a norm that
    lost digits)."""
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))

    def build(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1))

    def protocol(net, probes, members):
        probes.start_epoch()
        before = probes.weights[0].detach().double().clone()
        loss_of(net, x, members).backward()
        probes.after_backward()
        with torch.no_grad():  # a change of about 1e-4 of each weight, elementwise: the same in any layout
            probes.weights[0].add_(torch.sin(probes.weights[0] * 1e4) * 1e-4)
        return [read_all(probes)], before

    (out,), before, model = probe(build, x, protocol, members)
    after = model[0].weight.detach().double()
    expected = [after.norm().item(), ((after - before).norm() / before.norm()).item()]
    assert out[0, [WEIGHT, RATIO]].tolist() == pytest.approx(expected, rel=1e-5)


@MEMBERS
def test_update_ratio_spans_the_whole_epoch(members):
    def protocol(net, probes, members):
        probes.start_epoch()
        before = [w.detach().clone() for w in probes.weights]
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        for seed in (3, 4, 5):
            opt.zero_grad()
            loss_of(net, batch(seed=seed), members).backward()
            probes.after_backward()
            opt.step()
        return [read_all(probes)], before

    (out,), before, model = probe(tanh_mlp, batch(), protocol, members)
    after = [m.weight.detach() for m in layers_of(model)]
    assert close(out[:, RATIO], [((a - b).norm() / b.norm()).item() for a, b in zip(after, before)])


@MEMBERS
def test_no_update_gives_nan_update_ratio(members):
    x = batch()

    def protocol(net, probes, members):
        probes.start_epoch()
        loss_of(net, x, members).backward()
        probes.after_backward()
        return [read_all(probes, updated=False)], None

    (out,), _, model = probe(tanh_mlp, x, protocol, members)
    assert torch.isnan(out[:, RATIO]).all()
    assert close(out[:, GRAD], [m.weight.grad.norm() for m in layers_of(model)])
    assert torch.isnan(out[:, MEAN:]).all()  # nothing captured: no activation numbers


class Reordered(nn.Module):
    """Registers b before a; forward calls a first."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.b = nn.Linear(6, 1)
        self.a = nn.Linear(3, 6)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.b(self.act(self.a(x)))


@MEMBERS
def test_layers_are_in_forward_order_not_registration_order(members):
    x = batch()
    assert [n for n, m in Reordered().named_modules() if isinstance(m, nn.Linear)] == ["b", "a"]

    def protocol(net, probes, members):
        assert probes.names == ["a", "b"]
        probes.start_epoch()
        loss_of(net, x, members).backward()
        probes.after_backward()
        grads = read_all(probes)
        return [grads, stats(x)(net, probes, members)[0][0]], None

    (out, act), _, model = probe(Reordered, x, protocol, members)
    assert close(out[:, GRAD], [model.a.weight.grad.norm(), model.b.weight.grad.norm()])
    assert close(out[:, WEIGHT], [model.a.weight.norm(), model.b.weight.norm()])
    h = F.relu(model.a(x)).detach()
    assert close(act[0, MEAN:STD + 1], [h.mean(), h.std()])
    assert torch.isnan(act[1, MEAN:]).all()  # the head has no activation after it


# --- activation statistics ----------------------------------------------------------------------

def dead_units(a: torch.Tensor) -> float:
    """Share of units (columns) that are never positive on any sample (row)."""
    return sum(1 for j in range(a.shape[1]) if all(a[i, j] <= 0 for i in range(a.shape[0]))) / a.shape[1]


def relu_mlp_with_dead_units(seed: int) -> nn.Sequential:
    model = mlp(nn.ReLU, seed)
    fc0, fc1 = model[0], model[2]
    with torch.no_grad():
        fc0.weight[:3] = 0.0
        fc0.bias[:3] = -1.0  # units 0..2 of layer 0: always -1 before the ReLU, so dead
        fc0.weight[3:] = fc0.weight[3:].clamp(-0.1, 0.1)
        fc0.bias[3:] = 1.0  # units 3..7: always positive
        fc1.weight[5:] = -fc1.weight[5:].abs()  # units 5..7 of layer 1: non-positive inputs x negative weights
        fc1.bias[5:] = -0.01
    return model


@MEMBERS
def test_dead_frac_counts_units_never_positive(members):
    x = batch(64)
    (act,), _, model = probe(relu_mlp_with_dead_units, x, stats(x), members)
    fc0, fc1 = model[0], model[2]
    a0 = F.relu(fc0(x)).detach()
    a1 = F.relu(fc1(a0)).detach()
    assert dead_units(a0) == 3 / 8
    assert dead_units(a1) >= 3 / 8
    assert act[0, DEAD].item() == 3 / 8
    assert act[1, DEAD].item() == dead_units(a1)
    assert close(act[:2, MEAN], [a0.mean(), a1.mean()])
    assert close(act[:2, STD], [a0.std(), a1.std()])
    assert torch.isnan(act[:, SAT]).all()  # ReLU has no flat tails to saturate in
    assert torch.isnan(act[2, MEAN:]).all()  # head


def saturating_tanh_mlp(seed: int) -> nn.Sequential:
    model = mlp(nn.Tanh, seed)
    with torch.no_grad():
        model[0].weight.mul_(5.0)  # some units saturate, some do not
        model[2].weight.mul_(20.0)
    return model


@MEMBERS
def test_tanh_saturation_is_the_share_of_pairs_beyond_099(members):
    x = batch(64)
    (act,), _, model = probe(saturating_tanh_mlp, x, stats(x), members)
    a0 = torch.tanh(F.linear(x, model[0].weight, model[0].bias)).detach()
    a1 = torch.tanh(F.linear(a0, model[2].weight, model[2].bias)).detach()
    expected = [(a.abs() > 0.99).sum().item() / a.numel() for a in (a0, a1)]
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert close(act[:2, SAT], expected)
    assert close(act[:2, MEAN], [a0.mean(), a1.mean()])
    assert close(act[:2, STD], [a0.std(), a1.std()])
    assert torch.isnan(act[:, DEAD]).all()  # dead units are a ReLU-family notion
    assert torch.isnan(act[2, MEAN:]).all()


def two_tailed_sigmoid_mlp(seed: int) -> nn.Sequential:
    model = mlp(nn.Sigmoid, seed)
    with torch.no_grad():
        model[0].weight.mul_(10.0)
        model[0].bias[:4] = 6.0  # these lean to the upper tail
        model[0].bias[4:] = -6.0  # these to the lower
    return model


@MEMBERS
def test_sigmoid_saturation_counts_both_tails(members):
    x = batch(64)
    (act,), _, model = probe(two_tailed_sigmoid_mlp, x, stats(x), members)
    a0 = torch.sigmoid(model[0](x)).detach()
    a1 = torch.sigmoid(model[2](a0)).detach()
    low, high = (a0 < 0.01).sum().item(), (a0 > 0.99).sum().item()
    assert low > 0 and high > 0
    assert close(act[0, SAT], (low + high) / a0.numel())
    assert close(act[1, SAT], ((a1 < 0.01) | (a1 > 0.99)).float().mean())
    assert torch.isnan(act[:, DEAD]).all()


class MixedActs(nn.Module):
    """Same-width layers followed by different kinds of activation."""

    def __init__(self, seed: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.fc0, self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.relu, self.tanh, self.sigmoid = nn.ReLU(), nn.Tanh(), nn.Sigmoid()
        self.head = nn.Linear(8, 1)
        with torch.no_grad():
            self.fc0.bias[:2] = -100.0  # two dead ReLU units
            self.fc1.weight.mul_(10.0)
            self.fc2.weight.mul_(10.0)

    def forward(self, x):
        return self.head(self.sigmoid(self.fc2(self.tanh(self.fc1(self.relu(self.fc0(x)))))))


@MEMBERS
def test_each_layer_gets_the_rule_of_its_own_activation(members):
    x = batch(64)
    (act,), _, model = probe(lambda seed: MixedActs(3 + seed), x, stats(x), members)
    with torch.no_grad():
        a0 = torch.relu(model.fc0(x))
        a1 = torch.tanh(model.fc1(a0))
        a2 = torch.sigmoid(model.fc2(a1))
    assert close(act[0, DEAD], dead_units(a0)) and dead_units(a0) >= 2 / 8
    assert close(act[1, SAT], (a1.abs() > 0.99).float().mean())
    assert close(act[2, SAT], ((a2 < 0.01) | (a2 > 0.99)).float().mean())
    assert torch.isnan(act[0, SAT]) and torch.isnan(act[1, DEAD]) and torch.isnan(act[2, DEAD])
    assert close(act[:3, MEAN], [a0.mean(), a1.mean(), a2.mean()])
    assert torch.isnan(act[3, MEAN:]).all()


class SharedAct(nn.Module):
    """The residual-network notebook's style: one activation module called after every hidden layer."""

    def __init__(self, seed: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList([nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8)])
        self.hidden_activation = nn.Tanh()
        self.out = nn.Linear(8, 1)
        with torch.no_grad():
            self.layers[1].weight.mul_(8.0)

    def forward(self, x):
        for layer in self.layers:
            x = self.hidden_activation(layer(x))
        return self.out(x)


@MEMBERS
def test_a_shared_activation_module_still_gives_per_layer_stats(members):
    x = batch(64)
    (act,), _, model = probe(lambda seed: SharedAct(4 + seed), x, stats(x), members)
    assert Probes(model, x).names == ["layers.0", "layers.1", "layers.2", "out"]
    outs, h = [], x
    with torch.no_grad():
        for layer in model.layers:
            h = torch.tanh(layer(h))
            outs.append(h)
    assert close(act[:3, MEAN], [a.mean() for a in outs])
    assert close(act[:3, STD], [a.std() for a in outs])
    assert close(act[:3, SAT], [(a.abs() > 0.99).float().mean() for a in outs])
    assert len({round(v, 6) for v in act[:3, STD].tolist()}) == 3  # three different layers, not one repeated
    assert torch.isnan(act[3, MEAN:]).all()


def conv_net(seed: int) -> nn.Sequential:
    torch.manual_seed(5 + seed)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias[:] = torch.tensor([-100.0, -100.0, 0.0, 0.0])  # channels 0 and 1 dead everywhere
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 1))


@MEMBERS
def test_conv_units_are_channel_maps(members):
    x = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    (act,), _, model = probe(conv_net, x, stats(x), members)
    assert Probes(model, x).names == ["0", "3"]
    a = torch.relu(model[0](x)).detach()  # (6, 4, 5, 5)
    dead = sum(1 for c in range(4) if not (a[:, c] > 0).any()) / 4
    assert dead == 0.5
    per_unit = (~(a > 0).any(dim=0)).float().mean().item()  # were a unit a pixel of a map, more would be dead
    assert per_unit > dead
    assert close(act[0, DEAD], dead)
    assert close(act[0, MEAN], a.mean())
    assert close(act[0, STD], a.std())


@pytest.mark.parametrize("model_name,overrides", [
    ("mlp", ["norm=batch", "act=tanh"]),
    ("resnet", ["model.residual_scale=rezero", "norm=layer"]),
    ("cnn", ["data=images", "data.n=32", "data.image_size=8", "act=relu"]),
    ("resnet_cnn", ["data=images", "data.n=32", "data.image_size=8", "act=sigmoid"]),
])
def test_stacked_members_of_build_model_read_as_their_solo_models(model_name, overrides):
    """deeprun's own models, built by build_model with different seeds and stacked: one training step and
    one probe pass give member e the numbers of model e probed alone, for every column."""
    cfgs = [tiny(f"model={model_name}", *overrides, "depth=3", "width=4", "device=cpu", f"seed={seed}")
            for seed in (0, 1)]
    data = deeprun.build_data(cfgs[0], "cpu")
    x, y = data.x_val[:16], data.y_val[:16]
    loss = F.cross_entropy if data.task == "multiclass" else F.mse_loss
    models = [deeprun.build_model(c, data) for c in cfgs]

    def protocol(net, probes, members):
        probes.start_epoch()
        net.train()
        out = net(inputs(x, members))
        (loss(out, y) if members is None else sum(loss(out[e], y) for e in range(members))).backward()
        probes.after_backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
        net.eval()
        with torch.no_grad(), probes.capture():
            net(inputs(x, members))
        return [read_all(probes)], None

    (out,), _, _ = probe(lambda seed: copy.deepcopy(models[seed]), x, protocol, 2)
    names = list(deeprun.models.weight_layers(models[0]))
    assert sorted(Probes(models[0], x).names) == sorted(names)
    assert not torch.isnan(out[:, [GRAD, WEIGHT, RATIO]]).any()
    assert not torch.isnan(out[0, [MEAN, STD]]).any()  # the first layer's activation
    assert torch.isnan(out[-1, MEAN:]).all()  # the head is followed by no activation


def test_only_the_forward_passes_inside_capture_count():
    """A forward pass outside capture() (a training step) leaves the probe batch's numbers as they were."""
    model, x = mlp(nn.ReLU), batch()
    probes = Probes(model, x)
    probes.start_epoch()
    with torch.no_grad(), probes.capture():
        model(x)
    with torch.no_grad():
        model(batch(seed=7) * 10)  # other samples, other activations
    (expected,), _, _ = probe(functools.partial(mlp, nn.ReLU), x, stats(x), None)
    assert close(read(probes, updated=False), expected)
    assert all(not m._forward_hooks for m in model.modules())


@MEMBERS
def test_probes_leave_the_model_unchanged(members):
    x = batch()
    net = mlp(nn.ReLU) if members is None else stacked([mlp(nn.ReLU, seed) for seed in range(members)])
    net.train()
    state = copy.deepcopy(net.state_dict())
    probes = Probes(net, inputs(x, members), members)
    stats(x)(net, probes, members)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks for m in net.modules())  # every hook removed
