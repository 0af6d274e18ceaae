"""Singular values of the input-output Jacobian at initialisation (dynamical isometry: Pennington,
Schoenholz & Ganguli 2017).

J, per sample, is the Jacobian of the head's input (the last hidden representation) with respect to
the first weight layer's output (its pre-activation): the part of the net that depth adds, width x
width for an MLP or resnet. The first and last weight layers are those of models.weight_layers. Two
hooks make the net a function of h alone for a fixed input batch: a forward hook on the first weight
layer replaces its output by h, a forward pre-hook on the head captures its input.

The net is measured as it would run on x with its samples decoupled: dropout off (eval), and every
BatchNorm that would use batch statistics (train mode, or no running statistics) normalises with the
statistics of the whole of x, frozen as constants; a BatchNorm already in eval mode keeps its running
statistics. J then treats those statistics as fixed, dropping each sample's own small share in them.
The caller's model is not copied, and left as it was: for the call its training flags are switched
to eval and each BatchNorm's forward is an affine map (an instance attribute, so its running buffers
are never written), both put back in a finally; autograd.grad with respect to h accumulates no
parameter gradient. Not thread-safe: do not run the same model elsewhere during the call.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import weight_layers

BatchNorm = nn.modules.batchnorm._BatchNorm  # 1d, 2d, 3d, lazy and sync alike


def _affine(m: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel: BatchNorm with these statistics is z * scale + shift."""
    with torch.no_grad():
        scale = (var + m.eps).rsqrt() * (1.0 if m.weight is None else m.weight)
        return scale, (0.0 if m.bias is None else m.bias) - mean * scale


@contextlib.contextmanager
def frozen(model: nn.Module, x: torch.Tensor):
    """The model in eval mode with every BatchNorm an affine map per channel: at the statistics of x where
    it would use batch statistics, else at its running statistics (see the module docstring). Its
    forward on x then equals the train-mode forward on x with dropout off (to rounding). The affine maps
    stand in for BatchNorm's forward for the duration, rather than hooks after it, where its own forward
    would still run (twice the work). Flags and forwards are put back on exit."""
    flags = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, BatchNorm)]
    own = [(m, m.__dict__["forward"]) for m in norms if "forward" in m.__dict__]  # someone's patch, kept
    coupled = [m for m in norms if m.training or m.running_mean is None]
    maps = {m: _affine(m, m.running_mean, m.running_var) for m in norms if m not in coupled}

    def frozen_forward(m):
        def forward(z):
            if m not in maps:  # the first pass, on all of x: the train-mode forward itself, into buffers of our own
                mean = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
                var = torch.ones_like(mean)
                out = F.batch_norm(z, mean, var, m.weight, m.bias, True, 1.0, m.eps)
                # it normalised with the biased variance but stores the unbiased one (a faster reduction than var())
                n = z.numel() // z.shape[1]
                maps[m] = _affine(m, mean, var * ((n - 1) / n))
                return out
            scale, shift = (t.view(-1, *[1] * (z.dim() - 2)) for t in maps[m])
            return z * scale + shift
        return forward

    try:
        model.eval()
        for m in norms:
            m.forward = frozen_forward(m)
        if coupled:
            with torch.no_grad():
                model(x)
        yield model
    finally:
        for m in norms:
            m.__dict__.pop("forward", None)
        for m, forward in own:
            m.forward = forward
        for m, t in flags:
            m.training = t


class _Split:
    """f(h) = head input (samples, n_out) of the model on x with the first weight layer's output
    replaced by h (samples, n_in); the hooks stay registered until close()."""

    def __init__(self, model: nn.Module, first: nn.Module, head: nn.Module, x: torch.Tensor):
        self.model, self.x, self.h, self.calls, self.h0, self.z = model, x, None, [], None, None
        self.handles = [first.register_forward_hook(self._replace), head.register_forward_pre_hook(self._capture)]
        with torch.no_grad():  # the probe pass: shapes, and whether the split is one cut through the forward
            model(x)
        self.order, self.calls = "".join(self.calls), None

    def _replace(self, module, inputs, out):
        if self.calls is not None:
            self.calls.append("f")
            self.h0 = out.flatten(1)
        # a copy: the net may change it in place (ReLU(inplace=True)), which autograd forbids on h itself
        return None if self.h is None else self.h.view(out.shape).clone()

    def _capture(self, module, inputs):
        if self.calls is not None:
            self.calls.append("h")
        self.z = inputs[0]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        self.h = h
        try:
            self.model(self.x)
        finally:
            self.h = None
        return self.z.flatten(1)

    def close(self):
        for h in self.handles:
            h.remove()


