"""deeprun.jacobian.spectrum against oracles: per-sample Jacobians of explicitly written compositions of
the model's own layers (torch.autograd.functional.jacobian), with BatchNorm's batch statistics taken
by hand from a train-mode forward of a copy."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from deeprun import jacobian
from deeprun.jacobian import frozen, spectrum
from deeprun.models import CNN, MLP, ResidualMLP


def per_sample_sv(fn, h: torch.Tensor) -> np.ndarray:
    """Singular values of each row's Jacobian of fn (1-d -> 1-d), pooled in sample order."""
    jacs = [torch.autograd.functional.jacobian(fn, row) for row in h]
    return torch.cat([torch.linalg.svdvals(j) for j in jacs]).numpy()


def first_outputs(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = {}
    handle = layer.register_forward_hook(lambda m, i, o: out.setdefault("h", o.detach()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return out["h"]


def batch_stats(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm's mean and biased variance of its input in a train-mode forward of a copy on x,
    keyed by the original model's modules."""
    twin = copy.deepcopy(model).train()
    pairs = dict(zip(twin.modules(), model.modules()))
    stats = {}
    def keep(m, inputs):
        stats[pairs[m]] = inputs[0].mean(0), inputs[0].var(0, unbiased=False)

    hooks = [m.register_forward_pre_hook(keep) for m in twin.modules() if isinstance(m, nn.BatchNorm1d)]
    with torch.no_grad():
        twin(x)
    for h in hooks:
        h.remove()
    return stats


def test_exact_matches_oracle_mlp():
    torch.manual_seed(0)
    model = MLP(5, 2, depth=4, width=16, act=nn.Tanh).double()
    x = torch.randn(10, 5, dtype=torch.float64)
    later = list(model.children())[1:-1]  # act0, fc1, act1, ..., act3: from fc0's output to the head's input

    def composition(h):
        for layer in later:
            h = layer(h.unsqueeze(0)).squeeze(0)
        return h

    r = spectrum(model, x, samples=4)
    oracle = per_sample_sv(composition, first_outputs(model, model.fc0, x[:4]))
    assert r["jac_method"] == "exact" and r["jac_dims"] == "16x16"
    np.testing.assert_allclose(r["singular_values"], oracle, rtol=1e-5, atol=1e-12)
    assert r["jac_sv_max"] == pytest.approx(oracle.max(), rel=1e-5)
    assert r["jac_sv_min"] == pytest.approx(oracle.min(), rel=1e-5)
    assert r["jac_sv_mean_sq"] == pytest.approx((oracle ** 2).mean(), rel=1e-5)
    assert r["jac_condition"] == pytest.approx(oracle.max() / oracle.min(), rel=1e-5)
    assert all(type(r[k]) is float for k in ("jac_sv_max", "jac_sv_min", "jac_sv_mean_sq", "jac_condition"))


def test_exact_matches_oracle_residual_batchnorm():
    torch.manual_seed(1)
    model = ResidualMLP(n_in=3, n_out=1, depth=3, width=16, act=functools.partial(nn.ReLU), norm="batch").double()
    x = torch.randn(32, 3, dtype=torch.float64)
    stats = batch_stats(model, x)  # of all of x, as train mode normalises the batch

    def bn(m, z):
        mean, var = stats[m]
        return (z - mean) / torch.sqrt(var + m.eps) * m.weight + m.bias

    def composition(h):
        z = model.stem_act(h)
        for b in model.blocks:
            f = b.f
            z = b.act(z + bn(f.norm2, f.fc2(f.act(bn(f.norm, f.fc1(z))))))
        return z

    r = spectrum(model, x, samples=4)
    with torch.no_grad():
        h = model.stem(x[:4])
    np.testing.assert_allclose(r["singular_values"], per_sample_sv(composition, h), rtol=1e-5, atol=1e-10)
    assert model.training


@pytest.mark.parametrize("width", [16, 80])  # rows by one pass through repeated samples, and by a batched backward
def test_both_ways_of_taking_the_rows_give_the_oracles_spectrum(width, monkeypatch):
    torch.manual_seed(2)
    model = ResidualMLP(n_in=3, n_out=1, depth=2, width=width, act=functools.partial(nn.Tanh), norm="batch").double()
    x = torch.randn(24, 3, dtype=torch.float64)
    stats = batch_stats(model, x)

    def composition(h):
        z = model.stem_act(h)
        for b in model.blocks:
            f = b.f
            z = b.act(z + _bn(f.norm2, f.fc2(f.act(_bn(f.norm, f.fc1(z), stats))), stats))
        return z

    with torch.no_grad():
        oracle = per_sample_sv(composition, model.stem(x[:3]))
    for small_out in (0, 1000):  # every width the batched way, then every width by repeated samples
        monkeypatch.setattr(jacobian, "SMALL_OUT", small_out)
        r = spectrum(model, x, samples=3)
        assert r["jac_method"] == "exact" and r["jac_dims"] == f"{width}x{width}"
        np.testing.assert_allclose(r["singular_values"], oracle, rtol=1e-6, atol=1e-10)
    assert model.training


def _bn(m, z, stats):
    mean, var = stats[m]
    return (z - mean) / torch.sqrt(var + m.eps) * m.weight + m.bias


@pytest.mark.parametrize("make", [
    lambda: ResidualMLP(n_in=3, n_out=2, depth=3, width=8, act=functools.partial(nn.ReLU), norm="batch"),
    lambda: CNN(in_shape=(1, 8, 8), n_out=2, depth=3, width=4, act=nn.ReLU, norm="batch"),
    lambda: MLP(3, 2, depth=3, width=8, act=nn.Tanh, norm="batch", norm_position="post", dropout=0.3),
    lambda: nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Tanh(), nn.Linear(8, 2)),
], ids=["resnet", "cnn", "mlp-post-dropout", "no-running-stats"])
def test_frozen_forward_equals_train_forward(make):
    torch.manual_seed(2)
    model = make()
    x = torch.randn(16, *((1, 8, 8) if isinstance(model, CNN) else (3,))) * 3 + 1
    twin = copy.deepcopy(model).train()
    for m in twin.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        expected = twin(x)
        with frozen(model, x):
            assert not model.training
            got, head_rows = model(x), model(x[:4])  # frozen: rows no longer depend on the rest of the batch
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head_rows, expected[:4], rtol=1e-5, atol=1e-5)
    assert model.training and all(m.training for m in model.modules())


def test_eval_batchnorm_keeps_running_statistics():
    torch.manual_seed(3)
    model = ResidualMLP(n_in=3, n_out=1, depth=2, width=8, act=functools.partial(nn.Tanh), norm="batch")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(16, 3)
    with torch.no_grad():
        expected = model(x)
        with frozen(model, x):
            got = model(x)
    torch.testing.assert_close(got, expected)
    assert not model.training


def orthogonal_linear_net(dtype=torch.float64) -> nn.Module:
    model = MLP(16, 3, depth=6, width=16, act=nn.Identity).to(dtype)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
    return model


def test_orthogonal_linear_net_is_isometric():
    x = torch.randn(8, 16, dtype=torch.float64)
    r = spectrum(orthogonal_linear_net(), x)
    np.testing.assert_allclose(r["singular_values"], 1.0, atol=1e-5)
    assert len(r["singular_values"]) == 4 * 16
    assert r["jac_condition"] == pytest.approx(1.0, abs=1e-5)
    # the estimator on the same net: the Krylov space is invariant at once (Lanczos breaks down)
    est = spectrum(orthogonal_linear_net(), x, exact_max=8)
    assert est["jac_method"] == "estimated"
    for k in ("jac_sv_max", "jac_sv_min"):
        assert est[k] == pytest.approx(1.0, abs=1e-5)
    assert est["jac_sv_mean_sq"] == pytest.approx(1.0, rel=0.1)


def test_small_tanh_weights_shrink():
    torch.manual_seed(4)
    model = MLP(4, 1, depth=4, width=16, act=nn.Tanh)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.05)
    r = spectrum(model, torch.randn(8, 4))
    assert r["jac_sv_max"] < 0.05


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_estimated_against_exact(act):
    torch.manual_seed(5)
    model = MLP(8, 2, depth=6, width=64, act=act)
    x = torch.randn(16, 8)
    exact = spectrum(model, x)
    est = spectrum(model, x, exact_max=32)  # 30 steps in 64 dimensions
    assert (exact["jac_method"], est["jac_method"]) == ("exact", "estimated")
    assert est["jac_dims"] == exact["jac_dims"] == "64x64"
    assert len(est["singular_values"]) == 4 * 30
    assert est["jac_sv_max"] == pytest.approx(exact["jac_sv_max"], rel=0.02)
    rounding = 1e-5 * exact["jac_sv_max"]  # float32: neither SVD resolves singular values below eps * sv_max
    assert est["jac_sv_max"] <= exact["jac_sv_max"] + rounding  # lower bound
    assert 0 <= est["jac_sv_min"] and est["jac_sv_min"] >= exact["jac_sv_min"] - rounding  # upper bound
    assert est["jac_sv_mean_sq"] == pytest.approx(exact["jac_sv_mean_sq"], rel=0.1)


def test_estimated_is_exact_with_iters_at_least_the_dimension():
    torch.manual_seed(5)
    model = MLP(8, 2, depth=6, width=64, act=nn.Tanh).double()  # sv_min ~ 1e-9 sv_max: float64 resolves it
    x = torch.randn(16, 8, dtype=torch.float64)
    exact, est = spectrum(model, x), spectrum(model, x, exact_max=32, iters=64)
    assert exact["jac_sv_min"] < 1e-6 * exact["jac_sv_max"]
    for k in ("jac_sv_max", "jac_sv_min", "jac_sv_mean_sq"):
        assert est[k] == pytest.approx(exact[k], rel=1e-6)
    np.testing.assert_allclose(est["singular_values"], exact["singular_values"], rtol=1e-6, atol=1e-14)


def test_estimated_plain_hutchinson_part():
    """A tanh net at width 200, 30 steps: most of ||J||_F^2 lies outside the Krylov space, and mean_sq
    leans on the Hutchinson probes."""
    torch.manual_seed(9)
    model = MLP(8, 2, depth=3, width=200, act=nn.Tanh)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)  # a flat spectrum, no few directions to capture
    x = torch.randn(16, 8)
    exact, est = spectrum(model, x), spectrum(model, x, exact_max=100)
    assert est["jac_sv_mean_sq"] == pytest.approx(exact["jac_sv_mean_sq"], rel=0.1)
    assert est["jac_sv_max"] == pytest.approx(exact["jac_sv_max"], rel=0.02)
    assert est["jac_sv_min"] >= exact["jac_sv_min"] * (1 - 1e-5)  # an upper bound, up to float32 rounding


