"""Trace estimators for the instantaneous change of variables, ``d log p/dt = −tr(∂f/∂z)``.

An estimator turns the output ``f`` of the dynamics and the state ``z`` it was computed
from (both ``(B, D)``, rows independent) into the per-sample trace ``tr(∂f_b/∂z_b)``,
shape ``(B,)``. It is called inside the vector field, so it must give a result that can be
differentiated again (``create_graph``) when the solve is being differentiated: by
backpropagation through the solver, or by an adjoint that re-evaluates the field under
``torch.enable_grad`` in its backward pass.

Stochastic estimators draw their noise once per solve (:meth:`AbstractTrace.draw_noise`)
and reuse it at every evaluation, forward and backward: the integrand is then one smooth
function of time and an adaptive solver can integrate it (FFJORD, Grathwohl et al. 2019,
§3.1). A fresh draw at every evaluation would make the right-hand side discontinuous.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import _autograd as autograd
from .._noise import check_noise, probe

Vjp = Callable[[torch.Tensor], torch.Tensor]


class AbstractTrace(abc.ABC):
    """How ``tr(∂f/∂z)`` is computed. Holds configuration only; noise lives per solve."""

    def field_and_trace(
        self,
        dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        t: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(t, z), tr ∂f/∂z)``: evaluate the dynamics and this estimator's trace.

        Autograd is on inside even when the caller runs under ``no_grad`` (a forward
        solve that is not differentiated still needs ``∂f/∂z``); ``create_graph`` says
        whether the results must stay differentiable.
        """
        with torch.enable_grad():
            z_in = z if z.requires_grad else z.detach().requires_grad_(True)
            f = dynamics(t, z_in)
            return f, self(f, z_in, noise, create_graph=create_graph)

    def field_trace_and_vjp(
        self,
        dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        t: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, Vjp]:
        """``(f, tr ∂f/∂z, vjp)``: also ``v ↦ vᵀ ∂f/∂z`` for further integrands.

        The products are memoised per cotangent tensor, and the trace is built from the
        same ones: a Jacobian penalty probed with this solve's Hutchinson noise reuses the
        trace's own product ``εᵀ ∂f/∂z`` (RNODE's FFJORD shares it likewise, Finlay et
        al. 2020, §4) and costs no further backward pass.
        """
        with torch.enable_grad():
            z_in = z if z.requires_grad else z.detach().requires_grad_(True)
            f = dynamics(t, z_in)
            vjp = Products(f, z_in, create_graph)
            return f, self.trace_of(vjp, z_in, noise), vjp

    def trace_of(self, vjp: Vjp, z: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The per-sample trace from vector-Jacobian products ``vjp(v) = vᵀ ∂f/∂z``."""
        del noise
        total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for i in range(z.shape[-1]):
            basis = torch.zeros_like(z)
            basis[:, i] = 1.0
            total = total + vjp(basis)[:, i]
        return total

    def draw_noise(
        self, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Noise for one solve, shaped like ``z`` (``None`` for deterministic estimators)."""
        del z, generator
        return None

    @abc.abstractmethod
    def __call__(
        self,
        f: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        create_graph: bool,
    ) -> torch.Tensor:
        """The per-sample trace of ``∂f/∂z``, shape ``(B,)``.

        Args:
            f: The dynamics' output, ``(B, D)``, computed from ``z`` with autograd on.
            z: The state, ``(B, D)``, requiring grad.
            noise: What :meth:`draw_noise` returned for this solve.
            create_graph: Keep the graph of the derivative so that the trace itself can
                be differentiated (training).
        """


@dataclass(frozen=True)
class ExactTrace(AbstractTrace):
    """The exact trace: in closed form where the dynamics give one, else ``D`` autograd passes.

    Dynamics with a method ``forward_with_trace(t, z) -> (f, tr ∂f/∂z)`` (such as
    :class:`~neuralode.nn.PlanarDynamics`) give the trace in closed form, for about the cost
    of ``f``. No autograd runs inside the vector field then, so a training step
    differentiates once instead of twice: a P5 training iteration of the planar CNF is
    several times faster (``benchmarks/bench_traces.py``). ``closed_form=False`` ignores
    the method and takes the autograd route below, e.g. to check one against the other.

    Otherwise the trace is ``Σ_i e_iᵀ (∂f/∂z) e_i``, ``D`` vector-Jacobian products per call.
    By default one backward pass per dimension ``i`` takes row ``i`` of every sample's
    Jacobian at once (the batch is differentiated together, since rows are independent);
    this is what torchdiffeq's ``cnf.py`` and FFJORD's brute-force divergence do.
    ``batched=True`` takes all ``D`` products in ONE backward pass vmapped over the basis
    (``torch.autograd.grad(..., is_grads_batched=True)``). On one CPU thread the loop was
    faster at every size we measured, and by far when the trace is differentiated
    (training): per evaluation with ``create_graph`` and its backward, batch 512, planar
    ``D = 2``: 2.7 ms loop vs 3.3 ms batched; FFJORD MLP 64-64-64 at ``D = 64``: 121 ms vs
    434 ms (Hutchinson: 4.9 ms); see ``docs/cnf.md``. The batched pass launches one graph
    traversal instead of ``D`` and may win where launches dominate (small nets on a GPU).
    Cost grows linearly with ``D``; beyond a few dimensions prefer :class:`HutchinsonTrace`.

    Attributes:
        batched: Take the ``D`` products in one vmapped backward pass instead of a loop.
        closed_form: Use the dynamics' ``forward_with_trace`` when they have one.
    """

    batched: bool = False
    closed_form: bool = True

    def field_and_trace(
        self,
        dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        t: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, tr ∂f/∂z)``, from ``dynamics.forward_with_trace`` when it has one."""
        closed = getattr(dynamics, "forward_with_trace", None) if self.closed_form else None
        if closed is None:
            return super().field_and_trace(dynamics, t, z, noise, create_graph=create_graph)
        f, trace = closed(t, z)
        return f, trace

    def field_trace_and_vjp(
        self,
        dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        t: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, Vjp]:
        """``(f, tr ∂f/∂z, vjp)``, the trace in closed form where the dynamics give one."""
        closed = getattr(dynamics, "forward_with_trace", None) if self.closed_form else None
        if closed is None:
            return super().field_trace_and_vjp(dynamics, t, z, noise, create_graph=create_graph)
        with torch.enable_grad():
            z_in = z if z.requires_grad else z.detach().requires_grad_(True)
            f, trace = closed(t, z_in)
            return f, trace, Products(f, z_in, create_graph)

    def __call__(
        self,
        f: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        create_graph: bool,
    ) -> torch.Tensor:
        """The exact per-sample trace, shape ``(B,)``."""
        del noise
        dim = z.shape[-1]
        if self.batched:
            basis = torch.eye(dim, dtype=f.dtype, device=f.device)
            cotangents = basis.unsqueeze(1).expand(dim, *f.shape)  # (D, B, D): e_i per row
            (rows,) = torch.autograd.grad(
                f, z, cotangents, create_graph=create_graph, is_grads_batched=True
            )  # rows[i, b] = e_iᵀ ∂f_b/∂z_b
            return torch.diagonal(rows, dim1=0, dim2=2).sum(-1)
        total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for i in range(dim):
            (row,) = torch.autograd.grad(
                f[:, i].sum(), z, create_graph=create_graph, retain_graph=True
            )
            total = total + row[:, i]
        return total


@dataclass(frozen=True)
class HutchinsonTrace(AbstractTrace):
    """Hutchinson's unbiased estimator ``εᵀ (∂f/∂z) ε`` with ``E[εεᵀ] = I``.

    One vector-Jacobian product per evaluation, whatever ``D`` (FFJORD, Grathwohl et al.
    2019). For a fixed matrix ``A`` the variance is ``Σ_{i≠j} A_ij (A_ij + A_ji)`` with
    Rademacher noise (±1) and that plus ``2 Σ_i A_ii²`` with Gaussian noise (Hutchinson
    1990): Rademacher is never worse, so it is the default, as in FFJORD. The noise is
    drawn once per solve and held fixed.

    Attributes:
        noise: ``"rademacher"`` or ``"gaussian"``.
    """

    noise: str = "rademacher"

    def __post_init__(self) -> None:
        check_noise(self.noise)

    def draw_noise(
        self, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """One draw of ``ε`` shaped like ``z`` (independent per sample)."""
        return probe(self.noise, z, generator)

    def __call__(
        self,
        f: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        create_graph: bool,
    ) -> torch.Tensor:
        """The one-draw estimate of the per-sample trace, shape ``(B,)``."""
        if noise is None or noise.shape != z.shape:
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(
                f"HutchinsonTrace needs noise shaped like z {tuple(z.shape)}, got {got}; "
                "draw it once per solve with draw_noise(z)"
            )
        (vjp,) = autograd.grad(f, z, noise, create_graph=create_graph)
        return (vjp * noise).sum(-1)

    def trace_of(self, vjp: Vjp, z: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``εᵀ (∂f/∂z) ε`` from the product ``vjp(ε)`` (kept for a penalty with the same ε)."""
        if noise is None:
            raise ValueError("HutchinsonTrace needs this solve's noise; draw it with draw_noise(z)")
        return (vjp(noise) * noise).sum(-1)


class Products:
    """``v ↦ vᵀ ∂f/∂z`` for one evaluation, memoised per cotangent tensor.

    The graph is retained across products; ``create_graph`` keeps each product
    differentiable (training). Rows are independent, so one backward pass gives every
    sample's product.
    """

    def __init__(self, f: torch.Tensor, z: torch.Tensor, create_graph: bool) -> None:
        self.f, self.z, self.create_graph = f, z, create_graph
        self.done: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``vᵀ ∂f/∂z`` (one backward pass the first time ``v`` is seen)."""
        for seen, product in self.done:
            if seen is v:
                return product
        (product,) = autograd.grad(
            self.f, self.z, v, create_graph=self.create_graph, retain_graph=True
        )
        self.done.append((v, product))
        return product
