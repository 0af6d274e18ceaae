"""Mean-field signal propagation in wide fully-connected nets, by quadrature, with numpy only.

Poole et al. 2016 ("Exponential expressivity ... transient chaos") and Schoenholz et al. 2017
("Deep information propagation"): for h^l = W^l phi(h^{l-1}) + b^l, W_ij ~ N(0, sigma_w2/fan_in),
b_i ~ N(0, sigma_b2), the pre-activation length q^l and the correlation c^l of two inputs obey
deterministic maps. Their fixed points and slopes say, before any training, whether gradients
vanish (ordered, chi_1 < 1) or explode (chaotic, chi_1 > 1) and how deep a net can still train
(about 6 xi_c layers).

No torch, scipy or pandas here: the answer must come in milliseconds, so every quadrature rule is
built once at import and every Gaussian expectation is one dot product.

Quadrature. Every kink of these activations sits at u = 0 (relu-family phi', selu's jump in phi',
elu's jump in phi''), so the rules are split there: 1-D expectations use Gauss-Legendre on graded
pieces of the two half-lines (smooth on each side: ~1e-13, where plain Gauss-Hermite converges only
algebraically); 2-D expectations use polar coordinates, where the kinks u1 = 0 and u2 = 0 are rays,
so Gauss-Legendre in the angle between those rays and in the radius sees only smooth pieces (~1e-10
for q <~ 10; gelu at q ~ 100-400, near its edge of chaos: ~1e-6).
Positively homogeneous activations (relu, leaky_relu, identity) need no quadrature: the length map
is linear, chi_1 = sigma_w2 (1 + slope^2)/2, and the arc-cosine kernel (Cho & Saul 2009,
_arccos_pair) makes c* = 1 with slope chi_1 at a finite fixed point; phi'' is a delta at 0 times
phi(0) = 0, so it adds nothing. elu/selu: phi'' holds a delta of weight jump(phi') at 0 (zero for
elu, alpha = 1; selu: scale*(1 - alpha)); in the length-map slope it is multiplied by phi(0) = 0, so
it also adds nothing, and the split rules integrate the regular parts exactly.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

ACTIVATIONS: tuple[str, ...] = (
    "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "mish", "tanh", "sigmoid", "softplus", "identity",
)
CRITICAL_TOL = 1e-4  # |chi_1 - 1| below this is "critical": xi > 1e4 layers, deeper than anyone trains
SELU_ALPHA = 1.6732632423543772848170429916717  # torch's constants
SELU_SCALE = 1.0507009873554804934193349852946
_Q_MIN, _Q_MAX = 1e-12, 1e12  # a length map still shrinking below / growing above these: q* = 0 / inf
_INF = math.inf


def _gl(n: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [a, b]."""
    x, w = np.polynomial.legendre.leggauss(n)
    return a + (b - a) * (x + 1) / 2, (b - a) * w / 2


# 1-D rule for E_z f(z): Gauss-Legendre on [0, 0.05], [0.05, 0.5], [0.5, 10] and the mirror, Gaussian
# density folded in. The grading resolves phi(sqrt(q) z) near z = 0 up to q ~ 1e4 (tanh' at q = 1e4:
# 1e-8; a single [0, 10] piece gives 2e-1 there and 1e-6 already at q = 100).
_t, _w = map(np.concatenate, zip(_gl(16, 0, 0.05), _gl(24, 0.05, 0.5), _gl(48, 0.5, 10.0)))
_w = _w * np.exp(-_t * _t / 2) / math.sqrt(2 * math.pi)
_Z1, _W1 = np.concatenate([_t, -_t]), np.concatenate([_w, _w])
# 2-D rule: radius on [0, 9] (tail mass e^-40) with weight r e^{-r^2/2} / 2pi; 32 angles per segment.
_R, _WR = _gl(40, 0.0, 9.0)
_WR = _WR * _R * np.exp(-_R * _R / 2) / (2 * math.pi)
_X, _WX = np.polynomial.legendre.leggauss(32)
_m = np.arange(32)[::-1]
# theta -> alpha - theta maps the segment list [A, B, C, D] to [A, D, C, B] reversed: u2 = u1[perm].
_PERM = np.concatenate([_m, 96 + _m, 64 + _m, 32 + _m])

