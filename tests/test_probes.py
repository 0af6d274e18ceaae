"""Probe numbers against oracles computed by hand from autograd and the activations themselves.

Definitions (docs/records.md, layers.csv): a layer is each module holding a weight matrix, in
forward order; grad_norm is the L2 norm of its weight gradient averaged over the
epoch's steps; update_ratio is ||W_after - W_before|| / ||W_before||; dead_frac is
the share of units never positive on any probe sample (ReLU family);
saturated_frac is the share of unit-sample pairs with tanh |a| > 0.99 or
sigmoid a < 0.01 or a > 0.99. The epoch's
protocol: start_epoch(); after_backward() after each backward; capture() around
the probe forward; then one read of every layer's LAYER_COLUMNS.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeprun.probes import LAYER_COLUMNS, Probes, Reduced

GRAD, WEIGHT, RATIO, MEAN, STD, DEAD, SAT = range(7)  # LAYER_COLUMNS order


def read(probes: Probes, updated: bool = True) -> torch.Tensor:
    """(n_layers, 7): the epoch's LAYER_COLUMNS per layer."""
    rows = probes.read(updated)
    assert [r["name"] for r in rows] == probes.names
    return torch.tensor([[r[c] for c in LAYER_COLUMNS] for r in rows], dtype=torch.float64)


def batch(n: int = 32, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def mlp(act: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 1))


def layers_of(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).pow(2).mean()


def stats(probes: Probes, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer rows of an epoch with no step whose probe forward is model(x)."""
    probes.start_epoch()
    with torch.no_grad(), probes.capture():
        model(x)
    return read(probes, updated=False)


def values(v) -> torch.Tensor:
    if isinstance(v, (list, tuple)):
        return torch.stack([values(t).reshape(()) for t in v])
    return torch.as_tensor(v).detach().float()


def close(a, b, atol=1e-6) -> bool:
    return torch.allclose(values(a), values(b), atol=atol, rtol=1e-5, equal_nan=True)


def test_layer_columns():
    assert LAYER_COLUMNS == ("grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std", "dead_frac",
                             "saturated_frac")


# --- gradients, weights, updates ----------------------------------------------------------

@pytest.fixture(params=["flat", "per_layer"])
def layout(request, monkeypatch):
    """Both ways Probes work: small nets (one flat buffer of weights, stacked activations) and
    big ones (per-layer norms and reductions)."""
    if request.param == "per_layer":
        monkeypatch.setattr("deeprun.probes.FLAT_LIMIT", 0)
    return request.param


def test_the_layout_follows_the_size(layout):
    model, x = mlp(), batch()
    probes = Probes(model, x)
    assert (probes._views is not None) == (layout == "flat")
    with torch.no_grad():
        probes.forward(x)
    assert all(isinstance(a, Reduced) == (layout == "per_layer") for a in probes._captured)  # big: reduced at once


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.1, foreach=False),
    lambda params: torch.optim.Adam(params, lr=0.1, fused=True),  # steps without bumping version counters
], ids=["sgd", "fused_adam"])
def test_consecutive_epochs_and_weights_changed_between_them(make_optimizer):
    """W_before and ||W_before|| are what the last collect left when the caller says nothing moved
    the weights since, and are taken afresh when something did (a step outside the probed epochs)."""
    model, x = mlp(), batch()
    probes = Probes(model, x)
    opt = make_optimizer(model.parameters())
    for epoch in range(4):
        if epoch == 2:  # an unprobed step between epochs 1 and 2
            opt.zero_grad()
            loss_of(model, batch(seed=9)).backward()
            opt.step()
        probes.start_epoch(unchanged=epoch in (1, 3))
        before = [m.weight.detach().clone() for m in layers_of(model)]
        opt.zero_grad()
        loss_of(model, batch(seed=epoch)).backward()
        probes.after_backward()
        opt.step()
        out = read(probes)
        after = [m.weight.detach() for m in layers_of(model)]
        assert close(out[:, WEIGHT], [w.norm() for w in after]), epoch
        assert close(out[:, RATIO], [((a - b).norm() / b.norm()).item() for a, b in zip(after, before)]), epoch


@pytest.mark.usefixtures("layout")
def test_grad_weight_and_update_norms_of_one_sgd_step():
    model, x = mlp(), batch()
    probes = Probes(model, x)
    assert probes.names == ["0", "2", "4"]
    probes.start_epoch()
    before = [m.weight.detach().clone() for m in layers_of(model)]
    loss_of(model, x).backward()
    probes.after_backward()
    grads = [m.weight.grad.norm().item() for m in layers_of(model)]
    with torch.no_grad():  # one SGD step by hand
        for p in model.parameters():
            p -= 0.1 * p.grad
    out = read(probes)
    assert out.shape == (3, 7)
    after = [m.weight.detach() for m in layers_of(model)]
    assert close(out[:, GRAD], grads)
    assert close(out[:, WEIGHT], [w.norm() for w in after])
    ratios = [((a - b).norm() / b.norm()).item() for a, b in zip(after, before)]
    assert close(out[:, RATIO], ratios)
    assert all(r > 0 for r in ratios)


@pytest.mark.usefixtures("layout")
def test_grad_norm_is_the_mean_over_the_epochs_steps():
    model = mlp()
    x1, x2 = batch(seed=1), batch(seed=2)
    probes = Probes(model, x1)
    probes.start_epoch()
    norms = []
    for x in (x1, x2):
        model.zero_grad(set_to_none=True)
        loss_of(model, x).backward()
        probes.after_backward()
        norms.append([m.weight.grad.norm().item() for m in layers_of(model)])
    assert norms[0] != pytest.approx(norms[1])  # different batches, different gradients
    out = read(probes)
    assert close(out[:, GRAD], [(a + b) / 2 for a, b in zip(*norms)])
    # no step was taken: nothing moved
    assert close(out[:, RATIO], [0.0] * 3)
    # a new epoch starts from scratch: one step, its own norm
    probes.start_epoch()
    model.zero_grad(set_to_none=True)
    loss_of(model, x1).backward()
    probes.after_backward()
    assert close(read(probes)[:, GRAD], norms[0])


def test_norms_of_a_wide_layer_keep_their_digits():
    """A 512 x 512 layer on the small net's flat path: its weight norm and update ratio agree
    with float64 to a few parts in a million, as torch's own float32 norms do (the flat path sums
    262144 squares one after another; in float32 that lost four digits, where an update of 1e-4
    of the weights shows it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1))
    x = torch.randn(64, 512)
    probes = Probes(model, x)
    assert probes._views is not None  # the flat path
    probes.start_epoch()
    before = model[0].weight.detach().double().clone()
    loss_of(model, x).backward()
    probes.after_backward()
    with torch.no_grad():
        model[0].weight.add_(torch.randn(512, 512) * 1e-4)
    out = read(probes)
    after = model[0].weight.detach().double()
    expected = [after.norm().item(), ((after - before).norm() / before.norm()).item()]
    assert out[0, [WEIGHT, RATIO]].tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.usefixtures("layout")
