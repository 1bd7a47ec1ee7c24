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


class _Recording(torch.nn.Module):
    """A linear field that records the shapes it is called with."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, t, h):
        self.shapes.append(tuple(h.shape))
        return torch.tanh(self.linear(h))


def test_augmented_block_pads_zero_channels_and_drops_them_after():
    torch.manual_seed(0)
    func = _Recording(5)
    block = ODEBlock(func, augment_dim=2)
    x = torch.randn(3, 3, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    assert set(func.shapes) == {(3, 5)}  # the field sees the augmented width
    # The same solve by hand: the padded state's first channels.
    padded = torch.cat([x.detach(), torch.zeros(3, 2)], dim=1)
    full = no.solve(func, padded, torch.tensor([0.0, 1.0])).ys[-1]
    torch.testing.assert_close(out.detach(), full[:, :3])
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in func.parameters())


def test_block_penalties_are_computed_in_training_mode_only():
    block = ODEBlock(_Tanh(), regularizers=[no.KineticEnergy()])
    x = torch.randn(2, 4)
    block(x)
    assert set(block.regularization) == {"kinetic"}
    block.eval()
    block(x)
    assert block.regularization == {}


def test_augment_dim_zero_is_the_plain_block():
    torch.manual_seed(0)
    func = _Tanh()
    x = torch.randn(2, 4)
    torch.testing.assert_close(ODEBlock(func, augment_dim=0)(x), ODEBlock(func)(x))


def test_augmented_odenet_widens_only_its_ode_function():
    torch.manual_seed(0)
    net = ODENet(8, augment_dim=4)
    assert net.ode_block.func.conv1.conv.in_channels == 8 + 4 + 1  # + the time channel
    # Above 32 channels that 32 does not divide, group norm takes the most groups that do.
    assert ODENet(32, augment_dim=8).ode_block.func.norm1.num_groups == 8
    logits = net(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.ode_block.func.parameters())


def test_augment_refusals_name_the_argument():
    with pytest.raises(ValueError, match="augment_dim must be an integer ≥ 0.*got -1"):
        ODEBlock(_Tanh(), augment_dim=-1)
    with pytest.raises(ValueError, match="augment_dim must be an integer ≥ 0 .0: off., got 1.5"):
        ODENet(8, augment_dim=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"augment_dim pads channels along dim 1.*shape \(4,\)"):
        ODEBlock(_Tanh(), augment_dim=1)(torch.randn(4))


def test_steer_draws_the_end_time_in_training_and_uses_t1_in_eval():
    torch.manual_seed(0)
    block = ODEBlock(_Tanh(), t1=1.0, steer=0.5)
    x = torch.randn(2, 4)
    ends = set()
    for _ in range(20):
        out = block(x)
        ends.add(block.end_time)
        assert 0.5 <= block.end_time <= 1.5
    assert len(ends) == 20
    expected = no.solve(block.func, x, torch.tensor([0.0, block.end_time])).ys[-1]
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.func.parameters())
    block.eval()
    for _ in range(3):
        block(x)
        assert block.end_time == 1.0


def test_steer_refusals_name_the_argument():
    with pytest.raises(ValueError, match=r"steer must lie in \[0, 1\).*got 1.0"):
        ODEBlock(_Tanh(), steer=1.0)
    with pytest.raises(TypeError, match="steer must be a float"):
        ODEBlock(_Tanh(), steer="0.1")  # type: ignore[arg-type]
