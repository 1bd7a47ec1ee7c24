"""torch.compile of the per-sample step: one graph, no graph breaks, same numbers.

Dynamo's graph capture (the part that can break a graph) runs with the "eager" backend
here, which skips code generation: the same trace, in seconds instead of the inductor's
tens of seconds. The benchmark (benchmarks/bench_per_sample.py) times the inductor build.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import neuralode as no
from fields import PER_SAMPLE_FAILURES, van_der_pol

D = torch.float64


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        )

    def forward(self, t, y):
        return self.net(torch.cat([y, t[:, None].to(y.dtype)], -1))


# Dynamo's "eager" backend: the same tracing (and graph breaks) as inductor's, without
# code generation, so each test takes seconds.
EAGER = no.PerSampleTuning(backend="eager")


@pytest.fixture
def traced():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_the_compiled_step_has_no_graph_breaks_and_changes_no_number(traced):
    mu = torch.linspace(0.5, 6.0, 8, dtype=D)
    y0 = torch.stack([torch.linspace(-2, 2, 8, dtype=D), torch.zeros(8, dtype=D)], -1)
    ts = torch.linspace(0.0, 3.0, 11, dtype=D)
    controller = no.PIDController(rtol=1e-6, atol=1e-8)
    eager = no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1, args=mu)
    compiled = no.solve(
        van_der_pol,
        y0,
        ts,
        controller=controller,
        batch_dims=1,
        args=mu,
        compile_step=True,
        tuning=EAGER,
    )
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-13, atol=1e-13)
    assert compiled.stats.nfe == eager.stats.nfe
    assert torch.equal(compiled.stats.sample_steps, eager.stats.sample_steps)
    # fused_steps steps per compiled call: a sample that finishes inside a call stays in
    # the batch, frozen, for at most fused_steps - 1 steps more than between single steps.
    extra = len(mu) * (EAGER.fused_steps - 1) * 6
    assert eager.stats.rows <= compiled.stats.rows <= eager.stats.rows + extra
    # Samples finish at different times: the batch shrinks many times, and with a dynamic
    # batch dimension that costs no recompilation beyond the batch of one.
    assert counters["stats"]["unique_graphs"] <= 2


def test_compiled_module_field_trains(traced):
    field = MLP().to(D)
    y0 = torch.randn(5, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    grads = []
    for compile_step in (False, True):
        field.zero_grad()
        sol = no.solve(
            field,
            y0,
            ts,
            batch_dims=1,
            compile_step=compile_step,
            tuning=EAGER,
            controller=no.PIDController(rtol=1e-6, atol=1e-8),
        )
        sol.ys.square().sum().backward()
        grads.append([p.grad.clone() for p in field.parameters()])
    assert dict(counters["graph_break"]) == {}
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_new_tolerance_reuses_the_compiled_step(traced):
    # The step's Python numbers are compiled in as constants, except the tolerances, which
    # stay inputs: a tolerance sweep (or schedule) must not recompile at every value.
    mu = torch.linspace(0.5, 6.0, 8, dtype=D)
    y0 = torch.stack([torch.linspace(-2, 2, 8, dtype=D), torch.zeros(8, dtype=D)], -1)
    ts = torch.linspace(0.0, 3.0, 11, dtype=D)
    graphs = []
    for tol in (1e-6, 1e-7, 3e-5):
        controller = no.PIDController(rtol=tol, atol=tol / 10)
        eager = no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1, args=mu)
        compiled = no.solve(
            van_der_pol,
            y0,
            ts,
            controller=controller,
            batch_dims=1,
            args=mu,
            compile_step=True,
            tuning=EAGER,
        )
        torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-13, atol=1e-13)
        assert compiled.stats.nfe == eager.stats.nfe
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[-1] == graphs[0]


def test_python_numbers_are_graph_constants_in_every_graph():
    # The config patch that makes the tableau's and controller's numbers constants is
    # entered only by the calls that may trace (a solve's first step, a batch of one row);
    # both graphs a solve compiles (batch dynamic, and one row) must still have them as
    # constants. Lifted, each would be one more 0-d tensor input (36 here); the only 0-d
    # inputs are the two tolerances, which stay inputs on purpose.
    inputs = []

    def recording(gm, example_inputs):
        inputs.append(list(example_inputs))
        return gm.forward

    torch._dynamo.reset()
    try:
        mu = torch.linspace(0.5, 6.0, 8, dtype=D)
        y0 = torch.stack([torch.linspace(-2, 2, 8, dtype=D), torch.zeros(8, dtype=D)], -1)
        ts = torch.linspace(0.0, 3.0, 11, dtype=D)
        controller = no.PIDController(rtol=1e-6, atol=1e-7)
        for _ in range(2):
            no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1, args=mu,
                     compile_step=True, tuning=no.PerSampleTuning(backend=recording))  # fmt: skip
    finally:
        torch._dynamo.reset()
    assert len(inputs) == 2  # batch dynamic, then one row left; the second solve reuses both
    for graph in inputs:
        scalars = [x for x in graph if isinstance(x, torch.Tensor) and x.ndim == 0]
        assert len(scalars) == 2 and len(graph) < 20


@pytest.mark.parametrize("case", PER_SAMPLE_FAILURES)
def test_failures_inside_fused_steps_end_as_in_the_eager_loop(traced, case):
    # A fused call whose steps meet trouble (a non-finite step, a step size underflow, a
    # spent budget) is dropped and its steps taken one at a time, where the host judges
    # the failure: every status, time, value and count must equal the eager loop's.
    f, y0, ts, args, extra = PER_SAMPLE_FAILURES[case]
    controller = no.PIDController(rtol=1e-6, atol=1e-8)
    sols = [no.solve(f, y0, ts, controller=controller, batch_dims=1, args=args, throw=False,
                     compile_step=compile_step, tuning=EAGER, **extra)
            for compile_step in (False, True)]  # fmt: skip
    eager, compiled = sols
    assert compiled.sample_status == eager.sample_status
    assert any(s is not no.Status.SUCCESS for s in eager.sample_status)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-13, atol=1e-13, equal_nan=True)
    torch.testing.assert_close(compiled.t_last, eager.t_last, rtol=0, atol=0)
    assert torch.equal(compiled.stats.sample_steps, eager.stats.sample_steps)
    assert compiled.stats.nfe == eager.stats.nfe


def test_fused_steps_change_no_number(traced):
    mu = torch.linspace(0.5, 6.0, 8, dtype=D)
    y0 = torch.stack([torch.linspace(-2, 2, 8, dtype=D), torch.zeros(8, dtype=D)], -1)
    ts = torch.linspace(0.0, 3.0, 11, dtype=D)
    controller = no.PIDController(rtol=1e-6, atol=1e-8)
    sols = []
    for fused in (1, 3, 4):
        tuning = no.PerSampleTuning(backend="eager", fused_steps=fused)
        sols.append(no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1,
                             args=mu, compile_step=True, tuning=tuning))  # fmt: skip
    for sol in sols[1:]:
        torch.testing.assert_close(sol.ys, sols[0].ys, rtol=0, atol=0)
        assert torch.equal(sol.stats.sample_steps, sols[0].stats.sample_steps)
