"""torchdiffeq-compatible entry points.

The ONE place where method strings and options dicts are mapped to neuralode objects.
``from neuralode.compat import odeint`` is a drop-in for ``torchdiffeq.odeint`` (0.2.5):
same signature, method names, options and tolerance defaults. One default differs on
purpose: ``max_num_steps`` is a finite total budget (10 000, as in ``solve``) instead of
torchdiffeq's 2**31 − 1, so a stiff or blowing-up problem ends with a clear error instead
of running for hours; pass ``options={"max_num_steps": ...}`` for longer solves.

Results agree with torchdiffeq's to within the requested tolerance; they are not
bit-identical because neuralode chooses step sizes slightly differently (Hairer's initial
step exponent, steps may shrink after an accepted step) and evaluates ``f(t1, y1)`` where
torchdiffeq's ``adaptive_heun`` and ``fehlberg2`` reuse a stage taken at another point.
Unknown options raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._checks import check_state, check_whole_number
from ._norms import rms_norm
from ._solution import State
from ._solve import DEFAULT_MAX_STEPS, check_times, solve
from ._vector_field import Structure
from .adjoints import BacksolveAdjoint
from .controllers import AbstractController, ConstantStepSize, PIDController, StepTo
from .solvers import (
    RK4,
    AbstractSolver,
    AdaptiveHeun,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    ExplicitRK,
    Fehlberg2,
    Heun2,
    Heun3,
    Midpoint,
    Tsit5,
)

__all__ = ["METHODS", "odeint", "odeint_adjoint"]

# torchdiffeq's method names → solver classes.
METHODS: dict[str, type[ExplicitRK]] = {
    "dopri8": Dopri8,
    "dopri5": Dopri5,
    "tsit5": Tsit5,
    "bosh3": Bosh3,
    "fehlberg2": Fehlberg2,
    "adaptive_heun": AdaptiveHeun,
    "euler": Euler,
    "midpoint": Midpoint,
    "heun2": Heun2,
    "heun3": Heun3,
    "rk4": RK4,
}

_UNSUPPORTED = {
    "explicit_adams": "multistep Adams methods are not implemented; use 'dopri5' or 'rk4'",
    "implicit_adams": "multistep Adams methods are not implemented; use 'dopri5'",
    "fixed_adams": "multistep Adams methods are not implemented; use 'rk4'",
    "scipy_solver": "the scipy bridge is not implemented; use 'dopri5' or 'dopri8'",
}

_ADAPTIVE_OPTIONS = {
    "first_step",
    "max_num_steps",
    "step_t",
    "jump_t",
    "norm",
    "min_step",
    "max_step",
    "safety",
    "ifactor",
    "dfactor",
}
_FIXED_OPTIONS = {"step_size", "grid_constructor", "perturb", "interp", "max_num_steps"}


def _mixed_norm(structure: Structure) -> Callable[[torch.Tensor], torch.Tensor]:
    # torchdiffeq's default for tuple states: the largest RMS norm among the parts.
    def norm(x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, structure.sizes, dim=-1)
        return torch.stack([rms_norm(p) for p in parts]).amax()

    return norm


def _user_norm(
    norm: Callable[[Any], torch.Tensor], structure: Structure
) -> Callable[[torch.Tensor], torch.Tensor]:
    # torchdiffeq calls a custom norm on the state's own structure, not on a flat vector.
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(norm(structure.unflatten(x)))

    return wrapped


def _times(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        if value.ndim > 1:
            raise ValueError(
                f"{name} must be 1-D times, got a tensor of shape {tuple(value.shape)}"
            )
        return tuple(value.detach().reshape(-1).tolist())
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a 1-D tensor or sequence of times, got {value!r}") from err


def _stops(options: dict[str, Any], key: str, t: torch.Tensor) -> tuple[float, ...]:
    """``options[key]`` (``step_t``/``jump_t``) restricted to the solve's interval.

    torchdiffeq ignores stops outside ``[t[0], t[-1]]`` (a stop list shared by solves of
    several intervals is normal there), while ``solve`` refuses them as a likely mistake:
    drop them here. NaN and inf are kept, for the controller to refuse.
    """
    times = _times(options.get(key, ()), f"options[{key!r}]")
    lo, hi = sorted((float(t.detach()[0]), float(t.detach()[-1])))  # t is checked (_configure)
    return tuple(s for s in times if not math.isfinite(s) or lo <= s <= hi)


def _solver_for(method: str | None, options: dict[str, Any]) -> AbstractSolver:
    name = "dopri5" if method is None else method
    if name in _UNSUPPORTED:
        raise ValueError(f"method={name!r}: {_UNSUPPORTED[name]}")
    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ValueError(f"unknown method={name!r}; choose one of: {known}")
    cls = METHODS[name]
    if cls.tableau.adaptive:
        return cls()
    interp = options.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise ValueError(f"options['interp'] must be 'linear' or 'cubic', got {interp!r}")
    return cls(interpolation="linear" if interp == "linear" else "hermite")


def _check_options(solver: AbstractSolver, options: dict[str, Any]) -> None:
    allowed = _ADAPTIVE_OPTIONS if solver.adaptive else _FIXED_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        kind = "adaptive" if solver.adaptive else "fixed-step"
        raise ValueError(
            f"unknown option(s) {unknown} for the {kind} method {type(solver).__name__}; "
            f"valid options are {sorted(allowed)}"
        )
    perturb = options.get("perturb")
    if perturb is not None and not isinstance(perturb, bool):
        raise TypeError(f"options['perturb'] must be True or False, got {perturb!r}")
    if perturb:
        raise ValueError(
            "options['perturb']=True is not supported; mark discontinuities with an "
            "adaptive method and options={'jump_t': ...} instead"
        )


def _controller_for(
    solver: AbstractSolver,
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    rtol: Any,
    atol: Any,
    options: dict[str, Any],
) -> AbstractController:
    if not solver.adaptive:
        step_size = _optional_number(options, "step_size")
        grid_constructor = options.get("grid_constructor")
        if step_size is not None and grid_constructor is not None:
            raise ValueError("give options['step_size'] or options['grid_constructor'], not both")
        if step_size is not None:
            return ConstantStepSize(step_size)
        if grid_constructor is not None:
            if not callable(grid_constructor):
                raise TypeError(
                    "options['grid_constructor'] must be a function (func, y0, t) -> grid, got "
                    f"{type(grid_constructor).__name__}"
                )
            return StepTo(_times(grid_constructor(func, y0, t), "grid_constructor"))
        # torchdiffeq's default grid: step from output time to output time.
        return StepTo(_times(t, "t"))
    structure = Structure.of(y0)
    if options.get("norm") is not None:
        if not callable(options["norm"]):
            raise TypeError(
                f"options['norm'] must be a function of the state, got {options['norm']!r}"
            )
        norm = _user_norm(options["norm"], structure)
    elif structure.is_tuple:
        norm = _mixed_norm(structure)
    else:
        norm = rms_norm
    try:
        return PIDController(
            rtol=rtol,
            atol=atol,
            safety=_number(options, "safety", 0.9),
            factor_min=_number(options, "dfactor", 0.2),
            factor_max=_number(options, "ifactor", 10.0),
            dt0=_optional_number(options, "first_step"),
            dt_min=_number(options, "min_step", 0.0),
            force_dt_min=options.get("min_step") is not None,
            dt_max=_number(options, "max_step", math.inf),
            norm=norm,
            step_ts=_stops(options, "step_t", t),
            jump_ts=_stops(options, "jump_t", t),
        )
    except ValueError as err:
        # PIDController names its own fields; say which torchdiffeq option each one is.
        raise ValueError(f"{err} ({_OPTION_NAMES})") from err


# torchdiffeq's option names for PIDController's fields, for error messages.
_OPTION_NAMES = (
    "options map to: first_step → dt0, min_step → dt_min, max_step → dt_max, dfactor → "
    "factor_min, ifactor → factor_max, step_t → step_ts, jump_t → jump_ts"
)


def _number(options: dict[str, Any], key: str, default: float) -> float:
    """``options[key]`` as a float; ``default`` when absent or None."""
    value = _optional_number(options, key)
    return default if value is None else value


def _optional_number(options: dict[str, Any], key: str) -> float | None:
    """``options[key]`` as a float (a number or a one-element tensor), or None if absent."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"options[{key!r}] must be a number, got {value!r}")
    return float(value)


