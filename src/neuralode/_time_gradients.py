"""Gradients with respect to the output times, shared by every gradient method.

For the exact flow, ``∂y(t_i)/∂t_i = f(t_i, y(t_i))`` and ``∂y(t_i)/∂t_0 = −Φ(t_i, t_0)
f(t_0, y_0)``, so ``dL/dt_i = ⟨g_i, f(t_i, y_i)⟩`` for each output cotangent ``g_i`` and
``dL/dt_0`` gains ``−⟨λ_0, f(t_0, y_0)⟩`` with ``λ_0 = dL/dy_0`` (Chen et al. 2018, §2 and
App. B). Two identity functions attach these: one on ``y0`` (which sees ``λ_0``) and one on
the outputs. They cost one evaluation of ``f`` per output time in the backward pass and
are exact for the ODE, i.e. within the solver tolerance of the discrete solution.

They are first derivatives only. A second derivative involving the times would also need
the other gradients' dependence on ``ts`` (``∂(dL/dy_0)/∂t_i``), which the step loop,
running on Python-float times, does not have: a backward with ``create_graph=True`` through
these functions raises instead of returning a silently wrong Hessian.
"""

from __future__ import annotations

from typing import Any

import torch

from ._vector_field import VectorField


def _field_dot(field: VectorField, t: float, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.sum(field(t, y.detach()) * g)


def _row_dots(
    field: VectorField, t: torch.Tensor, y: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """Per-sample mode: ``⟨g_b, f(t_b, y_b)⟩`` for every sample ``b`` (``t`` shared or ``(B,)``)."""
    with torch.no_grad():
        times = t.detach().expand(y.shape[0])
        return (field(times, y.detach()) * g).sum(-1)


_NO_SECOND_ORDER = (
    "second derivatives with respect to the output times are not supported: ts requires "
    "grad and backward ran with create_graph=True, but the time gradients are first-order "
    "formulas (dL/dt_i = <dL/dy_i, f(t_i, y_i)>) and the other gradients do not depend "
    "on ts differentiably. For Hessians with respect to y0 and the parameters, pass "
    "ts.detach() (times that do not require grad)"
)


def _refuse_second_order() -> None:
    # Autograd runs a backward with grad mode on exactly when create_graph=True.
    if torch.is_grad_enabled():
        raise NotImplementedError(_NO_SECOND_ORDER)


def _per_sample_time_grad(dots: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """``(B,)`` dots onto one time column: per sample for ``(B, T)`` times, else summed."""
    return dots if ts.ndim == 2 else dots.sum()


class _InitialTime(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y0: torch.Tensor, ts: torch.Tensor, field: VectorField) -> torch.Tensor:
        ctx.field = field
        ctx.save_for_backward(y0.detach(), ts)
        return y0.view_as(y0)

    @staticmethod
    def backward(ctx: Any, grad_y0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        _refuse_second_order()
        y0, ts = ctx.saved_tensors
        grad_ts = torch.zeros_like(ts)
        if ctx.field.structure.batched:
            dots = _row_dots(ctx.field, ts[..., 0], y0, grad_y0)
            grad_ts[..., 0] = -_per_sample_time_grad(dots, ts)
        else:
            grad_ts[0] = -_field_dot(ctx.field, float(ts[0]), y0, grad_y0)
        return grad_y0, grad_ts, None


class _OutputTimes(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ys: torch.Tensor, ts: torch.Tensor, field: VectorField) -> torch.Tensor:
        ctx.field = field
        ctx.save_for_backward(ys.detach(), ts)
        return ys.view_as(ys)

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        _refuse_second_order()
        ys, ts = ctx.saved_tensors
        if ctx.field.structure.batched:  # ys: (T, B, N)
            columns = [
                _per_sample_time_grad(_row_dots(ctx.field, ts[..., i], ys[i], grad_ys[i]), ts)
                for i in range(ys.shape[0])
            ]
            return grad_ys, torch.stack(columns, dim=-1).to(ts.dtype), None
        times = ts.tolist()
        grad_ts = torch.stack(
            [_field_dot(ctx.field, t, ys[i], grad_ys[i]) for i, t in enumerate(times)]
        ).to(ts.dtype)
        return grad_ys, grad_ts, None


def attach_initial_time(field: VectorField, ts: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """``y0`` with the ``t_0`` gradient attached (identity when ``ts`` needs no grad)."""
    if not ts.requires_grad:
        return y0
    out: torch.Tensor = _InitialTime.apply(y0, ts, field)
    return out


def attach_output_times(field: VectorField, ts: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``ys`` with the output-time gradients attached (identity when ``ts`` needs no grad)."""
    if not ts.requires_grad:
        return ys
    out: torch.Tensor = _OutputTimes.apply(ys, ts, field)
    return out
