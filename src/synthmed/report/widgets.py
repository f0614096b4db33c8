"""Small HTML pieces of the report: number formats, tables, embedded images, sections, the style sheet."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.absent{color:#777;font-style:italic} .warn{background:#fde2e1;border:2px solid #c0392b;padding:.8em 1em;font-weight:bold}
.ok{background:#e3f4e1;border:1px solid #3c8d40;padding:.5em 1em} .note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.3em 0} pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
nav a{margin-right:.8em;font-size:.9em} .grid{display:flex;flex-wrap:wrap;gap:.5em} .grid img{max-width:48%}
"""


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return escape(str(value))


def ci(mean: float, lo: float, hi: float, n: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.3f} <span class=note>(n={n}, no CI)</span>"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f"<th class=l>{escape(str(h))}</th>" if i < left else f"<th>{escape(str(h))}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class=l>{c}</td>" if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def img(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return f"<p class=absent>Image not available: {escape(alt)}.</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def absent(what: str) -> str:
    return f"<p class=absent>Not available: {escape(what)}</p>"


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>\n{body}\n</section>'
