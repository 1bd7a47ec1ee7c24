"""torchdiffeq-compatible entry points.

``from neuralode.compat import odeint`` is a drop-in for ``torchdiffeq.odeint`` (0.2.5):
same signature, method names, options and defaults, and torchdiffeq's leniency, since
real code depends on it: options a method does not take warn ("Unexpected arguments")
instead of raising, a failed solve raises :class:`CompatSolverError` (an
``AssertionError`` whose message starts as torchdiffeq's, and a
:class:`~neuralode.SolverError`), and the step budget is torchdiffeq's (2**31 − 1; the
native :func:`neuralode.solve` keeps a finite default and stays strict). The mapping of
method strings and options dicts to solver and controller objects lives in
``_compat_config``; torchdiffeq's callbacks, ``perturb`` and dtype handling in
``_compat_hooks``; ``method='scipy_solver'`` in ``_scipy_bridge``. docs/compat.md lists
every name and option and each deliberate difference.

Results agree with torchdiffeq's to within the requested tolerance; they are not
bit-identical because neuralode chooses step sizes slightly differently (Hairer's initial
step exponent, steps may shrink after an accepted step) and evaluates ``f(t1, y1)`` where
torchdiffeq's ``adaptive_heun`` and ``fehlberg2`` reuse a stage taken at another point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._compat_adjoint import AdjointSpec, backward_adjoint, expose_adjoint_options
from ._compat_config import METHODS, CompatSolverError, Config, configure
from ._compat_hooks import CompatField, Promote
from ._events import Event
from ._solution import Solution, SolverError, State, Status
from ._solve import solve

__all__ = [
    "METHODS",
    "CompatSolverError",
    "__version__",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
]

# The torchdiffeq release whose API and behaviour this module reproduces.
__version__ = "0.2.5"

_NAMES = {"method": "method", "options": "options", "rtol": "rtol", "atol": "atol"}


def odeint(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | Sequence[float] = 1e-7,
    atol: float | torch.Tensor | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[..., torch.Tensor] | None = None,
) -> State:
    """Solve ``dy/dt = func(t, y)`` at times ``t``, exactly like ``torchdiffeq.odeint``.

    Args:
        func: ``func(t, y)`` returning ``dy/dt`` shaped like ``y`` (tensor or tuple). Its
            ``callback_step``, ``callback_accept_step`` and ``callback_reject_step``
            methods, if any, are called as torchdiffeq calls them.
        y0: Initial state (tensor or tuple of tensors) at ``t[0]``.
        t: 1-D strictly monotone output times.
        rtol: Relative tolerance (adaptive methods): a float, a tensor, or for a tuple
            ``y0`` a list with one entry per part.
        atol: Absolute tolerance, likewise.
        method: One of ``dopri8, dopri5, tsit5, bosh3, fehlberg2, adaptive_heun, euler,
            midpoint, heun2, heun3, rk4, scipy_solver``; ``dopri5`` by default.
        options: torchdiffeq's options: ``first_step, max_num_steps, step_t, jump_t, norm,
            min_step, max_step, safety, ifactor, dfactor, dtype`` (adaptive); ``step_size,
            grid_constructor, interp, perturb`` (fixed-step); ``solver, min_step,
            max_step`` (``scipy_solver``). Others warn and are ignored, as in torchdiffeq.
        event_fn: ``event_fn(t, y)`` returning a tensor: the solve runs from ``t[0]`` in
            the direction of ``t[1]`` (``t`` must then hold two times, as torchdiffeq
            asks) until any element of it changes sign, and returns
            ``(event_t, solution)``, ``solution`` holding ``y0`` and the state at
            ``event_t``. Both are differentiable (the event time by the implicit-function
            theorem), as with :func:`odeint_event`.

    Returns:
        The solution at ``t``: shape ``(len(t), *y0.shape)`` (a tuple for tuple states),
        in ``y0``'s dtype; ``(event_t, solution)`` with ``event_fn``.

    Raises:
        CompatSolverError: If the solve fails (an ``AssertionError`` as in torchdiffeq,
            and a :class:`~neuralode.SolverError`).
    """
    return _run(func, y0, t, rtol, atol, method, options, adjoint=None, event_fn=event_fn)


def odeint_adjoint(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | Sequence[float] = 1e-7,
    atol: float | torch.Tensor | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[..., torch.Tensor] | None = None,
    adjoint_rtol: float | Sequence[float] | None = None,
    adjoint_atol: float | Sequence[float] | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> State:
    """``torchdiffeq.odeint_adjoint``: gradients by the backwards adjoint ODE, O(1) memory.

    Same arguments as :func:`odeint`, plus the backward solve's own ``adjoint_rtol``,
    ``adjoint_atol``, ``adjoint_method`` and ``adjoint_options`` (each defaulting to the
    forward one; ``adjoint_options={"norm": "seminorm"}`` leaves the parameter gradients
    out of error control, and a callable norm receives torchdiffeq's tuple
    ``(t, *y, *adj_y, *adj_params)``), and ``adjoint_params``: the tensors to
    differentiate, required when ``func`` is not an ``nn.Module``. The ``_adjoint`` twins
    of the callbacks are called during the backward solve. Runs
    :class:`~neuralode.BacksolveAdjoint`.
    """
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise ValueError(
            "func must be an nn.Module when adjoint_params is not given (as in torchdiffeq); "
            "pass adjoint_params=[...] with the tensors to differentiate (() if none)"
        )
    adjoint_method = method if adjoint_method is None else adjoint_method
    if adjoint_options is None:
        # torchdiffeq: the backward solve inherits the forward options (not the norm) when
        # it uses the same method, and refuses to guess them for another method.
        if adjoint_method != method and options is not None:
            raise ValueError(
                "adjoint_method differs from method and options were given: pass "
                "adjoint_options too (torchdiffeq raises here as well)"
            )
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm"}
    found = func.parameters() if adjoint_params is None else adjoint_params  # type: ignore[attr-defined]
    params = tuple(found)
    spec = AdjointSpec(
        rtol=rtol if adjoint_rtol is None else adjoint_rtol,
        atol=atol if adjoint_atol is None else adjoint_atol,
        method=adjoint_method,
        options=dict(adjoint_options),
        params=tuple(p for p in params if isinstance(p, torch.Tensor) and p.requires_grad),
    )
    return _run(func, y0, t, rtol, atol, method, options, adjoint=spec, event_fn=event_fn)


def odeint_event(
    func: Callable[..., State],
    y0: State,
    t0: torch.Tensor,
    *,
    event_fn: Callable[..., torch.Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable[..., Any] = odeint,
    **kwargs: Any,
) -> tuple[torch.Tensor, State]:
    """``torchdiffeq.odeint_event``: solve from ``t0`` until ``event_fn(t, y)`` hits zero.

    Runs forwards (backwards with ``reverse_time=True``) until any element of
    ``event_fn(t, y)`` changes sign, and returns ``(event_t, solution)``: the event time
    and the states at ``t0`` and at ``event_t``, both differentiable with respect to
    ``y0``, the parameters of ``func`` and those of ``event_fn`` (the event time by the
    implicit-function theorem at the root). ``odeint_interface`` is :func:`odeint` or
    :func:`odeint_adjoint`; ``kwargs`` go to it (``rtol``, ``atol``, ``method``, ...).
    """
    t0 = torch.as_tensor(t0).reshape(-1)
    later = t0.detach() + (-1.0 if reverse_time else 1.0)
    t = torch.cat([t0, later])
    result: tuple[torch.Tensor, State] = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    return result


def odeint_dense(
    func: Callable[..., State],
    y0: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torchdiffeq.odeint_dense``: solve from ``t0`` to ``t1`` and return ``y(t)``.

    The returned function evaluates the solution at a tensor of times inside
    ``[t0, t1]``, from each accepted step's own interpolant. torchdiffeq allows only
    ``dopri5`` here; every method of :func:`odeint` works.
    """
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"odeint_dense takes a tensor y0 (as torchdiffeq), got {type(y0).__name__}")
    t0 = torch.as_tensor(t0)
    t = torch.stack([t0.reshape(()), torch.as_tensor(t1).to(t0).reshape(())])
    config = configure(func, y0, t, rtol, atol, method, options, names=_NAMES)
    if config.solver is None:
        raise ValueError("odeint_dense needs one of neuralode's own methods, not 'scipy_solver'")
    field = CompatField(func, y0, nudge=config.nudge)
    try:
        sol = solve(field, y0, config.t, solver=config.solver, controller=config.controller,
                    max_steps=config.max_steps, dense=True)  # fmt: skip
    except SolverError as error:
        raise CompatSolverError.of(error, config.budget) from error
    dense = sol.dense
    assert dense is not None  # asked for with dense=True

    def dense_output_fn(t_eval: torch.Tensor) -> torch.Tensor:
        out = dense(t_eval)
        assert isinstance(out, torch.Tensor)  # a tensor y0 (checked above)
        return out.to(y0.dtype)

    return dense_output_fn


