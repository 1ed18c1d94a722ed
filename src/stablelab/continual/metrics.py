"""Continual-evaluation metrics: pure functions over an accuracy history.

Every function takes
  acc            (T, N) array; acc[t, j] = accuracy on task j at evaluation t, NaN while task j is unseen;
  training_task  (T,) integer array; the task being trained at evaluation t,
and returns the metric at the last evaluation (t = T - 1) as a float (NaN when it is undefined there).

Definitions follow De Lange, van de Ven and Tuytelaars, "Continual evaluation for lifelong learning:
identifying the stability gap" (ICLR 2023, arXiv 2205.13452) and their code (Mattdl/ContinualEvaluation).
The task trained last is the *current* task; the other tasks seen so far are the *earlier* tasks.
"""

from __future__ import annotations

import numpy as np


def _as_history(acc, training_task) -> tuple[np.ndarray, np.ndarray]:
    acc = np.asarray(acc, dtype=np.float64)
    training_task = np.asarray(training_task)
    if acc.ndim != 2:
        raise ValueError(f"acc must be 2-D (evaluations x tasks), got shape {acc.shape}")
    if training_task.shape != (acc.shape[0],):
        raise ValueError(
            f"training_task must have shape ({acc.shape[0]},), got {training_task.shape}"
        )
    if acc.shape[0] == 0:
        raise ValueError("empty accuracy history")
    if not np.issubdtype(training_task.dtype, np.integer):
        raise ValueError("training_task must hold integer task ids")
    if training_task.min() < 0 or training_task.max() >= acc.shape[1]:
        raise ValueError("training_task holds a task id outside acc's columns")
    return acc, training_task.astype(np.int64)


def seen_tasks(training_task) -> list[int]:
    """Tasks trained so far, in the order they were first trained."""
    order: list[int] = []
    for task in np.asarray(training_task).tolist():
        if task not in order:
            order.append(int(task))
    return order


def earlier_tasks(training_task) -> list[int]:
    """Tasks trained before the current (last-trained) task, in training order."""
    current = int(np.asarray(training_task)[-1])
    return [task for task in seen_tasks(training_task) if task != current]


def task_end_indices(training_task) -> dict[int, int]:
    """Index of the last evaluation during which each seen task was trained (its task end)."""
    training_task = np.asarray(training_task)
    return {task: int(np.flatnonzero(training_task == task)[-1]) for task in seen_tasks(training_task)}


def per_task_min_acc(acc, training_task) -> dict[int, float]:
    """For each earlier task j: the minimum accuracy on j over the evaluations after j's task end."""
    acc, training_task = _as_history(acc, training_task)
    ends = task_end_indices(training_task)
    out = {}
    for task in earlier_tasks(training_task):
        after = acc[ends[task] + 1 :, task]
        after = after[~np.isnan(after)]
        out[task] = float(after.min()) if after.size else float("nan")
    return out


def min_acc(acc, training_task) -> float:
    """min-ACC: mean over earlier tasks of the minimum accuracy seen since that task ended.

    NaN while only one task has been trained (there are no earlier tasks)."""
    # De Lange et al. 2023, eq. for min-ACC_{T_k}: (1/(k-1)) sum_{i<k} min_{n > |T_<=i|} A(E_i, f_n)
    values = list(per_task_min_acc(acc, training_task).values())
    return float(np.mean(values)) if values else float("nan")


def wc_acc(acc, training_task) -> float:
    """WC-ACC: (1/k) acc(current task) + (1 - 1/k) min-ACC, k = number of tasks trained so far."""
    acc, training_task = _as_history(acc, training_task)
    current = int(training_task[-1])
    k = len(seen_tasks(training_task))
    current_acc = float(acc[-1, current])
    if k == 1:  # no earlier tasks: the worst case is the current accuracy
        return current_acc
    # De Lange et al. 2023: WC-ACC_t = (1/k) A(E_k, f_t) + (1 - 1/k) min-ACC_{T_k}
    return current_acc / k + (1.0 - 1.0 / k) * min_acc(acc, training_task)


def max_window_change(series, window: int, increase: bool = False) -> float:
    """Largest drop a_i - a_j (or rise a_j - a_i if increase) over i < j inside any window of
    `window` consecutive values; 0 if there is no pair or no drop (rise). NaNs are skipped."""
    if window < 2:
        raise ValueError("window must be at least 2 (a change needs two evaluations)")
    a = np.asarray(series, dtype=np.float64)
    a = a[~np.isnan(a)]
    best = 0.0  # the official code starts every task's maximum at 0
    for lag in range(1, min(window, a.size)):  # i < j in one window of w values <=> 1 <= j - i <= w - 1
        diff = a[lag:] - a[:-lag] if increase else a[:-lag] - a[lag:]
        best = max(best, float(diff.max()))
    return best


