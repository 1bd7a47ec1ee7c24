"""Adaptive step-size control: I, PI and PID controllers on the error ratio."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import _arith
from .._norms import Norm, rms_norm, rows_norm
from ..solvers._explicit_rk import StepResult, no_grad_if_enabled
from ._base import AbstractController, Decision, SolveStart
from .initial_step import select_initial_step

Tolerance = float | torch.Tensor | Sequence[torch.Tensor]

# States whose dtype holds atol/rtol for any tolerances a solve accepts (see _ratio).
_SHIFTABLE = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def check_tolerance(kind: str, value: Any, name: str | None = None) -> None:
    """Refuse a tolerance that is not positive and finite: ``kind`` ``"rtol"`` or ``"atol"``.

    ``name``: the argument as the caller knows it (compat's ``adjoint_rtol``), if not ``kind``.
    """
    name = kind if name is None else name
    if isinstance(value, (tuple, list)):
        for v in value:
            check_tolerance(kind, v, name)
        return
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {value.dtype}")
        bad = not bool(torch.all((value > 0) & torch.isfinite(value)))
        zero = bad and bool((value == 0).any())
        shown = f"a tensor with min {float(value.min()) if value.numel() else 'n/a'}"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        bad = not (math.isfinite(value) and value > 0)
        zero = value == 0
        shown = repr(value)
    else:
        raise TypeError(f"{name} must be a positive float or tensor, got {type(value).__name__}")
    if bad:
        hint = _ZERO[kind] if zero else _TYPICAL
        raise ValueError(f"{name} must be positive and finite, got {shown}; {hint}")


_TYPICAL = "typical values are rtol=1e-6, atol=1e-8 (tighten both for more accuracy)"
# torchdiffeq accepts a zero tolerance; these say what to pass instead (compat refuses too).
_ZERO = {
    "rtol": "pure absolute error control (rtol=0) is not supported: pass a small positive "
    "rtol such as 1e-10, and the error scale atol + rtol·|y| is atol wherever rtol·|y| is "
    "far below atol",
    "atol": "pure relative error control (atol=0) is not supported: the error scale "
    "atol + rtol·|y| would be zero wherever y is; pass a small positive atol such as 1e-12",
}


def _real(name: str, value: Any, inf_ok: bool = False) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or math.isnan(value) or (math.isinf(value) and not inf_ok):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_coefficients(pcoeff: Any, icoeff: Any, dcoeff: Any) -> None:
    """Refuse PID coefficients whose step-size feedback loop is unstable.

    In the asymptotic model of error control, ``log ε_n = k log dt_n + c`` (Söderlind,
    ACM TOMS 29, 2003, §2; Hairer & Wanner II, §IV.2), the controller's recursion for
    ``x_n = log dt_n`` has the characteristic polynomial
    ``z³ + (kβ1 − 1) z² + kβ2 z + kβ3`` with ``kβ1 = p + i + d``, ``kβ2 = −(p + 2d)``,
    ``kβ3 = d``. The step sizes settle at the tolerance only if every root lies inside the
    unit circle (Jury's conditions below). ``P(1) = i``: without integral action
    (``icoeff <= 0``) the step never converges to the tolerance; the I controller's root
    ``1 − i`` needs ``0 < icoeff < 2``. Coefficients outside this set do not fail at once:
    the steps oscillate or run away, and the solve ends much later as "may blow up".
    """
    p, i, d = (_real(n, v) for n, v in (("pcoeff", pcoeff), ("icoeff", icoeff), ("dcoeff", dcoeff)))
    a2, a1, a0 = p + i + d - 1.0, -(p + 2.0 * d), d
    stable = (
        i > 0  # P(1) > 0
        and 1.0 - a2 + a1 - a0 > 0  # (-1)^3 P(-1) > 0, i.e. 2 - 2p - i - 4d > 0
        and abs(a0) < 1.0
        and 1.0 - a0 * a0 > abs(a0 * a2 - a1)
    )
    if not stable:
        raise ValueError(
            f"PIDController(pcoeff={p}, icoeff={i}, dcoeff={d}) makes the step-size control "
            "unstable: the steps would not settle at the tolerance (icoeff must be > 0, and "
            "with pcoeff=dcoeff=0 below 2). Use the defaults (pcoeff=0, icoeff=1, dcoeff=0), "
            "or a tested PI controller such as pcoeff=0.4, icoeff=0.3"
        )


def _times(name: str, value: Any) -> tuple[float, ...]:
    """``step_ts``/``jump_ts`` as a tuple of finite floats (a sequence or a 1-D tensor)."""
    if type(value) is tuple and not value:
        return ()  # (the default, at every construction: none of the checks below)
    if isinstance(value, torch.Tensor):
        if value.ndim > 1:
            raise ValueError(f"{name} must be 1-D, got a tensor of shape {tuple(value.shape)}")
        value = value.detach().reshape(-1).tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of times, got {type(value).__name__}")
    try:
        times = tuple(float(t) for t in value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be a flat sequence of numbers (times), got {list(value)[:5]!r}"
        ) from err
    if not all(map(math.isfinite, times)):
        raise ValueError(f"{name} must be finite times, got {list(times)[:5]}")
    return times


@dataclass(frozen=True)
class PIDController(AbstractController):
    """Adaptive steps from the error ratio ``ε = norm(y_error / (atol + rtol·max|y|))``.

    A step is accepted when ``ε ≤ 1``. The next step is ``dt · factor`` with
    ``factor = safety · ε_n^(−β1) · ε_(n−1)^(−β2) · ε_(n−2)^(−β3)``, ``k = error_order + 1``,
    ``β1 = (p + i + d)/k``, ``β2 = −(p + 2d)/k``, ``β3 = d/k`` (Söderlind, "Digital filters in
    adaptive time-stepping", ACM TOMS 29, 2003), clipped to ``[factor_min, factor_max]``.
    The defaults ``pcoeff = dcoeff = 0, icoeff = 1`` give the classical I controller
    (torchdiffeq's and scipy's); ``pcoeff=0.4, icoeff=0.3`` is a good PI controller for
    problems with oscillating step sizes. A rejected step uses the I part only and never
    grows. A step that yields NaN/inf is rejected and shrunk by ``factor_min``.

    Attributes:
        rtol: Relative tolerance: a float, or a tensor shaped like the state (per-component).
        atol: Absolute tolerance, likewise.
        pcoeff: Proportional coefficient.
        icoeff: Integral coefficient.
        dcoeff: Derivative coefficient.
        safety: Safety factor on the optimal step.
        factor_min: Smallest step-size ratio between consecutive steps.
        factor_max: Largest step-size ratio between consecutive steps.
        dt0: First step size; ``None`` selects it by Hairer's algorithm (one extra
            evaluation).
        dt_min: Smallest step; going below ends the solve with ``Status.DT_MIN``.
        dt_max: Largest step.
        norm: Norm of the scaled error on the flat state (``rms_norm`` by default).
        step_ts: Times the solver must step to exactly (e.g. kinks of the forcing).
        jump_ts: Discontinuities of ``f`` in ``t``: stepped to exactly, the step's end
            stages see the left limit, and ``f`` is re-evaluated just past the jump, so no
            stage straddles it.
        force_dt_min: Accept a step of size ``dt_min`` whatever its error (torchdiffeq's
            ``min_step``), instead of ending the solve with ``Status.DT_MIN``. The result
            then no longer meets the tolerance.
        shrink_after_accept: Whether the step after an accepted one may be shorter
            (``safety · ε^(−1/k) < 1`` when ``ε`` is close to 1). ``False`` is torchdiffeq's
            rule: an accepted step's successor is at least as long, which saves a few
            steps when the error ratio sits just below 1 and costs a rejection when it
            then exceeds 1 (:mod:`neuralode.compat` uses it to take torchdiffeq's steps).
    """

    rtol: Tolerance = 1e-6
    atol: Tolerance = 1e-8
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    dt0: float | None = None
    dt_min: float = 0.0
    dt_max: float = math.inf
    norm: Norm = rms_norm
    step_ts: Sequence[float] = ()
    jump_ts: Sequence[float] = ()
    force_dt_min: bool = False
    shrink_after_accept: bool = True

    def __post_init__(self) -> None:
        check_tolerance("rtol", self.rtol)
        check_tolerance("atol", self.atol)
        _check_coefficients(self.pcoeff, self.icoeff, self.dcoeff)
        if not isinstance(self.shrink_after_accept, bool):
            raise TypeError(
                f"shrink_after_accept must be True or False, got {self.shrink_after_accept!r}"
            )
        for name in ("safety", "factor_min", "factor_max", "dt_min"):
            _real(name, getattr(self, name))
        _real("dt_max", self.dt_max, inf_ok=True)
        if self.dt0 is not None:
            _real("dt0", self.dt0)
        if not 0 < self.safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {self.safety!r}")
        if not 0 < self.factor_min < 1 < self.factor_max:
            raise ValueError(
                f"need 0 < factor_min < 1 < factor_max, got factor_min={self.factor_min!r}, "
                f"factor_max={self.factor_max!r}"
            )
        if self.dt0 is not None and not (math.isfinite(self.dt0) and self.dt0 > 0):
            raise ValueError(f"dt0 must be a positive finite step size or None, got {self.dt0!r}")
        if not 0 <= self.dt_min < self.dt_max:
            raise ValueError(
                f"need 0 <= dt_min < dt_max, got dt_min={self.dt_min!r}, dt_max={self.dt_max!r}"
            )
        if not callable(self.norm):
            raise TypeError(
                f"norm must be a function of the scaled error, e.g. neuralode.max_norm, got "
                f"{type(self.norm).__name__}"
            )
        object.__setattr__(self, "step_ts", _times("step_ts", self.step_ts))
        object.__setattr__(self, "jump_ts", _times("jump_ts", self.jump_ts))

    @property
    def adaptive(self) -> bool:
        """This controller needs an embedded error estimate."""
        return True

    def min_step(self) -> float:
        """``dt_min``."""
        return self.dt_min

    def tolerances(self) -> tuple[Any, Any]:
        """``(rtol, atol)`` as configured."""
        return self.rtol, self.atol

    def stops(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(step_ts, jump_ts)``."""
        return tuple(self.step_ts), tuple(self.jump_ts)

    def init(self, start: SolveStart) -> tuple[Any, Any]:
        """First step (given or Hairer's) and the state ``(k, rtol, atol, ε_(n−1), ε_(n−2))``.

        Joint mode: and ``(y, |y|)`` last (see :meth:`decide`), ``(None, None)`` at first.

        Per-sample (``start.tau0`` a ``(B,)`` tensor): the same rule for every sample,
        ``(B,)`` first steps and per-row history.
        """
        tau0: Any = start.tau0
        rows = isinstance(tau0, torch.Tensor)
        if self.dt0 is not None:
            dt: Any = torch.full_like(tau0, self.dt0) if rows else self.dt0
        else:
            dt = self._initial_step(start, rows_norm(self.norm) if rows else self.norm)
        span = start.tau_end - start.tau0 if rows else float(start.tau_end) - float(start.tau0)
        dt = _arith.minimum(_arith.clip(dt, self.dt_min, self.dt_max), span)
        state = (start.solver.error_order + 1, *self._folded(start))
        if rows:
            # Two tensors, not one twice: aliased inputs would recompile a compiled step.
            return dt, (*state, torch.ones_like(tau0), torch.ones_like(tau0))
        # Joint mode also keeps (y, |y|) of the state the next step starts from: the
        # accepted step's |y1| is the next step's |y0|, one tensor op fewer per step.
        return dt, (*state, 1.0, 1.0, (None, None))

    def _initial_step(self, start: SolveStart, norm: Norm) -> Any:
        return select_initial_step(
            start.f,
            start.t0,
            start.y0,
            start.f0,
            direction=start.direction,
            error_order=start.solver.error_order,
            rtol=start.rtol,
            atol=start.atol,
            norm=norm,
        )

    def _folded(self, start: SolveStart) -> tuple[Any, Any]:
        rtol, atol = start.rtol, start.atol
        if self.norm is rms_norm:
            # Fold the RMS's 1/sqrt(n) into the tolerances once, so each step's error ratio
            # is a plain 2-norm: two fewer tensor ops per step (see error_ratio). In
            # per-sample mode n is the size of one sample.
            n = start.y0.shape[-1] if isinstance(start.tau0, torch.Tensor) else start.y0.numel()
            root = math.sqrt(max(n, 1))
            rtol, atol = rtol * root, atol * root
        return rtol, atol

    def error_ratio(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        y_error: torch.Tensor,
        rtol: torch.Tensor | float,
        atol: torch.Tensor | float,
        rows: bool = False,
        abs_y0: torch.Tensor | None = None,
    ) -> Any:
        """``norm(y_error / (atol + rtol · max(|y0|, |y1|)))``.

        A Python float (one host sync), or with ``rows`` one float64 ratio per row of the
        ``(B, N)`` state, kept on the device. With the default RMS norm, ``rtol`` and
        ``atol`` arrive pre-multiplied by ``sqrt(n)`` (see ``init``), so the RMS is the
        plain 2-norm computed here. ``abs_y0``: ``|y0|``, if known already.
        """
        return self._ratio(y0, y1, y_error, rtol, atol, rows, abs_y0)[0]

    def _ratio(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        y_error: torch.Tensor,
        rtol: torch.Tensor | float,
        atol: torch.Tensor | float,
        rows: bool,
        abs_y0: torch.Tensor | None,
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """:meth:`error_ratio`, and ``|y0|`` and ``|y1|`` (for the next step's ``|y0|``)."""
        with no_grad_if_enabled():
            abs_y0 = y0.abs() if abs_y0 is None else abs_y0
            abs_y1 = y1.abs()
            shift = not rows and self.norm is rms_norm and type(rtol) is type(atol) is float
            if shift and y1.dtype in _SHIFTABLE:
                # The joint default: y_error / (atol + rtol·m) = (y_error / (atol/rtol + m)) /
                # rtol, and the last division is on the host: one tensor op fewer a step.
                # (Not in 16-bit floats, where atol/rtol may overflow: 1/1e-5 does.)
                shifted = torch.maximum(abs_y0, abs_y1).add_(atol / rtol)
                return float(torch.linalg.vector_norm(y_error / shifted)) / rtol, abs_y0, abs_y1
            scale = torch.maximum(abs_y0, abs_y1).mul_(rtol).add_(atol)
            if rows:
                if self.norm is rms_norm:
                    ratio = torch.linalg.vector_norm(y_error / scale, dim=-1).double()
                else:
                    ratio = rows_norm(self.norm)(y_error / scale).double()
            elif self.norm is rms_norm:
                ratio = float(torch.linalg.vector_norm(y_error / scale))
            else:
                ratio = float(self.norm(y_error / scale))
        return ratio, abs_y0, abs_y1

    def _shrink(self, ratio: Any, k: int) -> Any:
        """Step-size factor after a rejection (I part only, never growing)."""
        return _arith.maximum(self.factor_min, self.safety * ratio ** (-1.0 / k))

    def _grow(self, ratio: Any, prev1: Any, prev2: Any, k: int) -> Any:
        """Step-size factor after an acceptance: the PID formula, clipped."""
        beta1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
        beta2 = -(self.pcoeff + 2 * self.dcoeff) / k
        beta3 = self.dcoeff / k
        factor = self.safety * ratio**-beta1
        # Zero exponents (the I controller's) skip two tensor powers per step per-sample.
        if beta2:
            factor = factor * prev1**-beta2
        if beta3:
            factor = factor * prev2**-beta3
        lowest = self.factor_min if self.shrink_after_accept else 1.0
        return _arith.clip(factor, lowest, self.factor_max)

    def decide(
        self, tau0: Any, dt: Any, y0: torch.Tensor, step: StepResult, state: Any
    ) -> Decision:
        """Accept when ``ε ≤ 1``; propose the next step from the PID formula.

        One rule for a float step (joint mode) and for ``(B,)`` rows (per-sample mode),
        the latter in few tensor operations (the per-sample mode's overhead is its
        operation count). A non-finite ratio is rejected with ``dt · factor_min``, never
        clamped to ``dt_min``: as ``inf`` (NaN becomes ``inf``), whose shrink factor
        ``safety · inf^(−1/k) = 0`` clamps to ``factor_min``. A rejected step is not
        clamped to ``dt_min`` either unless ``force_dt_min``: a rejection at ``dt_min``
        must end the solve (``DT_MIN``) instead of being retried at the same size until
        ``max_steps``.
        """
        k, rtol, atol, prev1, prev2, *seen = state
        if step.y_error is None:
            raise TypeError("PIDController needs a solver with an embedded error estimate")
        rows = isinstance(dt, torch.Tensor)
        # Joint mode: |y0| is known when y0 is the state the last verdict kept.
        known = seen[0][1] if seen and seen[0][0] is y0 else None
        ratio, abs_y0, abs_y1 = self._ratio(y0, step.y1, step.y_error, rtol, atol, rows, known)
        nonfinite: Any = False
        if rows:
            ratio = torch.nan_to_num(ratio, nan=math.inf, posinf=math.inf)
            nonfinite = ratio == math.inf
        elif not math.isfinite(ratio):
            # (The float path's early exit: the same numbers as the formula below.)
            return Decision(False, dt * self.factor_min, state, nonfinite=True)
        accept = ratio <= 1.0
        if self.force_dt_min:
            # (dt is recomputed as t1 - t0 by the loop, so compare with a little slack.)
            accept = accept | (_arith.logical_not(nonfinite) & (dt <= self.dt_min * (1 + 1e-9)))
        # ε = 0 (e.g. a constant solution) would make the factor infinite: cap it. A
        # rejected ratio is > 1, so the cap leaves the shrink factor's input alone.
        if rows:
            ratio = torch.clamp(ratio, min=1e-10)
            grow = self._grow(ratio, prev1, prev2, k)
            # The I controller's grow factor is the shrink's formula clipped to
            # [factor_min, factor_max]; on a rejected ratio (> 1, or inf) the formula is
            # below safety <= 1 < factor_max, so the clip is the shrink's max with
            # factor_min, and one factor serves both.
            i_only = self._i_only(k) and self.shrink_after_accept
            factor = grow if i_only else torch.where(accept, grow, self._shrink(ratio, k))
        else:
            # Floats, in plain Python: this runs at every step of the joint loop.
            ratio, i_only = max(ratio, 1e-10), False
            factor = self._grow(ratio, prev1, prev2, k) if accept else self._shrink(ratio, k)
        dt_next = dt * factor
        if self.dt_min > 0 or self.dt_max < math.inf:
            dt_reject = dt_next
            if self.force_dt_min:
                at_least = _arith.maximum(dt_next, self.dt_min)
                dt_reject = _arith.where(nonfinite, dt_next, at_least)
            dt_accept = _arith.clip(dt_next, self.dt_min, self.dt_max)
            dt_next = _arith.where(accept, dt_accept, dt_reject)
        if rows:
            if not i_only:
                # The P and D terms read the last two accepted ratios; the I controller never.
                history = torch.where(accept, ratio, prev1), torch.where(accept, prev1, prev2)
                state = (k, rtol, atol, *history)
        elif accept:
            state = (k, rtol, atol, ratio, prev1, (step.y1, abs_y1))
        else:
            state = (k, rtol, atol, prev1, prev2, (y0, abs_y0))
        return Decision(accept, dt_next, state, nonfinite)

    def _i_only(self, k: int) -> bool:
        """Whether the grow factor is ``safety · ε^(−1/k)``: the shrink's formula, no history."""
        beta1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
        return -beta1 == -1.0 / k and self.pcoeff + 2 * self.dcoeff == 0 and self.dcoeff == 0
