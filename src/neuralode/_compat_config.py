"""torchdiffeq's method names and options dicts → neuralode solvers and controllers.

Part of neuralode.compat (the one place where strings and options dicts become objects).
torchdiffeq's leniency is kept here on purpose: options a method does not take warn
("Unexpected arguments") instead of raising, and a failed solve raises an error that is
both torchdiffeq's ``AssertionError`` and neuralode's ``SolverError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_state, check_times, check_whole_number
from ._compat_hooks import Callbacks, CompatController, find_callbacks, real_dtype
from ._norms import rms_norm
from ._solution import SolverError, State, Status
from ._vector_field import Structure
from .controllers import AbstractController, ConstantStepSize, PIDController, StepTo
from .controllers.pid import check_tolerance
from .solvers import (
    RK4,
    SDIRK2,
    TRBDF2,
    AbstractSolver,
    AdamsBashforth,
    AdamsBashforthMoulton,
    AdaptiveHeun,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    ExplicitRK,
    Fehlberg2,
    GaussLegendre4,
    GaussLegendre6,
    Heun2,
    Heun3,
    ImplicitEuler,
    ImplicitMidpoint,
    ImplicitRK,
    Midpoint,
    RadauIIA3,
    RadauIIA5,
    Trapezoid,
    Tsit5,
)

# torchdiffeq's method names → solver classes. The implicit ones are torchdiffeq's
# development (post-0.2.5) names; their Newton iterations use neuralode.Newton's defaults.
METHODS: dict[str, type[ExplicitRK] | type[ImplicitRK]] = {
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
    "implicit_euler": ImplicitEuler,
    "implicit_midpoint": ImplicitMidpoint,
    "trapezoid": Trapezoid,
    "sdirk2": SDIRK2,
    "trbdf2": TRBDF2,
    "radauIIA3": RadauIIA3,
    "radauIIA5": RadauIIA5,
    "gl4": GaussLegendre4,
    "gl6": GaussLegendre6,
}
SCIPY = "scipy_solver"
# torchdiffeq's fixed-grid Adams methods: whether the method corrects (Adams–Moulton).
# Their options: max_order (the corrector's order; the explicit method's is one less),
# max_iters (corrector evaluations), implicit (fixed_adams/implicit_adams only).
ADAMS = {"explicit_adams": False, "implicit_adams": True, "fixed_adams": True}
_ADAMS_MAX_ORDER, _ADAMS_MIN_ORDER = 12, 4

# torchdiffeq's own default: no budget to speak of. Natively neuralode keeps a finite one.
MAX_NUM_STEPS = 2**31 - 1

ADAPTIVE_OPTIONS = frozenset(
    {"first_step", "max_num_steps", "step_t", "jump_t", "norm", "min_step", "max_step",
     "safety", "ifactor", "dfactor", "dtype"}
)  # fmt: skip
# max_num_steps is neuralode's addition for fixed steps; norm is silently ignored there, as
# torchdiffeq does (its odeint always sets it).
FIXED_OPTIONS = frozenset(
    {"step_size", "grid_constructor", "perturb", "interp", "max_num_steps", "norm"}
)
ADAMS_OPTIONS = FIXED_OPTIONS | {"max_order", "max_iters", "implicit"}
SCIPY_OPTIONS = frozenset({"solver", "min_step", "max_step", "norm", "grid_points", "eps"})


class CompatSolverError(SolverError, AssertionError):
    """A failed compat solve: torchdiffeq's ``AssertionError`` and neuralode's ``SolverError``.

    Code written for torchdiffeq catches ``AssertionError`` and reads the start of the
    message ("max_num_steps exceeded", "underflow in dt"); the rest gives neuralode's
    cause, and the attributes are :class:`~neuralode.SolverError`'s.
    """

    @classmethod
    def of(cls, error: SolverError, budget: str = "") -> CompatSolverError:
        """The compat form of a native :class:`SolverError` (``budget``: how it was set)."""
        new = cls(error.status, t=error.t, dt=error.dt, steps=error.steps, samples=error.samples)
        if error.status is Status.MAX_STEPS:
            head = f"max_num_steps exceeded ({error.steps}>={budget or error.steps})"
        else:
            head = f"underflow in dt {abs(error.dt):g}"
        new.args = (f"{head}: {error}",)
        return new


@dataclass(frozen=True)
class Config:
    """A compat call resolved to native objects.

    Attributes:
        solver: The solver (``None`` for the scipy bridge).
        controller: Its controller, wrapped for callbacks and perturbed jumps.
        max_steps: Total step budget.
        budget: How the budget was set, for the error message.
        nudge: ``perturb=True``: first and last time → the time to nudge them towards.
        options: The options, normalised (for the scipy bridge).
        t: The output times to solve with: for adaptive methods in torchdiffeq's time dtype
            (``options['dtype']``, float64 by default, promoted with the state's), so step
            sizes may shrink to that dtype's resolution as torchdiffeq's do, whatever the
            dtype of ``t``; the vector field still sees ``t`` in the state's dtype.
    """

    solver: AbstractSolver | None
    controller: AbstractController | None
    max_steps: int
    budget: str
    nudge: dict[float, float]
    options: dict[str, Any]
    t: torch.Tensor


def method_name(method: object, arg: str = "method") -> str:
    """The method string, checked (``None`` is ``'dopri5'``)."""
    name = "dopri5" if method is None else method
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a string such as 'dopri5', got {type(name).__name__}")
    if name not in METHODS and name not in ADAMS and name != SCIPY:
        known = ", ".join(sorted([*METHODS, *ADAMS, SCIPY]))
        raise ValueError(f"unknown {arg}={name!r}; choose one of: {known}")
    return name


def warn_unexpected(owner: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    """Torchdiffeq's warning (same wording) for options the method does not take."""
    unused = {k: v for k, v in options.items() if k not in allowed}
    if unused:
        warnings.warn(f"{owner}: Unexpected arguments {unused}", UserWarning, stacklevel=5)


def configure(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    rtol: Any,
    atol: Any,
    method: object,
    options: dict[str, Any] | None,
    *,
    names: dict[str, str],
    callback_suffix: str = "",
) -> Config:
    """Resolve one compat call. ``names`` spells the arguments in error messages."""
    # The inputs first: the options below read y0's structure and t's interval.
    check_state(y0)
    check_times(t)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"{names['options']} must be a dict, got {type(options).__name__}")
    options = {} if options is None else dict(options)
    name = method_name(method, names["method"])
    n_intervals = max(1, (t.numel() if isinstance(t, torch.Tensor) else 1) - 1)
    budget = _max_num_steps(options, names["options"])
    if name == SCIPY:
        warn_unexpected("ScipyWrapperODESolver", options, SCIPY_OPTIONS)
        return Config(None, None, budget, str(budget), {}, options, t)
    solver = _solver_for(name, options, rtol, atol, names)
    allowed = ADAPTIVE_OPTIONS if solver.adaptive else FIXED_OPTIONS
    allowed = ADAMS_OPTIONS if name in ADAMS else allowed
    warn_unexpected(type(solver).__name__, options, allowed)
    found = find_callbacks(func, name, solver.adaptive, callback_suffix)
    callbacks = None
    if any(found):
        callbacks = Callbacks(
            step=found[0],
            accept=found[1],
            reject=found[2],
            unflatten=Structure.of(y0).unflatten,
            t_dtype=torch.float64 if solver.adaptive else t.dtype,
        )
    t_solve = t
    if solver.adaptive:
        _check_dtype(options.get("dtype"), names["options"])
        t_dtype = torch.promote_types(options.get("dtype") or torch.float64, real_dtype(y0))
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != t_dtype:
            t_solve = t.to(t_dtype)
        inner = _adaptive_controller(y0, t_solve, rtol, atol, options, names)
        controller: AbstractController = CompatController(inner, callbacks)
        nudge: dict[float, float] = {}
    else:
        controller, nudge = _fixed_controller(func, y0, t, options, callbacks, names["options"])
    # torchdiffeq counts max_num_steps per output interval; a total budget of that many per
    # interval finishes whatever torchdiffeq finishes.
    total = budget if budget >= MAX_NUM_STEPS else budget * n_intervals
    text = str(total)
    if total != budget:
        text += f"; max_num_steps={budget} for each of the {n_intervals} output intervals"
    return Config(solver, controller, total, text, nudge, options, t_solve)


