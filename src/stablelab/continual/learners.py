"""Continual learners on a small MLP: fine-tuning, experience replay, EWC; and the stream loop.

A learner owns a model and an optimizer and exposes three moments:
  start_task(task)   before the first iteration of a task
  observe(x, y)      one training iteration on a batch of the current task
  end_task(task, x, y) after the last iteration (with the task's training data, for memories/Fisher)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from stablelab.continual.benchmarks import Benchmark
from stablelab.continual.evaluator import ContinualEvaluator
from stablelab.nn.mlp import MLP  # the one MLP of the package; re-exported as continual.MLP


class FineTuning:
    """Plain SGD on the current task's batches: the lower bound every method is compared with."""

    name = "finetune"

    def __init__(self, model: nn.Module, lr: float = 0.05, momentum: float = 0.0):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        # called with the loss after backward, before optimizer.step() (e.g. Monitor.observe)
        self.before_step: Callable[[torch.Tensor], None] | None = None

    def start_task(self, task: int) -> None:
        pass

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y)
        loss.backward()
        if self.before_step is not None:
            self.before_step(loss.detach())
        self.optimizer.step()
        return float(loss.detach())

    def end_task(self, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        pass


class ExperienceReplay(FineTuning):
    """Experience replay (ER): each iteration trains on the new batch concatenated with an equally
    sized batch drawn from a task-balanced memory (memory_size / tasks-seen examples per task,
    filled at each task end with a random subset of that task's training data)."""

    name = "replay"

    def __init__(self, model: nn.Module, lr: float = 0.05, momentum: float = 0.0,
                 memory_size: int = 200, seed: int = 0):
        super().__init__(model, lr=lr, momentum=momentum)
        if memory_size < 1:
            raise ValueError("memory_size must be >= 1")
        self.memory_size = memory_size
        self.generator = torch.Generator().manual_seed(seed)
        self.memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def memory_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.memory:
            return None
        xs, ys = zip(*self.memory.values())
        return torch.cat(xs), torch.cat(ys)

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> float:
        memory = self.memory_tensors()
        if memory is not None:
            mx, my = memory
            pick = torch.randint(len(mx), (len(x),), generator=self.generator).to(mx.device)
            x, y = torch.cat([x, mx[pick]]), torch.cat([y, my[pick]])
        return super().observe(x, y)

    def end_task(self, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.memory[task] = (x, y)
        per_task = self.memory_size // len(self.memory)
        for t, (mx, my) in self.memory.items():  # shrink every task's share to keep the total fixed
            if len(mx) > per_task:
                keep = torch.randperm(len(mx), generator=self.generator)[:per_task].to(mx.device)
                self.memory[t] = (mx[keep], my[keep])


def diagonal_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256,
                    architecture: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher: mean over examples of the squared per-example gradient of the
    log-likelihood of the true label (Kirkpatrick et al. 2017, EWC), at model's parameters.
    architecture: a module with the same parameter names run in place of model (default: model),
    e.g. a hook-free copy so monitors hooked on model do not see this pass."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    network = model if architecture is None else architecture

    def example_loss(p, xi, yi):
        logits = functional_call(network, p, (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = network.training
    network.eval()
    try:
        for i in range(0, len(x), chunk):
            grads = per_example(params, x[i : i + chunk], y[i : i + chunk])
            for name, g in grads.items():
                total[name] += g.pow(2).sum(dim=0)
    finally:
        network.train(was_training)
    return {name: value / len(x) for name, value in total.items()}


class EWC(FineTuning):
    """Elastic weight consolidation: loss + (lambda / 2) sum_tasks sum_i F_i (theta_i - theta*_i)^2."""

    name = "ewc"

    def __init__(self, model: nn.Module, lr: float = 0.05, momentum: float = 0.0,
                 ewc_lambda: float = 100.0):
        super().__init__(model, lr=lr, momentum=momentum)
        self.ewc_lambda = ewc_lambda
        # a private copy of the architecture for the Fisher pass, taken before any tool hooks the
        # model: forward hooks (e.g. a Monitor's) must not see vmapped per-example forwards
        self._architecture = copy.deepcopy(model)
        # sum_t F_t (theta - theta*_t)^2 = A theta^2 - 2 B theta + C with A = sum F_t,
        # B = sum F_t theta*_t, C = sum F_t theta*_t^2: one term per parameter however many tasks
        self.quadratic: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def penalty(self) -> torch.Tensor:
        # Kirkpatrick et al. 2017, eq. 3, summed over finished tasks
        total = torch.zeros((), device=next(self.model.parameters()).device)
        for name, p in self.model.named_parameters():
            if name in self.quadratic:
                a, b, c = self.quadratic[name]
                total = total + (a * p * p - 2.0 * b * p + c).sum()
        return 0.5 * self.ewc_lambda * total

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.quadratic:
            return super().loss(x, y)
        return super().loss(x, y) + self.penalty()

    def end_task(self, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        fisher = diagonal_fisher(self.model, x, y, architecture=self._architecture)
        for name, p in self.model.named_parameters():
            f, optimum = fisher[name], p.detach().clone()
            a, b, c = self.quadratic.get(name, (0.0, 0.0, 0.0))
            self.quadratic[name] = (a + f, b + f * optimum, c + f * optimum * optimum)




@dataclass
class StreamConfig:
    iterations_per_task: int = 200
    batch_size: int = 32
    lr: float = 0.02
    momentum: float = 0.9  # SGD with momentum: the dip is deep and lasts ~10-30 iterations
    hidden: int = 256
    memory_size: int = 200
    ewc_lambda: float = 100.0
    eval_every: int = 1
    eval_subset: int | None = 100
    seed: int = 0
    device: str = "cpu"


# name -> factory(model, config): the learners the stream loop and the gap study know by name
LEARNERS: dict[str, Callable[[nn.Module, "StreamConfig"], FineTuning]] = {
    "finetune": lambda model, c: FineTuning(model, lr=c.lr, momentum=c.momentum),
    "replay": lambda model, c: ExperienceReplay(model, lr=c.lr, momentum=c.momentum,
                                                memory_size=c.memory_size, seed=c.seed),
    "ewc": lambda model, c: EWC(model, lr=c.lr, momentum=c.momentum, ewc_lambda=c.ewc_lambda),
}


def make_learner(name: str, model: nn.Module, config: StreamConfig) -> FineTuning:
    if name not in LEARNERS:
        raise KeyError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    return LEARNERS[name](model, config)


def run_stream(benchmark: Benchmark, learner_name: str, config: StreamConfig,
               on_iteration: Callable[[], None] | None = None,
               on_learner: Callable[[FineTuning], None] | None = None) -> ContinualEvaluator:
    """Train one learner through the benchmark's tasks in order, evaluating continually.
    on_learner(learner) runs once before training (e.g. to attach a monitor to learner.model and
    learner.optimizer, or set learner.before_step). Returns the evaluator (its .acc /
    .training_task / .metrics() hold the results)."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    # 2 hidden ReLU layers with biases, one shared head for all tasks
    model = MLP(benchmark.n_inputs, benchmark.n_classes, hidden=(config.hidden,) * 2, bias=True).to(device)
    learner = make_learner(learner_name, model, config)
    if on_learner is not None:
        on_learner(learner)
    evaluator = ContinualEvaluator(benchmark.test_sets, every=config.eval_every,
                                   subset_size=config.eval_subset, device=device, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    for t, task in enumerate(benchmark.tasks):
        x, y = task.x_train.to(device), task.y_train.to(device)
        learner.start_task(t)
        evaluator.start_task(t)
        for _ in range(config.iterations_per_task):
            pick = torch.randint(len(x), (config.batch_size,), generator=generator).to(device)
            learner.observe(x[pick], y[pick])
            evaluator.after_iteration(model)
            if on_iteration is not None:
                on_iteration()
        learner.end_task(t, x, y)
    return evaluator