def _run(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    rtol: Any,
    atol: Any,
    method: str | None,
    options: dict[str, Any] | None,
    *,
    adjoint: AdjointSpec | None,
    event_fn: Callable[..., torch.Tensor] | None = None,
) -> Any:
    if event_fn is not None:
        t = _event_interval(t)
    config = configure(func, y0, t, rtol, atol, method, options, names=_NAMES)
    if config.solver is None and event_fn is not None:
        raise ValueError(
            "event_fn needs one of neuralode's own methods, not 'scipy_solver' (scipy's "
            "own events are not wired through)"
        )
    if config.solver is None:
        from ._scipy_bridge import scipy_odeint

        params = None if adjoint is None else adjoint.params
        return scipy_odeint(func, y0, t, rtol, atol, config.options, params, adjoint)
    dtype = (y0 if isinstance(y0, torch.Tensor) else y0[0]).dtype
    try:
        try:
            sol = _solve(func, y0, t, config, adjoint, event_fn)
        except Promote as wider:
            # torchdiffeq computes in the dtype f returns when it is wider than the state.
            y0 = (
                y0.to(wider.dtype)
                if isinstance(y0, torch.Tensor)
                else tuple(y.to(wider.dtype) for y in y0)
            )
            sol = _solve(func, y0, t, config, adjoint, event_fn)
    except SolverError as error:
        raise CompatSolverError.of(error, config.budget) from error
    if event_fn is None:
        return _as_dtype(sol.ys, dtype)
    if sol.event_ts is None or not sol.event_ts.numel():
        raise CompatSolverError.of(
            SolverError(
                Status.MAX_STEPS,
                t=float(sol.t_last),
                dt=0.0,
                steps=sol.stats.steps,
                detail=f"event_fn did not change sign before t={float(t[-1]):.6g}",
            ),
            config.budget,
        )
    last = sol.y_last
    assert last is not None
    solution = (
        torch.stack([y0, last])
        if isinstance(y0, torch.Tensor) and isinstance(last, torch.Tensor)
        else tuple(torch.stack([a, b]) for a, b in zip(y0, last, strict=True))
    )
    return sol.event_ts[0].to(t.dtype), _as_dtype(solution, dtype)