def _max_num_steps(options: dict[str, Any], arg: str) -> int:
    # torchdiffeq takes anything torch.as_tensor turns into an integer; the native rule
    # (integral floats such as 1e5 accepted, 2.7 refused) is the same one.
    return check_whole_number(
        options.get("max_num_steps", MAX_NUM_STEPS), f"{arg}['max_num_steps']"
    )


def _check_dtype(dtype: object, arg: str) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(
            f"{arg}['dtype'] must be a floating torch.dtype such as torch.float64, got {dtype!r}"
        )


def _solver_for(
    name: str, options: dict[str, Any], rtol: Any, atol: Any, names: dict[str, str]
) -> AbstractSolver:
    arg = names["options"]
    if name == "dopri5":
        # torchdiffeq's own error estimate, so that a tolerance takes the same steps.
        return Dopri5(embedded="torchdiffeq")
    if name not in ADAMS and METHODS[name].tableau.adaptive:
        return METHODS[name]()
    interp = options.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise ValueError(f"{arg}['interp'] must be 'linear' or 'cubic', got {interp!r}")
    interpolation = "linear" if interp == "linear" else "hermite"
    if name in ADAMS:
        return _adams(name, options, rtol, atol, names, interpolation)
    return METHODS[name](interpolation=interpolation)


