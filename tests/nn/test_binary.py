"""BinaryLinear and BinaryConv2d: the forward by hand (sign weights x per-channel scale, sign
inputs), gradients reaching the latent weights through the chosen estimator."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stablelab.errors import UsageError
from stablelab.nn import BinaryConv2d, BinaryLinear, reste_o_schedule, set_reste_o
from stablelab.signals import estimating_error, gradient_stability


def _linear(weight, **kwargs):
    layer = BinaryLinear(weight.shape[1], weight.shape[0], **kwargs)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


W = torch.tensor([[0.5, -0.25, 1.0],
                  [-2.0, 1.0, 0.0]])   # the 0 stays 0 under torch.sign, as in the official code


def test_binary_linear_forward_by_hand():
    layer = _linear(W)
    x = torch.tensor([[0.3, -0.7, 2.0]])
    # alpha = mean |W_c| per row: [1.75/3, 3/3]; sign(W) = [[1,-1,1],[-1,1,0]]; sign(x) = [1,-1,1]
    # row 0: (1 + 1 + 1) * 1.75/3 = 1.75; row 1: (-1 - 1 + 0) * 1 = -2
    assert torch.allclose(layer(x), torch.tensor([[1.75, -2.0]]))
    assert torch.allclose(layer.binary_weight(), torch.sign(W) * torch.tensor([[1.75 / 3], [1.0]]))


def test_binary_linear_float_inputs_and_layer_scale_and_bias():
    layer = _linear(W, binarize_activations=False, scale="layer", bias=True)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[0.3, -0.7, 2.0]])
    alpha = W.abs().mean()  # official ReSTE scaler: one for the whole layer
    expected = x @ (torch.sign(W) * alpha).T + torch.tensor([0.5, -0.5])
    assert torch.allclose(layer(x), expected)


def test_gradients_reach_the_latent_weights_through_reste():
    layer = _linear(W, o=2.0, binarize_activations=False)
    x = torch.tensor([[1.0, 2.0, -1.0]])
    layer(x).sum().backward()
    g = layer.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # by hand: y_c = alpha_c sum_j sign(W_cj) x_j, alpha_c = mean_j |W_cj|
    # dy/dW_cj = alpha_c x_j f'(W_cj) + sign(W_cj) (sum_k sign(W_ck) x_k) / 3
    slope = torch.tensor([[1 / (2 * 0.5 ** 0.5), 1 / (2 * 0.25 ** 0.5), 0.5],
                          [0.0, 0.5, 0.1 ** 0.5 / 0.1]])  # |-2| > t = 1.5: zero
    alpha = W.abs().mean(1, keepdim=True)
    s = torch.sign(W)
    expected = alpha * x * slope + s * (s @ x.T) / 3
    assert torch.allclose(g, expected)


def test_ste_estimator_zeroes_the_gradient_beyond_one():
    layer = _linear(W, estimator="ste", binarize_activations=False, scale="layer")
    layer(torch.ones(1, 3)).sum().backward()
    # the -2.0 weight gets only the scale's share of the gradient, sign(w)/6 * sum(sign(W) x)
    share = torch.sign(W) * torch.sign(W).sum() / W.numel()
    alpha = W.abs().mean()
    expected = alpha * (W.abs() <= 1).float() + share
    assert torch.allclose(layer.weight.grad, expected)


def test_gradients_reach_the_inputs_through_the_activation_estimator():
    layer = _linear(W, o=1.0)
    x = torch.tensor([[0.3, -1.4, 2.0]], requires_grad=True)
    layer(x).sum().backward()
    # d/dx_j = sum_c alpha_c sign(W_cj) * 1{|x_j| <= 1.5}
    col = (torch.sign(W) * W.abs().mean(1, keepdim=True)).sum(0)
    assert torch.allclose(x.grad, col * torch.tensor([1.0, 1.0, 0.0]))


def test_binary_conv2d_forward_matches_conv_with_scaled_sign_weights():
    torch.manual_seed(0)
    conv = BinaryConv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5)
    w = conv.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)  # one per output channel
    expected = F.conv2d(torch.sign(x), torch.sign(w) * alpha, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    conv(x).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_binary_layers_train_a_tiny_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), BinaryLinear(32, 32),
                          nn.BatchNorm1d(32), nn.Linear(32, 2))
    x = torch.randn(256, 8)
    y = (x[:, 0] * x[:, 1] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    epochs = 60
    for epoch in range(epochs):
        assert set_reste_o(model, reste_o_schedule(epoch, epochs)) == 1
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1
    latent = model[2].weight
    assert float(estimating_error(latent, 3.0)) > 0
    assert torch.isfinite(gradient_stability(latent.grad))


def test_bad_switches_are_usage_errors():
    with pytest.raises(UsageError):
        BinaryLinear(3, 2, estimator="xnor")
    with pytest.raises(UsageError):
        BinaryLinear(3, 2, scale="tensor")
    with pytest.raises(UsageError):
        BinaryConv2d(1, 1, 3, o=0.5)
    with pytest.raises(UsageError):
        set_reste_o(nn.Sequential(BinaryLinear(3, 2)), 0.9)