def _as_dtype(ys: State, dtype: torch.dtype) -> State:
    if isinstance(ys, torch.Tensor):
        return ys if ys.dtype == dtype else ys.to(dtype)
    return tuple(y if y.dtype == dtype else y.to(dtype) for y in ys)


def _first_sign_change(event_fn: Callable[..., torch.Tensor], t0: torch.Tensor, y0: State) -> Event:
    """Torchdiffeq's event: the first time any element of ``event_fn`` leaves its sign at t0.

    torchdiffeq multiplies each element by its sign at ``t0`` and stops when the smallest
    product changes sign, reaching zero included (an ``event_fn`` that returns exactly
    zero past some time stops the solve there). neuralode's :class:`~neuralode.Event`
    needs a side change for an event, so the product is made negative where it is zero
    or below: the root found is the first time it is zero or negative, as torchdiffeq's.
    """
    with torch.no_grad():
        signs = torch.sign(event_fn(t0.detach(), y0))
    if bool((signs == 0).any()):
        # torchdiffeq's product is then zero for ever: its solve runs until its step
        # budget (2**31 - 1 steps) is spent. Say so at once instead.
        raise ValueError(
            "event_fn is exactly zero at t[0] (in at least one element): torchdiffeq's "
            "event (a change of sign of event_fn times its sign at t[0]) can then never "
            "happen and its solve runs until max_num_steps; start where event_fn is "
            "non-zero, or use neuralode.solve(event=neuralode.Event(...)), which meets an "
            "event at t0 when the condition leaves zero"
        )

    def condition(t: torch.Tensor, y: State) -> torch.Tensor:
        value = (event_fn(t, y) * signs).min()
        tiny = torch.finfo(value.dtype).tiny
        return torch.where(value > 0, value, value - tiny)

    return Event(condition)


def _event_interval(t: torch.Tensor) -> torch.Tensor:
    """Torchdiffeq's event mode: ``t`` gives the start and the direction; the end is far.

    torchdiffeq integrates without an end until the event (or its step budget); neuralode
    needs one, so the solve ends so far away that only the step budget stops it first.
    """
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or len(t) != 2:
        shown = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(
            f"We require len(t) == 2 when in event handling mode, but got t of shape {shown}: "
            "pass t = [t0, t1], where t1 only gives the direction (torchdiffeq's rule)"
        )
    far = torch.finfo(t.dtype).max ** 0.25
    direction = 1.0 if float(t[1].detach()) > float(t[0].detach()) else -1.0
    return torch.stack([t[0], (t[0].detach() + direction * far).to(t.dtype)])


def _solve(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    config: Config,
    adjoint: AdjointSpec | None,
    event_fn: Callable[..., torch.Tensor] | None,
) -> Solution:
    field = CompatField(func, y0, nudge=config.nudge)
    event = None if event_fn is None else _first_sign_change(event_fn, config.t[0], y0)
    if adjoint is None:
        return solve(field, y0, config.t, solver=config.solver, controller=config.controller,
                     max_steps=config.max_steps, event=event)  # fmt: skip
    back = backward_adjoint(func, y0, t, config, adjoint)
    sol = solve(field, y0, config.t, solver=config.solver, controller=config.controller,
                adjoint=back, max_steps=config.max_steps, params=adjoint.params,
                event=event)  # fmt: skip
    expose_adjoint_options(sol.ys, back)
    return sol
