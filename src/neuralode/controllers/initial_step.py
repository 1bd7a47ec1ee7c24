"""Initial step-size selection: the one copy used by every adaptive controller."""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import _arith
from .._norms import Norm, rms_norm
from ..solvers._explicit_rk import FlatField, Time, no_grad_if_enabled


def _norm_value(norm: Norm, x: torch.Tensor, per_sample: bool) -> Any:
    # Joint mode: a Python float (the host sync the formula needs anyway). Per-sample
    # mode: one float64 value per row, kept on the device.
    if norm is rms_norm and not per_sample:
        # The RMS's division by sqrt(n) on the host: one tensor op fewer.
        return float(torch.linalg.vector_norm(x)) / math.sqrt(max(x.numel(), 1))
    value = norm(x)
    return value.double() if per_sample else float(value)


def select_initial_step(
    f: FlatField,
    t0: Time,
    y0: torch.Tensor,
    f0: torch.Tensor,
    *,
    direction: float,
    error_order: int,
    rtol: torch.Tensor | float,
    atol: torch.Tensor | float,
    norm: Norm,
) -> Any:
    """Hairer's starting step (Hairer, Nørsett & Wanner I, §II.4, algorithm on p. 169).

    Costs one evaluation of ``f``. Chooses ``dt`` so that an explicit Euler step would have
    a local error of about 1% of the tolerance, then corrects with a second-derivative
    estimate, exponent ``1 / (error_order + 1)`` as in Hairer's DOPRI5 and scipy.
    Returns a positive step (the caller applies the direction): a float, or in per-sample
    mode (``t0`` a ``(B,)`` tensor, ``norm`` a row-wise norm) a float64 ``(B,)`` tensor.
    """
    per_sample = isinstance(t0, torch.Tensor)
    with no_grad_if_enabled():
        scale = atol + torch.abs(y0) * rtol
        d0 = _norm_value(norm, y0 / scale, per_sample)
        d1 = _norm_value(norm, f0 / scale, per_sample)
        tiny = (d0 < 1e-5) | (d1 < 1e-5)
        dt0 = _arith.where(tiny, 1e-6, 0.01 * d0 / _arith.where(tiny, 1.0, d1))
        if per_sample:
            y1 = torch.addcmul(y0, (direction * dt0).to(y0.dtype).unsqueeze(-1), f0)
        else:
            y1 = torch.add(y0, f0, alpha=direction * dt0)
        f1 = f(t0 + direction * dt0, y1)
        d2 = _norm_value(norm, (f1 - f0) / scale, per_sample)
        # dt0 is 0 when |f0|/scale overflowed (d1 = inf, e.g. |y| ~ 1e30 in float32): a
        # Python float division would raise; inf leads to dt = 0 and the loop's DT_MIN.
        d2 = d2 / dt0 if per_sample or dt0 > 0 else math.inf
    finite = (d1 == d1) & (d2 == d2)  # NaN: let the step loop report the non-finite field
    d12 = _arith.maximum(d1, d2)
    flat = d12 <= 1e-15
    dt1 = _arith.where(
        flat,
        _arith.maximum(1e-6, dt0 * 1e-3),
        (0.01 / _arith.where(flat, 1.0, d12)) ** (1.0 / (error_order + 1)),
    )
    return _arith.where(finite, _arith.minimum(100 * dt0, dt1), dt0)
