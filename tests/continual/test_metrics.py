"""Continual metrics on hand-built accuracy histories, answers worked out by hand in the comments."""

import math

import numpy as np
import pytest

from stablelab.continual import (
    average_accuracy,
    forgetting,
    min_acc,
    wc_acc,
    windowed_forgetting,
    windowed_plasticity,
)
from stablelab.continual.metrics import max_window_change, stability_gap, task_end_accuracy

nan = float("nan")

# Three tasks, two evaluations each (training_task 0,0,1,1,2,2).
#   t  task0  task1  task2
#   0  0.5    -      -
#   1  0.9    -      -       <- task 0 ends (0.9)
#   2  0.4    0.6    -       <- stability gap of task 0
#   3  0.7    0.8    -       <- task 1 ends (0.8)
#   4  0.6    0.3    0.5
#   5  0.8    0.7    0.9
ACC = np.array([
    [0.5, nan, nan],
    [0.9, nan, nan],
    [0.4, 0.6, nan],
    [0.7, 0.8, nan],
    [0.6, 0.3, 0.5],
    [0.8, 0.7, 0.9],
])
TASK = np.array([0, 0, 1, 1, 2, 2])


def test_min_acc_is_mean_of_minima_after_each_task_end():
    # task 0 after t=1: min(0.4, 0.7, 0.6, 0.8) = 0.4; task 1 after t=3: min(0.3, 0.7) = 0.3
    assert min_acc(ACC, TASK) == pytest.approx((0.4 + 0.3) / 2)


def test_min_acc_excludes_the_task_end_and_the_own_training_period():
    # after 4 evaluations only task 0 is earlier: min over t=2,3 = 0.4 (not 0.5 from its own training)
    assert min_acc(ACC[:4], TASK[:4]) == pytest.approx(0.4)
    acc = np.array([[0.2, nan], [0.9, nan], [0.95, 0.1]])
    # task 0's only post-end value is 0.95; its own low 0.2 while trained must not count
    assert min_acc(acc, np.array([0, 0, 1])) == pytest.approx(0.95)


def test_min_acc_undefined_with_one_task():
    assert math.isnan(min_acc(ACC[:2], TASK[:2]))


def test_wc_acc_weights_current_task_by_one_over_k():
    # k = 3: (1/3) * 0.9 + (2/3) * 0.35 = 0.3 + 0.2333... = 0.5333...
    assert wc_acc(ACC, TASK) == pytest.approx(0.9 / 3 + 2 / 3 * 0.35)
    # k = 2 at t=3: (1/2) * 0.8 + (1/2) * 0.4 = 0.6
    assert wc_acc(ACC[:4], TASK[:4]) == pytest.approx(0.6)
    # k = 1: just the current accuracy
    assert wc_acc(ACC[:2], TASK[:2]) == pytest.approx(0.9)


def test_windowed_forgetting_largest_drop_within_window():
    # task 0 history 0.5 0.9 0.4 0.7 0.6 0.8 -> largest drop with j - i <= 1 (w=2): 0.9 -> 0.4 = 0.5
    # task 1 history 0.6 0.8 0.3 0.7 -> 0.8 -> 0.3 = 0.5 ; mean over earlier tasks (0, 1) = 0.5
    assert windowed_forgetting(ACC, TASK, window=2) == pytest.approx(0.5)
    # at t=3, only task 0 is earlier: its history so far 0.5 0.9 0.4 0.7 -> 0.5
    assert windowed_forgetting(ACC[:4], TASK[:4], window=10) == pytest.approx(0.5)


def test_windowed_forgetting_window_limits_the_span():
    acc = np.array([[1.0, nan], [0.9, nan], [0.8, 0.5], [0.7, 0.6], [0.6, 0.7]])
    task = np.array([0, 0, 1, 1, 1])
    # steady decline of 0.1 per evaluation on task 0: a window of w evaluations sees (w - 1) * 0.1
    assert windowed_forgetting(acc, task, window=2) == pytest.approx(0.1)
    assert windowed_forgetting(acc, task, window=3) == pytest.approx(0.2)
    assert windowed_forgetting(acc, task, window=10) == pytest.approx(0.4)  # whole history 1.0 -> 0.6


def test_windowed_forgetting_zero_when_accuracy_only_rises():
    acc = np.array([[0.1, nan], [0.2, nan], [0.3, 0.1], [0.4, 0.2]])
    assert windowed_forgetting(acc, np.array([0, 0, 1, 1]), window=10) == 0.0


def test_windowed_forgetting_matches_brute_force_on_random_history():
    rng = np.random.default_rng(0)
    a = rng.random(40)
    w = 7
    expected = max(0.0, max(a[i] - a[j] for i in range(40) for j in range(i + 1, min(i + w, 40))))
    assert max_window_change(a, w) == pytest.approx(expected)
    expected_rise = max(0.0, max(a[j] - a[i] for i in range(40) for j in range(i + 1, min(i + w, 40))))
    assert max_window_change(a, w, increase=True) == pytest.approx(expected_rise)


def test_windowed_plasticity_uses_each_task_while_trained():
    # task 0 trained at t=0,1: 0.5 -> 0.9 = 0.4 ; task 1 at t=2,3: 0.6 -> 0.8 = 0.2 ;
    # task 2 at t=4,5: 0.5 -> 0.9 = 0.4 ; mean = 1.0 / 3
    assert windowed_plasticity(ACC, TASK, window=10) == pytest.approx(1.0 / 3)


def test_average_accuracy_and_forgetting_at_task_ends():
    # final row over seen tasks: (0.8 + 0.7 + 0.9) / 3 = 0.8
    assert average_accuracy(ACC, TASK) == pytest.approx(0.8)
    # task 0: best at task ends t=1 (0.9), t=3 (0.7) -> 0.9 - 0.8 = 0.1 ; task 1: 0.8 - 0.7 = 0.1
    assert forgetting(ACC, TASK) == pytest.approx(0.1)
    # standard evaluation sees only task ends: it misses the 0.9 -> 0.4 gap that min-ACC reports
    assert task_end_accuracy(ACC, TASK) == {0: pytest.approx(0.9), 1: pytest.approx(0.8), 2: pytest.approx(0.9)}


def test_stability_gap_of_one_task():
    gap = stability_gap(ACC, TASK, 0)  # task 0 during task 1: 0.4, 0.7
    assert gap == {"task_end": pytest.approx(0.9), "minimum": pytest.approx(0.4), "minimum_at": 1,
                   "recovered": pytest.approx(0.7)}


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        min_acc(ACC, TASK[:3])
    with pytest.raises(ValueError):
        min_acc(ACC[:, 0], TASK)
    with pytest.raises(ValueError):
        wc_acc(ACC, np.array([0, 0, 1, 1, 2, 3]))  # task 3 has no column