def _adams(
    name: str,
    options: dict[str, Any],
    rtol: Any,
    atol: Any,
    names: dict[str, str],
    interpolation: str,
) -> AbstractSolver:
    """The native solver for torchdiffeq's Adams method ``name`` and its options."""
    arg = names["options"]
    max_order = check_whole_number(
        options.get("max_order", _ADAMS_MAX_ORDER), f"{arg}['max_order']"
    )
    if max_order > _ADAMS_MAX_ORDER:
        raise ValueError(f"{arg}['max_order'] must be at most {_ADAMS_MAX_ORDER}, got {max_order}")
    implicit = options.get("implicit", ADAMS[name])
    if name == "explicit_adams" and "implicit" in options:
        # torchdiffeq's AdamsBashforth passes implicit=False itself: a second one is a TypeError.
        raise TypeError(f"{arg}['implicit'] is not an option of method='explicit_adams'")
    if not isinstance(implicit, bool):
        raise TypeError(f"{arg}['implicit'] must be True or False, got {implicit!r}")
    if max_order < _ADAMS_MIN_ORDER:
        warnings.warn(
            f"max_order is below {_ADAMS_MIN_ORDER}, so the solver reduces to `rk4`.",
            UserWarning,
            stacklevel=5,
        )
        return RK4(interpolation=interpolation)
    if not implicit:
        return AdamsBashforth(order=max_order - 1, interpolation=interpolation)
    max_iters = check_whole_number(options.get("max_iters", 4), f"{arg}['max_iters']")
    return AdamsBashforthMoulton(
        order=max_order, interpolation=interpolation, max_iters=max_iters,
        rtol=_scalar_tolerance(rtol, names["rtol"]), atol=_scalar_tolerance(atol, names["atol"]),
    )  # fmt: skip


def _scalar_tolerance(value: Any, arg: str) -> float:
    """A tolerance for the Adams corrector's test: one number (as torchdiffeq's tests use)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"{arg} must be one non-negative number for the Adams methods' corrector, got {value!r}"
        )
    return float(value)


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


def _stops(options: dict[str, Any], key: str, t: torch.Tensor, arg: str) -> tuple[float, ...]:
    """``options[key]`` (``step_t``/``jump_t``) restricted to the solve's interval.

    torchdiffeq ignores stops outside ``[t[0], t[-1]]`` (a stop list shared by solves of
    several intervals is normal there), while ``solve`` refuses them as a likely mistake:
    drop them here. NaN and inf are kept, for the controller to refuse.
    """
    if key not in options:
        return ()  # (the common case, at every call: no reads of t)
    times = _times(options[key], f"{arg}[{key!r}]")
    lo, hi = sorted((float(t.detach()[0]), float(t.detach()[-1])))
    return tuple(s for s in times if not math.isfinite(s) or lo <= s <= hi)


# torchdiffeq's option names for PIDController's fields, for error messages.
_OPTION_NAMES = (
    "options map to: first_step → dt0, min_step → dt_min, max_step → dt_max, dfactor → "
    "factor_min, ifactor → factor_max, step_t → step_ts, jump_t → jump_ts"
)


def _number(options: dict[str, Any], key: str, default: float, arg: str) -> float:
    """``options[key]`` as a float; ``default`` when absent or None."""
    value = _optional_number(options, key, arg)
    return default if value is None else value


def _optional_number(options: dict[str, Any], key: str, arg: str) -> float | None:
    """``options[key]`` as a float (a number or a one-element tensor), or None if absent."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg}[{key!r}] must be a number, got {value!r}")
    return float(value)


