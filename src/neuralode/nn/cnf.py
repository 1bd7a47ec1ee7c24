"""Continuous normalizing flows (Chen et al. 2018, §4; FFJORD, Grathwohl et al. 2019).

A CNF moves samples by ``dz/dt = f(t, z)`` from a base distribution at ``t0`` to the data
at ``t1``; the log-density changes by the instantaneous change of variables (Chen et al.
2018, Theorem 1): ``d log p(z(t))/dt = −tr(∂f/∂z(t))``. Both are integrated together as
the tuple state ``(z, Δ)`` with ``dΔ/dt = −tr(∂f/∂z)``, so that along any solve
``log p(z(s)) = log p(z(r)) + Δ(s) − Δ(r)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .._solution import Stats
from .._solve import DEFAULT_MAX_STEPS, default_controller, solve
from ..adjoints import AbstractAdjoint
from ..controllers import AbstractController
from ..regularizers import AbstractRegularizer, JacobianFrobenius, state_only
from ..solvers import AbstractSolver, Dopri5
from .cnf_dynamics import check_state
from .ode_block import check_steer, steered_time
from .traces import AbstractTrace, ExactTrace, HutchinsonTrace


class BaseDistribution(Protocol):
    """What a flow needs from its base distribution (e.g. :class:`GaussianBase`)."""

    # Read-only, so that frozen dataclasses such as GaussianBase satisfy the protocol.
    @property
    def dim(self) -> int:
        """Dimension of the samples."""
        ...

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of each row of ``z`` ``(B, D)``, shape ``(B,)``."""
        ...

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """``n`` samples, shape ``(n, D)``."""
        ...


