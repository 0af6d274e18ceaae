"""deeprun.meanfield against closed forms, Monte Carlo, torch's activations and a real tanh MLP."""

from __future__ import annotations

import ast
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

import deeprun.meanfield as mf
from conftest import background, run_python
from deeprun.meanfield import ACTIVATIONS, analyse, critical_sigma_w2

LAM, ALPHA = mf.SELU_SCALE, mf.SELU_ALPHA
KEYS = {"q_star", "chi_1", "c_star", "chi_c", "xi_q", "xi_c", "trainable_depth", "phase"}


def ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def phis(name: str, x: np.ndarray, slope: float = 0.01):
    return mf._act(name, slope).phis(np.asarray(x, dtype=float))


# ---------------------------------------------------------------- homogeneous: exact closed forms


@pytest.mark.parametrize("sw", [0.3, 1.0, 2.0, 2.5, 7.3])
def test_relu_chi1_is_half_sigma_w2(sw):
    for sb in (0.0, 0.2):
        assert analyse("relu", sw, sb)["chi_1"] == pytest.approx(sw / 2, rel=1e-9)


def test_relu_and_leaky_critical_points():
    assert critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, rel=1e-12)  # He init
    assert critical_sigma_w2("relu", 0.3) == pytest.approx(2.0, rel=1e-12)  # bias does not move it
    for a in (0.01, 0.2):
        assert critical_sigma_w2("leaky_relu", 0.1, slope=a) == pytest.approx(2 / (1 + a * a), rel=1e-12)
        for sw in (0.5, 1.9, 3.0):
            assert analyse("leaky_relu", sw, 0.1, slope=a)["chi_1"] == pytest.approx(sw * (1 + a * a) / 2, rel=1e-12)
    assert critical_sigma_w2("identity", 0.0) == 1.0
    assert analyse("identity", 0.8, 0.0)["chi_1"] == pytest.approx(0.8, rel=1e-12)


def test_relu_regimes_scale_free_lengths():
    r = analyse("relu", 1.0, 0.0)  # shrinks to 0 by 1/2 a layer; correlations only polynomially to 1
    assert (r["q_star"], r["chi_1"], r["c_star"], r["phase"]) == (0.0, 0.5, 1.0, "ordered")
    assert r["xi_q"] == pytest.approx(1 / math.log(2)) and r["xi_c"] == math.inf
    r = analyse("relu", 2.0, 0.0, q0=3.7)  # critical and bias-free: every length is kept
    assert (r["q_star"], r["chi_1"], r["phase"], r["xi_c"]) == (3.7, 1.0, "critical", math.inf)
    r = analyse("relu", 3.0, 0.1)
    assert (r["q_star"], r["chi_1"], r["phase"], r["xi_q"]) == (math.inf, 1.5, "chaotic", math.inf)
    r = analyse("relu", 1.5, 0.1)  # q' = 0.75 q + 0.1: q* = 0.4, a true attracting fixed point
    assert r["q_star"] == pytest.approx(0.4, rel=1e-12) and r["c_star"] == 1.0
    assert r["xi_q"] == pytest.approx(-1 / math.log(0.75)) and r["xi_c"] == pytest.approx(-1 / math.log(0.75))
    assert r["trainable_depth"] == pytest.approx(6 * r["xi_c"])


@pytest.mark.parametrize("name, slope", [("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", -0.5), ("identity", 1.0)])
def test_polar_quadrature_reproduces_arccos_kernel(name, slope):
    """The kinked 2-D integrals (phi' is a step) against Cho & Saul's closed forms."""
    a = mf._act(name, slope)
    ap, am = a.near0
    for q in (0.3, 2.0, 50.0):
        for c in (-0.7, 0.0, 0.5, 0.99, 0.999999, 1.0):
            e, d = mf._pair(a, q, c)
            ke, kd = mf._arccos_pair(ap, am, c)
            assert e / q == pytest.approx(ke, rel=1e-12, abs=1e-14) and d == pytest.approx(kd, rel=1e-12, abs=1e-14)


# ---------------------------------------------------------------- tanh against the papers


@pytest.fixture(scope="module")
def tanh_crit() -> float:
    return critical_sigma_w2("tanh", 0.05)


