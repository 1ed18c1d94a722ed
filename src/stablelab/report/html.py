"""Self-contained HTML pages: figures embedded as base64 PNG, no external assets, opens offline."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are rendered on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from stablelab.io import atomic_write_bytes  # noqa: E402

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1b1f24;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right} th{background:#f3f4f6}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}
.finding{background:#f6f8fa;border-left:4px solid #3b82f6;padding:.4em .8em;margin:.4em 0}
.warn{border-left-color:#dc2626} .meta{color:#57606a;font-size:.9em}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto}
"""


def figure_png(fig) -> bytes:
    """PNG bytes of a matplotlib figure (closes it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def png_img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


@dataclass
class Page:
    """An HTML report built section by section, then written atomically."""

    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, css_class: str = "") -> None:
        cls = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def findings(self, lines: Sequence[str], warn: Sequence[bool] | None = None) -> None:
        for i, line in enumerate(lines):
            cls = "finding warn" if warn and warn[i] else "finding"
            self.parts.append(f'<div class="{cls}">{html.escape(line)}</div>')

    def figure(self, fig, alt: str) -> bytes:
        """Embed a matplotlib figure; returns its PNG bytes (to save beside the page too)."""
        png = figure_png(fig)
        self.parts.append(png_img_tag(png, alt))
        return png

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.parts.append(table_html(header, rows))

    def preformatted(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def render(self) -> str:
        sub = f'<p class="meta">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{sub}{''.join(self.parts)}</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, self.render().encode("utf-8"))
        return path
