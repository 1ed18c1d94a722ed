"""Early blow-ups: learning-rate sweeps of two language models and a classifier, where the highest
rates blow up in their first steps. For each run: the blow-up step (the first loss at least 2x the
first step's loss; none: the run did not blow up) and the monitor's first warning (default policy,
so warnings only). Healthy runs should stay quiet.

    .venv/bin/python benchmarks/early_blowup.py [--steps 60] [--out early_blowup.json]

Models: stablelab's reference transformer (byte vocabulary), Hugging Face GPT-2 from a config
(fused c_attn), and an MLP on scikit-learn's digits. Tokens follow a noisy "next = token + 1"
rule, so the LMs learn; everything runs on the CPU in about a minute."""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.monitor import Monitor

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def _tokens(vocab, length, batch, generator):
    start = torch.randint(0, vocab, (batch, 1), generator=generator)
    seq = (start + torch.arange(length + 1)) % vocab
    noise = torch.rand(seq.shape, generator=generator) < 0.1
    seq = torch.where(noise, torch.randint(0, vocab, seq.shape, generator=generator), seq)
    return seq[:, :-1], seq[:, 1:]


def reference_lm():
    from stablelab.models.transformer import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(vocab_size=256, seq_len=32, d_model=64, d_head=16, n_layers=2))

    def loss(generator):
        x, y = _tokens(256, 32, 16, generator)
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    return model, loss


def gpt2_lm():
    import transformers

    config = transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)

    def loss(generator):
        x, _ = _tokens(256, 32, 16, generator)
        return model(x, labels=x).loss

    return model, loss


def digits_mlp():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))

    def loss(generator):
        index = torch.randint(0, len(x), (64,), generator=generator)
        return F.cross_entropy(model(x[index]), y[index])

    return model, loss


MODELS = {"reference LM": reference_lm, "GPT-2 (config)": gpt2_lm, "MLP on digits": digits_mlp}


def run(name, lr, steps):
    torch.manual_seed(0)
    model, loss_fn = MODELS[name]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    monitor = Monitor(model, optimizer, sinks=())
    generator, losses = torch.Generator().manual_seed(1), []
    for _ in range(steps):
        loss = loss_fn(generator)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    monitor.close()
    warnings = [e for e in monitor.events if e.severity in ("warning", "critical")]
    blow_up = next((t for t, value in enumerate(losses) if not value < 2 * losses[0]), None)
    return {"model": name, "lr": lr, "blow_up_step": blow_up,
            "first_warning_step": warnings[0].step if warnings else None,
            "first_warning": warnings[0].kind if warnings else None, "warnings": len(warnings),
            "first_loss": losses[0], "max_loss": max(losses), "last_loss": losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = [run(name, lr, args.steps) for name in MODELS for lr in LRS]
    print("| model | lr | blow-up step | first warning (kind) | warnings | first -> max loss |")
    print("|---|---|---|---|---|---|")
    for r in results:
        warned = "-" if r["first_warning_step"] is None else f"{r['first_warning_step']} ({r['first_warning']})"
        print(f"| {r['model']} | {r['lr']:g} | {'-' if r['blow_up_step'] is None else r['blow_up_step']} | "
              f"{warned} | {r['warnings']} | {r['first_loss']:.3g} -> {r['max_loss']:.3g} |")
    blown = [r for r in results if r["blow_up_step"] is not None]
    on_time = [r for r in blown if r["first_warning_step"] is not None
               and r["first_warning_step"] <= r["blow_up_step"]]
    calm = [r for r in results if r["max_loss"] <= 1.1 * r["first_loss"]]  # the loss never rose 10%
    print(f"\n{len(on_time)} of {len(blown)} blow-ups warned at or before their step; "
          f"{sum(r['warnings'] > 0 for r in calm)} of {len(calm)} runs whose loss never rose 10% above its "
          "first value got a warning")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