def test_tanh_critical_point_matches_schoenholz(tanh_crit):
    assert 1.74 <= tanh_crit <= 1.78 and tanh_crit == pytest.approx(1.76, abs=0.02)  # Schoenholz et al. Fig. 1
    assert tanh_crit == pytest.approx(1.7609546, abs=1e-6)
    r = analyse("tanh", tanh_crit, 0.05)
    assert r["chi_1"] == pytest.approx(1.0, abs=1e-9) and r["phase"] == "critical" and r["c_star"] == 1.0


def test_tanh_xi_c_diverges_at_criticality_from_both_sides(tanh_crit):
    for side, phase in ((-1, "ordered"), (+1, "chaotic")):
        rs = [analyse("tanh", tanh_crit + side * d, 0.05) for d in (0.1, 0.01, 0.001)]
        xi = [r["xi_c"] for r in rs]
        assert xi[0] < xi[1] < xi[2] and xi[2] > 100, (side, xi)
        assert all(r["phase"] == phase for r in rs)
        assert all(r["trainable_depth"] == pytest.approx(6 * r["xi_c"]) for r in rs)
        # xi_c ~ 1/|sigma_w2 - crit|: a decade closer, about ten times deeper
        assert 8 < xi[2] / xi[1] < 12


def test_correlation_fixed_point_by_phase():
    ordered, chaotic = analyse("tanh", 1.2, 0.05), analyse("tanh", 2.5, 0.05)
    assert ordered["c_star"] == 1.0 and ordered["chi_c"] == ordered["chi_1"] < 1
    assert 0 < chaotic["c_star"] < 1 and chaotic["chi_c"] < 1 < chaotic["chi_1"]
    assert chaotic["xi_c"] == pytest.approx(-1 / math.log(chaotic["chi_c"]))
    odd = analyse("tanh", 2.5, 0.0)  # odd phi, no bias: c = 0 maps to 0, and it is the stable one
    assert odd["c_star"] == 0.0 and 0 < odd["chi_c"] < 1


def test_tanh_without_bias_below_one_collapses_to_zero_length():
    for sw in (0.3, 0.7, 0.99):
        r = analyse("tanh", sw, 0.0)
        assert r["q_star"] == 0.0 and r["chi_1"] == pytest.approx(sw, rel=1e-12)  # phi'(0) = 1
        assert r["xi_q"] == pytest.approx(-1 / math.log(sw), rel=1e-9) and r["phase"] == "ordered"
    assert analyse("tanh", 1.3, 0.0)["q_star"] > 0  # above 1 the origin repels


# ---------------------------------------------------------------- smooth activations: Monte Carlo, closed forms

SMOOTH = [("tanh", 2.5, 0.1), ("sigmoid", 4.0, 0.2), ("elu", 1.9, 0.5), ("selu", 1.5, 0.1), ("gelu", 1.5, 0.1),
          ("gelu", 1.99, 0.5), ("silu", 2.5, 0.1), ("mish", 1.5, 0.1), ("softplus", 1.0, 0.0)]


def mc_close(samples: np.ndarray, value: float, k: float = 5.0) -> bool:
    se = samples.std() / math.sqrt(samples.size)
    return abs(samples.mean() - value) <= k * se + 1e-12


@pytest.mark.parametrize("name, sw, sb", SMOOTH)
def test_quadrature_against_monte_carlo(name, sw, sb):
    rng = np.random.default_rng(0)
    r = analyse(name, sw, sb)
    q, c = r["q_star"], r["c_star"]
    assert 0 < q < math.inf
    z1, z2 = rng.standard_normal((2, 400_000))
    f, d, _ = phis(name, math.sqrt(q) * z1)
    assert mc_close(sw * f * f + sb, q), "length map at q*"
    assert mc_close(sw * d * d, r["chi_1"]), "chi_1"
    if c < 1:  # chaotic: the 2-D integrals at c*
        f2, d2, _ = phis(name, math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2))
        assert mc_close((sw * f * f2 + sb) / q, c), "correlation map at c*"
        assert mc_close(sw * d * d2, r["chi_c"]), "chi_c"


def test_elu_selu_chi1_closed_forms():
    """E[phi'(sqrt(q) z)^2] = 1/2 + a^2 e^{2q} Phi(-2 sqrt q): the half-line split makes the kink exact."""
    for name, g, a, sw, sb in (("elu", 1.0, 1.0, 1.5, 0.1), ("elu", 1.0, 1.0, 1.9, 0.5), ("selu", LAM, ALPHA, 1.5, 0.1)):
        r = analyse(name, sw, sb)
        q = r["q_star"]
        exact = sw * g * g * (0.5 + a * a * math.exp(2 * q) * ncdf(-2 * math.sqrt(q)))
        assert r["chi_1"] == pytest.approx(exact, rel=1e-12)


