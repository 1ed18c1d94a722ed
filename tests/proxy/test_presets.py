"""The proxy study's named presets parse and set what docs/proxy.md says they set (none is run: too slow)."""

import pytest

from stablelab import config
from stablelab.studies.proxy import ProxySettings, grid_for


def _grid(preset, **flags):
    return grid_for(config.from_flags(ProxySettings, flags, preset=preset))


def test_divergence_preset():
    grid = _grid("divergence")
    assert grid.widths == (64, 128, 256) and grid.depths == (2,)
    assert grid.lrs == (0.1, 0.3, 1.0, 2.0, 3.0)
    assert grid.variants == ("baseline", "qk_norm")
    runs = grid.runs()
    assert len(runs) == 3 * 5 * 2
    # the recipe is the default one except the length: warm-up 10 %, weight decay 1e-4, eps 1e-8
    assert {(r.steps, r.warmup_fraction, r.weight_decay, r.eps, r.batch_size) for r in runs} == {(400, 0.1, 1e-4, 1e-8, 8)}


def test_width_sensitivity_preset():
    grid = _grid("width-sensitivity")
    assert grid.widths == (32, 64, 128) and grid.depths == (2,)
    assert grid.lrs == (0.01, 0.03, 0.1, 0.3, 1.0, 2.0)
    assert grid.variants == ("baseline", "qk_norm")
    runs = grid.runs()
    assert len(runs) == 3 * 6 * 2 and {r.steps for r in runs} == {400}


def test_logit_divergence_preset():
    grid = _grid("logit-divergence")
    assert grid.widths == (32, 64) and grid.lrs == (0.1, 0.3, 1.0)
    assert {(r.steps, r.weight_decay, r.log_every) for r in grid.runs()} == {(2000, 0.0, 20)}


@pytest.mark.parametrize("preset", ["divergence", "width-sensitivity"])
def test_flags_override_a_preset(preset):
    grid = _grid(preset, widths="32", steps="10")
    assert grid.widths == (32,) and {r.steps for r in grid.runs()} == {10}
