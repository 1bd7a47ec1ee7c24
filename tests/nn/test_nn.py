import pytest
import torch

import neuralode as no
from neuralode.nn import MLP, ConcatConv2d, ODEBlock, ODENet, ResNet, RKNet, zero_residual_branches


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# docs/protocols.md, P1 (torchdiffeq's odenet_mnist.py architectures).
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (lambda: ResNet(64, blocks=6), 576_778),
        (lambda: ResNet(64, blocks=1), 206_858),
        (lambda: ODENet(64), 208_266),
        (lambda: ResNet(32, blocks=6), 145_034),
        (lambda: ResNet(32, blocks=1), 52_234),
        (lambda: ODENet(32), 52_938),
        (lambda: RKNet(32), 52_938),
        (lambda: MLP(), 238_510),
    ],
)
def test_parameter_counts_match_the_paper_architectures(model, expected):
    assert n_params(model()) == expected


@pytest.mark.parametrize("make", [lambda: ResNet(8, 2), lambda: ODENet(8), lambda: RKNet(8), MLP])
def test_classifiers_map_images_to_logits(make):
    torch.manual_seed(0)
    logits = make()(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_concat_conv_sees_time():
    torch.manual_seed(0)
    conv = ConcatConv2d(2, 3)
    x = torch.randn(1, 2, 5, 5)
    assert not torch.allclose(conv(torch.tensor(0.0), x), conv(torch.tensor(1.0), x))


def test_rknet_takes_four_rk4_steps():
    model = RKNet(8)
    model(torch.randn(2, 1, 28, 28))
    assert model.ode_block.stats.accepted == 4
    # f(t0) once, then 3 new stages and the next f0 per step; no f1 after the last step.
    assert model.ode_block.stats.nfe == 1 + 4 * 4 - 1


@pytest.mark.parametrize(
    "adjoint", [no.DirectAdjoint(), no.BacksolveAdjoint(), no.CheckpointAdjoint()]
)
def test_ode_block_trains_with_every_gradient_method(adjoint):
    torch.manual_seed(0)
    model = ODENet(8, adjoint=adjoint)
    x, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    grads = [p.grad for p in model.ode_block.func.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if not isinstance(adjoint, no.DirectAdjoint):
        assert model.ode_block.stats.nfe_backward > 0


class _Tanh(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, t, h):
        return torch.tanh(self.linear(h))


def test_tolerance_can_be_changed_after_construction():
    torch.manual_seed(0)
    block = ODEBlock(_Tanh(), controller=no.PIDController(rtol=1e-8, atol=1e-8))
    x = torch.randn(2, 4)
    with torch.no_grad():
        block(x)
        tight = block.stats.nfe
        block.controller = no.PIDController(rtol=1e-2, atol=1e-2)
        block(x)
    assert block.stats.nfe < tight


@pytest.mark.parametrize("make", [lambda: ODENet(8), lambda: RKNet(8), lambda: ResNet(8, blocks=3)])
def test_zero_residual_branches_start_each_model_as_its_stem_and_head(make):
    torch.manual_seed(0)
    net = zero_residual_branches(make())
    stem, _, head = net
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net(x), head(stem(x)))
    # The zeroed weights still get gradients, so training moves the branches off zero.
    net(x).square().sum().backward()
    zeroed = [p for n, p in net.named_parameters() if n.endswith(("norm3.weight", "conv2.weight"))]
    assert zeroed and all(p.grad is not None and p.grad.abs().sum() > 0 for p in zeroed)


def test_zero_residual_branches_leave_other_weights_alone():
    torch.manual_seed(0)
    plain = ResNet(8, blocks=2)
    torch.manual_seed(0)
    zeroed = zero_residual_branches(ResNet(8, blocks=2))
    changed = {
        name
        for (name, a), (_, b) in zip(
            plain.named_parameters(), zeroed.named_parameters(), strict=True
        )
        if not torch.equal(a, b)
    }
    assert changed <= {"1.0.conv2.weight", "1.1.conv2.weight"}