class _Linearised:
    """J at h0 by reverse-mode autograd alone: back(u) = J^T u and, as the transpose of that linear map
    (a second backward, through the first's graph), push(v) = J v; batched=True maps over a leading
    dimension of u or v. The graphs are built once and kept. Plain torch.autograd: torch.func's first call
    imports torch._dynamo, slower than the whole measurement. `depends`: whether z depends on h at all
    (z requires grad anyway where the parameters do)."""

    def __init__(self, f, h0: torch.Tensor):
        with torch.enable_grad():
            self.h = h0.detach().requires_grad_()
            self.z = f(self.h)
            self.depends = self.z.requires_grad and torch.autograd.grad(
                self.z.sum(), self.h, retain_graph=True, allow_unused=True)[0] is not None
        self.u0 = None

    def back(self, u: torch.Tensor, batched: bool = False) -> torch.Tensor:
        if not batched:  # a scalar's backward: grad_outputs' first call imports torch's symbolic shapes
            with torch.enable_grad():
                return torch.autograd.grad((self.z * u).sum(), self.h, retain_graph=True)[0]
        return torch.autograd.grad(self.z, self.h, u, retain_graph=True, is_grads_batched=batched)[0]

    def push(self, v: torch.Tensor, batched: bool = False) -> torch.Tensor:
        if self.u0 is None:
            with torch.enable_grad():
                self.u0 = torch.zeros_like(self.z, requires_grad=True)
                self.g = torch.autograd.grad(self.z, self.h, self.u0, create_graph=True)[0]
        return torch.autograd.grad(self.g, self.u0, v, retain_graph=True, is_grads_batched=batched)[0]


SMALL_OUT = 64  # up to this many Jacobian rows, they come from one pass through repeated samples (_repeated_rows)


def _batched_rows(jac: _Linearised) -> torch.Tensor:
    """(samples, n_out, n_in): every sample's J. The frozen net treats samples independently, so output unit
    k's backward pass (e_k in every row) gives row k of every sample's J at once: n_out passes, vmapped into
    one batched backward (whose first call imports torch's symbolic shapes, 0.25 s)."""
    samples, n_out = jac.z.shape
    basis = torch.eye(n_out, dtype=jac.z.dtype, device=jac.z.device).unsqueeze(1).expand(n_out, samples, n_out)
    return jac.back(basis, batched=True).transpose(0, 1)


