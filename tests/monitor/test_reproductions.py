"""Paper results seen through the monitor (slow: run with -m slow)."""

import pytest
import torch
import torch.nn.functional as F

from stablelab.monitor import Monitor


def _train_reference(qk_norm: bool, lr: float, steps: int = 300):
    from stablelab.data.corpus import BUILTIN, load_corpus, sample_batch
    from stablelab.models.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    corpus = load_corpus(BUILTIN)
    model = Transformer(TransformerConfig(d_model=128, n_layers=2, seq_len=64, qk_norm=qk_norm))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=1e-4 / lr)
    monitor = Monitor(model, optimizer, sinks=())
    generator = torch.Generator().manual_seed(10_000)
    warmup = 30
    for step in range(steps):
        for group in optimizer.param_groups:  # linear warm-up, then constant (enough to show growth)
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        x, y = sample_batch(corpus.train, 16, 64, generator)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        monitor.observe(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # after observe: the norm before clipping
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    return monitor


@pytest.mark.slow
def test_attention_logit_growth_without_qk_layernorm_is_flagged():
    """Wortsman et al. 2023 section 3.1 (and system.md: ~7e4 at lr 0.1 on this CPU-scale setup):
    without qk-layernorm the max attention logit grows past 1e4; qk-layernorm keeps it small."""
    plain = _train_reference(qk_norm=False, lr=0.1)
    normed = _train_reference(qk_norm=True, lr=0.1)
    growth = [e for e in plain.events if e.kind == "attn_logit_growth"]
    assert growth and any(e.severity == "critical" for e in growth)
    assert not [e for e in normed.events if e.kind == "attn_logit_growth"]