def windowed_forgetting(acc, training_task, window: int = 10) -> float:
    """WF^w: per earlier task, the largest accuracy drop max_{i<j}(a_i - a_j) within any window of
    `window` consecutive evaluations of that task's history so far; mean over the earlier tasks.

    NaN while only one task has been trained."""
    # De Lange et al. 2023, windowed forgetting WF^w (w = 10 and 100 in the paper)
    acc, training_task = _as_history(acc, training_task)
    values = [max_window_change(acc[:, task], window) for task in earlier_tasks(training_task)]
    return float(np.mean(values)) if values else float("nan")


def windowed_plasticity(acc, training_task, window: int = 10) -> float:
    """WP^w: per seen task, the largest accuracy rise max_{i<j}(a_j - a_i) within any window of
    `window` consecutive evaluations taken while that task was being trained; mean over seen tasks."""
    # De Lange et al. 2023, windowed plasticity WP^w: the mirror of WF^w for the learning task
    acc, training_task = _as_history(acc, training_task)
    values = [
        max_window_change(acc[training_task == task, task], window, increase=True)
        for task in seen_tasks(training_task)
    ]
    return float(np.mean(values))


def average_accuracy(acc, training_task) -> float:
    """Average accuracy over all tasks trained so far, at the last evaluation."""
    acc, training_task = _as_history(acc, training_task)
    # Standard ACC (e.g. Chaudhry et al. 2018): (1/k) sum_{j<=k} a_{k,j}
    return float(np.mean([acc[-1, task] for task in seen_tasks(training_task)]))


def forgetting(acc, training_task) -> float:
    """Average forgetting: per earlier task j, the best accuracy on j at any earlier task end minus
    its accuracy now; mean over earlier tasks. Only task ends count (the classic, end-of-task view)."""
    acc, training_task = _as_history(acc, training_task)
    ends = task_end_indices(training_task)
    current = int(training_task[-1])
    values = []
    for task in earlier_tasks(training_task):
        # Chaudhry et al. 2018: f_j = max_{l < k} a_{l,j} - a_{k,j}, a_{l,j} measured at the end of task l
        past_ends = [t for other, t in ends.items() if other != current and t >= ends[task]]
        values.append(float(np.nanmax(acc[past_ends, task]) - acc[-1, task]))
    return float(np.mean(values)) if values else float("nan")


def task_end_accuracy(acc, training_task) -> dict[int, float]:
    """Accuracy on each seen task at its own task end (the value standard evaluation reports)."""
    acc, training_task = _as_history(acc, training_task)
    return {task: float(acc[t, task]) for task, t in task_end_indices(training_task).items()}


def all_metrics(acc, training_task) -> dict[str, float]:
    """The metric table of the stability-gap report, at the last evaluation."""
    return {
        "average_accuracy": average_accuracy(acc, training_task),
        "forgetting": forgetting(acc, training_task),
        "min_acc": min_acc(acc, training_task),
        "wc_acc": wc_acc(acc, training_task),
        "wf10": windowed_forgetting(acc, training_task, window=10),
        "wf100": windowed_forgetting(acc, training_task, window=100),
        "wp10": windowed_plasticity(acc, training_task, window=10),
        "wp100": windowed_plasticity(acc, training_task, window=100),
    }


def stability_gap(acc, training_task, task: int) -> dict[str, float]:
    """The gap of one task across the next task: its accuracy at its own task end, the minimum
    during the following task, where that minimum fell (evaluations after the switch, 1-based),
    and its accuracy at the end of the following task (the recovery)."""
    acc, training_task = _as_history(acc, training_task)
    ends = task_end_indices(training_task)
    if task not in ends:
        raise ValueError(f"task {task} was never trained")
    start = ends[task] + 1
    if start >= len(training_task):
        raise ValueError(f"no evaluation after task {task} ended")
    following = int(training_task[start])
    stop = int(np.flatnonzero(training_task[start:] != following)[0]) + start \
        if np.any(training_task[start:] != following) else len(training_task)
    segment = acc[start:stop, task]
    lowest = int(np.nanargmin(segment))
    return {
        "task_end": float(acc[ends[task], task]),
        "minimum": float(segment[lowest]),
        "minimum_at": lowest + 1,
        "recovered": float(segment[-1]),
    }