def test_selu_at_lecun_init_is_self_normalising_but_slightly_chaotic():
    """SELU's constants make N(0, 1) map to mean 0, variance 1: q* = 1 exactly at sigma_w2 = 1. The
    Jacobian is not norm-preserving though: chi_1 = scale^2 (1/2 + alpha^2 e^2 Phi(-2)) = 1.0716."""
    r = analyse("selu", 1.0, 0.0)
    assert r["q_star"] == pytest.approx(1.0, rel=1e-9)
    chi = LAM**2 * (0.5 + ALPHA**2 * math.e**2 * ncdf(-2.0))
    assert r["chi_1"] == pytest.approx(chi, rel=1e-12) and chi == pytest.approx(1.0716, abs=1e-4)
    assert r["phase"] == "chaotic" and abs(r["chi_1"] - 1) < 0.08
    assert r["c_star"] == pytest.approx(0.0, abs=1e-12)  # mean-zero outputs: uncorrelated inputs stay so
    z = np.random.default_rng(1).standard_normal(1_000_000)
    f, d, _ = phis("selu", z)
    assert abs(f.mean()) < 5e-3 and mc_close(f * f, 1.0) and mc_close(d * d, chi)


def test_limits_without_finite_length():
    r = analyse("elu", 3.0, 0.1)  # grows without bound: the relu-like asymptote
    assert (r["q_star"], r["chi_1"], r["c_star"], r["xi_q"], r["xi_c"]) == (math.inf, 1.5, 1.0, math.inf, math.inf)
    assert r["phase"] == "chaotic"
    assert analyse("selu", 4.0, 0.3)["chi_1"] == pytest.approx(4.0 * LAM**2 / 2)
    r = analyse("gelu", 1.0, 0.0)  # shrinks to 0: the linearisation, gelu'(0) = 1/2
    assert (r["q_star"], r["chi_1"]) == (0.0, 0.25) and r["xi_q"] == pytest.approx(-1 / math.log(0.25))
    assert analyse("mish", 1.0, 0.0)["chi_1"] == pytest.approx(0.36)  # mish'(0) = tanh(ln 2) = 0.6
    assert analyse("selu", 0.3, 0.0)["chi_1"] == pytest.approx(0.3 * LAM**2 * (1 + ALPHA**2) / 2)  # kink at 0
    assert analyse("sigmoid", 1.0, 0.0)["q_star"] > 0  # sigmoid(0) = 1/2 feeds the length


def test_length_map_slope_matches_finite_difference():
    """xi_q uses chi_1 + sigma_w2 E[phi'' phi]; check it against d/dq of the length map itself."""
    for name, sw, sb in SMOOTH:
        a, r = mf._act(name, 0.01), analyse(name, sw, sb)
        q, h = r["q_star"], 1e-5 * r["q_star"]
        slope = sw * (mf._mean_sq(a, q + h) - mf._mean_sq(a, q - h)) / (2 * h)
        assert r["xi_q"] == pytest.approx(-1 / math.log(abs(slope)), rel=1e-5), name


def test_normal_cdf_table_is_exact():
    x = np.concatenate([np.linspace(-12, 12, 40001), [-9.0, 9.0, 0.0, -9.001, 9.001]])
    ref = np.array([ncdf(v) for v in x])
    assert np.max(np.abs(mf._ncdf(x) - ref)) < 1e-15


