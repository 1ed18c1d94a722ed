"""The proxy report's outcome sections: predictions with intervals, the prediction checked against
a real larger width, and LR sensitivity per value of each extra sweep axis (rendering only)."""

from __future__ import annotations

import math


def _g(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _iv(interval) -> str:
    return "-" if not interval else f"[{_g(interval[0])}, {_g(interval[1])}]"


def _name(row) -> str:
    return row["variant"] + (f" {row['setting']}" if row.get("setting") else "")


def prediction_rows(summary: dict) -> tuple[list[str], list[list], list[str], list[list]]:
    pred = summary["prediction"]
    per_lr = [["/".join(filter(None, [r["optimizer"] if r["optimizer"] != "adamw" else "", _name(r)])),
               r["depth"], r["lr"], _g((r.get("final_loss") or {}).get("predicted")),
               _iv((r.get("final_loss") or {}).get("interval")), _g((r.get("attn_logit") or {}).get("predicted")),
               _iv((r.get("attn_logit") or {}).get("interval")), "yes" if r.get("diverges") else "no"]
              for r in pred["per_lr"]]
    groups = [[_name(g), g["depth"], _g(g["best_lr"]["predicted"]), _iv(g["best_lr"]["interval"]),
               _g(g["largest_stable_lr"]["predicted"]), _iv(g["largest_stable_lr"]["interval"]),
               _g(g["lr_sensitivity"]["predicted"]), _iv(g["lr_sensitivity"]["interval"])]
              for g in pred.get("groups", [])]
    return (["variant", "depth", "lr", "final loss", "interval", "attn logit @ step", "interval", "diverges"], per_lr,
            ["variant", "depth", "best lr", "interval", "largest stable lr", "interval", "LR sensitivity",
             "interval"], groups)


def validation_rows(summary: dict) -> tuple[list[str], list[list]]:
    points = summary["validation"]["points"]
    return (["quantity", "variant", "lr", "predicted", "interval", "observed", "observed / predicted", "inside"],
            [[p["quantity"], _name(p), _g(p["lr"]), _g(p["predicted"]), _iv(p["interval"]), _g(p["observed"]),
              _g(p["ratio"]), "yes" if p["inside"] else "NO"] for p in points])


def validation_line(summary: dict) -> str:
    """One finding: inside/total overall and per predicted quantity (the table lists every point)."""
    v = summary["validation"]
    points = v["points"]
    inside = sum(p["inside"] for p in points)
    per = []
    for quantity in dict.fromkeys(p["quantity"] for p in points):
        mine = [p for p in points if p["quantity"] == quantity]
        per.append(f"{quantity} {sum(p['inside'] for p in mine)}/{len(mine)}")
    return (f"Prediction checked at width {v['width']} (trained for real, {v['n_runs']} runs, predicted from widths "
            f"{', '.join(map(str, v['from_widths']))}): {inside}/{len(points)} observed values fell inside their "
            f"intervals ({', '.join(per)}); every point is in the \"Prediction checked\" table.")


def axis_rows(summary: dict) -> list[tuple[str, list[str], list[list]]]:
    """One table per extra axis: LR sensitivity per value, variant and scale."""
    tables = []
    for axis, values in (summary.get("axes") or {}).items():
        scales = sorted({(e["width"], e["depth"]) for e in summary["scales"].values()})
        rows = []
        for value, label in values.items():
            for variant in dict.fromkeys(e["variant"] for e in summary["scales"].values()):
                cells = []
                for w, d in scales:
                    vals = [e["lr_sensitivity"] for e in summary["scales"].values()
                            if e["variant"] == variant and (e["width"], e["depth"]) == (w, d)
                            and label in e["setting"].split("_")]
                    cells.append(_g(sum(vals) / len(vals)) if vals else "-")
                rows.append([value, variant, *cells])
        tables.append((axis, [axis, "variant", *[f"w{w} d{d}" for w, d in scales]], rows))
    return tables


def outcome_sections(page, summary: dict) -> None:
    pred = summary["prediction"]
    page.heading("Predicted outcomes at the larger width")
    methods = pred.get("methods", {})
    page.paragraph(f"Predicted for width {pred['width']} ({pred['n_params'] / 1e6:.2f}M parameters). How: "
                   + "; ".join(f"{k}: {v}" for k, v in methods.items()) + ".")
    h1, r1, h2, r2 = prediction_rows(summary)
    page.table(h2, r2)
    page.table(h1, r1)
    if summary.get("validation"):
        page.heading("Prediction checked")
        page.paragraph(validation_line(summary) + " Each row: the prediction from the small widths, its interval, "
                       "and what the real run at this width measured.")
        page.table(*validation_rows(summary))
    for axis, header, rows in axis_rows(summary):
        page.heading(f"LR sensitivity per {axis}")
        page.paragraph("Mean over the other axes' values; the LR-vs-loss panels above show each curve.")
        page.table(header, rows)


def outcome_markdown(summary: dict) -> list[str]:
    def md(header, rows):
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(_g(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]

    pred = summary["prediction"]
    h1, r1, h2, r2 = prediction_rows(summary)
    lines = ["", f"## Predicted outcomes at width {pred['width']}", "", *md(h2, r2), "", *md(h1, r1)]
    if summary.get("validation"):
        lines += ["", "## Prediction checked", "", validation_line(summary), "", *md(*validation_rows(summary))]
    for axis, header, rows in axis_rows(summary):
        lines += ["", f"## LR sensitivity per {axis}", "", *md(header, rows)]
    return lines
