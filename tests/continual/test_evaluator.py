"""ContinualEvaluator against accuracies worked out by hand on an identity 'model'."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from stablelab.continual import ContinualEvaluator


def one_hot_task(labels, predicted):
    """Inputs whose argmax is `predicted`, with true labels `labels` (so accuracy is countable)."""
    x = torch.zeros(len(labels), 3)
    x[torch.arange(len(labels)), torch.tensor(predicted)] = 1.0
    return x, torch.tensor(labels)


# task 0: 3 of 4 right -> 0.75 ; task 1: 1 of 2 right -> 0.5 ; task 2: 0 of 3 right -> 0.0
TASKS = [
    one_hot_task([0, 1, 2, 0], [0, 1, 2, 1]),
    one_hot_task([2, 2], [2, 0]),
    one_hot_task([0, 0, 0], [1, 2, 1]),
]


def test_accuracy_per_seen_task_and_nan_for_unseen():
    evaluator = ContinualEvaluator(TASKS, subset_size=None)
    model = nn.Identity()
    evaluator.start_task(0)
    row = evaluator.after_iteration(model)
    assert row[0] == pytest.approx(0.75) and math.isnan(row[1]) and math.isnan(row[2])
    evaluator.start_task(1)
    evaluator.after_iteration(model)
    evaluator.start_task(2)
    evaluator.after_iteration(model)
    expected = np.array([[0.75, np.nan, np.nan], [0.75, 0.5, np.nan], [0.75, 0.5, 0.0]])
    np.testing.assert_allclose(evaluator.acc, expected)
    np.testing.assert_array_equal(evaluator.training_task, [0, 1, 2])
    np.testing.assert_array_equal(evaluator.iterations, [1, 2, 3])


def test_every_k_iterations_and_chunked_batches_agree():
    evaluator = ContinualEvaluator(TASKS, every=3, subset_size=None, batch_size=2)
    evaluator.start_task(0)
    evaluator.start_task(1)
    rows = [evaluator.after_iteration(nn.Identity()) for _ in range(7)]
    assert [r is not None for r in rows] == [False, False, True, False, False, True, False]
    np.testing.assert_array_equal(evaluator.iterations, [3, 6])
    np.testing.assert_allclose(evaluator.acc[0, :2], [0.75, 0.5])


def test_fixed_subset_of_each_task():
    x = torch.eye(3).repeat(40, 1)  # 120 examples, predictions cycle 0,1,2
    y = torch.zeros(120, dtype=torch.long)  # only class 0 is right: accuracy 1/3 on the full set
    evaluator = ContinualEvaluator([(x, y)], subset_size=30, seed=1)
    evaluator.start_task(0)
    first = evaluator.after_iteration(nn.Identity())[0]
    second = evaluator.after_iteration(nn.Identity())[0]
    assert first == second  # the same 30 examples every time
    kept_x, kept_y = evaluator.subsets[0]
    assert len(kept_x) == 30 and bool((kept_y == 0).all())
    assert first == pytest.approx(float((kept_x.argmax(1) == 0).float().mean()))


def test_evaluation_leaves_no_gradients_and_restores_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 3))
    model.train()
    evaluator = ContinualEvaluator(TASKS, subset_size=None)
    evaluator.start_task(0)
    evaluator.after_iteration(model)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    # eval mode during evaluation: dropout off, so the result equals a deterministic eval pass
    model.eval()
    with torch.no_grad():
        reference = float((model(TASKS[0][0]).argmax(1) == TASKS[0][1]).float().mean())
    assert evaluator.acc[0, 0] == pytest.approx(reference)


def test_metrics_come_from_the_history():
    evaluator = ContinualEvaluator(TASKS, subset_size=None)
    for task in range(3):
        evaluator.start_task(task)
        evaluator.after_iteration(nn.Identity())
    metrics = evaluator.metrics()
    # constant accuracies: min-ACC = mean(0.75, 0.5); WC-ACC = 0/3 + 2/3 * 0.625; no drops
    assert metrics["min_acc"] == pytest.approx(0.625)
    assert metrics["wc_acc"] == pytest.approx(2 / 3 * 0.625)
    assert metrics["wf10"] == 0.0 and metrics["forgetting"] == pytest.approx(0.0)


def test_must_start_a_task_first():
    with pytest.raises(RuntimeError):
        ContinualEvaluator(TASKS).after_iteration(nn.Identity())
