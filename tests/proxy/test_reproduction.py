"""Reproduction of Wortsman et al. 2023 (arXiv 2309.14322) at CPU scale, section 3.1: without
qk-layernorm the attention logits of a small model grow past 1e3 at a high LR and its loss is
worse; qk-layernorm keeps the logits small and lowers LR sensitivity."""

import json

import pytest

from stablelab.cli import main


@pytest.mark.slow
def test_proxy_smoke_attention_logit_growth_and_qk_norm(tmp_path):
    out = tmp_path / "out"
    code = main(["proxy", "--widths", "64", "--lrs", "1e-3,1e-2,3e-1", "--variants", "baseline,qk_norm",
                 "--steps", "150", "--workers", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    run = {(r["variant"], r["lr"]): r for r in summary["runs"]}
    # Paper, section 3.1: attention logit growth without qk-layernorm at high LR.
    assert run[("baseline", 0.3)]["max_attn_logit"] > 1e3
    assert run[("qk_norm", 0.3)]["max_attn_logit"] < min(1e3, 0.1 * run[("baseline", 0.3)]["max_attn_logit"])
    assert run[("qk_norm", 0.3)]["final_loss"] < run[("baseline", 0.3)]["final_loss"]
    sensitivity = summary["lr_sensitivity"]
    assert sensitivity["qk_norm"]["64"] < sensitivity["baseline"]["64"]
