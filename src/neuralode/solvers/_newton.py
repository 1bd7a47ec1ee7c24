"""Linear algebra and simplified Newton for implicit stage equations, on rows.

Every implicit stage equation here has the form ``z = ψ + G(z)``: ``G(z) = hγ f(t, z)``
for one stage of a diagonally implicit method, ``G = h (A ⊗ I) F`` for the stacked stages
of a fully implicit one (:class:`StageMap`). It is solved by simplified Newton (Hairer &
Wanner II, §IV.8): one Jacobian ``J = ∂f/∂y`` and one LU factorisation of ``I − ∂G/∂z``
(``I − hγJ``) per step, reused by every iteration of every stage.

Everything works on *rows*: a ``(R, n)`` tensor of ``R`` independent problems of size
``n``. Joint mode is one row (the whole state, flattened); per-sample mode is one row per
sample, so its Jacobian is a ``(B, n, n)`` batch, never one dense Jacobian of the whole
batch, and a sample whose Newton iteration fails fails alone.

Gradients through a stage solve come from the implicit-function theorem, not from the
iterations (see :class:`_StageGradient`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .. import _autograd as autograd
from ._explicit_rk import StepSize, Time

# f on rows: (t, (R, n)) -> (R, n).
RowField = Callable[[Time, torch.Tensor], torch.Tensor]


# Newton's stopping fraction of the tolerance where neither the user nor the solver sets one.
DEFAULT_KAPPA = 1e-2


@dataclass(frozen=True)
class Newton:
    """Settings of the simplified Newton iteration that solves each implicit stage.

    The iteration stops when the predicted distance to the root, ``η‖Δ‖`` with the rate
    ``θ = ‖Δ_k‖/‖Δ_(k−1)‖`` and ``η = θ/(1 − θ)``, falls below ``kappa`` in the norm
    ``RMS(Δ / (atol + rtol·|z|))`` (Hairer & Wanner II, §IV.8, eq. 8.10–8.11). It gives up
    (and the step is rejected and retried smaller) when ``θ ≥ 1`` (divergence), when the
    rate predicts no convergence within ``max_iters`` (from the second rate estimate on),
    or on a non-finite value.

    Set ``rtol``/``atol`` to the step-size controller's: Newton errors well below the
    tolerance keep the error estimate meaningful (diffrax does the same, with
    ``kappa = 0.01``). They are raised to ``100·eps`` of the state's dtype, below which
    the iteration stalls on rounding.

    Attributes:
        rtol: Relative tolerance of the stage solutions.
        atol: Absolute tolerance of the stage solutions.
        kappa: Fraction of the tolerance the iteration error must reach; ``None``: the
            solver's default (1e-2, diffrax's, for the diagonally implicit methods;
            ``min(0.03, √rtol)``, scipy's Radau's, for :class:`~neuralode.Radau5`).
        max_iters: Most iterations per stage (each costs one evaluation of ``f``).
    """

    rtol: float = 1e-6
    atol: float = 1e-8
    kappa: float | None = None
    max_iters: int = 10

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "kappa"):
            value = getattr(self, name)
            if name == "kappa" and value is None:
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"Newton {name} must be a positive finite number, got {value!r}; "
                    "e.g. Newton(rtol=1e-6, atol=1e-8) to match PIDController's defaults"
                )
        if not (isinstance(self.max_iters, int) and self.max_iters >= 1):
            raise ValueError(
                f"Newton max_iters must be a positive int, got {self.max_iters!r}; "
                "the default is 10"
            )


def count(f: Any, **amounts: int) -> None:
    """Add to the field's work counters (``njev``, ``nlu``, ``nsolve``) when it has them.

    The library's :class:`~neuralode._vector_field.VectorField` has them; a plain
    function given to ``step`` directly does not, and is not counted.
    """
    counts = getattr(f, "counts", None)
    if counts is None or not getattr(f, "counting", True):
        return
    for name, amount in amounts.items():
        setattr(counts, name, getattr(counts, name) + amount)


# Up to this many state components, n reverse-mode products beat one vmapped
# forward-mode evaluation, whose set-up costs about 0.5 ms (measured on CPU: 0.15 ms
# against 0.55 ms for Van der Pol, n = 2; about even for an MLP at n = 32).
REVERSE_UP_TO = 8


def jacobian(call: RowField, t: Time, z: torch.Tensor) -> torch.Tensor:
    """``∂f/∂z`` for every row: ``(R, n, n)``, row ``r``'s ``J[r, i, j] = ∂f_i/∂z_j``.

    Forward mode, vmapped: the ``n`` tangents ``e_j`` (the same on every row) go through
    one batched evaluation. Rows are independent problems (per-sample mode's contract),
    so tangent ``e_j`` on every row gives column ``j`` of every row's own Jacobian at once.
    Small states, and fields forward mode cannot trace (a custom autograd Function, such
    as the backsolve adjoint's augmented field), use ``n`` reverse-mode products instead,
    with cotangent ``e_i`` on every row for row ``i`` of every Jacobian.
    """
    z = z.detach()
    rows, n = z.shape
    if n > REVERSE_UP_TO:
        eye = torch.eye(n, dtype=z.dtype, device=z.device)
        tangents = eye.unsqueeze(1).expand(n, rows, n)  # (n, R, n): tangent j is e_j per row

        def column(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(lambda x: call(t, x), (z,), (v,))[1]

        try:
            with torch.no_grad():
                columns = torch.func.vmap(column)(tangents)  # (n, R, n): [j, r, i]
            return columns.permute(1, 2, 0)
        except (RuntimeError, NotImplementedError):
            pass
    return _reverse_jacobian(call, t, z)


def _reverse_jacobian(call: RowField, t: Time, z: torch.Tensor) -> torch.Tensor:
    rows, n = z.shape
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    with torch.enable_grad():
        x = z.detach().requires_grad_(True)
        out = call(t, x)
        if not out.requires_grad:
            return z.new_zeros(rows, n, n)  # f does not depend on y
        lines = [
            autograd.grad(
                out, x, eye[i].expand(rows, n), retain_graph=i < n - 1, allow_unused=True
            )[0]
            for i in range(n)
        ]
    lines = [torch.zeros_like(z) if g is None else g for g in lines]
    return torch.stack(lines, dim=1).detach()  # (R, n_out, n_in)


@dataclass
class Factorised:
    """``M = I − hγJ`` (or a stacked ``I − ∂G/∂z``) for every row: factorised once, solved often.

    Attributes:
        lu: The packed LU factors, ``(R, m, m)``.
        pivots: Their pivots, ``(R, m)``.
        singular: Rows whose ``M`` is singular or not finite, ``(R,)``.
    """

    lu: torch.Tensor
    pivots: torch.Tensor
    singular: torch.Tensor

    @staticmethod
    def of(slope: torch.Tensor, f: Any) -> Factorised:
        """Factorise ``I − slope`` for every row (``slope`` is ``(R, m, m)``, e.g. ``hγJ``)."""
        m = slope.shape[-1]
        eye = torch.eye(m, dtype=slope.dtype, device=slope.device)
        matrix = eye - slope
        bad = ~torch.isfinite(matrix).all(dim=-1).all(dim=-1)
        # A non-finite row would poison nothing else (the factorisation is per row), but
        # LAPACK may refuse it: factorise the identity there and mark the row.
        matrix = torch.where(bad[:, None, None], eye, matrix)
        lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
        count(f, nlu=1)
        return Factorised(lu, pivots, bad | (info != 0))

    def solve(
        self, rhs: torch.Tensor, f: Any, tolerance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``M⁻¹ rhs`` for every row (``rhs`` is ``(R, m)``; exact: ``tolerance`` unused)."""
        count(f, nsolve=1)
        return torch.linalg.lu_solve(self.lu, self.pivots, rhs.unsqueeze(-1)).squeeze(-1)

    def gradient_solve(
        self, stage_map: StageMap, z: torch.Tensor, v: torch.Tensor, ok: torch.Tensor
    ) -> torch.Tensor:
        """``(I − ∂G/∂z)⁻ᵀ v`` at the converged stage ``z``, exactly (rows ``ok`` only, else 0).

        A dense Jacobian at ``z``, not the step's factorisation (taken at ``y0``).
        """
        slope = stage_map.slope(z)
        matrix = torch.eye(slope.shape[-1], dtype=slope.dtype, device=slope.device) - slope
        w = torch.zeros_like(v)
        if bool(ok.any()):
            w[ok] = torch.linalg.solve(matrix[ok].mT, v[ok].unsqueeze(-1)).squeeze(-1)
        return w


class NewtonMatrix(Protocol):
    """``M = I − ∂G/∂z`` of a step, however it is held.

    :class:`Factorised` (dense LU) or :class:`._krylov.MatrixFree` (Jacobian-vector
    products and GMRES).
    """

    singular: torch.Tensor

    def solve(
        self, rhs: torch.Tensor, f: Any, tolerance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``M⁻¹ rhs`` for every row (NaN where it cannot be solved).

        ``tolerance`` (``(R, m)``, the Newton test's per-component scale times ``kappa``)
        tells an iterative solver how accurate a Newton update must be.
        """
        ...

    def gradient_solve(
        self, stage_map: StageMap, z: torch.Tensor, v: torch.Tensor, ok: torch.Tensor
    ) -> torch.Tensor:
        """``(I − ∂G/∂z)⁻ᵀ v`` at the converged stage ``z`` for rows ``ok`` (0 elsewhere)."""
        ...


class StageMap(abc.ABC):
    """The implicit part ``G`` of a stage equation ``z = ψ + G(z)``, on rows ``(R, m)``.

    One DIRK stage: ``G(z) = hγ f(t, z)`` (:class:`ScaledField`). A fully implicit method
    stacks its ``s`` stages into ``m = s·n`` and couples them through its matrix ``A``.

    Attributes:
        f: The vector field, for its work counters.
    """

    f: Any

    @abc.abstractmethod
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)``, ``(R, m)``."""

    @abc.abstractmethod
    def slope(self, z: torch.Tensor) -> torch.Tensor:
        """``∂G/∂z`` at ``z``, exactly, ``(R, m, m)`` (for the gradient's linear solve)."""

    @abc.abstractmethod
    def pullback(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``u ↦ (∂G/∂z)ᵀ u`` at ``z``, exactly, by vector-Jacobian products (matrix-free)."""


@dataclass(frozen=True)
class ScaledField(StageMap):
    """``G(z) = hγ f(t, z)``: one stage of a diagonally implicit method."""

    call: RowField
    f: Any
    t: Time
    h_gamma: StepSize

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """``hγ f(t, z)``."""
        return self.h_gamma * self.call(self.t, z)

    def slope(self, z: torch.Tensor) -> torch.Tensor:
        """``hγ ∂f/∂z``."""
        count(self.f, njev=1)
        return per_matrix(self.h_gamma) * jacobian(self.call, self.t, z)

    def pullback(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``u ↦ (hγ ∂f/∂z)ᵀ u = (∂f/∂z)ᵀ (hγ u)`` (``hγ`` is per row)."""
        pull = pullback(self.call, detached(self.t), z)
        h = detached(self.h_gamma)
        return lambda u: pull(h * u)


def detached(t: Time) -> Time:
    """A time or step size (a float or a tensor) without its graph.

    A Newton matrix and its products are not differentiated (the dense one is not).
    """
    return t.detach() if isinstance(t, torch.Tensor) else t


def pullback(call: RowField, t: Time, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u ↦ (∂f/∂z)ᵀ u`` for every row at ``(t, z)``: one evaluation, then one VJP each.

    ``torch.autograd.grad`` on a graph kept for the repeated products (not
    ``torch.func.vjp``: it also works for fields that are custom autograd Functions).
    ``t`` must be detached, or each product would walk the solve's whole history.
    """
    with torch.enable_grad():
        x = z.detach().requires_grad_(True)
        out = call(t, x)

    def pull(u: torch.Tensor) -> torch.Tensor:
        if not out.requires_grad:
            return torch.zeros_like(u)  # f does not depend on y
        (g,) = autograd.grad(out, x, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u) if g is None else g

    return pull


def per_matrix(h: StepSize) -> StepSize:
    """A step size as a factor of ``(R, m, m)`` matrices: ``(R, 1)`` becomes ``(R, 1, 1)``."""
    return h if isinstance(h, float) else h.detach().unsqueeze(-1)


@dataclass
class StageSolution:
    """A solved stage ``z = ψ + G(z)``.

    Attributes:
        z: The stage value, ``(R, m)``, differentiable by the implicit-function theorem
            (finite placeholders on failed rows).
        failed: Rows whose iteration did not converge, ``(R,)``.
        eta: Each row's last ``η = θ/(1 − θ)``, the next stage's first estimate.
    """

    z: torch.Tensor
    failed: torch.Tensor
    eta: torch.Tensor


def solve_stage(
    stage_map: StageMap,
    psi: torch.Tensor,
    z0: torch.Tensor,
    matrix: NewtonMatrix,
    settings: Newton,
    failed: torch.Tensor,
    eta: torch.Tensor | None = None,
) -> StageSolution:
    """Solve ``z = ψ + G(z)`` by simplified Newton from the guess ``z0``.

    ``matrix`` is ``I − ∂G/∂z`` at the step's start, factorised (or matrix-free). Rows
    already ``failed`` (an earlier stage, a singular matrix) are not iterated. Each row
    stops as it converges, so a row's iterates are the ones it would have alone (batch invariance).
    The iterations run without a graph. When autograd is recording, ``G`` is evaluated
    once more, with a graph, at each row's last iterate, and that last update is redone
    through :class:`_StageGradient`: the same value, differentiable by the
    implicit-function theorem (one evaluation per stage more, only then).

    ``eta``, the previous stage's rate estimate per row, lets the first iteration stop
    when the rate is known to be fast (Hairer & Wanner II, §IV.8: ``η₀ =
    max(η_old, uround)^0.8``); without it the first update must itself be below ``κ``.
    """
    eps = torch.finfo(psi.dtype).eps
    rtol, atol = max(settings.rtol, 100 * eps), max(settings.atol, 100 * eps)
    eta0 = torch.ones(psi.shape[0], dtype=psi.dtype, device=psi.device)
    if eta is not None:
        eta0 = eta.clamp(min=eps).pow(0.8)
    if bool(failed.all()):
        return StageSolution(psi, failed, eta0)  # nothing to solve: the step is rejected
    z0 = z0.detach()
    # The first iteration's G, evaluated as autograd is set: whether its output has a
    # graph tells whether the stage needs one (the parameters f closes over are unknown).
    g_first = stage_map(z0)
    needs_graph = g_first.requires_grad or psi.requires_grad
    with torch.no_grad():
        z_at, z, failed, eta = _iterate(
            stage_map, psi.detach(), z0, g_first.detach(), matrix, settings, failed, eta0,
            rtol, atol,
        )  # fmt: skip
    if not needs_graph:
        return StageSolution(z, failed, eta)
    # Failed rows iterate from a finite placeholder (ψ): the row is rejected anyway, and a
    # NaN there would reach the shared parameters' gradient through 0·NaN.
    z_at = torch.where(failed.unsqueeze(-1), psi.detach(), z_at)
    r = psi + stage_map(z_at) - z_at  # with the graph of ψ, h and θ (z_at is constant)
    link = _Link(stage_map, z_at, failed, matrix)
    z_out = z_at + _StageGradient.apply(r, link)
    return StageSolution(z_out, failed, eta)


def _iterate(
    stage_map: StageMap,
    psi: torch.Tensor,
    z: torch.Tensor,
    gz: torch.Tensor,
    matrix: NewtonMatrix,
    settings: Newton,
    failed: torch.Tensor,
    eta0: torch.Tensor,
    rtol: float,
    atol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Newton iterations from ``z`` (where ``G`` is ``gz``).

    Returns each row's last iterate (where its last update was computed), its final
    value, the rows that failed, and each row's last ``η``.
    """
    kappa = DEFAULT_KAPPA if settings.kappa is None else settings.kappa
    active = ~failed
    failed = failed.clone()
    z_at, eta_out = z, eta0
    previous = torch.full((psi.shape[0],), math.inf, dtype=psi.dtype, device=psi.device)
    for k in range(settings.max_iters):
        if k > 0:
            gz = stage_map(z)
        residual = psi + gz - z  # r = ψ + G(z) − z
        scale = z.abs().mul(rtol).add_(atol)
        delta = matrix.solve(residual, stage_map.f, scale * kappa)
        size = _scaled_rms(delta, scale)  # (R,)
        bad = ~torch.isfinite(size)
        if k == 0:
            eta = eta0
        else:
            rate = size / previous  # θ_k, the contraction rate
            eta = rate / (1 - rate)
            bad = bad | (rate >= 1)  # diverging
            if k >= 2:
                # Too slow to converge in the iterations left (Hairer & Wanner II, §IV.8:
                # θ^(k_max − k)/(1 − θ)·‖Δ‖ > κ). Not on the first rate estimate, which
                # rejected steps that then converged: from k = 2 on, Kvaerno5 on VDPOL at
                # rtol 1e-4 fails Newton at 76 steps instead of 145 and takes 3,924
                # evaluations instead of 4,580 (ROBER: 1,579 instead of 1,626).
                left = settings.max_iters - 1 - k
                bad = bad | (rate.pow(left) / (1 - rate) * size > kappa)
        done = ~bad & (eta * size <= kappa)
        stepping = active & ~bad
        keep = stepping.unsqueeze(-1)
        z_at = torch.where(keep, z, z_at)
        z = torch.where(keep, z + delta, z)
        failed = failed | (active & bad)
        eta_out = torch.where(stepping, eta, eta_out)
        active = stepping & ~done
        previous = size
        if not bool(active.any()):
            break
    else:
        failed = failed | active  # out of iterations
    return z_at, z, failed, eta_out


def _scaled_rms(delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per row ``RMS(Δ / scale)``, ``(R,)`` (``scale = atol + rtol·|z|``)."""
    return torch.linalg.vector_norm(delta / scale, dim=-1) / math.sqrt(max(delta.shape[-1], 1))


_SECOND_ORDER = (
    "second derivatives (create_graph=True, e.g. Hessian-vector products) through an "
    "implicit solver's stage solves are not supported: their implicit-function-theorem "
    "backward is differentiable once; use an explicit solver such as Dopri5() for them"
)


@dataclass(frozen=True)
class _Link:
    """What the backward pass of a stage solve needs: ``G`` and the converged point."""

    stage_map: StageMap
    z: torch.Tensor
    failed: torch.Tensor
    matrix: NewtonMatrix


class _StageGradient(torch.autograd.Function):
    """The last Newton update forwards; the implicit-function theorem backwards.

    Forwards: ``M₀⁻¹ r`` with the step's Newton matrix ``M₀`` and the residual
    ``r = ψ + G(z) − z`` at the last iterate (the update Newton made there); for a DIRK
    stage ``G(z) = hγ f(t, z)``. Backwards, for a cotangent ``v`` of the stage value:
    ``w = (I − ∂G/∂z)⁻ᵀ v`` with the exact Jacobian at the converged stage, one
    transposed linear solve (dense, or by GMRES on vector-Jacobian products), handed
    to ``r``, whose graph applies the VJP of ``f`` (to
    ``θ``, ``t``) and reaches ``ψ`` and ``h``. With ``g(z, p) = z − ψ(p) − G(z; p) = 0`` at
    the root, ``dz/dp = (∂g/∂z)⁻¹ ∂r/∂p``: the gradient of the exact stage solution,
    independent of how many iterations found it (Blondel et al., "Efficient and modular
    implicit differentiation", NeurIPS 2022; diffrax's implicit solvers do the same).
    First derivatives only.
    """

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor, link: _Link) -> torch.Tensor:
        ctx.link = link
        return link.matrix.solve(r.detach(), link.stage_map.f)

    @staticmethod
    def backward(ctx: Any, v: torch.Tensor) -> tuple[Any, ...]:
        if torch.is_grad_enabled():
            # create_graph=True: the gradient would have to be differentiable, and this
            # backward's Jacobian is not (once_differentiable would silently drop its
            # dependence on θ and give a wrong Hessian when v is a constant).
            raise NotImplementedError(_SECOND_ORDER)
        link: _Link = ctx.link
        return link.matrix.gradient_solve(link.stage_map, link.z, v, ~link.failed), None
