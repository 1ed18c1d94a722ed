"""Overhead of continual evaluation per evaluated training iteration (stablelab.continual).

Trains the gap study's learner (MLP 2x256, SGD, batch 32) on split-digits with every task already
seen, so each evaluation scores all 5 tasks (5 x --subset test examples): the worst case of a stream.
Compares, per training iteration (median of --repeats timed blocks):
  train only                      no evaluation
  + ContinualEvaluator, every k   one batched no_grad forward over all seen tasks' subsets
  + naive per-task evaluation     one forward per task, autograd left on (what a quick loop does)
  + bare no_grad forward          the same examples through the model, nothing else: the floor
Run:  .venv/bin/python benchmarks/continual_eval.py [--iterations 200] [--repeats 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from stablelab.continual import ContinualEvaluator, MLP, split_digits
from stablelab.store.files import atomic_write_json


def naive_evaluate(model, test_sets):
    model.eval()
    accs = [float((model(x).argmax(-1) == y).float().mean()) for x, y in test_sets]  # grad on
    model.train()
    return accs


def time_block(mode: str, every: int, iterations: int, bench, subset: int, device, seed: int) -> float:
    torch.manual_seed(seed)
    model = MLP(hidden=256).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x_all = torch.cat([t.x_train for t in bench.tasks]).to(device)
    y_all = torch.cat([t.y_train for t in bench.tasks]).to(device)
    evaluator = ContinualEvaluator(bench.test_sets, every=every, subset_size=subset, device=device)
    for task in range(len(bench.tasks)):
        evaluator.start_task(task)
    naive_sets = evaluator.subsets  # the same examples, already on the device
    x_eval = torch.cat([x for x, _ in naive_sets])
    generator = torch.Generator().manual_seed(seed)
    picks = [torch.randint(len(x_all), (32,), generator=generator) for _ in range(iterations)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i, pick in enumerate(picks, start=1):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_all[pick]), y_all[pick]).backward()
        optimizer.step()
        if mode == "evaluator":
            evaluator.after_iteration(model)
        elif mode == "naive" and i % every == 0:
            naive_evaluate(model, naive_sets)
        elif mode == "forward" and i % every == 0:
            with torch.no_grad():
                model(x_eval)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subset", type=int, default=100, help="test examples per task")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="optional JSON file for the numbers")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bench = split_digits()
    cases = [("train only", "none", 1), ("ContinualEvaluator every 1", "evaluator", 1),
             ("ContinualEvaluator every 10", "evaluator", 10), ("naive per-task every 1", "naive", 1),
             ("bare no_grad forward every 1", "forward", 1)]
    results = {}
    for _ in range(args.repeats):  # interleave cases so machine-load drift hits them alike
        for name, mode, every in cases:
            seconds = time_block(mode, every, args.iterations, bench, args.subset, device, seed=0)
            results.setdefault(name, []).append(seconds)
    base = statistics.median(results["train only"])
    rows = []
    print(f"{'case':32s} {'ms/iter':>9s} {'overhead ms/iter':>17s} {'x train step':>13s}")
    for name, _, every in cases:
        ms = 1e3 * statistics.median(results[name])
        overhead = ms - 1e3 * base
        rows.append({"case": name, "every": every, "ms_per_iteration": ms,
                     "overhead_ms_per_iteration": overhead,
                     "overhead_ms_per_evaluation": overhead * every, "ratio_to_train": ms / (1e3 * base)})
        print(f"{name:32s} {ms:9.3f} {overhead:17.3f} {ms / (1e3 * base):13.2f}")
    report = {"device": str(device), "threads": args.threads, "iterations": args.iterations,
              "repeats": args.repeats, "tasks_evaluated": len(bench.tasks),
              "examples_per_evaluation": sum(len(y) for y in [t[1][: args.subset] for t in bench.test_sets]),
              "results": rows}
    print(json.dumps({k: v for k, v in report.items() if k != "results"}))
    if args.out:
        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
