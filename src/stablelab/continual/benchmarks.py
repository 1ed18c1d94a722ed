"""Offline continual-learning benchmarks built from scikit-learn's digits (no download).

split-digits     class-incremental: 5 tasks of 2 classes each ({0,1}, {2,3}, ...), one 10-way head
                 (the digits analogue of split-MNIST, the paper's first benchmark).
permuted-digits  domain-incremental: every task has all 10 classes; task t applies a fixed random
                 permutation to the 64 pixels (task 0 is the identity), as in permuted-MNIST.
rotated-digits   domain-incremental: task t rotates every 8x8 image by a fixed angle (task 0: 0 deg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stablelab.data.digits import load_digits


@dataclass(frozen=True)
class Task:
    name: str
    x_train: torch.Tensor  # (n, 64) float32
    y_train: torch.Tensor  # (n,) int64, labels in 0..9
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class Benchmark:
    name: str
    scenario: str  # "class-incremental" or "domain-incremental"
    tasks: tuple[Task, ...]
    n_classes: int = 10
    n_inputs: int = 64

    @property
    def test_sets(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(task.x_test, task.y_test) for task in self.tasks]


def split_digits(n_tasks: int = 5, seed: int = 0) -> Benchmark:
    """Class-incremental split: task t holds classes 2t and 2t + 1 (10 / n_tasks classes per task)."""
    if n_tasks < 1 or 10 % n_tasks:
        raise ValueError("n_tasks must divide the 10 classes (1, 2, 5 or 10)")
    data = load_digits(seed=seed)
    per_task = 10 // n_tasks
    tasks = []
    for t in range(n_tasks):
        classes = torch.arange(t * per_task, (t + 1) * per_task)
        train = torch.isin(data.y_train, classes)
        test = torch.isin(data.y_test, classes)
        label = "{" + ",".join(str(c) for c in classes.tolist()) + "}"
        tasks.append(Task(f"classes {label}", data.x_train[train], data.y_train[train],
                          data.x_test[test], data.y_test[test]))
    return Benchmark("split-digits", "class-incremental", tuple(tasks))


def pixel_permutations(n_tasks: int, n_pixels: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Task 0 keeps pixel order; every later task gets its own fixed random permutation."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    perms = [torch.arange(n_pixels)]
    perms += [torch.randperm(n_pixels, generator=generator) for _ in range(n_tasks - 1)]
    return perms


def permuted_digits(n_tasks: int = 5, seed: int = 0) -> Benchmark:
    data = load_digits(seed=seed)
    tasks = tuple(
        Task(f"permutation {t}", data.x_train[:, perm], data.y_train, data.x_test[:, perm], data.y_test)
        for t, perm in enumerate(pixel_permutations(n_tasks, seed=seed))
    )
    return Benchmark("permuted-digits", "domain-incremental", tasks)


def rotate_images(x: torch.Tensor, degrees: float, side: int = 8) -> torch.Tensor:
    """Rotate flattened side x side images about their centre (bilinear, zeros outside)."""
    if degrees % 360 == 0:
        return x.clone()
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps each output location to the input location it samples (x right, y down);
    # this matrix turns the image clockwise on screen by `degrees` (90 equals torch.rot90(k=-1))
    matrix = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=x.dtype).expand(len(x), 2, 3)
    images = x.reshape(len(x), 1, side, side)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).reshape(len(x), side * side)


def rotated_digits(n_tasks: int = 5, max_degrees: float = 120.0, seed: int = 0) -> Benchmark:
    """Task t rotates by t * max_degrees / (n_tasks - 1) degrees (0 for task 0)."""
    data = load_digits(seed=seed)
    step = max_degrees / max(n_tasks - 1, 1)
    tasks = tuple(
        Task(f"rotation {t * step:g} deg", rotate_images(data.x_train, t * step), data.y_train,
             rotate_images(data.x_test, t * step), data.y_test)
        for t in range(n_tasks)
    )
    return Benchmark("rotated-digits", "domain-incremental", tasks)


BENCHMARKS = {
    "split-digits": split_digits,
    "permuted-digits": permuted_digits,
    "rotated-digits": rotated_digits,
}


def make_benchmark(name: str, n_tasks: int = 5, seed: int = 0) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](n_tasks=n_tasks, seed=seed)