# ---------------------------------------------------------------- torch's definitions, autograd derivatives


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_and_derivatives_match_torch(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ref = {"relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "elu": F.elu, "selu": F.selu,
           "gelu": F.gelu, "silu": F.silu, "mish": F.mish, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
           "softplus": F.softplus, "identity": lambda x: x * 1.0}[name]
    x = torch.linspace(-30, 30, 6000, dtype=torch.float64, requires_grad=True)  # never exactly 0
    y = ref(x)
    (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), x, allow_unused=True)[0] if d1.requires_grad else None
    d2 = torch.zeros_like(x) if d2 is None else d2
    f, g, h = phis(name, x.detach().numpy(), slope=0.2)
    for ours, theirs in ((f, y), (g, d1), (h, d2)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------- the real network oracle


@pytest.fixture
def torch1():
    """torch on one intra-op thread: on a busy 2-core machine two threads make these small ops 30x slower."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(n)


def test_tanh_mlp_matches_mean_field(torch1):
    """A width-512 tanh net: the layer-to-layer Jacobian J = W^{l+1} diag(phi'(h^l)) has
    ||J||_F^2 / N = sum_j |W_:j|^2 phi'(h_j)^2 / N, its mean squared singular value: chi_1."""
    torch = torch1
    torch.manual_seed(0)
    n, depth, batch, burn, sb = 512, 130, 8, 10, 0.05  # deep enough that layer noise (~6%) averages out
    z = torch.randn(depth, n, n).double()  # one draw, scaled per sigma_w2 (float32 draws are 5x faster)
    bias = torch.randn(depth, n, dtype=torch.float64) * math.sqrt(sb)
    x0 = torch.randn(batch, n, dtype=torch.float64)
    for sw in (1.2, 1.76, 2.5):
        h, chis, qs = x0, [], []
        for layer in range(depth):
            w = z[layer] * math.sqrt(sw / n)
            if layer > burn:  # h is the input of this layer's weights: at the fixed point
                qs.append((h**2).mean().item())
                chis.append((((1 - torch.tanh(h) ** 2) ** 2 * (w**2).sum(0)).sum(1) / n).mean().item())
            h = torch.tanh(h) @ w.T + bias[layer]
        r = analyse("tanh", sw, sb)
        assert statistics.mean(chis) == pytest.approx(r["chi_1"], rel=0.05), sw
        assert statistics.mean(qs) == pytest.approx(r["q_star"], rel=0.05), sw


# ---------------------------------------------------------------- API, errors, speed, imports


def test_result_is_plain_floats_for_every_activation():
    for name in ACTIVATIONS:
        for sw, sb in ((0.5, 0.0), (1.5, 0.1), (3.0, 0.3)):
            r = analyse(name, sw, sb)
            assert set(r) == KEYS and r["phase"] in ("ordered", "chaotic", "critical")
            assert all(type(r[k]) is float and not math.isnan(r[k]) for k in KEYS - {"phase"}), (name, r)


def test_unknown_activation_names_it_and_the_choices():
    for call in (lambda: analyse("swish", 1.0, 0.0), lambda: critical_sigma_w2("swish", 0.0)):
        with pytest.raises(ValueError) as e:
            call()
        assert "'swish'" in str(e.value) and all(n in str(e.value) for n in ACTIVATIONS)
    for bad in (dict(sigma_w2=-1.0), dict(sigma_w2=math.nan), dict(sigma_b2=-0.1), dict(q0=0.0)):
        with pytest.raises(ValueError):
            analyse("tanh", **{"sigma_w2": 1.0, "sigma_b2": 0.0, **bad})


def test_no_critical_point_raises():
    with pytest.raises(ValueError, match="chi_1 < 1"):
        critical_sigma_w2("sigmoid", 0.0)  # sigmoid' <= 1/4: chi_1(100) = 0.986
    with pytest.raises(ValueError, match="jumps"):
        critical_sigma_w2("gelu", 0.1)  # q* escapes to inf (a saddle-node), chi_1 0.85 -> 1.06


@pytest.mark.parametrize("case", [("tanh", 1.5, 0.05), ("tanh", 2.5, 0.1), ("gelu", 1.5, 0.1), ("gelu", 1.99, 0.5),
                                  ("relu", 2.0, 0.0)])
def test_analyse_is_fast(case):
    analyse(*case)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        analyse(*case)
        times.append(time.perf_counter() - t)
    assert statistics.median(times) < 0.05  # target 10 ms; slack for a busy shared machine


def test_module_imports_only_numpy():
    tree = ast.parse(Path(mf.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= {"__future__", "math", "typing", "numpy"}, roots


@background
def meanfield_import(d: Path):
    """In a fresh interpreter (deeprun imported): [seconds to import deeprun.meanfield and analyse once, the
    heavy modules loaded]."""
    code = ("import json, sys, time, deeprun; t = time.perf_counter(); import deeprun.meanfield as m; "
            "m.analyse('tanh', 2.5, 0.1); dt = time.perf_counter() - t; "
            "print(json.dumps([dt, [k for k in ('torch', 'scipy', 'pandas') if k in sys.modules]]))")
    p = run_python(code, cwd=d)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_module_loads_fast_without_torch_scipy_or_pandas(meanfield_import):
    dt, heavy = meanfield_import.result
    assert heavy == [] and dt < 1.0