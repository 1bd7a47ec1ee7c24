"""torchdiffeq's Adams methods in neuralode.compat, against the installed torchdiffeq."""

from __future__ import annotations

import warnings

import pytest
import torch

import neuralode as no
from neuralode.compat import odeint, odeint_adjoint

torchdiffeq = pytest.importorskip("torchdiffeq")
D = torch.float64


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(0.5 * torch.randn(3, 3, generator=gen, dtype=D))

    def forward(self, t, y):
        return torch.tanh(y @ self.w) + 0.2 * torch.cos(t)


Y0 = torch.tensor([[0.3, -0.1, 0.5], [1.0, 0.2, -0.4]], dtype=D)
# Output times on the step grid and between grid points.
T = torch.tensor([0.0, 0.37, 1.0, 1.6], dtype=D)
CASES = [
    ("explicit_adams", {"step_size": 0.05}),
    ("explicit_adams", {"step_size": 0.05, "max_order": 5}),
    ("implicit_adams", {"step_size": 0.05}),
    ("implicit_adams", {"step_size": 0.05, "max_order": 4, "max_iters": 2}),
    ("fixed_adams", {"step_size": 0.05, "interp": "cubic"}),
    ("fixed_adams", {"step_size": 0.05, "implicit": False}),
]


@pytest.mark.parametrize(("method", "options"), CASES, ids=str)
def test_agrees_with_torchdiffeq(method, options):
    """On an even grid the coefficients, start-up and corrector test are torchdiffeq's."""
    field = Field()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = odeint(field, Y0, T, method=method, options=options)
        theirs = torchdiffeq.odeint(field, Y0, T, method=method, options=options)
    # (The last grid step is shorter than step_size by a few ulps, where torchdiffeq keeps
    # the even-grid coefficients and neuralode the exact ones: 1e-12 apart.)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-11)


def test_gradients_agree_with_torchdiffeq():
    field = Field()
    results = []
    for solve in (odeint_adjoint, torchdiffeq.odeint_adjoint, odeint, torchdiffeq.odeint):
        y0 = Y0.clone().requires_grad_(True)
        ys = solve(field, y0, T, method="implicit_adams", options={"step_size": 0.05})
        grads = torch.autograd.grad(ys.square().sum(), (y0, field.w))
        results.append(torch.cat([g.reshape(-1) for g in grads]))
    adjoint_ours, adjoint_theirs, direct_ours, direct_theirs = results
    torch.testing.assert_close(direct_ours, direct_theirs, rtol=1e-10, atol=1e-10)
    # Both adjoints solve the adjoint ODE backwards with the same method, so both differ
    # from the exact gradient of the discrete solution by a discretisation error; ours
    # is no further from it (measured: 6.6e-4 against torchdiffeq's 2.3e-3, the size of
    # RK4's 6.6e-4 on the same grid).
    error_ours = float((adjoint_ours - direct_ours).abs().max())
    error_theirs = float((adjoint_theirs - direct_ours).abs().max())
    assert error_ours < 1e-3
    assert error_ours <= error_theirs


def test_the_methods_are_native_solvers():
    with torch.no_grad():
        ours = odeint(Field(), Y0, T, method="implicit_adams", options={"step_size": 0.05})
        native = no.solve(
            Field(), Y0, T, controller=no.ConstantStepSize(0.05),
            solver=no.AdamsBashforthMoulton(order=12, rtol=1e-7, atol=1e-9, interpolation="linear"),
        ).ys  # fmt: skip
    torch.testing.assert_close(ours, native, rtol=0, atol=0)


def test_low_max_order_is_rk4_with_torchdiffeqs_warning():
    with pytest.warns(UserWarning, match="max_order is below 4, so the solver reduces to `rk4`"):
        ours = odeint(
            Field(), Y0, T, method="explicit_adams", options={"step_size": 0.05, "max_order": 3}
        )
    rk4 = odeint(Field(), Y0, T, method="rk4", options={"step_size": 0.05})
    torch.testing.assert_close(ours, rk4, rtol=0, atol=0)


def test_uneven_grid_is_exact_where_fixed_coefficients_are_not():
    """A grid from uneven output times: torchdiffeq's fixed coefficients lose the order."""
    t = torch.tensor([0.0, 0.7, 2.0], dtype=D)
    fine = torch.cat(
        [torch.linspace(0, 0.7, 15, dtype=D), torch.linspace(0.7, 2.0, 61, dtype=D)[1:]]
    )

    def grid(func, y0, t):
        return fine

    def f(t, y):
        return torch.stack([y[1], -y[0]])

    y0 = torch.tensor([0.0, 1.0], dtype=D)
    exact = torch.stack([torch.sin(t), torch.cos(t)], dim=-1)
    options = {"grid_constructor": grid, "max_order": 5}
    ours = odeint(f, y0, t, method="explicit_adams", options=options)
    theirs = torchdiffeq.odeint(f, y0, t, method="explicit_adams", options=options)
    assert float((ours - exact).abs().max()) < 1e-5 < float((theirs - exact).abs().max())


@pytest.mark.parametrize(
    ("method", "options", "error", "match"),
    [
        ("explicit_adams", {"max_order": 13}, ValueError, r"\['max_order'\] must be at most 12"),
        ("explicit_adams", {"max_order": 4.5}, ValueError, r"options\['max_order'\]"),
        ("explicit_adams", {"implicit": True}, TypeError, "not an option of method='explicit_"),
        ("fixed_adams", {"implicit": "yes"}, TypeError, r"\['implicit'\] must be True or False"),
        ("implicit_adams", {"max_iters": 0}, ValueError, r"options\['max_iters'\] must be a posi"),
    ],
)  # fmt: skip
def test_bad_options_name_compats_arguments(method, options, error, match):
    with pytest.raises(error, match=match):
        odeint(Field(), Y0, T, method=method, options={"step_size": 0.1, **options})


def test_tolerance_list_is_refused_for_the_corrector():
    with pytest.raises(ValueError, match="rtol must be one non-negative number for the Adams"):
        odeint(Field(), Y0, T, method="implicit_adams", rtol=[1e-7], options={"step_size": 0.1})


def test_unexpected_options_warn_as_torchdiffeq():
    with pytest.warns(UserWarning, match="Unexpected arguments"):
        odeint(
            Field(), Y0, T, method="explicit_adams", options={"step_size": 0.1, "first_step": 0.1}
        )


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_perturb_restarts_the_history_at_every_grid_point(method):
    """Every grid point may be a jump of f: no history across it (RK4 steps)."""

    def f(t, y):
        return -y * torch.cos(t)

    y0 = torch.tensor([1.0], dtype=D)
    t = torch.linspace(0.0, 2.0, 5, dtype=D)
    options = {"step_size": 0.05, "perturb": True}
    ours = odeint(f, y0, t, method=method, options=options)
    rk4 = odeint(f, y0, t, method="rk4", options=options)
    torch.testing.assert_close(ours, rk4, rtol=0, atol=0)
    assert float((ours - torch.exp(-torch.sin(t))[:, None]).abs().max()) < 1e-7