def test_estimated_is_deterministic_given_seed():
    torch.manual_seed(6)
    model, x = MLP(4, 1, depth=3, width=40, act=nn.Tanh), torch.randn(8, 4)
    a, b, c = (spectrum(model, x, exact_max=16, iters=10, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a["singular_values"], b["singular_values"])
    assert a["jac_sv_mean_sq"] == b["jac_sv_mean_sq"] != c["jac_sv_mean_sq"]


@pytest.mark.parametrize("exact_max", [1024, 64], ids=["exact", "estimated"])
def test_cnn_leaves_caller_model_alone(exact_max):
    torch.manual_seed(7)
    model = CNN(in_shape=(1, 8, 8), n_out=2, depth=3, width=4, act=nn.ReLU, norm="batch")
    model.norm1.eval()  # a mix of flags, each to come back as it was
    x = torch.randn(16, 1, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    r = spectrum(model, x, exact_max=exact_max)
    assert r["jac_method"] == ("exact" if exact_max == 1024 else "estimated")
    assert r["jac_dims"] == "16x256"  # 16 pooled channels x conv0's 4 x 8 x 8
    assert all(np.isfinite(r[k]) for k in ("jac_sv_max", "jac_sv_min", "jac_sv_mean_sq"))
    assert r["jac_sv_max"] > 0 and np.isfinite(r["singular_values"]).all()
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model._forward_hooks and not model.conv0._forward_hooks and not model.head._forward_pre_hooks


def test_dropout_is_off():
    torch.manual_seed(8)
    plain = MLP(3, 1, depth=3, width=8, act=nn.Tanh)
    dropped = MLP(3, 1, depth=3, width=8, act=nn.Tanh, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3)
    np.testing.assert_array_equal(spectrum(plain, x)["singular_values"], spectrum(dropped, x)["singular_values"])


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.fc(self.fc(x)))


@pytest.mark.parametrize("model, reason", [
    (nn.Sequential(nn.Linear(4, 1)), "1 weight layer"),
    (nn.Sequential(nn.Tanh()), "0 weight layer"),
    (Twice(), "not once each"),
])
def test_not_applicable(model, reason):
    r = spectrum(model, torch.randn(4, 4))
    assert r["jac_method"].startswith("not applicable: ") and reason in r["jac_method"]
    assert np.isnan(r["jac_sv_max"]) and r["singular_values"].size == 0


class UserNet(nn.Module):
    """A model of the user's own: conv -> in-place ReLU -> BatchNorm2d -> linear -> head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 12), nn.Tanh())
        self.out = nn.Linear(12, 2)

    def forward(self, x):
        return self.out(self.body(self.bn(torch.relu_(self.conv(x)))))


def test_user_model_with_in_place_op():
    torch.manual_seed(10)
    model = UserNet().double()
    x = torch.randn(20, 2, 5, 5, dtype=torch.float64)
    seen = []
    twin = copy.deepcopy(model).train()
    twin.bn.register_forward_pre_hook(lambda m, i: seen.append(i[0]) and None)
    with torch.no_grad():
        twin(x)
    mean, var = seen[0].mean((0, 2, 3)), seen[0].var((0, 2, 3), unbiased=False)

    def composition(h):  # one sample's conv output (3 * 5 * 5,) -> the head's input (12,)
        a = torch.relu(h.view(3, 5, 5))
        bn = [t[:, None, None] for t in (mean, var, model.bn.weight, model.bn.bias)]
        a = (a - bn[0]) / torch.sqrt(bn[1] + model.bn.eps) * bn[2] + bn[3]
        return model.body(a.unsqueeze(0)).squeeze(0)

    r = spectrum(model, x, samples=3)
    assert r["jac_method"] == "exact" and r["jac_dims"] == "12x75"
    with torch.no_grad():
        h = model.conv(x[:3]).flatten(1)
    np.testing.assert_allclose(r["singular_values"], per_sample_sv(composition, h), rtol=1e-6, atol=1e-12)
    est = spectrum(model, x, samples=3, exact_max=50)  # J^T is the tall one; 12 steps span its 12 dimensions
    assert est["jac_method"] == "estimated"
    np.testing.assert_allclose(est["singular_values"], r["singular_values"], rtol=1e-6, atol=1e-10)
    assert est["jac_sv_mean_sq"] == pytest.approx(r["jac_sv_mean_sq"], rel=1e-6)


class Apart(nn.Module):
    """A head that does not see the first layer's output."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        self.fc(x)
        return self.head(x)


def test_head_independent_of_first_layer():
    r = spectrum(Apart(), torch.randn(4, 4))
    assert r["jac_method"].startswith("not applicable: ") and "does not depend" in r["jac_method"]