# Normal CDF for gelu: numpy has no erf and np.frompyfunc(math.erfc) costs ~100x a ufunc on the 2-D
# grid, so tabulate math.erfc every 1/256 and take a 4th-order Taylor step (derivatives of the CDF
# are Hermite polynomials times the density): error < 1e-15 everywhere, checked in the tests.
_TN = 256
_TX = np.arange(-9 * _TN, 9 * _TN + 1) / _TN
_TCDF = np.array([0.5 * math.erfc(-x / math.sqrt(2)) for x in _TX])
_TPDF = np.exp(-_TX**2 / 2) / math.sqrt(2 * math.pi)


def _ncdf(x: np.ndarray) -> np.ndarray:
    k = np.rint(np.clip(x, -9.0, 9.0) * _TN)
    x0 = k / _TN
    d, i, s = np.clip(x, -9.0, 9.0) - x0, k.astype(np.intp) + 9 * _TN, x0 * x0
    step = d * (1 + d * (-x0 / 2 + d * ((s - 1) / 6 - d * x0 * (s - 3) / 24)))
    return np.where(x < -9, 0.0, np.where(x > 9, 1.0, _TCDF[i] + _TPDF[i] * step))  # tails < 1e-19


def _sig(x):  # sigmoid and 1 - sigmoid without overflow warnings
    t = np.tanh(0.5 * x)
    return 0.5 * (1 + t), 0.5 * (1 - t)


def _phis(name: str, slope: float) -> Callable[[np.ndarray], tuple]:
    """(phi, phi', phi'') of torch's definition; kinks take the one-sided value (they have measure 0)."""
    lam, al = SELU_SCALE, SELU_ALPHA

    def f(x):
        if name in ("relu", "leaky_relu", "identity"):
            a = {"relu": 0.0, "identity": 1.0}.get(name, slope)
            return np.where(x > 0, x, a * x), np.where(x > 0, 1.0, a), np.zeros_like(x)
        if name in ("elu", "selu"):
            (g, a), neg = ((1.0, 1.0) if name == "elu" else (lam, al)), np.minimum(x, 0)
            e = a * np.exp(neg)
            return g * np.where(x > 0, x, a * np.expm1(neg)), g * np.where(x > 0, 1.0, e), g * np.where(x > 0, 0.0, e)
        if name == "gelu":
            cdf, pdf = _ncdf(x), np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
            return x * cdf, cdf + x * pdf, pdf * (2 - x * x)
        if name == "tanh":
            t = np.tanh(x)
            return t, 1 - t * t, -2 * t * (1 - t * t)
        s, sm = _sig(x)
        if name == "sigmoid":
            return s, s * sm, s * sm * (sm - s)
        if name == "silu":
            return x * s, s * (1 + x * sm), s * sm * (2 + x * (sm - s))
        if name == "softplus":  # torch's threshold=20: linear above
            big = x > 20
            return np.where(big, x, np.logaddexp(0, x)), np.where(big, 1.0, s), np.where(big, 0.0, s * sm)
        t = np.tanh(np.logaddexp(0, x))  # mish = x tanh(softplus x)
        return x * t, t + x * s * (1 - t * t), s * (1 - t * t) * (2 + x * (sm - 2 * t * s))

    return f


class _Act(NamedTuple):
    phis: Callable[[np.ndarray], tuple]
    homogeneous: bool  # phi(kx) = k phi(x) for k > 0: every length-free number in closed form
    near0: tuple[float, float] | None  # (slope right, left) of phi at 0 when phi(0) = 0: the q -> 0 limit
    at_inf: tuple[float, float] | None  # (slope at +inf, -inf) when unbounded: the q -> inf limit


