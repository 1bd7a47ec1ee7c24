"""compile_step=True in joint mode: the whole state as the one row of the compiled driver.

Traced with dynamo's "eager" backend (the same graph capture and graph breaks as the
inductor's, without code generation), as the per-sample compile tests do.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import neuralode as no
from fields import RowMixingMLP

D = torch.float64
EAGER = no.PerSampleTuning(backend="eager")


@pytest.fixture
def traced():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _ulps_of_scale(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference in ulps of the largest magnitude (rounding, not drift)."""
    return float((a - b).abs().max() / (torch.finfo(a.dtype).eps * b.abs().max()))


def test_joint_compiled_step_has_no_graph_breaks_and_the_eager_numbers(traced):
    f = RowMixingMLP()
    y0 = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    ts = torch.linspace(0.0, 2.0, 7, dtype=D)
    controller = no.PIDController(rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        eager = no.solve(f, y0, ts, controller=controller)
        compiled = no.solve(f, y0, ts, controller=controller, compile_step=True, tuning=EAGER)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] >= 1
    assert compiled.ys.shape == eager.ys.shape == (7, 6, 3)
    # The per-sample formulas round differently from the joint ones (a tensor step scales
    # the stages' sum): the same steps, and outputs equal to rounding.
    assert _ulps_of_scale(compiled.ys, eager.ys) < 64
    assert (compiled.stats.steps, compiled.stats.nfe) == (eager.stats.steps, eager.stats.nfe)
    assert compiled.status is no.Status.SUCCESS and compiled.sample_status is None
    assert compiled.t_last == eager.t_last == 2.0
    assert compiled.stats.sample_steps is None


@pytest.mark.parametrize("adjoint", [no.DirectAdjoint(), no.BacksolveAdjoint()])
def test_joint_compiled_gradients_match_eager(traced, adjoint):
    f = RowMixingMLP()
    y0 = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    controller = no.PIDController(rtol=1e-8, atol=1e-10)
    grads = []
    for compile_step in (False, True):
        f.zero_grad()
        y = y0.clone().requires_grad_()
        extra = {"tuning": EAGER} if compile_step else {}
        sol = no.solve(f, y, ts, controller=controller, adjoint=adjoint,
                       compile_step=compile_step, **extra)  # fmt: skip
        sol.ys.square().sum().backward()
        grads.append([y.grad, *(p.grad for p in f.parameters())])
    assert dict(counters["graph_break"]) == {}
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.slow  # 4.6 s (21 s under load): dynamo traces another graph
def test_joint_compiled_tuple_state_and_reverse_time(traced):
    def f(t, y):
        x, v = y
        return v, -x

    y0 = (torch.tensor([1.0, 0.5], dtype=D), torch.tensor([0.0, 1.0], dtype=D))
    ts = torch.linspace(1.0, -1.0, 5, dtype=D)
    with torch.no_grad():
        eager = no.solve(f, y0, ts)
        compiled = no.solve(f, y0, ts, compile_step=True, tuning=EAGER)
    assert dict(counters["graph_break"]) == {}
    for a, b in zip(compiled.ys, eager.ys, strict=True):
        assert a.shape == b.shape == (5, 2)
        assert _ulps_of_scale(a, b) < 64


@pytest.mark.slow  # 6.8 s (38 s under load): single steps traced after the failure
def test_joint_compiled_failure_reads_as_a_joint_one(traced):
    # y' = y^2 from 1 blows up at t = 1: the same status as eager, no per-sample wording.
    y0, ts = torch.ones(3, dtype=D), torch.tensor([0.0, 2.0], dtype=D)
    eager = no.solve(lambda t, y: y * y, y0, ts, throw=False)
    compiled = no.solve(lambda t, y: y * y, y0, ts, throw=False, compile_step=True, tuning=EAGER)
    assert compiled.status is eager.status is not no.Status.SUCCESS
    assert abs(compiled.t_last - eager.t_last) < 1e-6
    with pytest.raises(no.SolverError) as err:
        no.solve(lambda t, y: y * y, y0, ts, compile_step=True, tuning=EAGER)
    assert "sample" not in str(err.value)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"dense": True}, "dense=True"),
        ({"solver": no.RK4(), "controller": no.ConstantStepSize(0.1)}, "fixed steps"),
        ({"adjoint": no.CheckpointAdjoint(), "params": ()}, "DirectAdjoint"),
        ({"controller": no.PIDController(step_ts=[0.5])}, "step_ts/jump_ts"),
        ({"controller": no.PIDController(rtol=torch.full((3,), 1e-6))}, "tensor"),
        ({"event": no.Event(lambda t, y: y[0] - 0.5)}, "event="),
    ],
)
def test_joint_compiled_refuses_what_it_does_not_support_by_name(options, named):
    y0, ts = torch.ones(3, dtype=D), torch.tensor([0.0, 1.0], dtype=D)
    y0 = y0.requires_grad_() if "adjoint" in options else y0
    with pytest.raises(ValueError, match=f"compile_step=True in joint mode.*{named}"):
        no.solve(lambda t, y: -y, y0, ts, compile_step=True, tuning=EAGER, **options)


def test_a_field_built_inside_the_trace_has_no_graph_break(traced):
    # A compiled graph may be the first to read a state's description (here it builds
    # the field): no attribute read there may take a lock, as functools.cached_property
    # does on its first read on Python 3.11. (Not counting, as in a compiled step.)
    from neuralode._vector_field import Structure, VectorField

    def evaluate(y: torch.Tensor) -> torch.Tensor:
        structure = Structure.of(y, batched=True)
        field = VectorField(lambda t, y: -y, structure, D, y.device, counting=False)
        return field(torch.zeros(y.shape[0], dtype=D), y)

    y = torch.ones(3, 2, dtype=D)
    compiled = torch.compile(evaluate, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(y), -y)
