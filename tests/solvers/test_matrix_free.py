"""Matrix-free Newton (``linear_solver="gmres"``): JVPs and a batched, restarted GMRES.

The same solutions and gradients as the dense path (Jacobian + LU) on small problems, a
state of 2,000 components that the dense path solves ten times slower (docs/stiff.md has
the measurements), and GMRES failures rejecting steps like Newton failures.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import neuralode as no
from neuralode.solvers._krylov import GMRES, gmres, transposed_solve

D = torch.float64
TIGHT_NEWTON = no.Newton(rtol=1e-12, atol=1e-12)
EXACT_GMRES = no.GMRES(rtol=1e-13)


def van_der_pol(mu):
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)

    return f


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_same_solution_as_the_dense_path(batch_dims):
    tol = {"rtol": 1e-7, "atol": 1e-9}
    y0 = torch.tensor([[2.0, 0.0], [1.0, -1.0]], dtype=D)
    y0 = y0[0] if batch_dims == 0 else y0
    ts = torch.tensor([0.0, 0.05, 0.1], dtype=D)

    def run(linear_solver):
        solver = no.Kvaerno5(newton=no.Newton(**tol), linear_solver=linear_solver)
        return no.solve(
            van_der_pol(100.0), y0, ts, solver=solver, controller=no.PIDController(**tol),
            batch_dims=batch_dims,
        )  # fmt: skip

    dense, free = run("lu"), run("gmres")
    # The same steps; the stage values agree to the Newton tolerance, not to rounding.
    assert free.stats.steps == dense.stats.steps
    torch.testing.assert_close(free.ys, dense.ys, rtol=1e-6, atol=1e-8)
    assert free.stats.nlu == 0 and dense.stats.nlu > 0
    assert free.stats.nsolve > 0 and free.stats.njev > free.stats.steps


def test_fully_implicit_method_matrix_free():
    f = van_der_pol(10.0)
    y0 = torch.tensor([2.0, 0.0], dtype=D)
    ts = torch.tensor([0.0, 0.5], dtype=D)

    def run(linear_solver):
        solver = no.RadauIIA5(newton=TIGHT_NEWTON, linear_solver=linear_solver)
        return no.solve(f, y0, ts, solver=solver, controller=no.ConstantStepSize(0.01)).ys

    torch.testing.assert_close(run(EXACT_GMRES), run("lu"), rtol=1e-10, atol=1e-10)


def reaction_diffusion(n: int, k: float = 1e4, diffusion: float = 1e-4):
    """``u_t = D u_xx − k (u − cos(t) sin(πx))`` on ``n`` interior points, ``u = 0`` at the ends.

    Stiff in the reaction (rate ``k``) and in the diffusion (up to ``4D/dx²``); linear,
    so the exact solution of the discretised system follows from the sine transform,
    which diagonalises the second-difference matrix.
    """
    dx = 1.0 / (n + 1)
    x = torch.linspace(dx, 1 - dx, n, dtype=D)
    g = torch.sin(math.pi * x)

    def f(t, u):
        padded = torch.nn.functional.pad(u, (1, 1))
        laplacian = (padded[..., 2:] - 2 * u + padded[..., :-2]) / dx**2
        return diffusion * laplacian - k * (u - g * torch.cos(t))

    j = torch.arange(1, n + 1, dtype=D)
    modes = torch.sin(math.pi * torch.outer(j, j) / (n + 1)) * math.sqrt(2 / (n + 1))
    lam = -k - 4 * diffusion / dx**2 * torch.sin(j * math.pi / (2 * (n + 1))) ** 2

    def exact(t: float) -> torch.Tensor:
        # û' = λ û + k cos(t) ĝ from û(0) = 0: û = k ĝ (sin t − λ cos t + λ e^{λt})/(λ² + 1).
        g_hat = modes @ g
        u_hat = k * g_hat * (math.sin(t) - lam * math.cos(t) + lam * torch.exp(lam * t))
        return modes @ (u_hat / (lam**2 + 1))

    return f, exact


def test_a_state_of_2000_components():
    # The dense path takes a 2000 x 2000 Jacobian and LU per step (measured on this
    # problem: 17 s and 730 MB peak; matrix-free 1.8 s and 314 MB, the process's own).
    n, tol = 2000, {"rtol": 1e-6, "atol": 1e-8}
    f, exact = reaction_diffusion(n)
    ts = torch.tensor([0.0, 0.5], dtype=D)
    sol = no.solve(
        f, torch.zeros(n, dtype=D), ts,
        solver=no.Kvaerno5(newton=no.Newton(**tol), linear_solver="gmres"),
        controller=no.PIDController(**tol),
    )  # fmt: skip
    reference = exact(0.5)
    error = ((sol.ys[-1] - reference).abs() / (tol["atol"] + tol["rtol"] * reference.abs())).max()
    assert error < 10
    assert sol.stats.nlu == 0
    # A few products per solve: the reaction dominates, so I − hγJ is well conditioned.
    assert sol.stats.njev < 4 * sol.stats.nsolve


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(batch, 2, dtype=D, generator=g)
    W = 0.5 * torch.randn(2, 2, dtype=D, generator=g)
    b = 0.2 * torch.randn(2, dtype=D, generator=g)
    return tuple(x.requires_grad_(True) for x in (y0, W, b))


def field(t, y, W, b):
    stiff = torch.tensor([1.0, 40.0], dtype=D)
    return -stiff * y + torch.tanh(y @ W.T + b) + 0.1 * torch.sin(t).unsqueeze(-1) * y


def solve_fn(solver, controller, adjoint, batch_dims):
    ts = torch.tensor((0.0, 0.1, 0.2, 0.3), dtype=D)

    def fn(y0, W, b):
        return no.solve(
            lambda t, y: field(t, y, W, b), y0, ts, solver=solver, controller=controller,
            adjoint=adjoint, params=[W, b], batch_dims=batch_dims,
        ).ys  # fmt: skip

    return fn


ADJOINTS = {"direct": no.DirectAdjoint(), "checkpoint": no.CheckpointAdjoint()}
# The transposed GMRES solve's batched products (MKL) round differently from one call to
# the next, by about 1e-15: gradcheck's reentrancy check must allow that.
NONDET = 1e-12


# Each Jacobian-vector product costs a forward-mode evaluation of f (about 1 ms here, on
# a 2-component state where an LU solve costs 20 µs): one default case, the rest slow.
CASES = [
    pytest.param("direct", 0, no.Kvaerno3, id="direct-joint-kvaerno3"),
    pytest.param("direct", 0, no.Kvaerno5, id="direct-joint", marks=pytest.mark.slow),
    pytest.param("checkpoint", 0, no.Kvaerno5, id="checkpoint-joint", marks=pytest.mark.slow),
    pytest.param("direct", 1, no.Kvaerno5, id="direct-per-sample", marks=pytest.mark.slow),
    pytest.param("checkpoint", 1, no.Kvaerno5, id="checkpoint-per-sample", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("method", "batch_dims", "solver_cls"), CASES)
def test_gradcheck(method, batch_dims, solver_cls):
    # Joint: fixed steps, the exact gradient of the discrete solution. Per sample the
    # steps are adaptive (the only per-sample controller); they move with the inputs
    # under finite differences by about the tolerance, hence the looser check.
    solver = solver_cls(newton=TIGHT_NEWTON, linear_solver=EXACT_GMRES)
    if batch_dims == 0:
        controller, tol = no.ConstantStepSize(0.1), {"atol": 1e-7, "rtol": 1e-5}
    else:
        controller, tol = no.PIDController(rtol=1e-7, atol=1e-7), {"atol": 1e-5, "rtol": 1e-4}
    fn = solve_fn(solver, controller, ADJOINTS[method], batch_dims)
    assert gradcheck(fn, inputs(), eps=1e-6, fast_mode=True, nondet_tol=NONDET, **tol)


@pytest.mark.slow
def test_gradcheck_fully_implicit():
    solver = no.RadauIIA3(newton=TIGHT_NEWTON, linear_solver=EXACT_GMRES)
    fn = solve_fn(solver, no.ConstantStepSize(0.1), no.DirectAdjoint(), 0)
    assert gradcheck(
        fn, inputs(), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True, nondet_tol=NONDET
    )


def test_gradients_equal_the_dense_paths():
    y0, W, b = inputs(batch=3)

    def grads(linear_solver):
        solver = no.Kvaerno5(newton=TIGHT_NEWTON, linear_solver=linear_solver)
        fn = solve_fn(solver, no.PIDController(rtol=1e-6, atol=1e-6), no.DirectAdjoint(), 1)
        return torch.autograd.grad(fn(y0, W, b).square().sum(), (y0, W, b))

    for got, want in zip(grads(EXACT_GMRES), grads("lu"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_gmres_failure_rejects_the_step_and_a_smaller_one_succeeds():
    # One Krylov vector cannot solve the 2 x 2 Newton system of a stiff step exactly; at a
    # small enough step I − hγJ is close to I and one vector meets the Newton tolerance.
    f, tol = van_der_pol(1000.0), {"rtol": 1e-6, "atol": 1e-8}
    y0 = torch.tensor([2.0, 0.0], dtype=D)
    starved = no.GMRES(restart=1, max_restarts=1)
    step = no.Kvaerno5(linear_solver=starved).step(f, 0.0, y0, f(0.0, y0), 0.1)
    assert bool(step.newton_failed.all()) and torch.isnan(step.y1).all()
    assert not bool(no.Kvaerno5(linear_solver="gmres").step(f, 0.0, y0, f(0.0, y0), 0.1)
                    .newton_failed.any())  # fmt: skip
    sol = no.solve(
        f, y0, torch.tensor([0.0, 0.01], dtype=D),
        solver=no.Kvaerno5(newton=no.Newton(**tol), linear_solver=starved),
        controller=no.PIDController(dt0=0.1, **tol),
    )  # fmt: skip
    dense = no.solve(
        f, y0, torch.tensor([0.0, 0.01], dtype=D),
        solver=no.Kvaerno5(newton=no.Newton(**tol)), controller=no.PIDController(**tol),
    )  # fmt: skip
    assert sol.stats.rejected > 0
    torch.testing.assert_close(sol.ys[-1], dense.ys[-1], rtol=1e-5, atol=1e-7)


def test_a_nan_jacobian_vector_product_fails_the_step_not_the_process():
    # GMRES meets a NaN product: the row's solve fails, so does its Newton iteration.
    class NaNTangent(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x.clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g

        @staticmethod
        def jvp(ctx, t):
            return t * math.nan

    def bad(t, y):
        return -100.0 * NaNTangent.apply(y)

    y0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D)
    step = no.Kvaerno3(linear_solver="gmres").step(bad, 0.0, y0, bad(0.0, y0), 0.1)
    assert bool(step.newton_failed.all()) and torch.isnan(step.y1).all()


def test_gmres_solves_each_row_in_its_own_krylov_space():
    # Rows of different sizes and difficulty: each converges to its own solution, and a
    # row that converges early keeps its solution while the others go on.
    g = torch.Generator().manual_seed(0)
    m = torch.eye(6, dtype=D) + 0.3 * torch.randn(3, 6, 6, dtype=D, generator=g)
    m[0] = torch.eye(6, dtype=D) * 2  # converges in one iteration
    rhs = torch.randn(3, 6, dtype=D, generator=g)
    x, ok = gmres(lambda v: (m @ v.unsqueeze(-1)).squeeze(-1), rhs, GMRES(rtol=1e-12), None)
    assert bool(ok.all())
    torch.testing.assert_close(x, torch.linalg.solve(m, rhs), rtol=1e-10, atol=1e-10)
    # Restarted with two vectors per cycle, still each row's own solution.
    x, ok = gmres(
        lambda v: (m @ v.unsqueeze(-1)).squeeze(-1), rhs, GMRES(restart=2, max_restarts=200,
        rtol=1e-10), None,
    )  # fmt: skip
    assert bool(ok.all())
    torch.testing.assert_close(x, torch.linalg.solve(m, rhs), rtol=1e-8, atol=1e-8)


def test_every_jacobian_vector_product_is_counted():
    calls = 0
    mu = van_der_pol(100.0)

    def f(t, y):
        nonlocal calls
        calls += 1
        return mu(t, y)

    sol = no.solve(
        f, torch.tensor([2.0, 0.0], dtype=D), torch.tensor([0.0, 0.5], dtype=D),
        solver=no.Kvaerno5(linear_solver="gmres"),
    )  # fmt: skip
    stats = sol.stats
    # Each product is one (forward-mode) evaluation of f, counted in nfe and in njev.
    assert stats.nfe == calls
    assert stats.nsolve <= stats.njev < stats.nfe
    assert stats.nlu == 0


def test_settings_are_validated():
    with pytest.raises(ValueError, match="linear_solver must be 'lu'.*got 'cg'"):
        no.Kvaerno5(linear_solver="cg")
    with pytest.raises(ValueError, match="GMRES restart must be a positive int, got 0"):
        no.GMRES(restart=0)
    with pytest.raises(ValueError, match=r"GMRES rtol must be a number in \(0, 1\), got 2"):
        no.GMRES(rtol=2)
    for cls in (no.Rodas5P, no.Rosenbrock23):
        with pytest.raises(ValueError, match=r"linear_solver=\.\.\.\) takes only 'lu'"):
            cls(linear_solver="gmres")
        with pytest.raises(ValueError, match="Kvaerno5\\(linear_solver='gmres'\\)"):
            cls(linear_solver=no.GMRES())  # type: ignore[arg-type]


def test_a_field_forward_mode_cannot_trace_gets_forward_differences():
    # A custom autograd Function without a jvp rule (the backsolve adjoint's augmented
    # field is one): the products fall back to forward differences, which change only
    # the Newton iteration's rate, not the root.
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    def f(t, y):
        return -50.0 * y - Cube.apply(y)

    y0 = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=D)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.func.jvp(lambda x: f(0.0, x), (y0,), (y0,))
    newton = no.Newton(rtol=1e-10, atol=1e-10)
    steps = [
        no.Kvaerno5(newton=newton, linear_solver=ls).step(f, 0.0, y0, f(0.0, y0), 0.02)
        for ls in ("lu", "gmres")
    ]
    assert not bool(steps[0].newton_failed.any() or steps[1].newton_failed.any())
    torch.testing.assert_close(steps[1].y1, steps[0].y1, rtol=1e-8, atol=1e-10)


def test_a_gradient_solve_that_does_not_converge_raises():
    # The forward solve is over, so there is no step to reject: the message says what to
    # change instead of handing autograd an inaccurate gradient.
    slope = -torch.diag(torch.arange(6, dtype=D) * 10)  # S; pull(u) = Sᵀu, row by row
    v = torch.ones(1, 6, dtype=D)
    with pytest.raises(RuntimeError, match=r"GMRES did not converge .*GMRES\(restart=50"):
        transposed_solve(lambda u: u @ slope, v, GMRES(restart=2, max_restarts=1), None)
    w = transposed_solve(lambda u: u @ slope, v, GMRES(restart=6), None)
    torch.testing.assert_close(w @ (torch.eye(6, dtype=D) - slope), v)
