"""Matrix-free Newton: Jacobian-vector products and a batched, restarted GMRES.

For states too large for a dense Jacobian (a discretised PDE with thousands of
components), the Newton matrix ``M = I − ∂G/∂z`` is never formed: each product ``M v``
costs one Jacobian-vector product of ``f`` (forward-mode autograd, ``torch.func.jvp``),
and ``M Δ = r`` is solved by restarted GMRES (Saad & Schultz, "GMRES: a generalized
minimal residual algorithm", SIAM J. Sci. Stat. Comput. 7 (1986)). The implicit-function
gradient's transposed solve uses vector-Jacobian products and GMRES on ``Mᵀ``. This is
the Jacobian-free Newton–Krylov method of D. A. Knoll and D. E. Keyes, "Jacobian-free
Newton–Krylov methods: a survey", J. Comput. Phys. 193 (2004), with the simplified
Newton's frozen linearisation point (the step's start), as in SUNDIALS' CVODE with its
SPGMR option. No preconditioner: GMRES converges fast when ``hγ‖J‖`` is moderate or the
spectrum of ``J`` is clustered; a stiff diffusion operator at long steps may need many
iterations (``restart``, ``max_restarts``).

Everything works on rows ``(R, n)`` like :mod:`._newton`: each row has its own Krylov
space (a per-sample solve is ``R`` independent GMRES runs, batched), and a row that
converges stops changing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._explicit_rk import StepSize, Time
from ._newton import RowField, StageMap, count, detached

# (R, m) -> (R, m): a linear map on rows.
Product = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GMRES:
    """Matrix-free linear algebra for the implicit solvers' Newton iterations.

    ``Kvaerno5(linear_solver=GMRES())`` (or ``linear_solver="gmres"``) solves each Newton
    update ``(I − hγJ) Δ = r`` by restarted GMRES with Jacobian-vector products of ``f``
    instead of a dense Jacobian and its LU factorisation: memory ``O(restart · n)`` per
    row instead of ``O(n²)``, work one product per GMRES iteration instead of ``O(n³)``.
    A row whose GMRES does not reach ``rtol`` within ``restart · max_restarts``
    iterations fails its Newton iteration: the step is rejected and retried smaller
    (shorter steps make ``I − hγJ`` better conditioned).

    Attributes:
        restart: Krylov vectors per cycle (the memory per row is ``restart + 1`` vectors).
        max_restarts: Most cycles per solve.
        rtol: Relative residual ``‖M Δ − r‖ ≤ rtol·‖r‖`` per row, for the Newton
            updates and for the gradient's transposed solves (raised to ``100·eps`` of
            the state's dtype).
    """

    restart: int = 20
    max_restarts: int = 10
    rtol: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("restart", "max_restarts"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(
                    f"GMRES {name} must be a positive int, got {value!r}; "
                    "e.g. GMRES(restart=20, max_restarts=10)"
                )
        if not (
            isinstance(self.rtol, (int, float)) and math.isfinite(self.rtol) and 0 < self.rtol < 1
        ):
            raise ValueError(
                f"GMRES rtol must be a number in (0, 1), got {self.rtol!r}; e.g. GMRES(rtol=1e-8)"
            )


def linear_solver_setting(owner: str, value: object) -> GMRES | None:
    """``linear_solver`` of an implicit solver: ``None`` for dense LU, else the GMRES settings."""
    if isinstance(value, GMRES):
        return value
    if value == "lu":
        return None
    if value == "gmres":
        return GMRES()
    raise ValueError(
        f"linear_solver must be 'lu' (dense Jacobian and LU), 'gmres' or a "
        f"neuralode.GMRES(...), got {value!r}; e.g. {owner}(linear_solver='gmres') for "
        "states too large for a dense Jacobian"
    )


# The Newton updates' linear residual, as a fraction of the Newton tolerance (CVODE's).
FORCING = 0.05


def gmres(
    apply: Product, rhs: torch.Tensor, settings: GMRES, f: Any, floor: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``apply(x) = rhs`` for every row by restarted GMRES from ``x = 0``.

    A row has converged when its residual's norm is below ``rtol·‖rhs‖`` or ``floor``.

    Returns ``(x, converged)``, ``(R, m)`` and ``(R,)``. Each cycle builds an orthonormal
    Krylov basis per row by Arnoldi (classical Gram–Schmidt, done twice: as stable as the
    modified one in floating point, and batched into two matrix products per vector)
    and minimises the residual over it by a small least-squares problem per row. A row
    keeps the iterate where it first met the tolerance; afterwards its new basis vectors
    are zero (its products cost nothing more than the batch's).
    """
    rows, m = rhs.shape
    eps = torch.finfo(rhs.dtype).eps
    tol = torch.linalg.vector_norm(rhs, dim=-1) * max(settings.rtol, 100 * eps)  # (R,)
    tol = tol.clamp(min=floor)
    x = torch.zeros_like(rhs)
    residual = rhs
    beta = torch.linalg.vector_norm(rhs, dim=-1)
    converged = beta <= tol  # a zero right-hand side: x = 0
    dim = min(settings.restart, m)
    for cycle in range(settings.max_restarts):
        active = ~converged & torch.isfinite(beta)  # a NaN right-hand side cannot converge
        if not bool(active.any()):
            break
        correction, reached = _cycle(apply, residual, beta, tol, active, dim, f)
        x = x + correction
        converged = converged | reached
        if bool(converged.all()) or cycle == settings.max_restarts - 1:
            break
        # Restart from the true residual (the least-squares one drifts in rounding).
        residual = rhs - apply(x)
        count(f, njev=1)
        beta = torch.linalg.vector_norm(residual, dim=-1)
        converged = converged | (beta <= tol)
    return x, converged & torch.isfinite(x).all(dim=-1)