def odeint(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[..., torch.Tensor] | None = None,
) -> State:
    """Solve ``dy/dt = func(t, y)`` at times ``t``, exactly like ``torchdiffeq.odeint``.

    Args:
        func: ``func(t, y)`` returning ``dy/dt`` shaped like ``y`` (tensor or tuple).
        y0: Initial state (tensor or tuple of tensors) at ``t[0]``.
        t: 1-D strictly monotone output times.
        rtol: Relative tolerance (adaptive methods).
        atol: Absolute tolerance (adaptive methods).
        method: One of ``dopri8, dopri5, tsit5, bosh3, fehlberg2, adaptive_heun, euler,
            midpoint, heun2, heun3, rk4``; ``dopri5`` by default.
        options: torchdiffeq's options: ``first_step, max_num_steps, step_t, jump_t, norm,
            min_step, max_step, safety, ifactor, dfactor`` (adaptive); ``step_size,
            grid_constructor, interp, perturb`` (fixed-step).
        event_fn: Not supported yet; raises if given.

    Returns:
        The solution at ``t``: shape ``(len(t), *y0.shape)`` (a tuple for tuple states).

    Raises:
        SolverError: If the solve fails (torchdiffeq raises ``AssertionError`` there).
    """
    if event_fn is not None:
        raise ValueError("event_fn is not supported by neuralode.compat.odeint yet")
    solver, controller, max_steps = _configure(func, y0, t, rtol, atol, method, options)
    return solve(func, y0, t, solver=solver, controller=controller, max_steps=max_steps).ys