def _fixed_controller(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    options: dict[str, Any],
    callbacks: Callbacks | None,
    arg: str,
) -> tuple[AbstractController, dict[float, float]]:
    step_size = _optional_number(options, "step_size", arg)
    constructor = options.get("grid_constructor")
    if step_size is not None and constructor is not None:
        raise ValueError(f"give {arg}['step_size'] or {arg}['grid_constructor'], not both")
    if constructor is not None and not callable(constructor):
        raise TypeError(
            f"{arg}['grid_constructor'] must be a function (func, y0, t) -> grid, got "
            f"{type(constructor).__name__}"
        )
    perturb = options.get("perturb")
    if perturb is not None and not isinstance(perturb, bool):
        raise TypeError(f"{arg}['perturb'] must be True or False, got {perturb!r}")
    grid: tuple[float, ...] | None = None
    if constructor is not None:
        grid = _times(constructor(func, y0, t), f"{arg}['grid_constructor'](func, y0, t)")
    elif step_size is None or perturb:
        grid = _times(t, "t") if step_size is None else _step_grid(t, step_size)
    if grid is not None and len(grid) < 2:
        # One time (or a one-point grid): no step to take, the output is y0 (torchdiffeq's
        # answer); the loop never asks the controller, which only has to be valid.
        return CompatController(ConstantStepSize(1.0), callbacks), {}
    if grid is None:
        size = step_size
        if size is None or not (math.isfinite(size) and size > 0):
            raise ValueError(f"{arg}['step_size'] must be a positive number, got {step_size!r}")
        return CompatController(ConstantStepSize(size), callbacks), {}
    inner = StepTo(grid)
    if not perturb:
        return CompatController(inner, callbacks), {}
    # torchdiffeq's perturb: every evaluation at a grid point sees the limit from inside the
    # step. Interior points are jumps for the loop; the two ends are nudged by the field.
    first, last = float(t[0]), float(t[-1])
    return CompatController(inner, callbacks, jump_ts=grid[1:-1]), {first: last, last: first}


def _step_grid(t: torch.Tensor, step_size: float) -> tuple[float, ...]:
    # torchdiffeq's grid for step_size: t0 ± n * step_size, the last point moved to t[-1]
    # (it builds it in negated time for a decreasing t).
    t0, t1 = float(t[0]), float(t[-1])
    d = 1.0 if t1 >= t0 else -1.0
    n = math.ceil(d * (t1 - t0) / step_size + 1)
    grid = [t0 + d * i * step_size for i in range(n)]
    grid[-1] = t1
    return tuple(grid)


def _adaptive_controller(
    y0: State,
    t: torch.Tensor,
    rtol: Any,
    atol: Any,
    options: dict[str, Any],
    names: dict[str, str],
) -> PIDController:
    structure = Structure.of(y0)
    arg = names["options"]
    norm = options.get("norm")
    if norm is not None and not callable(norm):
        raise TypeError(f"{arg}['norm'] must be a callable norm(state) -> tensor, got {norm!r}")
    if norm is not None:
        norm_fn = _user_norm(norm, structure)
    elif structure.is_tuple:
        norm_fn = mixed_norm(structure.sizes)
    else:
        norm_fn = rms_norm
    try:
        return PIDController(
            rtol=tolerance(rtol, y0, names["rtol"]),
            atol=tolerance(atol, y0, names["atol"]),
            safety=_number(options, "safety", 0.9, arg),
            factor_min=_number(options, "dfactor", 0.2, arg),
            factor_max=_number(options, "ifactor", 10.0, arg),
            dt0=_optional_number(options, "first_step", arg),
            dt_min=_number(options, "min_step", 0.0, arg),
            force_dt_min=options.get("min_step") is not None,
            shrink_after_accept=False,  # torchdiffeq's rule, so that its steps are taken
            dt_max=_number(options, "max_step", math.inf, arg),
            norm=norm_fn,
            step_ts=_stops(options, "step_t", t, arg),
            jump_ts=_stops(options, "jump_t", t, arg),
        )
    except ValueError as err:
        # PIDController names its own fields; say which torchdiffeq option each one is.
        raise ValueError(f"{err} ({_OPTION_NAMES})") from err


def tolerance(value: Any, y0: State, arg: str) -> Any:
    """A compat tolerance in the native form, checked with compat's argument name.

    torchdiffeq takes a float, a tensor, or (for a tuple ``y0``) a list with one entry per
    part (RNODE's ``atol=[atol, atol] + [1e20] * len(reg_states)``).
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, (tuple, list)):
        n = 1 if isinstance(y0, torch.Tensor) else len(y0)
        if isinstance(y0, torch.Tensor):
            return torch.as_tensor(value, dtype=y0.dtype)
        if len(value) != n:
            raise ValueError(
                f"{arg} has {len(value)} entries but the tuple y0 has {n} parts; give one "
                f"tolerance per part, or one float for all"
            )
        return tuple(
            float(v) if not isinstance(v, torch.Tensor) or v.numel() == 1 else v for v in value
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check_tolerance("rtol" if arg.endswith("rtol") else "atol", value, arg)
        return float(value)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"{arg} must be a float, a tensor or a list of them, got {value!r}")


def mixed_norm(sizes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Torchdiffeq's default norm for tuple states: the largest RMS norm among the parts."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        parts = [p for p in torch.split(x, sizes, dim=-1) if p.numel()]
        return torch.stack([rms_norm(p) for p in parts]).amax()

    return norm


def _user_norm(
    norm: Callable[[Any], torch.Tensor], structure: Structure
) -> Callable[[torch.Tensor], torch.Tensor]:
    # torchdiffeq calls a custom norm on the state's own structure, not on a flat vector.
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(norm(structure.unflatten(x)))

    return wrapped