def _cycle(
    apply: Product,
    residual: torch.Tensor,
    beta: torch.Tensor,
    tol: torch.Tensor,
    active: torch.Tensor,
    dim: int,
    f: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One GMRES(dim) cycle from ``x = 0`` on ``residual``.

    Returns the correction ``(R, m)`` and the rows whose residual (the least-squares
    problem's, exact in exact arithmetic) met ``tol``.
    """
    rows, m = residual.shape
    basis = residual.new_zeros(rows, dim + 1, m)
    hessenberg = residual.new_zeros(rows, dim + 1, dim)
    safe_beta = torch.where(active, beta, torch.ones_like(beta))
    basis[:, 0] = torch.where(active[:, None], residual / safe_beta[:, None], 0.0)
    target = residual.new_zeros(rows, dim + 1)
    target[:, 0] = torch.where(active, beta, 0.0)
    coefficients = residual.new_zeros(rows, dim)
    going = active.clone()
    reached = torch.zeros_like(active)
    for j in range(dim):
        w = apply(basis[:, j])
        count(f, njev=1)
        known = basis[:, : j + 1]  # (R, j+1, m)
        h = torch.zeros(rows, j + 1, dtype=w.dtype, device=w.device)
        for _ in range(2):  # CGS2: Gram–Schmidt twice
            proj = torch.einsum("rkm,rm->rk", known, w)
            w = w - torch.einsum("rkm,rk->rm", known, proj)
            h = h + proj
        norm = torch.linalg.vector_norm(w, dim=-1)
        # A non-finite product (f's derivative NaN) ends the row, unconverged; LAPACK
        # must not see it. A row that has stopped gets the column e_(j+1), which keeps its
        # least-squares matrix of full rank (CUDA's only driver, gels, needs that); its
        # coefficients are not read.
        finite = torch.isfinite(norm) & torch.isfinite(h).all(dim=-1)
        going = going & finite
        hessenberg[:, : j + 1, j] = torch.where(going[:, None], h, 0.0)
        hessenberg[:, j + 1, j] = torch.where(going, norm, 1.0)
        # A zero norm is GMRES's "lucky breakdown": the solution lies in the basis.
        fresh = going & (norm > 0)
        basis[:, j + 1] = torch.where(
            fresh[:, None], w / torch.where(fresh, norm, 1.0)[:, None], 0.0
        )
        small = hessenberg[:, : j + 2, : j + 1]
        y = torch.linalg.lstsq(small, target[:, : j + 2, None]).solution  # (R, j+1, 1)
        error = torch.linalg.vector_norm(
            target[:, : j + 2] - (small @ y).squeeze(-1), dim=-1
        )  # the residual norm of this iterate, per row
        keep = going[:, None]
        coefficients[:, : j + 1] = torch.where(keep, y.squeeze(-1), coefficients[:, : j + 1])
        reached = reached | (going & (error <= tol))
        going = going & ~(error <= tol) & (norm > 0)
        if not bool(going.any()):
            break
    return torch.einsum("rkm,rk->rm", basis[:, :dim], coefficients), reached


def jvp_products(call: RowField, t: Time, z: torch.Tensor) -> Product:
    """``v ↦ J v`` for every row, ``J = ∂f/∂z`` at ``(t, z)`` (rows are independent).

    Forward mode (``torch.func.jvp``): one evaluation's worth of work per product, with
    the tangent ``v`` row by row, so each row gets its own Jacobian's product. A field
    forward mode cannot trace (a custom autograd Function, such as the backsolve
    adjoint's augmented field) gets a forward difference instead, with Knoll & Keyes'
    step ``√eps (1 + ‖z‖)/‖v‖`` per row (their eq. 15): inexact only in the Newton
    matrix, which changes the iteration's rate, not the root it finds.
    """
    z = z.detach()

    def forward(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.func.jvp(lambda x: call(t, x), (z,), (v,))[1]

    f_z: list[torch.Tensor] = []

    def difference(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if not f_z:
                f_z.append(call(t, z))
            size = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
            scale = torch.linalg.vector_norm(z, dim=-1, keepdim=True).add(1.0)
            step = math.sqrt(torch.finfo(z.dtype).eps) * scale / size.clamp(min=1e-300)
            step = torch.where(size > 0, step, torch.ones_like(step))
            return (call(t, z + step * v) - f_z[0]) / step

    mode: list[Product] = []

    def product(v: torch.Tensor) -> torch.Tensor:
        if not mode:
            try:
                out = forward(v)
            except (RuntimeError, NotImplementedError):
                mode.append(difference)
            else:
                mode.append(forward)
                return out
        return mode[0](v)

    return product


def scaled(h: StepSize, product: Product) -> Product:
    """``v ↦ h·product(v)`` with ``h`` a float or ``(R, 1)`` (detached)."""
    factor = detached(h)
    return lambda v: factor * product(v)


@dataclass
class MatrixFree:
    """``M = I − S`` for every row, known only through products ``S v``; solved by GMRES.

    The matrix-free counterpart of :class:`._newton.Factorised` (same ``solve`` and
    ``singular``). A row whose GMRES does not converge gets NaN, which fails its Newton
    iteration and rejects the step.

    Attributes:
        slope: ``v ↦ S v`` (e.g. ``hγ J v`` by a JVP).
        settings: The GMRES settings.
        singular: No row is known singular, ``(R,)`` all ``False``.
    """

    slope: Product
    settings: GMRES
    singular: torch.Tensor

    @staticmethod
    def of(slope: Product, settings: GMRES, like: torch.Tensor) -> MatrixFree:
        """``I − slope`` for the rows of ``like``, ``(R, n)``."""
        rows = like.shape[0]
        return MatrixFree(slope, settings, torch.zeros(rows, dtype=torch.bool, device=like.device))

    def gradient_solve(
        self, stage_map: StageMap, z: torch.Tensor, v: torch.Tensor, ok: torch.Tensor
    ) -> torch.Tensor:
        """``(I − ∂G/∂z)⁻ᵀ v`` at the converged stage ``z`` by GMRES on VJPs (rows ``ok``)."""
        pull = stage_map.pullback(z)
        v = torch.where(ok[:, None], v, 0.0)  # a zero right-hand side is solved at once
        return transposed_solve(pull, v, self.settings, stage_map.f)

    def solve(
        self, rhs: torch.Tensor, f: Any, tolerance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``M⁻¹ rhs`` for every row (NaN where GMRES did not converge).

        With a Newton ``tolerance`` the update is an inexact Newton step: GMRES runs on
        the system scaled by ``1/(FORCING·tolerance)`` and stops when the scaled residual
        has RMS ≤ 1 (or meets ``rtol``), CVODE's test for its Krylov solvers (Hindmarsh
        et al., "SUNDIALS", ACM TOMS 31 (2005), §2.1: ``0.05`` of the Newton tolerance).
        A Newton update need not be more accurate than the iteration's own stopping
        test, and late iterations, whose residual is already that small, cost nothing.
        """
        count(f, nsolve=1)
        if tolerance is None:
            x, ok = gmres(lambda v: v - self.slope(v), rhs, self.settings, f)
        else:
            w = 1.0 / (FORCING * tolerance)
            floor = math.sqrt(rhs.shape[-1])  # RMS ≤ 1 as a 2-norm

            def apply(u: torch.Tensor) -> torch.Tensor:
                v = u / w
                return w * (v - self.slope(v))

            scaled_x, ok = gmres(apply, w * rhs, self.settings, f, floor)
            x = scaled_x / w
        return torch.where(ok[:, None], x, math.nan)


def transposed_solve(pull: Product, v: torch.Tensor, settings: GMRES, f: Any) -> torch.Tensor:
    """``(I − S)⁻ᵀ v`` for every row, with ``pull(u) = Sᵀ u`` (vector-Jacobian products).

    The implicit-function gradient's solve. It cannot be retried with a smaller step (the
    forward solve is over), so a row that does not converge raises.
    """
    count(f, nsolve=1)
    w, ok = gmres(lambda u: u - pull(u), v, settings, f)
    if not bool(ok.all()):
        raise RuntimeError(
            "GMRES did not converge in an implicit stage's gradient solve (I - dt*gamma*J)^T "
            f"w = v (rows {ok.logical_not().nonzero().flatten().tolist()}); give it more "
            "iterations, e.g. linear_solver=GMRES(restart=50, max_restarts=20), or use "
            "linear_solver='lu' for states small enough for a dense Jacobian"
        )
    return w