def _repeated_rows(model: nn.Module, first: nn.Module, head: nn.Module, x: torch.Tensor,
                   h0: torch.Tensor, n_out: int) -> torch.Tensor:
    """As _batched_rows, by one plain backward pass through the frozen net on each sample of x repeated n_out
    times (rows s * n_out + k), copy k seeded with e_k: for a few rows, cheaper than the batched pass."""
    split = _Split(model, first, head, x.repeat_interleave(n_out, 0))
    try:
        jac = _Linearised(split, h0.repeat_interleave(n_out, 0))
    finally:
        split.close()
    eye = torch.eye(n_out, dtype=jac.z.dtype, device=jac.z.device)
    return jac.back(eye.repeat(len(x), 1)).view(len(x), n_out, -1)


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w (..., samples, n) minus its projection on each sample's rows of basis (j, samples, n); twice, as
    once leaves rounding errors that grow into lost orthogonality."""
    for _ in range(2):
        w = w - torch.einsum("...js,jsn->...sn", torch.einsum("jsn,...sn->...js", basis, w), basis)
    return w


def _bidiagonal(apply, apply_t, d: int, m: int, steps: int, gen: torch.Generator, like: torch.Tensor):
    """(samples, steps) singular values of B, and V (steps, samples, d), from Golub-Kahan bidiagonalisation
    A V = U B of the operator A: R^d -> R^m (d <= m; `apply_t` is A^T), per sample, with full
    reorthogonalisation, from a random v. sigma(B) = sigma(A V), V spanning a Krylov space of A^T A: the
    largest is a lower bound on A's, the smallest an upper bound (as d <= m); B, unlike Lanczos on
    A^T A, does not square the condition number, so small singular values keep their accuracy."""
    samples, kw = like.shape[0], dict(dtype=like.dtype, device=like.device)
    tiny = 100 * torch.finfo(like.dtype).eps
    V, U = torch.empty((steps, samples, d), **kw), torch.empty((steps, samples, m), **kw)
    alpha, beta = torch.zeros(samples, steps, **kw), torch.zeros(samples, steps, **kw)

    def next_unit(w, basis, j, coef):
        # w orthogonalised; where nothing is left (an invariant space: J orthogonal, or of low rank),
        # a fresh direction, coupled by a coefficient of 0
        r = _orthogonalise(w, basis)
        size = r.norm(dim=1)
        stuck = size <= tiny * w.norm(dim=1)
        if stuck.any():
            fresh = _orthogonalise(torch.randn(w.shape, generator=gen, **kw), basis)
            r = torch.where(stuck[:, None], fresh, r)
            size = torch.where(stuck, 0.0, size)
        coef[:, j] = size
        return r / r.norm(dim=1, keepdim=True)

    v = torch.randn((samples, d), generator=gen, **kw)
    V[0] = v / v.norm(dim=1, keepdim=True)
    for j in range(steps):
        U[j] = next_unit(apply(V[j]), U[:j], j, alpha)  # A v_j = beta_{j-1} u_{j-1} + alpha_j u_j
        if j + 1 < steps:
            V[j + 1] = next_unit(apply_t(U[j]), V[:j + 1], j, beta)  # A^T u_j = alpha_j v_j + beta_j v_{j+1}
    bidiag = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :steps - 1], 1)
    return torch.linalg.svdvals(bidiag), V


def _estimated(jac: _Linearised, iters: int, gen: torch.Generator):
    """(Ritz singular values (samples, k), ||J||_F^2 per sample) from Jacobian-vector products alone."""
    (samples, n_in), n_out = jac.h.shape, jac.z.shape[1]
    # the bounds need A tall: J itself, or J^T for a J wider than high (a CNN's maps -> its pooled channels)
    tall = (jac.push, jac.back, n_in, n_out) if n_in <= n_out else (jac.back, jac.push, n_out, n_in)
    apply, d = tall[0], tall[2]
    sv, V = _bidiagonal(*tall, min(iters, d), gen, jac.z)
    # ||A||_F^2 = ||A V||_F^2 + ||A (I - V V^T)||_F^2: the first is sum(sv^2), exactly; the rest by Hutchinson,
    # E ||A (I - V V^T) g||^2 over g ~ N(0, I). The Krylov space holds the large directions that make plain
    # Hutchinson noisy, and with iters >= d nothing is left to estimate
    probes = torch.randn((iters, samples, d), generator=gen, dtype=jac.z.dtype, device=jac.z.device)
    frob = sv.pow(2).sum(1) + apply(_orthogonalise(probes, V), batched=True).pow(2).sum(2).mean(0)
    return sv, frob


def spectrum(model: nn.Module, x: torch.Tensor, samples: int = 4, exact_max: int = 1024, iters: int = 30,
             seed: int = 0) -> dict:
    """Singular values of J (module docstring) on the first `samples` rows of x; BatchNorm statistics
    come from all of x, so pass a training batch.

    Returns plain floats jac_sv_max, jac_sv_min (largest and smallest over all samples' singular values),
    jac_sv_mean_sq (their mean square, ||J||_F^2 / min(n_out, n_in): ||J||_F^2 / n_in for a square J),
    jac_condition (sv_max / sv_min, inf if sv_min is 0), jac_method, jac_dims ("OUTxIN") and
    singular_values (1-d numpy, pooled over the samples).

    jac_method "exact" when n_in and n_out are both <= exact_max: the full J and its SVD.
    "estimated" otherwise, deterministic given `seed`: k = min(iters, d) steps of Golub-Kahan-Lanczos
    bidiagonalisation (each one J v and one J^T u, as backward passes) on J, or on J^T where J is wider
    than high, d the smaller of n_in and n_out; its k Ritz singular values are those of J on a
    k-dimensional Krylov subspace, so
    - sv_max is a lower bound that converges fast (agreed with the exact one to 1e-6 on the MLPs, resnets
      and CNNs tried, iters=30);
    - sv_min is an upper bound (never below the true sv_min, up to rounding of order eps * sv_max); exact
      where iters >= d, otherwise loose whenever the bottom of the spectrum is not isolated (at init it
      often is not: 0.7 against a true 0 on a 256-wide resnet): read it as a bound;
    - mean_sq is ||J||_F^2 / d, ||J||_F^2 being the Krylov part sum(sv^2), exact, plus Hutchinson's
      estimate of the rest with `iters` Gaussian probes orthogonal to the Krylov space: unbiased, exact
      where iters >= d, within 0.5% on the nets tried, 2% on a flat spectrum (plain Hutchinson's error
      can reach sqrt(2 / iters), 25%, where a few directions carry most of ||J||_F^2);
    - singular_values are the k Ritz singular values per sample: the extremes are estimates, the
      interior is no sample of the spectrum's histogram.
    "not applicable: <reason>" where the net has no such split, with NaN numbers.
    """
    layers = list(weight_layers(model).items())
    if len(layers) < 2:
        return _result(f"not applicable: {len(layers)} weight layer(s), J needs a first layer and a head")
    (first_name, first), (head_name, head) = layers[0], layers[-1]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with frozen(model, x), torch.no_grad():  # the Jacobian's graph alone is built, in _Linearised
        split = _Split(model, first, head, x[:samples])
        try:
            if split.order != "fh":
                return _result(f"not applicable: the forward runs first layer '{first_name}' and head '{head_name}' "
                               f"as {split.order!r}, not once each in that order")
            jac = _Linearised(split, split.h0)
            (_, n_in), (_, n_out) = jac.h.shape, jac.z.shape
            if not jac.depends:
                return _result(f"not applicable: the input of head '{head_name}' does not depend on the output "
                               f"of first layer '{first_name}'", f"{n_out}x{n_in}")
            if not torch.isfinite(jac.z).all():  # the signal overflowed float32: no spectrum to take
                return _result("not finite: the head's input overflows float32", f"{n_out}x{n_in}",
                               math.inf, math.nan, math.inf)
            if n_in <= exact_max and n_out <= exact_max:
                rows = _repeated_rows(model, first, head, x[:samples], split.h0, n_out) if n_out <= SMALL_OUT \
                    else _batched_rows(jac)
                sv = torch.linalg.svdvals(rows)  # (samples, min(n_out, n_in))
                method, mean_sq = "exact", sv.pow(2).mean().item()
            else:
                sv, frob = _estimated(jac, iters, gen)
                method, mean_sq = "estimated", frob.mean().item() / min(n_in, n_out)
        finally:
            split.close()
    sv_max, sv_min = sv.max().item(), sv.min().item()
    return _result(method, f"{n_out}x{n_in}", sv_max, sv_min, mean_sq, sv.flatten().cpu().numpy())


def _result(method: str, dims: str = "", sv_max=float("nan"), sv_min=float("nan"), mean_sq=float("nan"),
            values: np.ndarray | None = None) -> dict:
    condition = float("inf") if sv_min == 0 else sv_max / sv_min
    values = np.empty(0) if values is None else values
    return {"jac_sv_max": float(sv_max), "jac_sv_min": float(sv_min), "jac_sv_mean_sq": float(mean_sq),
            "jac_condition": float(condition), "jac_method": method, "jac_dims": dims, "singular_values": values}
