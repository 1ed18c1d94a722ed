"""Reproductions of Prieto et al. 2025 (arXiv 2501.04697) at the `stablelab grok` defaults (minutes)."""

import pytest

from stablelab.studies.grok import PRESETS, GrokConfig, train_variant


@pytest.mark.slow
def test_orthogonal_gradient_groks_where_plain_adamw_only_memorises():
    # paper: without regularisation AdamW fits the train set and stays at chance on the test set;
    # the orthogonal gradient (perpGrad) generalises without weight decay
    config = GrokConfig()
    plain, _ = train_variant(config, "softmax_adamw")
    orthogonal, _ = train_variant(config, "softmax_orthogonal_adamw")
    assert plain["final_train_acc"] == 1.0 and plain["final_test_acc"] < 0.2
    assert orthogonal["steps_to_95_test"] is not None and orthogonal["final_test_acc"] >= 0.95


@pytest.mark.slow
def test_collapse_preset_collapses_softmax_but_not_stablemax():
    # paper: softmax collapse stops learning on most samples; StableMax's loss never becomes exactly 0
    config = GrokConfig(**PRESETS["collapse"][0])
    plain, _ = train_variant(config, "softmax_adamw")
    stablemax, _ = train_variant(config, "stablemax_adamw")
    assert plain["max_softmax_collapse"] > 0.5
    assert stablemax["max_softmax_collapse"] == 0.0