def _act(name: str, slope: float) -> _Act:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    if not math.isfinite(slope):
        raise ValueError(f"slope must be finite, got {slope!r}")
    lin = {"relu": (1.0, 0.0), "leaky_relu": (1.0, float(slope)), "identity": (1.0, 1.0)}
    if name in lin:
        return _Act(_phis(name, slope), True, lin[name], lin[name])
    relu_like = (SELU_SCALE, 0.0) if name == "selu" else (1.0, 0.0)  # large q: phi(sqrt(q) z) ~ a relu
    near0 = {"elu": (1.0, 1.0), "selu": (SELU_SCALE, SELU_SCALE * SELU_ALPHA), "gelu": (0.5, 0.5),
             "silu": (0.5, 0.5), "mish": (0.6, 0.6), "tanh": (1.0, 1.0)}.get(name)  # mish'(0) = tanh(ln 2)
    return _Act(_phis(name, slope), False, near0, None if name in ("tanh", "sigmoid") else relu_like)


def _mean_sq(a: _Act, q: float) -> float:
    return float(_W1 @ a.phis(math.sqrt(q) * _Z1)[0] ** 2)


def _pair(a: _Act, q: float, c: float) -> tuple[float, float]:
    """E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)] at length q, correlation c, in polar coordinates.

    u1 = sqrt(q) r cos(th), u2 = sqrt(q) r cos(th - alpha), cos(alpha) = c. The angular segments end at
    the rays u1 = 0 and u2 = 0, so even selu's jumping phi' is smooth inside each; the segment list is
    symmetric under th -> alpha - th, which swaps u1 and u2, so phi is evaluated once on the grid.
    c -> 1 is benign: segments B and D shrink to nothing and A, C tend to the 1-D integral."""
    al, h = math.acos(min(1.0, max(-1.0, c))), math.pi / 2
    lo = np.array([al - h, h, al + h, 3 * h])
    hi = np.array([h, h + al, 3 * h, 3 * h + al])
    th = (lo[:, None] + (hi - lo)[:, None] * (_X + 1) / 2).ravel()
    wt = ((hi - lo)[:, None] / 2 * _WX).ravel()
    f, d, _ = a.phis(math.sqrt(q) * np.outer(_R, np.cos(th)))
    w = np.outer(_WR, wt)
    return float(np.sum(w * f * f[:, _PERM])), float(np.sum(w * d * d[:, _PERM]))


def _arccos_pair(ap: float, am: float, c: float) -> tuple[float, float]:
    """Closed forms per unit q for phi = ap x (x > 0), am x (x < 0) (Cho & Saul 2009, degrees 1 and 0)."""
    th, s = math.acos(min(1.0, max(-1.0, c))), math.sqrt(max(0.0, 1 - c * c))
    k1 = lambda t, cc: (s + (math.pi - t) * cc) / (2 * math.pi)  # E[relu(u1) relu(u2)] / q
    return ((ap * ap + am * am) * k1(th, c) - 2 * ap * am * k1(math.pi - th, -c),
            ((ap * ap + am * am) * (math.pi - th) + 2 * ap * am * th) / (2 * math.pi))


def _illinois(g: Callable[[float], float], lo: float, hi: float, glo: float, ghi: float) -> float:
    """Root of g with g(lo) > 0 > g(hi): regula falsi with the Illinois fix (superlinear, bracketed)."""
    x, side = lo, 0
    for _ in range(200):
        x = (lo * ghi - hi * glo) / (ghi - glo)
        gx = g(x)
        if gx > 0:
            lo, glo, ghi, side = x, gx, ghi / 2 if side == 1 else ghi, 1
        elif gx < 0:
            hi, ghi, glo, side = x, gx, glo / 2 if side == -1 else glo, -1
        if gx == 0 or hi - lo <= 4e-16 * max(abs(hi), 1e-300):
            break
    return x