def _configure(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    rtol: Any,
    atol: Any,
    method: str | None,
    options: dict[str, Any] | None,
) -> tuple[AbstractSolver, AbstractController, int]:
    # The inputs first: the options below read y0's structure and t's interval.
    check_state(y0)
    check_times(t)
    if not isinstance(options, (dict, type(None))):
        raise TypeError(f"options must be a dict (or None), got {type(options).__name__}")
    options = {} if options is None else dict(options)
    solver = _solver_for(method, options)
    _check_options(solver, options)
    controller = _controller_for(solver, func, y0, t, rtol, atol, options)
    budget = options.get("max_num_steps", DEFAULT_MAX_STEPS)
    return solver, controller, check_whole_number(budget, "options['max_num_steps']")


def odeint_adjoint(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[..., torch.Tensor] | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> State:
    """``torchdiffeq.odeint_adjoint``: gradients by the backwards adjoint ODE, O(1) memory.

    Same arguments as :func:`odeint`, plus the backward solve's own ``adjoint_rtol``,
    ``adjoint_atol``, ``adjoint_method`` and ``adjoint_options`` (each defaulting to the
    forward one; ``adjoint_options={"norm": "seminorm"}`` leaves the parameter gradients
    out of error control), and ``adjoint_params``: the tensors to differentiate, required
    when ``func`` is not an ``nn.Module``. Runs :class:`~neuralode.BacksolveAdjoint`.
    """
    if event_fn is not None:
        raise ValueError("event_fn is not supported by neuralode.compat.odeint_adjoint yet")
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise ValueError(
            "func must be an nn.Module when adjoint_params is not given (as in torchdiffeq); "
            "pass adjoint_params=[...] with the tensors to differentiate"
        )
    solver, controller, max_steps = _configure(func, y0, t, rtol, atol, method, options)
    if adjoint_options is None:
        # torchdiffeq: the backward solve inherits the forward options (not the norm) when
        # it uses the same method, and refuses to guess them for another method.
        if adjoint_method not in (None, method) and options:
            raise ValueError(
                "adjoint_method differs from method and options were given: pass "
                "adjoint_options too (torchdiffeq raises here as well)"
            )
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm"}
    adjoint_options = dict(adjoint_options)
    norm = adjoint_options.pop("norm", None)
    if norm not in (None, "seminorm"):
        raise ValueError(
            f"adjoint_options['norm'] must be 'seminorm' or absent, got {norm!r}; the "
            "backward solve uses torchdiffeq's mixed norm over [y, adj_y, adj_params]"
        )
    back_solver, back_controller, _ = _configure(
        func,
        y0,
        t,
        rtol if adjoint_rtol is None else adjoint_rtol,
        atol if adjoint_atol is None else adjoint_atol,
        method if adjoint_method is None else adjoint_method,
        adjoint_options,
    )
    adjoint = BacksolveAdjoint(
        solver=back_solver, controller=back_controller, seminorm=norm == "seminorm"
    )
    return solve(
        func,
        y0,
        t,
        solver=solver,
        controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        params=adjoint_params,
    ).ys
