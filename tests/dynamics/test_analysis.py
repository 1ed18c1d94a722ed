"""The analysis functions of the dynamical-stability study on hand-worked inputs."""

from stablelab.analysis.dynamics import (bound_check, hover_statistics, kendall_tau, loss_spikes, mixture_ratio,
                                        norm_trend)


def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == (2 - 1) / 3
    assert kendall_tau([1], [1]) is None


def test_hover_statistics_counts_checks_after_first_reaching_the_band():
    steps = list(range(0, 80, 10))
    ratios = [0.2, 0.5, 0.9, 1.1, 1.3, 1.0, 0.95, 1.05]
    out = hover_statistics(steps, ratios, band=0.15)
    assert out["reached_step"] == 20 and out["checks_after"] == 6
    assert abs(out["fraction_within_band_after"] - 5 / 6) < 1e-12 and out["hovers"]
    assert not hover_statistics(steps, [0.1] * 8)["hovers"]


def test_loss_spikes_marks_entries_above_the_running_minimum():
    losses = [5, 4, 3, 2, 1, 1.5, 1.6, 0.9, 0.8, 2.0]
    assert loss_spikes(losses, factor=1.2, skip=2) == [5, 9]


def _row(model, optimizer, b, lr, ratio, norm, loss=1e-8):
    return {"model": model, "optimizer": optimizer, "batch_size": b, "lr": lr, "train_loss": loss,
            "trace": 2 * ratio / lr, "lambda_max": 0.1,
            "lr_trace_over_2": ratio, "norm": norm, "test_error": norm, "interpolated": loss < 1e-6}


def test_bound_check_and_norm_trend():
    runs = [_row("m", "sgd", 1, 0.1, 0.5, 3.0), _row("m", "sgd", 1, 0.2, 0.9, 2.0),
            _row("m", "sgd", 2, 0.2, 1.3, 2.5), _row("m", "sgd", 1, 0.4, 3.0, 1.0, loss=1.0),
            _row("m", "gd", 30, 0.1, 9.0, 4.0)]
    out = bound_check(runs, ["m"])["m"]
    assert out["interpolating_sgd_runs"] == 3 and out["max_lr_trace_over_2"] == 1.3 and not out["all_within"]
    assert out["by_batch_size"]["1"]["all_within"] and not out["by_batch_size"]["2"]["all_within"]
    trend = norm_trend(runs, ["m"])["m"]["sgd batch 1"]
    assert trend["norm_tau"] == -1.0 and trend["norm_falls"] and trend["lrs"] == [0.1, 0.2]


def test_mixture_ratio_is_the_trace_ratio_at_batch_1_and_interpolates_towards_lambda():
    row = {"optimizer": "sgd", "batch_size": 1, "lr": 0.1, "trace": 10.0, "lambda_max": 4.0}
    assert abs(mixture_ratio(row) - 0.5) < 1e-12
    assert abs(mixture_ratio({**row, "batch_size": 2}) - 0.05 * (5.0 + 2.0)) < 1e-12
    assert abs(mixture_ratio({**row, "optimizer": "gd", "batch_size": 30}) - 0.2) < 1e-12
    assert mixture_ratio({**row, "trace": None}) is None