@dataclass(frozen=True)
class GaussianBase:
    """The isotropic Gaussian ``N(0, std² I)`` in ``dim`` dimensions.

    torchdiffeq's ``cnf.py`` uses ``std = sqrt(0.1)`` (covariance ``0.1 I``) with
    ``t1 − t0 = 10``; the default is the standard normal.

    Attributes:
        dim: Dimension.
        std: Standard deviation of every coordinate.
    """

    dim: int
    std: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")
        if not (isinstance(self.std, (int, float)) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"std must be a positive finite float, got {self.std!r}")

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of each row of ``z`` ``(B, dim)``, shape ``(B,)``."""
        check_state(z, self.dim, "GaussianBase.log_prob")
        norm = self.dim * (0.5 * math.log(2 * math.pi) + math.log(self.std))
        return -0.5 * (z / self.std).square().sum(-1) - norm

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """``n`` samples, shape ``(n, dim)``, drawn with ``generator`` if given."""
        check_count(n)
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        return z * self.std


def check_count(n: object) -> None:
    """Raise a clear error unless ``n`` is a positive number of samples."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer number of samples, got {n!r}")


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """Fractions of the flow as a list: in ``[0, 1]`` and strictly increasing."""
    values = [float(f) for f in fractions]
    if not values or any(not 0.0 <= f <= 1.0 for f in values):
        raise ValueError(f"fractions must be a non-empty list of values in [0, 1], got {values}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"fractions must be strictly increasing, got {values}")
    return values


def default_base(model: nn.Module, base: BaseDistribution | None, dim: int | None) -> Any:
    """The given base, checked, or the standard normal in ``dim`` dimensions."""
    if base is None:
        if dim is None:
            raise ValueError(
                f"{type(model).__name__} cannot tell the dimension for its default base: "
                "give the dynamics a `dim` attribute or pass base=GaussianBase(dim)"
            )
        return GaussianBase(dim)
    for method in ("log_prob", "sample"):
        if not callable(getattr(base, method, None)):
            raise TypeError(
                f"base must have log_prob(z) and sample(n, generator) like GaussianBase, got "
                f"{type(base).__name__} without {method}"
            )
    return base


def base_sample(
    base: BaseDistribution, n: int, generator: torch.Generator | None, like: torch.Tensor | None
) -> torch.Tensor:
    """``n`` base samples in the dtype and on the device of ``like`` (a parameter)."""
    check_count(n)
    dtype = None if like is None else like.dtype
    device = None if like is None else like.device
    z = base.sample(n, generator, dtype=dtype, device=device)
    check_state(z, base.dim, "base.sample")
    return z


class _AugmentedDynamics(nn.Module):
    """``(z, Δ[, R]) ↦ (f(t, z), −tr ∂f/∂z[, r])`` with one solve's noise held fixed.

    ``R`` ``(B, k)`` carries the regularisers' integrals: their integrands ``r`` are built
    from the same evaluation of ``f`` and the trace's vector-Jacobian products (see
    :meth:`AbstractTrace.field_trace_and_vjp`). A fresh instance per solve: the backward
    pass of an adjoint may run after the next forward solve has started, and must see its
    own solve's noise. Parameters are those of ``dynamics`` (a submodule), which is how
    the adjoints find them.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        trace: AbstractTrace,
        noise: torch.Tensor | None,
        regularizers: Sequence[AbstractRegularizer] = (),
        noises: Sequence[torch.Tensor | None] = (),
    ) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.trace = trace
        self.noise = noise
        self.regularizers = tuple(regularizers)
        self.noises = tuple(noises)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # Whether this evaluation is being differentiated: backprop through the solver,
        # or an adjoint's backward pass (both run with grad enabled). A forward solve
        # under no_grad (adjoint forward, evaluation) may still need autograd for ∂f/∂z,
        # but must neither keep the graph nor return tensors attached to it.
        differentiate = torch.is_grad_enabled()
        if not self.regularizers:
            f, trace = self.trace.field_and_trace(
                self.dynamics, t, state[0], self.noise, create_graph=differentiate
            )
            out: tuple[torch.Tensor, ...] = (f, -trace)
        else:
            f, trace, vjp = self.trace.field_trace_and_vjp(
                self.dynamics, t, state[0], self.noise, create_graph=differentiate
            )
            r = torch.stack([reg.integrand(f, vjp, noise)
                             for reg, noise in zip(self.regularizers, self.noises, strict=True)],
                            dim=-1)  # fmt: skip
            out = (f, -trace, r)
        return out if differentiate else tuple(x.detach() for x in out)


class CNF(nn.Module):
    """A continuous normalizing flow: base at ``t0``, data at ``t1``.

    Args:
        dynamics: The vector field ``f(t, z)`` on ``(B, D)`` states, an ``nn.Module``
            (e.g. :class:`~neuralode.nn.PlanarDynamics`, :class:`~neuralode.nn.MLPDynamics`).
        trace: Trace estimator; :class:`ExactTrace` by default (cheap in 2-D), or
            :class:`~neuralode.nn.HutchinsonTrace` for higher dimensions.
        base: Base distribution at ``t0``; ``GaussianBase(dynamics.dim)`` by default.
        t0: Time of the base distribution.
        t1: Time of the data (torchdiffeq's ``cnf.py``: ``t0 = 0``, ``t1 = 10``).
        solver: Solver (``solve``'s default ``Dopri5()`` if ``None``).
        controller: Step-size control (``solve``'s default if ``None``; the reference
            uses ``PIDController(rtol=1e-5, atol=1e-5)``).
        adjoint: Gradient method (``DirectAdjoint()`` if ``None``); all three work.
        max_steps: Step budget per solve.
        regularizers: Integrals along the density solves to penalise in training
            (``KineticEnergy()``: ``∫‖f‖² dt``; ``JacobianFrobenius()``:
            ``∫‖∂f/∂z‖²_F dt``, RNODE, Finlay et al. 2020). They ride as extra states of
            the same solve, outside error control; with a :class:`HutchinsonTrace` a
            Hutchinson ``JacobianFrobenius`` of the same noise kind uses the trace's own
            ``ε`` and vector-Jacobian product (no further backward pass). Training mode
            only: eval mode solves without them.
        steer: STEER (Ghosh et al. 2020): in training mode the data time ``t1`` of
            :meth:`log_prob` and :meth:`sample_and_log_prob` is drawn uniformly from
            ``[t1 − steer, t1 + steer]`` per call (``0 ≤ steer < |t1 − t0|``); in eval
            mode it is ``t1``. ``0``: off.

    Solver, controller, adjoint and trace are plain attributes: they can be changed after
    training (e.g. an exact trace and a tighter tolerance for evaluation).

    Attributes:
        stats: :class:`~neuralode.Stats` of the most recent solve: ``stats.nfe`` forward
            evaluations, ``stats.nfe_backward`` filled in by ``BacksolveAdjoint`` and
            ``CheckpointAdjoint`` once ``backward()`` has run.
        regularization: The regularisers' integrals over ``[t0, end_time]`` along the
            most recent density solve, by name (0-d sums over the batch, differentiable).
        end_time: The data time of the most recent density solve.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        *,
        trace: AbstractTrace | None = None,
        base: BaseDistribution | None = None,
        t0: float = 0.0,
        t1: float = 1.0,
        solver: AbstractSolver | None = None,
        controller: AbstractController | None = None,
        adjoint: AbstractAdjoint | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        regularizers: Sequence[AbstractRegularizer] = (),
        steer: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(dynamics, nn.Module):
            raise TypeError(
                "dynamics must be an nn.Module f(t, z) (the adjoints find its parameters), "
                f"got {type(dynamics).__name__}"
            )
        trace = ExactTrace() if trace is None else trace
        if not isinstance(trace, AbstractTrace):
            raise TypeError(f"trace must be ExactTrace() or HutchinsonTrace(), got {trace!r}")
        for name, value in (("t0", t0), ("t1", t1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if t0 == t1:
            raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
        self.dynamics = dynamics
        self.trace = trace
        self.base = default_base(self, base, getattr(dynamics, "dim", None))
        self.t0, self.t1 = float(t0), float(t1)
        self.solver = solver
        self.controller = controller
        self.adjoint = adjoint
        self.max_steps = max_steps
        self.regularizers = tuple(regularizers)
        self.steer = check_steer(steer, self.t1 - self.t0)
        self.stats = Stats()
        self.regularization: dict[str, torch.Tensor] = {}
        self.end_time = self.t1

    @property
    def dim(self) -> int:
        """Dimension of the data."""
        return int(self.base.dim)

    def time(self, fraction: float) -> float:
        """The flow time ``t0 + fraction · (t1 − t0)``."""
        return self.t0 + float(fraction) * (self.t1 - self.t0)

    def log_prob(
        self, x: torch.Tensor, *, fraction: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Log-density of each row of ``x`` ``(B, D)``, shape ``(B,)``.

        Integrates ``(x, 0)`` from ``time(fraction)`` back to ``t0`` and returns
        ``log p_base(z(t0)) − Δ(t0)``. ``fraction < 1`` gives the density of the flow's
        marginal part-way (for plots). ``generator`` seeds a stochastic trace's noise.
        """
        check_state(x, self.dim, "CNF.log_prob")
        check_fractions([fraction])
        t = self._data_time(generator) if fraction == 1.0 else self.time(fraction)
        if t == self.t0:
            return self.base.log_prob(x)
        zs, deltas = self._solve_with_density(x, [t, self.t0], generator)
        return self.base.log_prob(zs[-1]) - deltas[-1]

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples ``(n, D)`` and their log-densities ``(n,)``, differentiably."""
        z0 = self._base_sample(n, generator)
        zs, deltas = self._solve_with_density(z0, [self.t0, self._data_time(generator)], generator)
        return zs[-1], self.base.log_prob(z0) + deltas[-1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``(n, D)``; integrates ``z`` alone (no trace: cheaper)."""
        return self.sample_trajectory(n, [1.0], generator)[-1]

    def sample_trajectory(
        self, n: int, fractions: Sequence[float], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The same ``n`` base samples at each fraction of the flow time, ``(F, n, D)``."""
        values = check_fractions(fractions)
        z0 = self._base_sample(n, generator)
        times = [self.t0] + [self.time(f) for f in values if f > 0]
        if len(times) == 1:
            return z0.unsqueeze(0)
        ts = torch.tensor(times, dtype=z0.dtype, device=z0.device)
        sol = self._solve(self.dynamics, z0, ts)
        ys: torch.Tensor = sol.ys
        return ys if values[0] == 0 else ys[1:]

    def _base_sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return base_sample(self.base, n, generator, next(self.dynamics.parameters(), None))

    def _data_time(self, generator: torch.Generator | None) -> float:
        """``t1``, or STEER's draw around it in training mode (kept in ``end_time``)."""
        self.end_time = steered_time(self.t1, self.steer, self.training, generator)
        return self.end_time

    def _solve_with_density(
        self, z: torch.Tensor, times: list[float], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.trace.draw_noise(z, generator)
        # Penalties are for training: eval mode solves without them.
        regs = self.regularizers if self.training else ()
        noises = [_shared_noise(reg, self.trace, noise, z) for reg in regs]
        field = _AugmentedDynamics(self.dynamics, self.trace, noise, regs, noises)
        ts = torch.tensor(times, dtype=z.dtype, device=z.device)
        delta0 = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        if not regs:
            self.regularization = {}
            zs, deltas = self._solve(field, (z, delta0), ts).ys
            return zs, deltas
        r0 = torch.zeros(z.shape[0], len(regs), dtype=z.dtype, device=z.device)
        # The integrals stay out of error control: the solve takes the steps it would
        # take without them (as solve(regularizers=...) does).
        controller = self.controller or default_controller(self.solver or Dopri5())
        integrals_free = state_only(controller, z.numel() + delta0.numel())
        zs, deltas, rs = self._solve(field, (z, delta0, r0), ts, integrals_free).ys
        # Solved backwards (log_prob: data → base) the state gathers −∫ r dt.
        sign = 1.0 if times[-1] > times[0] else -1.0
        self.regularization = {reg.name: sign * rs[-1][:, i].sum()
                               for i, reg in enumerate(regs)}  # fmt: skip
        return zs, deltas

    def _solve(
        self, field: nn.Module, y0: Any, ts: torch.Tensor,
        controller: AbstractController | None = None,
    ) -> Any:  # fmt: skip
        sol = solve(
            field,
            y0,
            ts,
            solver=self.solver,
            controller=controller or self.controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
        )
        self.stats = sol.stats
        return sol


def _shared_noise(
    reg: AbstractRegularizer, trace: AbstractTrace, noise: torch.Tensor | None, z: torch.Tensor
) -> torch.Tensor | None:
    """The trace's own ``ε`` for a Hutchinson Jacobian penalty of the same noise kind.

    Sharing it lets the penalty reuse the trace's product ``εᵀ ∂f/∂z`` (RNODE's FFJORD
    does the same); each estimate stays unbiased. Any other regulariser draws its own.
    """
    if (
        noise is not None
        and isinstance(reg, JacobianFrobenius)
        and reg.estimator == "hutchinson"
        and isinstance(trace, HutchinsonTrace)
        and reg.noise == trace.noise
    ):
        return noise
    return reg.draw_noise(z)
