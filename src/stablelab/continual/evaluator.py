"""Continual evaluation: accuracy on a fixed subset of every seen task's test data, every k iterations.

Drop it into any training loop:

    evaluator = ContinualEvaluator([(x_test_0, y_test_0), (x_test_1, y_test_1), ...], every=1)
    for task in range(n_tasks):
        evaluator.start_task(task)
        for batch in task_batches:
            ...  # forward, backward, optimizer.step()
            evaluator.after_iteration(model)
    evaluator.metrics()  # min-ACC, WC-ACC, WF^w, WP^w, ... at the last evaluation

All seen tasks' subsets are concatenated into one tensor and scored in one batched forward pass
under torch.no_grad(), so an evaluation costs one inference pass over a few hundred examples.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from stablelab.continual import metrics as M


class ContinualEvaluator:
    """Per-iteration evaluation on fixed test subsets of every task seen so far.

    test_sets: one (x, y) pair per task (all tasks of the stream, seen or not).
    every: evaluate after every `every`-th training iteration (1 = every iteration, as in the paper).
    subset_size: examples per task kept for evaluation (a fixed random subset; None = all).
    batch_size: largest forward pass (None = all seen subsets at once).
    predict: maps model outputs to predicted labels (default: argmax over the last dimension).
    """

    def __init__(
        self,
        test_sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
        every: int = 1,
        subset_size: int | None = 100,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if every < 1:
            raise ValueError("every must be >= 1")
        if subset_size is not None and subset_size < 1:
            raise ValueError("subset_size must be >= 1 or None")
        if not test_sets:
            raise ValueError("need at least one task's test set")
        self.every = int(every)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.predict = predict or (lambda logits: logits.argmax(dim=-1))
        generator = torch.Generator().manual_seed(seed)
        self._x: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        for x, y in test_sets:
            if len(x) != len(y):
                raise ValueError("each test set needs as many labels as inputs")
            if subset_size is not None and len(x) > subset_size:
                keep = torch.randperm(len(x), generator=generator)[:subset_size]
                x, y = x[keep], y[keep]
            self._x.append(x.to(self.device))
            self._y.append(y.to(self.device))
        self.n_tasks = len(self._x)
        self._seen: list[int] = []
        self._current: int | None = None
        self._iteration = 0
        self._rows: list[np.ndarray] = []
        self._training_task: list[int] = []
        self._iterations: list[int] = []
        self._stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.eval_seconds = 0.0  # wall time spent inside evaluations (the evaluator's overhead)

    # -- the training loop calls these ------------------------------------------------------
    def start_task(self, task: int) -> None:
        """Mark the start of training on `task`; from now on it is evaluated too."""
        if not 0 <= task < self.n_tasks:
            raise ValueError(f"task {task} outside 0..{self.n_tasks - 1}")
        self._current = int(task)
        if task not in self._seen:
            self._seen.append(int(task))
            self._stacked = None  # the concatenated evaluation batch changes

    def after_iteration(self, model: torch.nn.Module) -> np.ndarray | None:
        """Call once after each optimizer step; evaluates every `every` iterations and returns
        that row of accuracies (NaN for unseen tasks), or None when this iteration is skipped."""
        if self._current is None:
            raise RuntimeError("call start_task(task) before the first training iteration")
        self._iteration += 1
        if self._iteration % self.every:
            return None
        started = time.perf_counter()
        row = self.evaluate(model)
        self.eval_seconds += time.perf_counter() - started
        self._rows.append(row)
        self._training_task.append(self._current)
        self._iterations.append(self._iteration)
        return row

    # -- evaluation ------------------------------------------------------------------------------
    def _stack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._stacked is None:
            xs = [self._x[t] for t in self._seen]
            ys = [self._y[t] for t in self._seen]
            owner = torch.cat(
                [torch.full((len(y),), i, dtype=torch.long, device=self.device) for i, y in enumerate(ys)]
            )
            self._stacked = (torch.cat(xs), torch.cat(ys), owner)
        return self._stacked

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> np.ndarray:
        """Accuracy on every seen task's subset now (NaN for unseen tasks); model mode is restored."""
        row = np.full(self.n_tasks, np.nan)
        if not self._seen:
            return row
        x, y, owner = self._stack()
        was_training = model.training
        model.eval()
        try:
            step = self.batch_size or len(x)
            correct = torch.cat(
                [self.predict(model(x[i : i + step])) == y[i : i + step] for i in range(0, len(x), step)]
            )
        finally:
            model.train(was_training)
        n = len(self._seen)
        hits = torch.zeros(n, device=self.device).index_add_(0, owner, correct.float())
        counts = torch.bincount(owner, minlength=n).float()
        values = (hits / counts).cpu().numpy()  # one device-to-host copy per evaluation
        row[self._seen] = values
        return row

    # -- results ---------------------------------------------------------------------------------
    @property
    def subsets(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed evaluation subset (x, y) of every task, seen or not."""
        return list(zip(self._x, self._y))

    @property
    def acc(self) -> np.ndarray:
        """(evaluations, tasks) accuracy history; NaN where a task was not yet seen."""
        if not self._rows:
            return np.empty((0, self.n_tasks))
        return np.stack(self._rows)

    @property
    def training_task(self) -> np.ndarray:
        return np.asarray(self._training_task, dtype=np.int64)

    @property
    def iterations(self) -> np.ndarray:
        """Training iteration (1-based, counted over the whole stream) of each evaluation."""
        return np.asarray(self._iterations, dtype=np.int64)

    def metrics(self) -> dict[str, float]:
        """min-ACC, WC-ACC, WF^10/100, WP^10/100, average accuracy and forgetting, now."""
        if not self._rows:
            raise RuntimeError("no evaluation recorded yet")
        return M.all_metrics(self.acc, self.training_task)
