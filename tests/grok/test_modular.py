"""Algorithmic tasks: labels checked against Python's own arithmetic."""

import pytest
import torch

from stablelab.data.modular import modular_arithmetic, sparse_parity
from stablelab.errors import UsageError
from stablelab.models.mlp import MLP


@pytest.mark.parametrize("operation,fn", [("add", lambda a, b: (a + b) % 7), ("sub", lambda a, b: (a - b) % 7),
                                          ("mul", lambda a, b: (a * b) % 7)])
def test_modular_labels_and_one_hot_inputs(operation, fn):
    task = modular_arithmetic(operation, p=7, train_fraction=0.4, seed=3)
    x = torch.cat([task.x_train, task.x_test])
    y = torch.cat([task.y_train, task.y_test])
    assert x.shape == (49, 14) and task.input_dim == 14 and task.num_classes == 7
    assert (x.sum(dim=1) == 2).all()
    a, b = x[:, :7].argmax(dim=1), x[:, 7:].argmax(dim=1)
    assert y.tolist() == [fn(int(i), int(j)) for i, j in zip(a, b)]
    pairs = {(int(i), int(j)) for i, j in zip(a, b)}
    assert len(pairs) == 49  # every pair exactly once: train and test are disjoint and complete
    assert len(task.y_train) == round(0.4 * 49)


def test_split_is_seeded():
    first, again = modular_arithmetic(p=11, seed=5), modular_arithmetic(p=11, seed=5)
    other = modular_arithmetic(p=11, seed=6)
    assert torch.equal(first.x_train, again.x_train)
    assert not torch.equal(first.x_train, other.x_train)


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError):
        modular_arithmetic("div", p=7)
    with pytest.raises(UsageError):
        modular_arithmetic(p=7, train_fraction=1.0)


def test_sparse_parity_labels():
    task = sparse_parity(n_parity=3, n_noise=5, n_samples=200, train_fraction=0.5, seed=0)
    x, y = torch.cat([task.x_train, task.x_test]), torch.cat([task.y_train, task.y_test])
    assert x.shape == (200, 8)
    assert y.tolist() == [int(row[:3].sum()) % 2 for row in x]


def test_mlp_without_bias_is_homogeneous():
    # ReLU MLP with 2 hidden layers, no biases: scaling all weights by c scales the logits by c^3
    model = MLP(6, 4, hidden=(5, 5))
    x = torch.randn(3, 6)
    before = model(x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    assert torch.allclose(model(x), 8 * before, atol=1e-5)
