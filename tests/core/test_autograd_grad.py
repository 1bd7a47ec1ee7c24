"""neuralode._autograd.grad: torch.autograd.grad's results, errors and graph semantics."""

from __future__ import annotations

import pytest
import torch

from neuralode import _autograd


def _mlp():
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return w1, w2, y, a


def _f(w1, w2, y):
    return torch.tanh(y @ w1) @ w2


def test_same_products_as_autograd_grad():
    w1, w2, y, a = _mlp()
    want = torch.autograd.grad(_f(w1, w2, y), (y, w1, w2), a)
    got = _autograd.grad(_f(w1, w2, y), (y, w1, w2), a)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_several_outputs_and_unused_inputs():
    w1, w2, y, a = _mlp()
    unused = torch.ones(2, dtype=torch.float64, requires_grad=True)
    outs = (_f(w1, w2, y), (y * y).sum(0))
    cots = (a, torch.ones(3, dtype=torch.float64))
    want = torch.autograd.grad(outs, (y, unused), cots, retain_graph=True, allow_unused=True)
    got = _autograd.grad(outs, (y, unused), cots, allow_unused=True)
    assert got[1] is None and want[1] is None
    assert torch.equal(got[0], want[0])
    with pytest.raises(RuntimeError, match="appears to not have been used"):
        _autograd.grad((_f(w1, w2, y),), (y, unused), (a,))


def test_create_graph_gives_the_same_second_derivative():
    w1, w2, y, a = _mlp()
    (want,) = torch.autograd.grad(_f(w1, w2, y), y, a, create_graph=True)
    (got,) = _autograd.grad(_f(w1, w2, y), y, a, create_graph=True)
    assert got.requires_grad
    assert torch.equal(
        torch.autograd.grad(got.sum(), w1)[0], torch.autograd.grad(want.sum(), w1)[0]
    )


def test_graph_is_freed_unless_retained():
    w1, w2, y, a = _mlp()
    out = _f(w1, w2, y)
    _autograd.grad(out, y, a, retain_graph=True)
    _autograd.grad(out, y, a)
    with pytest.raises(RuntimeError, match="second time"):
        _autograd.grad(out, y, a)


def test_bad_cotangents_are_refused():
    w1, w2, y, a = _mlp()
    with pytest.raises(RuntimeError, match="shape"):
        _autograd.grad(_f(w1, w2, y), y, a[:2])
    with pytest.raises(ValueError, match="grad_outputs has 2 tensors for 1 outputs"):
        _autograd.grad(_f(w1, w2, y), y, (a, a))


class _Logged(torch.Tensor):
    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.autograd.grad:
            cls.calls += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def test_tensor_subclasses_go_through_torch_autograd_grad():
    w1, w2, y, a = _mlp()
    logged = y.detach().as_subclass(_Logged).requires_grad_(True)
    (got,) = _autograd.grad((logged * 2.0).sum(), logged, torch.tensor(1.0, dtype=y.dtype))
    assert _Logged.calls == 1
    assert torch.equal(got.as_subclass(torch.Tensor), torch.full_like(y, 2.0))
