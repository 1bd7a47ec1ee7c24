"""``method='scipy_solver'``: torchdiffeq's bridge to ``scipy.integrate.solve_ivp``.

Part of neuralode.compat. scipy is an optional dependency (``pip install
neuralode[scipy]``). As in torchdiffeq, ``odeint`` returns a tensor without a graph
(scipy works on NumPy arrays), and ``odeint_adjoint`` gets gradients from the adjoint ODE
``[y, a, g]`` solved backwards by the same scipy method, with the vector-Jacobian products
of the augmented dynamics from neuralode's backsolve (one implementation of them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._compat_config import CompatSolverError
from ._compat_hooks import CompatField
from ._problem import make_problem
from ._solution import SolverError, State, Status
from ._vector_field import Structure
from .adjoints.backsolve import _AugmentedField


def _solve_ivp() -> Any:
    try:
        from scipy.integrate import solve_ivp
    except ImportError as err:  # pragma: no cover - scipy is installed for the tests
        raise ImportError(
            "method='scipy_solver' needs scipy: pip install 'neuralode[scipy]'"
        ) from err
    return solve_ivp


def _tolerance(value: Any, arg: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy() if value.numel() > 1 else float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{arg} must be a float or a tensor with method='scipy_solver', got {value!r}")


class _Scipy:
    """One configured scipy method on the flat float64 state."""

    def __init__(self, options: dict[str, Any], rtol: Any, atol: Any) -> None:
        self.method = options.get("solver", "LSODA")
        if not isinstance(self.method, str):
            raise TypeError(
                f"options['solver'] must name a scipy method such as 'LSODA', got {self.method!r}"
            )
        self.rtol = _tolerance(rtol, "rtol")
        self.atol = _tolerance(atol, "atol")
        self.min_step = float(options.get("min_step", 0.0))
        self.max_step = float(options.get("max_step", math.inf))

    def run(self, rhs: Callable[[float, Any], Any], y0: Any, times: list[float]) -> Any:
        """``y`` at ``times`` (T, N) from ``y0`` at ``times[0]``."""
        # min_step only when given: most scipy methods warn that it has no effect.
        extra = {"min_step": self.min_step} if self.min_step else {}
        sol = _solve_ivp()(
            rhs,
            t_span=(times[0], times[-1]),
            y0=y0,
            t_eval=times,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            max_step=self.max_step,
            **extra,
        )
        if not sol.success:
            # torchdiffeq would go on with scipy's partial output; a typed error instead.
            # scipy reports no step count or size: dt is 0, the evaluations are in detail.
            reached = float(sol.t[-1]) if len(sol.t) else times[0]
            detail = f"scipy {self.method} stopped after {sol.nfev} evaluations: {sol.message}"
            error = SolverError(Status.DT_MIN, t=reached, dt=0.0, steps=0, detail=detail)
            raise CompatSolverError.of(error)
        return sol.y.T


def scipy_odeint(
    func: Callable[..., State],
    y0: State,
    t: torch.Tensor,
    rtol: Any,
    atol: Any,
    options: dict[str, Any],
    params: Sequence[torch.Tensor] | None,
    adjoint: Any,
) -> State:
    """Torchdiffeq's ``scipy_solver``; with ``params`` (``odeint_adjoint``) differentiable."""
    if options.get("solver", "LSODA") is None:
        raise ValueError("options['solver'] must name a scipy method such as 'LSODA'")
    structure = Structure.of(y0)
    parts = (y0,) if isinstance(y0, torch.Tensor) else y0
    dtype, device = parts[0].dtype, parts[0].device
    flat0 = torch.cat([p.reshape(-1) for p in parts])
    times = t.detach().cpu().double().tolist()
    forward = _Scipy(options, rtol, atol)
    field = CompatField(func, y0)
    field.first = False  # scipy computes in float64 anyway: no dtype promotion to detect
    if len(times) == 1:
        ys = flat0.detach().unsqueeze(0)
    elif params is None:
        ys = _forward(field, structure, forward, flat0, times, dtype, device)
    else:
        back_options = dict(options)
        if getattr(adjoint, "options", None) is not None:
            back_options = {**options, **adjoint.options}
        backward = _Scipy(
            back_options,
            getattr(adjoint, "rtol", rtol),
            getattr(adjoint, "atol", atol),
        )
        setup = (field, structure, forward, backward, times, dtype, device, y0, t, params)
        ys = _ScipyAdjoint.apply(setup, flat0, *params)
    return (
        structure.unflatten(ys) if structure.is_tuple else ys.reshape(len(times), *parts[0].shape)
    )


def _forward(
    field: CompatField,
    structure: Structure,
    scipy: _Scipy,
    flat0: torch.Tensor,
    times: list[float],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    def rhs(t: float, y: Any) -> Any:
        state = torch.as_tensor(y, dtype=dtype, device=device)
        with torch.no_grad():
            out = field(torch.tensor(t, dtype=dtype, device=device), _shaped(structure, state))
        return structure.flatten(out).reshape(-1).double().cpu().numpy()

    y = scipy.run(rhs, flat0.detach().double().cpu().numpy(), times)
    return torch.as_tensor(y, device=device).to(dtype)


def _shaped(structure: Structure, flat: torch.Tensor) -> State:
    if structure.is_tuple:
        return structure.unflatten(flat)
    return flat.reshape(structure.shapes[0])


class _ScipyAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, setup: tuple, flat0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        field, structure, forward, _, times, dtype, device, *_ = setup
        ys = _forward(field, structure, forward, flat0, times, dtype, device)
        ctx.setup = setup
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[Any, ...]:
        field, structure, _, backward, times, dtype, device, y0, t, params = ctx.setup
        (ys,) = ctx.saved_tensors
        problem = make_problem(field, y0, t, list(params))
        augmented = _AugmentedField(problem, list(params))
        n = ys.shape[-1]
        sizes = [n, n, sum(p.numel() for p in params)]

        def rhs(t_now: float, x: Any) -> Any:
            flat = torch.as_tensor(x, dtype=dtype, device=device)
            y, a, g = torch.split(flat, sizes)
            state = (_flat_state(structure, y), _flat_state(structure, a), g)
            out = augmented(torch.tensor(t_now, dtype=dtype, device=device), state)
            return torch.cat([o.reshape(-1) for o in out]).double().cpu().numpy()

        a = grad_ys[-1]
        g = ys.new_zeros(sizes[2])
        for i in range(len(times) - 1, 0, -1):
            x0 = torch.cat([ys[i], a, g]).double().cpu().numpy()
            end = backward.run(rhs, x0, [times[i], times[i - 1]])[-1]
            _, a_end, g_end = torch.split(torch.as_tensor(end, device=device).to(dtype), sizes)
            a = a_end + grad_ys[i - 1]
            g = g_end
        grads = torch.split(g, [p.numel() for p in params]) if params else ()
        return (None, a, *(gp.view_as(p) for gp, p in zip(grads, params, strict=True)))


def _flat_state(structure: Structure, flat: torch.Tensor) -> torch.Tensor:
    # _AugmentedField works on the solver's tensor: the state's own shape for a tensor
    # state, the flat vector for a tuple.
    return flat if structure.is_tuple else flat.reshape(structure.shapes[0])