def _q_star(a: _Act, sw: float, sb: float, q0: float) -> float:
    """Where the length map settles from q0: geometric search for the first sign change of f(q) - q
    in the direction it moves (f is increasing, so iteration never jumps a fixed point), then refine.
    Returns 0 / inf when it still shrinks below 1e-12 / grows past 1e12."""
    g = lambda q: sw * _mean_sq(a, q) + sb - q
    g0 = g(q0)
    if g0 == 0:
        return q0
    if g0 > 0:  # growing: double until it stops
        lo, glo, hi = q0, g0, 2 * q0
        while (ghi := g(hi)) > 0:
            if hi > _Q_MAX and a.at_inf:  # bounded phi: f <= sigma_w2 sup phi^2 + sigma_b2, it will stop
                return _INF
            lo, glo, hi = hi, ghi, 2 * hi
    else:  # shrinking: halve until it stops
        hi, ghi, lo = q0, g0, q0 / 2
        while (glo := g(lo)) < 0:
            if lo < _Q_MIN:
                glo = g(0.0)  # = sigma_w2 phi(0)^2 + sigma_b2 >= 0
                if glo == 0:
                    return 0.0
                lo = 0.0
                break
            hi, ghi, lo = lo, glo, lo / 2
    return _illinois(g, lo, hi, glo, ghi)


def _c_star(a: _Act, sw: float, sb: float, q: float, chi_1: float) -> tuple[float, float]:
    """Stable correlation fixed point below 1 in the chaotic phase, and chi_c there.

    c-map(c) = sum_n b_n^2 c^n (Hermite expansion), so F(c) = map(c) - c is convex on [0, 1] with
    F(0) >= 0, F(1) = 0, F'(1) = chi_1 - 1 > 0: exactly one root c* in [0, 1). Dividing out the known
    root, G = F / (1 - c) is decreasing with G(1) = 1 - chi_1, and nearly linear, so a bracketed Newton
    on G needs a handful of steps even when c* is 1e-4 from 1 (Newton on F would only halve the gap).
    The map is normalised by its own value at c = 1 so that F(1) = 0 holds exactly in this quadrature."""
    den = sw * _pair(a, q, 1.0)[0] + sb
    e0, d0 = _pair(a, q, 0.0)
    f0 = (sw * e0 + sb) / den
    if f0 <= 1e-14:  # odd phi, no bias: c = 0 maps to 0
        return 0.0, sw * d0
    lo, hi, c, der = 0.0, 1.0, f0 / (f0 + chi_1 - 1), d0
    for _ in range(60):
        e, der = _pair(a, q, c)
        F, dF = (sw * e + sb) / den - c, sw * q * der / den - 1  # Price: d/dc E[phi phi] = q E[phi' phi']
        G, dG = F / (1 - c), (dF * (1 - c) + F) / (1 - c) ** 2
        if G == 0:
            break
        lo, hi = (c, hi) if G > 0 else (lo, c)
        y = math.sqrt(1 - c)  # Newton in y = sqrt(1 - c): G ~ a + b y near 1 when phi' jumps (selu)
        new = 1 - (y + G / (2 * y * dG)) ** 2 if dG < 0 else -1.0
        prev, c = c, (new if lo <= new <= hi and new < 1 else (lo + hi) / 2)
        if abs(c - prev) < 1e-12 or hi - lo < 1e-12:  # below that the quadrature noise in G rules
            break
    return c, sw * der


def _depth(s: float) -> float:
    """-1/log|s|: the e-folding depth of a perturbation multiplied by s per layer (a negative s
    oscillates but still decays). |s| >= 1 or non-finite: no exponential decay, inf."""
    s = abs(s)
    return _INF if not math.isfinite(s) or s >= 1 else (0.0 if s == 0 else -1.0 / math.log(s))


