"""Joint mode with compiled steps: the whole state as the one row of the per-sample driver.

The joint driver keeps its clock as Python floats (one host sync a step), which a
compiled graph cannot take as inputs without recompiling at every step. The per-sample
driver already runs its clock as tensors and compiles several steps into one graph call
(:mod:`.compiled`); a joint problem is a per-sample problem of one sample whose row is
the whole flat state, and whose error norm over that row is the joint norm. So
``solve(..., compile_step=True)`` on a joint problem runs that row (:func:`integrate_one_row`)
and returns the joint result.

The numbers are those of the per-sample formulas (the stages' weighted sum scaled by a
tensor step, the clock in float64 tensors), which round differently from the joint
driver's float-``dt`` fused adds: the two agree to rounding, not bit for bit.
"""

from __future__ import annotations

import dataclasses

import torch

from .._problem import Problem
from .._solution import RawSolution
from .._vector_field import State, Structure, VectorField
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver
from .per_sample import integrate_samples


def unsupported(
    problem: Problem, controller: AbstractController, dense: bool, with_records: bool, events: bool
) -> str:
    """Why a joint solve cannot run as one compiled row (empty: it can)."""
    rtol, atol = controller.tolerances()
    if not controller.adaptive:
        return f"fixed steps ({type(controller).__name__}; the compiled driver adapts them)"
    if dense:
        return "dense=True"
    if with_records:
        return (
            "a gradient method that records the steps (use DirectAdjoint() or BacksolveAdjoint())"
        )
    if events:
        return "event="
    if any(controller.stops()):
        return "step_ts/jump_ts"
    if not all(isinstance(tol, (int, float)) for tol in (rtol, atol)):
        return "per-component (tensor) rtol/atol"
    if problem.y0.is_complex():
        return "a complex state"
    return ""


def integrate_one_row(
    problem: Problem, solver: AbstractSolver, controller: AbstractController, *, max_steps: int
) -> RawSolution:
    """Solve a joint ``problem`` as the one row of a compiled per-sample solve."""
    row = _as_row(problem)
    raw = integrate_samples(row, solver, controller, max_steps=max_steps)
    shape = problem.y0.shape
    detail = raw.detail
    # The per-sample wording names the sample; a joint solve has none.
    prefix = "1 of 1 samples failed (samples [0])"
    detail = detail.removeprefix(prefix).removeprefix("; sample 0: ")
    return RawSolution(
        ys=raw.ys.reshape(-1, *shape),
        stats=dataclasses.replace(raw.stats, rows=0, sample_steps=None, sample_accepted=None),
        status=raw.status,
        t_last=float(raw.t_last[0]),  # type: ignore[index]
        y_last=raw.y_last.reshape(shape),
        dt_last=0.0 if raw.dt_last != raw.dt_last else raw.dt_last,
        detail=detail,
    )


def _as_row(problem: Problem) -> Problem:
    """The per-sample problem of one sample whose row is ``problem``'s whole flat state."""
    shape, joint = problem.y0.shape, problem.f.uncounted()

    def row_field(t: torch.Tensor, y: State) -> torch.Tensor:
        # (B,) = (1,) times and a (1, N) row: the joint field at that time, on that state.
        assert isinstance(y, torch.Tensor)  # (a one-part batched structure: the row itself)
        return joint(t[0], y.reshape(shape)).reshape(1, -1)

    y0 = problem.y0.reshape(1, -1)
    field = VectorField(
        row_field, Structure.of(y0, batched=True), problem.f.t_dtype, y0.device,
        counts=problem.f.counts,
    )  # fmt: skip
    taus = torch.tensor([problem.taus], dtype=torch.float64, device=y0.device)
    return dataclasses.replace(
        problem, f=field, y0=y0, f0=problem.f0.reshape(1, -1), taus=(),
        structure=field.structure, sample_taus=taus,
    )  # fmt: skip