def test_update_ratio_spans_the_whole_epoch():
    model, x = mlp(), batch()
    probes = Probes(model, x)
    probes.start_epoch()
    before = [m.weight.detach().clone() for m in layers_of(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for seed in (3, 4, 5):
        opt.zero_grad()
        loss_of(model, batch(seed=seed)).backward()
        probes.after_backward()
        opt.step()
    out = read(probes)
    after = [m.weight.detach() for m in layers_of(model)]
    assert close(out[:, RATIO], [((a - b).norm() / b.norm()).item() for a, b in zip(after, before)])


@pytest.mark.usefixtures("layout")
def test_no_update_gives_nan_update_ratio():
    model, x = mlp(), batch()
    probes = Probes(model, x)
    probes.start_epoch()
    loss_of(model, x).backward()
    probes.after_backward()
    out = read(probes, updated=False)
    assert torch.isnan(out[:, RATIO]).all()
    assert close(out[:, GRAD], [m.weight.grad.norm() for m in layers_of(model)])


class Reordered(nn.Module):
    """Registers b before a; forward calls a first."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.b = nn.Linear(6, 1)
        self.a = nn.Linear(3, 6)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_layers_are_in_forward_order_not_registration_order():
    model, x = Reordered(), batch()
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] == ["b", "a"]
    probes = Probes(model, x)
    assert probes.names == ["a", "b"]
    probes.start_epoch()
    loss_of(model, x).backward()
    probes.after_backward()
    out = read(probes)
    assert close(out[:, GRAD], [model.a.weight.grad.norm(), model.b.weight.grad.norm()])
    assert close(out[:, WEIGHT], [model.a.weight.norm(), model.b.weight.norm()])
    act = stats(probes, model, x)
    h = F.relu(model.a(x)).detach()
    assert close(act[0, MEAN:STD + 1], [h.mean(), h.std()])
    assert torch.isnan(act[1, MEAN:]).all()  # the head has no activation after it


# --- activation statistics ----------------------------------------------------------------------

def dead_units(a: torch.Tensor) -> float:
    """Share of units (columns) that are never positive on any sample (row)."""
    return sum(1 for j in range(a.shape[1]) if all(a[i, j] <= 0 for i in range(a.shape[0]))) / a.shape[1]


@pytest.mark.usefixtures("layout")
def test_dead_frac_counts_units_never_positive():
    model, x = mlp(nn.ReLU), batch(64)
    fc0, fc1 = model[0], model[2]
    with torch.no_grad():
        fc0.weight[:3] = 0.0
        fc0.bias[:3] = -1.0  # units 0..2 of layer 0: always -1 before the ReLU, so dead
        fc0.weight[3:] = fc0.weight[3:].clamp(-0.1, 0.1)
        fc0.bias[3:] = 1.0  # units 3..7: always positive
        fc1.weight[5:] = -fc1.weight[5:].abs()  # units 5..7 of layer 1: non-positive inputs x negative weights
        fc1.bias[5:] = -0.01
    probes = Probes(model, x)
    act = stats(probes, model, x)
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


@pytest.mark.usefixtures("layout")
def test_tanh_saturation_is_the_share_of_pairs_beyond_099():
    model, x = mlp(nn.Tanh), batch(64)
    with torch.no_grad():
        model[0].weight.mul_(5.0)  # some units saturate, some do not
        model[2].weight.mul_(20.0)
    probes = Probes(model, x)
    act = stats(probes, model, x)
    a0 = torch.tanh(F.linear(x, model[0].weight, model[0].bias)).detach()
    a1 = torch.tanh(F.linear(a0, model[2].weight, model[2].bias)).detach()
    expected = [(a.abs() > 0.99).sum().item() / a.numel() for a in (a0, a1)]
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert close(act[:2, SAT], expected)
    assert close(act[:2, MEAN], [a0.mean(), a1.mean()])
    assert close(act[:2, STD], [a0.std(), a1.std()])
    assert torch.isnan(act[:, DEAD]).all()  # dead units are a ReLU-family notion
    assert torch.isnan(act[2, MEAN:]).all()


@pytest.mark.usefixtures("layout")
def test_sigmoid_saturation_counts_both_tails():
    model, x = mlp(nn.Sigmoid), batch(64)
    with torch.no_grad():
        model[0].weight.mul_(10.0)
        model[0].bias[:4] = 6.0  # these lean to the upper tail
        model[0].bias[4:] = -6.0  # these to the lower
    probes = Probes(model, x)
    act = stats(probes, model, x)
    a0 = torch.sigmoid(model[0](x)).detach()
    a1 = torch.sigmoid(model[2](a0)).detach()
    low, high = (a0 < 0.01).sum().item(), (a0 > 0.99).sum().item()
    assert low > 0 and high > 0
    assert close(act[0, SAT], (low + high) / a0.numel())
    assert close(act[1, SAT], ((a1 < 0.01) | (a1 > 0.99)).float().mean())
    assert torch.isnan(act[:, DEAD]).all()


class MixedActs(nn.Module):
    """Same-width layers followed by different kinds of activation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc0, self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.relu, self.tanh, self.sigmoid = nn.ReLU(), nn.Tanh(), nn.Sigmoid()
        self.head = nn.Linear(8, 1)
        with torch.no_grad():
            self.fc0.bias[:2] = -100.0  # two dead ReLU units
            self.fc1.weight.mul_(10.0)
            self.fc2.weight.mul_(10.0)

    def forward(self, x):
        return self.head(self.sigmoid(self.fc2(self.tanh(self.fc1(self.relu(self.fc0(x)))))))


@pytest.mark.usefixtures("layout")
def test_each_layer_gets_the_rule_of_its_own_activation():
    model, x = MixedActs(), batch(64)
    probes = Probes(model, x)
    act = stats(probes, model, x)
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
    """Seed 000's style: one activation module called after every hidden layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.layers = nn.ModuleList([nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8)])
        self.hidden_activation = nn.Tanh()
        self.out = nn.Linear(8, 1)
        with torch.no_grad():
            self.layers[1].weight.mul_(8.0)

    def forward(self, x):
        for layer in self.layers:
            x = self.hidden_activation(layer(x))
        return self.out(x)


@pytest.mark.usefixtures("layout")
def test_a_shared_activation_module_still_gives_per_layer_stats():
    model, x = SharedAct(), batch(64)
    probes = Probes(model, x)
    assert probes.names == ["layers.0", "layers.1", "layers.2", "out"]
    act = stats(probes, model, x)
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


@pytest.mark.usefixtures("layout")
def test_conv_units_are_channel_maps():
    torch.manual_seed(5)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias[:] = torch.tensor([-100.0, -100.0, 0.0, 0.0])  # channels 0 and 1 dead everywhere
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 1))
    x = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    probes = Probes(model, x)
    assert probes.names == ["0", "3"]
    act = stats(probes, model, x)
    a = torch.relu(conv(x)).detach()  # (6, 4, 5, 5)
    dead = sum(1 for c in range(4) if not (a[:, c] > 0).any()) / 4
    assert dead == 0.5
    assert close(act[0, DEAD], dead)
    assert close(act[0, MEAN], a.mean())
    assert close(act[0, STD], a.std())


def test_probes_leave_the_model_unchanged():
    model, x = mlp(nn.ReLU), batch()
    model.train()
    state = copy.deepcopy(model.state_dict())
    probes = Probes(model, x)
    stats(probes, model, x)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())  # every hook removed


def test_flat_sequential_walk_equals_hooks():
    """probes.forward walks a flat nn.Sequential by hand; it must see what the hooks see."""
    x = batch()
    model = mlp(nn.ReLU)
    by_hooks = stats(Probes(model, x), model, x)
    probes = Probes(model, x)
    probes.start_epoch()
    with torch.no_grad():
        out = probes.forward(x)
    assert torch.equal(out, model(x).detach())
    assert close(read(probes, updated=False), by_hooks)
