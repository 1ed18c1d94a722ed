"""Continual evaluation and the stability gap (De Lange et al. 2023): a per-iteration evaluator,
worst-case metrics over the accuracy history, offline digits benchmarks and simple learners."""

from stablelab.continual.benchmarks import (
    Benchmark,
    Task,
    make_benchmark,
    permuted_digits,
    rotated_digits,
    split_digits,
)
from stablelab.continual.evaluator import ContinualEvaluator
from stablelab.continual.learners import (
    EWC,
    MLP,
    ExperienceReplay,
    FineTuning,
    StreamConfig,
    run_stream,
)
from stablelab.continual.metrics import (
    all_metrics,
    average_accuracy,
    forgetting,
    min_acc,
    task_end_accuracy,
    wc_acc,
    windowed_forgetting,
    windowed_plasticity,
)

__all__ = [
    "Benchmark", "Task", "make_benchmark", "split_digits", "permuted_digits", "rotated_digits",
    "ContinualEvaluator", "MLP", "FineTuning", "ExperienceReplay", "EWC", "StreamConfig",
    "run_stream", "min_acc", "wc_acc", "windowed_forgetting", "windowed_plasticity",
    "average_accuracy", "forgetting", "task_end_accuracy", "all_metrics",
]
