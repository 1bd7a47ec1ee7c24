"""The regularisers, and the solve that carries them as extra quadrature states."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import _autograd as autograd
from .._noise import check_noise, probe
from .._solution import Solution, State
from .._vector_field import Structure
from ..controllers import AbstractController, PIDController

Vjp = Callable[[torch.Tensor], torch.Tensor]
_ESTIMATORS = ("hutchinson", "exact")


class AbstractRegularizer(abc.ABC):
    """An integrand ``r(t, y, f)`` whose integral over the solve is the penalty.

    Holds configuration only (a frozen dataclass); per-solve randomness comes from
    :meth:`draw_noise`.
    """

    name: str

    @property
    def needs_vjp(self) -> bool:
        """Whether the integrand needs ``εᵀ ∂f/∂y`` (a vector-Jacobian product per call)."""
        return False

    def draw_noise(self, y: torch.Tensor) -> torch.Tensor | None:
        """Noise for one solve, shaped like the flat state (``None``: deterministic)."""
        del y
        return None

    @abc.abstractmethod
    def integrand(self, f: torch.Tensor, vjp: Vjp, noise: torch.Tensor | None) -> torch.Tensor:
        """``r`` per sample, ``(B,)``, from ``f`` ``(B, N)`` (flat, one row per sample).

        ``vjp(v)`` is ``vᵀ ∂f/∂y`` for a ``(B, N)`` cotangent ``v`` (rows independent);
        ``noise`` is what :meth:`draw_noise` returned for this solve.
        """


@dataclass(frozen=True)
class KineticEnergy(AbstractRegularizer):
    """``∫ ‖f(t, y)‖² dt``: no evaluation of ``f`` beyond the solve's own.

    Attributes:
        name: Key of the value in ``Solution.regularization``.
    """

    name: str = "kinetic"

    def integrand(self, f: torch.Tensor, vjp: Vjp, noise: torch.Tensor | None) -> torch.Tensor:
        """``‖f‖²`` per sample."""
        return f.square().sum(-1)


@dataclass(frozen=True)
class JacobianFrobenius(AbstractRegularizer):
    """``∫ ‖∂f/∂y‖_F² dt``, by Hutchinson's estimator or exactly.

    Hutchinson: ``‖εᵀ ∂f/∂y‖²`` with ``E[εεᵀ] = I`` is unbiased for ``‖∂f/∂y‖_F²``
    (Finlay et al. 2020), one vector-Jacobian product per evaluation of ``f``, with ``ε``
    drawn once per solve so that the integrand is a smooth function of time (as for the
    CNF's trace). Exact: the sum of ``N`` such products over the basis, for small states.

    Attributes:
        estimator: ``"hutchinson"`` or ``"exact"``.
        noise: Hutchinson's noise, ``"rademacher"`` (never a larger variance) or
            ``"gaussian"``.
        name: Key of the value in ``Solution.regularization``.
    """

    estimator: str = "hutchinson"
    noise: str = "rademacher"
    name: str = "jacobian"

    def __post_init__(self) -> None:
        if self.estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {self.estimator!r}")
        check_noise(self.noise)

    @property
    def needs_vjp(self) -> bool:
        """Always: the estimate is built from vector-Jacobian products."""
        return True

    def draw_noise(self, y: torch.Tensor) -> torch.Tensor | None:
        """``ε`` shaped like the flat state (``None`` for the exact norm)."""
        return None if self.estimator == "exact" else probe(self.noise, y)

    def integrand(self, f: torch.Tensor, vjp: Vjp, noise: torch.Tensor | None) -> torch.Tensor:
        """``‖εᵀ ∂f/∂y‖²`` per sample, or the exact squared norm (``N`` products)."""
        if noise is not None:
            return vjp(noise).square().sum(-1)
        total = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
        for i in range(f.shape[-1]):
            basis = torch.zeros_like(f)
            basis[:, i] = 1.0
            total = total + vjp(basis).square().sum(-1)
        return total


@dataclass(frozen=True)
class _LeadingNorm:
    """An error norm over the first ``n`` components only: the state, not the integrals."""

    norm: Callable[[torch.Tensor], torch.Tensor]
    n: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[..., : self.n])


class _Augmented(nn.Module):
    """``(y, R) ↦ (f(t, y), r(t, y, f))``: the field with the regularisers' integrands.

    A fresh instance per solve (it holds that solve's noise). Parameters are those of
    ``field`` when it is an ``nn.Module`` (a submodule), which is how the adjoints find
    them. Under ``no_grad`` (an adjoint's forward solve, evaluation) a vector-Jacobian
    product still needs autograd inside, but the outputs leave without a graph.
    """

    def __init__(
        self,
        field: Callable[..., State],
        regularizers: Sequence[AbstractRegularizer],
        noises: list[torch.Tensor | None],
        structure: Any,
        flat_shape: torch.Size,
    ) -> None:
        super().__init__()
        self.field = field
        self.regularizers = tuple(regularizers)
        self.noises = noises
        self.structure = structure
        self.batched = structure.batched
        # Joint mode: the shape of the solver's tensor for the state (the state itself
        # for a tensor, a vector for a tuple), which the rows (1, N) are reshaped back to.
        self.flat_shape = flat_shape
        self.vjp_needed = any(reg.needs_vjp for reg in regularizers)

    def _rows(self, x: State) -> torch.Tensor:
        flat = self.structure.flatten(x)
        return flat if self.batched else flat.reshape(1, -1)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...], *args: Any) -> Any:
        parts, differentiate = state[:-1], torch.is_grad_enabled()
        y: Any = parts if self.structure.is_tuple else parts[0]
        vjp: Vjp
        if not self.vjp_needed:
            f = self.field(t, y, *args)
            vjp = _no_vjp
        else:
            with torch.enable_grad():
                inputs = tuple(p if p.requires_grad else p.detach().requires_grad_(True)
                               for p in parts)  # fmt: skip
                f = self.field(t, inputs if self.structure.is_tuple else inputs[0], *args)
                vjp = self._vjp(f, inputs, differentiate)
        rows = self._rows(f)
        r = torch.stack([reg.integrand(rows, vjp, noise)
                         for reg, noise in zip(self.regularizers, self.noises, strict=True)],
                        dim=-1)  # fmt: skip
        r = r if self.batched else r.reshape(-1)
        out = (*(f if self.structure.is_tuple else (f,)), r)
        return out if differentiate else tuple(x.detach() for x in out)

    def _vjp(self, f: State, inputs: tuple[torch.Tensor, ...], create_graph: bool) -> Vjp:
        outputs = f if isinstance(f, tuple) else (f,)

        def vjp(v: torch.Tensor) -> torch.Tensor:
            flat = v if self.batched else v.reshape(self.flat_shape)
            cotangent = self.structure.unflatten(flat)
            cotangents = cotangent if isinstance(cotangent, tuple) else (cotangent,)
            grads = autograd.grad(outputs, inputs, cotangents, retain_graph=True,
                                  create_graph=create_graph, allow_unused=True)  # fmt: skip
            grads = tuple(torch.zeros_like(x) if g is None else g
                          for g, x in zip(grads, inputs, strict=True))  # fmt: skip
            return self._rows(grads if self.structure.is_tuple else grads[0])

        return vjp


def _no_vjp(v: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("this regulariser did not declare needs_vjp")


def solve_regularized(
    solve: Callable[..., Solution],
    f: Callable[..., State],
    y0: State,
    ts: torch.Tensor,
    regularizers: Sequence[AbstractRegularizer],
    *,
    controller: AbstractController,
    batch_dims: int,
    dense: bool,
    **options: Any,
) -> Solution:
    """``solve`` with the regularisers as extra states; their integrals in the solution."""
    if dense:
        raise ValueError(
            "dense=True is not available with regularizers= (the dense output would carry "
            "their integrals); solve once more without regularizers for a dense interpolant"
        )
    regs = tuple(regularizers)
    for reg in regs:
        if not isinstance(reg, AbstractRegularizer):
            raise TypeError(
                f"regularizers must hold neuralode regularisers such as KineticEnergy(), "
                f"got {reg!r}"
            )
    names = [reg.name for reg in regs]
    if len(set(names)) != len(names):
        raise ValueError(f"regularizers need distinct names, got {names}")
    parts = (y0,) if isinstance(y0, torch.Tensor) else tuple(y0)
    batched = batch_dims == 1
    structure = Structure.of(y0, batched=batched)
    solver_state = structure.flatten(y0)
    flat = solver_state if batched else solver_state.reshape(1, -1)
    lead = (flat.shape[0],) if batched else ()
    zeros = torch.zeros((*lead, len(regs)), dtype=flat.dtype, device=flat.device)
    noises = [reg.draw_noise(flat.detach()) for reg in regs]
    field = _Augmented(f, regs, noises, structure, solver_state.shape)
    sol = solve(field, (*parts, zeros), ts, controller=state_only(controller, flat.shape[-1]),
                batch_dims=batch_dims, dense=False, **options)  # fmt: skip
    return _split(sol, isinstance(y0, torch.Tensor), names)


def state_only(controller: AbstractController, n: int) -> AbstractController:
    """The controller with its error norm over the first ``n`` flat components (PID).

    The integrals appended after the state are then carried but never judged; other
    controllers are returned unchanged.
    """
    if not isinstance(controller, PIDController):
        return controller
    rtol, atol = (_append(tol) for tol in controller.tolerances())
    norm = _LeadingNorm(controller.norm, n)
    return dataclasses.replace(controller, norm=norm, rtol=rtol, atol=atol)


def _append(tol: Any) -> Any:
    """A per-part tolerance extended by one part for the integrals (they are not judged)."""
    if isinstance(tol, (int, float)):
        return tol
    parts = (tol,) if isinstance(tol, torch.Tensor) else tuple(tol)
    return (*parts, 1.0)


def _split(sol: Solution, single: bool, names: list[str]) -> Solution:
    """The solution of the state alone, with the integrals over the solve by name."""
    ys, y_last = sol.ys, sol.y_last
    assert isinstance(ys, tuple) and isinstance(y_last, tuple)
    final = ys[-1][-1]  # (R,) or (B, R): the integrals at the last output time
    values = {name: final[..., i] for i, name in enumerate(names)}
    return dataclasses.replace(
        sol,
        ys=ys[0] if single else ys[:-1],
        y_last=y_last[0] if single else y_last[:-1],
        regularization=values,
    )
