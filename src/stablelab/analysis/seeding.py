"""Seeds where they pay: when the study's one-seed backtest is too loose to plan on (pure).

A study runs one seed per grid point. Its backtest (the largest width predicted from the smaller
ones, `analysis.prediction`) says how wide the forecast's calibrated final-loss intervals are. When
their median is wider than `LOOSE_INTERVAL_WIDTH` of the loss, the width is mostly one run's noise
at 200 steps (docs/proxy.md: a second seed narrowed LLaMA's by a third), so the study adds
seeds (`--seeds-when-loose`, default 2): every grid point and the check then use the seed mean."""

from __future__ import annotations

import numpy as np

# Issue 25's bar for a forecast to plan a run on: the median final-loss interval no wider than 10%
# of the predicted loss.
LOOSE_INTERVAL_WIDTH = 0.10


def median_interval_width(points: list[dict], quantity: str = "final_loss") -> float | None:
    """Median of (hi - lo) / predicted over the calibrated points of one quantity (an uncalibrated
    interval is a wide default, not a measurement of the noise)."""
    widths = [(p["interval"][1] - p["interval"][0]) / p["predicted"] for p in points
              if p["quantity"] == quantity and p.get("calibrated", True) and p.get("interval")
              and None not in p["interval"] and p.get("predicted")]
    return float(np.median(widths)) if widths else None


def seeds_for(backtest: dict | None, seeds: int, seeds_when_loose: int,
              loose: float | None = None) -> tuple[int, str | None]:
    """(seeds to run, why): `seeds_when_loose` when the backtest's median final-loss interval is wider
    than `loose` and that is more seeds than asked; otherwise `seeds` and None. Without a backtest
    (fewer than 3 widths) nothing can say the forecast is loose, so nothing is added."""
    loose = LOOSE_INTERVAL_WIDTH if loose is None else loose
    width = median_interval_width(backtest["points"]) if backtest else None
    if width is None or width <= loose or seeds_when_loose <= seeds:
        return seeds, None
    return seeds_when_loose, (f"the {seeds}-seed backtest's final-loss intervals are {100 * width:.0f}% wide "
                              f"(median; above {100 * loose:.0f}%), so every grid point runs {seeds_when_loose} "
                              "seeds and the forecast uses their mean")