def _check(act: str, sigma_w2: float, sigma_b2: float, slope: float, q0: float = 1.0) -> _Act:
    a = _act(act, slope)
    if not (math.isfinite(sigma_w2) and sigma_w2 > 0 and math.isfinite(sigma_b2) and sigma_b2 >= 0):
        raise ValueError(f"need sigma_w2 > 0 and sigma_b2 >= 0, finite; got {sigma_w2!r}, {sigma_b2!r}")
    if not (math.isfinite(q0) and q0 > 0):
        raise ValueError(f"q0 must be a finite positive length, got {q0!r}")
    return a


def _q_chi(a: _Act, sw: float, sb: float, q0: float) -> tuple[float, float]:
    """(q*, chi_1). Homogeneous: q' = chi_1 q + sigma_b2 with chi_1 = sigma_w2 (ap^2 + am^2)/2 for any q.
    Otherwise chi_1 at q*, or its q -> 0 / q -> inf limit (the linearisation / relu-like asymptote)."""
    if a.homogeneous:
        chi = sw * (a.near0[0] ** 2 + a.near0[1] ** 2) / 2
        q = sb / (1 - chi) if chi < 1 else (q0 if chi == 1 and sb == 0 else _INF)  # chi = 1, no bias: q kept
        return q, chi
    q = _q_star(a, sw, sb, q0)
    if q == 0 or q == _INF:
        ap, am = a.near0 if q == 0 else a.at_inf
        return q, sw * (ap * ap + am * am) / 2
    return q, sw * float(_W1 @ a.phis(math.sqrt(q) * _Z1)[1] ** 2)


def analyse(act: str, sigma_w2: float, sigma_b2: float, slope: float = 0.01, q0: float = 1.0) -> dict:
    """Mean-field fixed point and depth scales of a deep tanh/relu/... MLP at initialisation.

    Keys (plain floats, inf allowed): q_star, chi_1, c_star, chi_c, xi_q, xi_c, trainable_depth
    (= 6 xi_c, Schoenholz et al.'s empirical limit), phase ("ordered" chi_1 < 1 - CRITICAL_TOL,
    "chaotic" chi_1 > 1 + CRITICAL_TOL, else "critical"). ``slope`` is leaky_relu's negative_slope;
    ``q0`` the input length the length map starts from (it picks the basin when there are several).

    chi_1 = sigma_w2 E[phi'^2] is the mean squared singular value of one layer's Jacobian: gradients
    scale as chi_1^depth. chi_c = sigma_w2 E[phi'(u1) phi'(u2)] at c* (= chi_1 when c* = 1).
    xi_q = -1/log(chi_1 + sigma_w2 E[phi'' phi]) (the length-map slope) is inf when that slope is >= 1:
    no finite attracting q*. xi_c = -1/log(slope of the normalised correlation map at c*).

    Regimes without a finite q*, reported as limits rather than nan because they are exact:
    - q* = 0 (sigma_b2 = 0, phi(0) = 0, map shrinking; e.g. tanh with sigma_w2 < 1, relu below 2):
      the net becomes its linearisation at 0, chi_1 = sigma_w2 (phi'(0+)^2 + phi'(0-)^2)/2 (tanh:
      sigma_w2), xi_q = -1/log chi_1 (q decays as chi_1^l).
    - q* = inf (map grows without bound: relu-like activations with chi_1 >= 1 at large q): numbers of
      the large-q limit phi(sqrt(q) z) ~ sqrt(q) scale * relu(z): chi_1 = sigma_w2 scale^2 / 2, xi_q = inf.
    - homogeneous activations: q is scale-free; chi_1 = sigma_w2 (1 + slope^2)/2 for every q, q* =
      sigma_b2 / (1 - chi_1) if chi_1 < 1, q0 if chi_1 == 1 and sigma_b2 == 0 (lengths kept), else inf.
    Unless q* is a finite fixed point (homogeneous: sigma_b2 > 0 and chi_1 < 1, then xi_c = -1/log chi_1),
    the length changes by the factor chi_1 per layer and the cross term by chi_c = chi_1 alike, so the
    normalised correlation map has slope chi_c / chi_1 = 1 at c* = 1: correlations converge only
    polynomially, xi_c = inf. That is no promise of trainability: gradients still scale as
    chi_1^depth, i.e. they vanish or explode over about 1/|log chi_1| layers.
    """
    a = _check(act, sigma_w2, sigma_b2, slope, q0)
    sw, sb = float(sigma_w2), float(sigma_b2)
    q, chi_1 = _q_chi(a, sw, sb, float(q0))
    c, chi_c, fixed = 1.0, chi_1, 0 < q < _INF and not a.homogeneous
    if fixed:
        f, _, d2 = a.phis(math.sqrt(q) * _Z1)
        slope_q = chi_1 + sw * float(_W1 @ (f * d2))  # selu's delta in phi'' meets phi(0) = 0: adds nothing
        if chi_1 > 1:
            c, chi_c = _c_star(a, sw, sb, q, chi_1)
        xi_q, xi_c = _depth(slope_q), _depth(chi_c)
    else:  # homogeneous or a limit: the length map is linear with slope chi_1
        finite_fixed = 0 < q < _INF and sb > 0  # homogeneous with bias, chi_1 < 1: a true fixed point
        xi_q = _depth(chi_1) if q < _INF else _INF
        xi_c = _depth(chi_c) if finite_fixed else _INF
    phase = "critical" if abs(chi_1 - 1) < CRITICAL_TOL else ("ordered" if chi_1 < 1 else "chaotic")
    return {"q_star": float(q), "chi_1": float(chi_1), "c_star": float(c), "chi_c": float(chi_c),
            "xi_q": float(xi_q), "xi_c": float(xi_c), "trainable_depth": 6.0 * float(xi_c), "phase": phase}


