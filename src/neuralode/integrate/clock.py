"""The loop's clock: the smallest step time can take, and landing exactly on a stop.

One set of rules for both drivers: Python floats in the joint one, ``(B,)`` tensors in
the per-sample one (:mod:`neuralode._arith` makes the same formulas read on both).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _arith


def resolution(tau: Any, dtype: torch.dtype) -> Any:
    """The smallest step that still moves ``tau`` as the vector field sees time (``dtype``).

    Four ulps of ``tau`` in ``dtype``: a float, or one per row for a ``(B,)`` tensor.
    """
    info = torch.finfo(dtype)
    return 4 * info.eps * _arith.maximum(abs(tau), info.tiny)


def coarse_clock(t: float, dtype: torch.dtype) -> str:
    """Why a step underflowed against the resolution of ``t`` when ``dtype`` is coarse.

    In float64 such an underflow means a blow-up or stiffness, as the status says (empty
    string). In float32 or lower it may be the time's dtype alone (t = 1e6 in float32
    resolves only steps of 0.5), which float64 output times fix.
    """
    if dtype == torch.float64:
        return ""
    return (
        f"t is {str(dtype).removeprefix('torch.')}, which resolves steps only down to "
        f"{resolution(t, dtype):.3g} at t={t:.6g}: if the solution is smooth there, pass ts "
        "as float64 (the state keeps its own dtype) or shift time to start near 0"
    )


def landing(tau_stop: Any, dtype: torch.dtype) -> Any:
    """The earliest end of a step that :func:`step_to` stretches onto ``tau_stop``.

    A step ending closer to the stop than twice the clock's resolution there would leave a
    remainder the clock cannot step (:func:`resolution`, taken at the remainder's start,
    which is at most that far from the stop): such a step lands on the stop instead.
    """
    return tau_stop - 2 * resolution(tau_stop, dtype)


def step_to(tau: Any, dt: Any, tau_stop: Any, tau_land: Any, dtype: torch.dtype) -> Any:
    """The step of proposed size ``dt`` from ``tau``: ``(tau1, dt1, lost)``.

    ``tau1`` is ``tau + dt``, or exactly ``tau_stop`` when the step reaches
    ``tau_land`` (see :func:`landing`); a step is stretched by a hair (1e-10 relative) or
    by at most two resolutions rather than leave a sliver. Without the resolution term a
    float32 clock ended one step short of ``t1`` about once in 10^5 samples, 4e-7 short at
    ``t1 = 5``, and that remainder failed as an underflow. Diffrax clips to the end for
    the same reason, within an absolute 1e-10 (float64) or 1e-6 (otherwise); relative to
    ``t``, as here, the margin also holds far from 0 (at 1e6 a float32 ulp is 0.06).
    ``dt1 = tau1 - tau``.

    ``lost``: the step is below the clock's resolution and the proposal does not reach
    the stop (the step size has collapsed). A proposal that reaches the stop is never
    lost, however short the step: it moves the clock onto a time it can hold (a tiny
    interval is one such step).

    Python floats in the joint loop, ``(B,)`` tensors per-sample: one rule for both.
    """
    reach = tau + dt * (1 + 1e-10)
    tau1 = _arith.where(reach >= tau_land, tau_stop, tau + dt)
    dt1 = tau1 - tau
    return tau1, dt1, (dt1 <= resolution(tau, dtype)) & (reach < tau_stop)


def next_float(t: float, toward: float, dtype: torch.dtype) -> float:
    """The neighbour of ``t`` towards ``toward`` as the vector field sees time (``dtype``)."""
    here = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(here, torch.tensor(toward, dtype=dtype)))
