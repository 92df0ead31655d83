"""table.html: a run folder's report in one self-contained file that opens offline.

Assembled from what the renders left in the folder: the offline table
(table.json, its caption from table.md), the serving table (serving.json and
serving.md) and the charts (charts/*.svg, inlined). Tables are sortable by a
click on a column head, through tablesort (vendored in runner/report/vendor/ and
inlined with its licence line); nothing is fetched from the network. Every row
is in the tables, failed and unsupported ones with their reason; the charts
draw only what was measured. Rewritten whole by each render, so it always
shows both halves of a run that has both.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from runner.report.charts import FOLDER
from runner.shared import write_text_atomic

VENDOR = Path(__file__).resolve().parent / "vendor" / "tablesort-5.7.1"
SCRIPTS = ("tablesort.min.js", "tablesort.number.min.js")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
p.caption { margin: 0.1em 0; font-size: 0.9em; color: #444; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.failed td { color: #8a1c1c; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
"""


def _caption(markdown: Path) -> list[str]:
    """The caption lines at the top of a markdown table (up to its first blank line)."""
    if not markdown.is_file():
        return []
    lines = []
    for line in markdown.read_text().splitlines():
        if not line.strip():
            break
        lines.append(line.rstrip())
    return lines


def _cell(value: object) -> str:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    return html.escape(text).replace("\n", "<br>")


def _numeric(text: str) -> bool:
    head = text.split(" ")[0].replace(",", "")
    try:
        float(head)
    except ValueError:
        return False
    return True


def table_html(frame: pd.DataFrame, failed: list[bool] | None = None) -> str:
    """A sortable HTML table of text cells (newlines become line breaks)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = "".join(f'<td class="num">{_cell(v)}</td>' if _numeric(str(v)) else f"<td>{_cell(v)}</td>" for v in row)
        marked = ' class="failed"' if failed and failed[i] else ""
        body.append(f"<tr{marked}>{cells}</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _offline(folder: Path) -> list[str]:
    from runner.table import details_frame, display_frame  # runner.table imports this module

    path = folder / "table.json"
    if not path.is_file():
        return []
    records = json.loads(path.read_text())
    if not records:
        return []
    frame = pd.DataFrame.from_records(records)
    frame["Settings"] = [str(s).split(" / ") for s in frame["Settings"]]
    failed = [status != "ok" for status in frame["Status"]]
    parts = ["<h2>Batch-1 table</h2>"]
    parts += [f'<p class="caption">{html.escape(line)}</p>' for line in _caption(folder / "table.md")]
    parts.append(table_html(display_frame(frame, "\n"), failed))
    parts += ["<h2>Details</h2>", table_html(details_frame(frame, "\n"), failed)]
    return parts


def _serving(folder: Path) -> list[str]:
    path = folder / "serving.json"
    if not path.is_file():
        return []
    frame = pd.DataFrame.from_records(json.loads(path.read_text()))
    if frame.empty:
        return []
    parts = ["<h2>Serving</h2>"]
    parts += [f'<p class="caption">{html.escape(line)}</p>' for line in _caption(folder / "serving.md")]
    failed = [bool(str(n).startswith(("failed", "timeout", "not run"))) for n in frame.get("Notes", [])]
    parts.append(table_html(frame, failed))
    return parts


def _charts(folder: Path, kind: str) -> list[str]:
    parts = []
    for svg in sorted((folder / FOLDER).glob(f"{kind}-*.svg")) if (folder / FOLDER).is_dir() else ():
        text = svg.read_text()
        text = text[text.index("<svg") :]  # the inline element only: no XML declaration or doctype
        parts.append(f'<figure id="{svg.stem}">{text}</figure>')  # each chart carries its own title
    return parts


def page(title: str, body: list[str]) -> str:
    """A whole self-contained HTML page around body's parts, its tables made sortable."""
    scripts = "\n".join((VENDOR / name).read_text() for name in SCRIPTS)
    ready = (
        "document.querySelectorAll('table.sortable').forEach(function (t) { new Tablesort(t); });"
        "document.body.setAttribute('data-report', 'ready');"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            *body,
            f"<script>\n{scripts}\n</script>",
            f"<script>{ready}</script>",
            "</body></html>",
            "",
        ]
    )


def write_html(folder: Path, title: str) -> Path:
    """(Re)write folder/table.html from the folder's tables and charts; return its path."""
    body = _offline(folder) + _charts(folder, "offline") + _serving(folder) + _charts(folder, "serving")
    path = folder / "table.html"
    write_text_atomic(path, page(title, body))
    return path