def critical_sigma_w2(act: str, sigma_b2: float, slope: float = 0.01) -> float:
    """sigma_w2 in (0, 100] with chi_1 = 1 (the order-to-chaos edge; q map started from q0 = 1).

    Homogeneous activations: 2 / (1 + slope^2) exactly, whatever sigma_b2. Otherwise a scan for the
    first sign change of chi_1 - 1 and a bracketed root. Raises ValueError when there is none, or when
    chi_1 jumps across 1 instead of passing it (q* switching basin, e.g. gelu without bias: q* = 0 and
    chi_1 = sigma_w2/4 on one side, q* = inf and chi_1 = sigma_w2/2 on the other)."""
    a = _check(act, 1.0, sigma_b2, slope)
    if a.homogeneous:
        s = 2.0 / (a.near0[0] ** 2 + a.near0[1] ** 2)
        if s > 100:
            raise ValueError(f"{act}: chi_1 = sigma_w2 * {1 / s:g} never reaches 1 for sigma_w2 in (0, 100]")
        return s
    h = lambda sw: 1.0 - _q_chi(a, sw, float(sigma_b2), 1.0)[1]
    grid = np.geomspace(0.01, 100.0, 49)
    prev, hprev = 0.0, 1.0  # chi_1 -> 0 as sigma_w2 -> 0
    for sw in grid:
        hs = h(float(sw))
        if hs <= 0:
            root = float(sw) if hs == 0 else _illinois(h, prev, float(sw), hprev, hs)
            if abs(h(root)) > 1e-6:
                raise ValueError(f"{act} with sigma_b2={sigma_b2}: chi_1 jumps across 1 at sigma_w2 ~ {root:.6g} "
                                 "(the length fixed point changes regime there); no critical point")
            return root
        prev, hprev = float(sw), hs
    raise ValueError(f"{act} with sigma_b2={sigma_b2}: chi_1 < 1 for every sigma_w2 in (0, 100]")
