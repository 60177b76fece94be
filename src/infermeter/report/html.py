"""One self-contained HTML page: figures as data URIs, tables inline, no external anything.

Every section is a figure with a one-line caption (what was measured, on what device, when)
and the table of numbers behind it (folded, with a CSV download made from a data URI), or,
when the store lacks the data, a note naming the command that would produce it. The only
script is a few lines that sort a table when its header is clicked; the page works without it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from infermeter.report.plot import ImageFormat, Plot, encode
from infermeter.units import plural

MAX_TABLE_ROWS = 200  # shown inline; the CSV link carries up to MAX_CSV_ROWS
MAX_CSV_ROWS = 20000


@dataclass
class Section:
    """One section of the report: id, group heading, title, caption and note, its figure and
    the numbers behind it, or why it has none."""

    id: str
    group: str  # heading the section is listed under
    title: str
    caption: str = ""  # one line: what was measured, on what device, when
    plot: Plot | None = None
    table: pd.DataFrame | None = None  # the numbers (defaults to the plot's)
    missing: str | None = None  # why there is no figure, and the command that makes one
    note: str = ""  # an extra line under the caption, when needed

    @property
    def numbers(self) -> pd.DataFrame | None:
        """The table behind the section: its own, else its figure's data; None without either."""
        return self.table if self.table is not None else (self.plot.data if self.plot else None)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0;color:#1d1d1f;background:#fafafa;line-height:1.45}
header{background:#1d3557;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:22px}
header p{margin:2px 0;font-size:13px;opacity:.9}
main{max-width:1100px;margin:0 auto;padding:8px 24px 48px}
nav{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 16px;margin:16px 0}
nav h2{font-size:14px;margin:6px 0}
nav ul{margin:0 0 6px 0;padding-left:18px;font-size:13px;columns:2}
h2.group{margin-top:32px;border-bottom:2px solid #1d3557;padding-bottom:4px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 18px;margin:14px 0}
section h3{margin:4px 0 8px 0;font-size:16px}
figure{margin:0}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption,.caption{font-size:13px;color:#333;margin-top:6px}
.note{font-size:12px;color:#555}
.missing{background:#fff8e1;border-left:4px solid #f4a261;padding:8px 12px;font-size:13px}
code{background:#f1f1f1;padding:1px 4px;border-radius:3px;font-size:12px}
details{margin-top:8px;font-size:12px}
summary{cursor:pointer;color:#1d3557}
.tablewrap{overflow-x:auto;max-height:420px;overflow-y:auto}
table{border-collapse:collapse;font-size:11.5px;margin-top:6px}
th,td{border:1px solid #e0e0e0;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f5f8;cursor:pointer;position:sticky;top:0}
td.t,th.t{text-align:left}
"""

# Click a header to sort its table; numbers sort as numbers. Offline, no libraries.
SCRIPT = """
document.querySelectorAll("table.data th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.dataset.dir === "asc" ? -1 : 1;
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i].textContent, y = b.cells[i].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
      return dir * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def table_html(frame: pd.DataFrame) -> str:
    """An HTML table of the first MAX_TABLE_ROWS rows of `frame`, values escaped, text columns
    marked."""
    shown = frame.head(MAX_TABLE_ROWS)
    text_cols = {c for c in frame.columns if frame[c].dtype.kind not in "fiu"}
    head = "".join(
        f'<th class="{"t" if c in text_cols else ""}">{html.escape(str(c))}</th>'
        for c in frame.columns
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"t" if c in text_cols else ""}">{html.escape(_fmt(v))}</td>'
            for c, v in zip(frame.columns, row, strict=True)
        )
        + "</tr>"
        for row in shown.itertuples(index=False)
    )
    more = (
        f'<p class="note">first {MAX_TABLE_ROWS} of {len(frame)} rows shown</p>'
        if len(frame) > MAX_TABLE_ROWS
        else ""
    )
    return (
        f'<div class="tablewrap"><table class="data"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>{more}"
    )


def _csv_link(section: Section, frame: pd.DataFrame) -> str:
    csv = frame.head(MAX_CSV_ROWS).to_csv(index=False).encode()
    data = base64.b64encode(csv).decode()
    return (
        f'<a download="{section.id}.csv" href="data:text/csv;base64,{data}">'
        f"download CSV ({plural(min(len(frame), MAX_CSV_ROWS), 'row')})</a>"
    )


def section_html(section: Section, fmt: ImageFormat) -> str:
    """One section's HTML: the figure inlined as a data URI (png or svg) with its caption, the
    missing-data note, and its numbers with a CSV download."""
    parts = [f'<section id="{section.id}"><h3>{html.escape(section.title)}</h3>']
    if section.plot is not None:
        mime = "image/png" if fmt == "png" else "image/svg+xml"
        data = base64.b64encode(encode(section.plot.figure, fmt)).decode()
        parts.append(
            f'<figure><img class="figure" data-section="{section.id}" '
            f'alt="{html.escape(section.title)}" src="data:{mime};base64,{data}">'
            f"<figcaption>{html.escape(section.caption)}</figcaption></figure>"
        )
    elif section.caption:
        parts.append(f'<p class="caption">{html.escape(section.caption)}</p>')
    if section.missing:
        parts.append(f'<div class="missing">{section.missing}</div>')
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    numbers = section.numbers
    if numbers is not None and not numbers.empty:
        parts.append(
            f"<details><summary>numbers behind this ({plural(len(numbers), 'row')})</summary>"
            f"{table_html(numbers)}<p>{_csv_link(section, numbers)}</p></details>"
        )
    parts.append("</section>")
    return "".join(parts)


def missing_html(what: str, command: str) -> str:
    """The body of a section without data: what is missing and the command that makes it."""
    return f"No data yet: {html.escape(what)}. Run <code>{html.escape(command)}</code>."


def render(
    sections: Sequence[Section],
    title: str,
    provenance: Sequence[str],
    fmt: ImageFormat = "png",
) -> str:
    """The whole page: a navigation by group, the sections, and the provenance lines in the
    header; self-contained (no network)."""
    groups = list(dict.fromkeys(s.group for s in sections))
    nav = "".join(
        f"<h2>{html.escape(g)}</h2><ul>"
        + "".join(
            f'<li><a href="#{s.id}">{html.escape(s.title)}</a>'
            + (" <em>(no data)</em>" if s.plot is None and s.missing else "")
            + "</li>"
            for s in sections
            if s.group == g
        )
        + "</ul>"
        for g in groups
    )
    body = "".join(
        f'<h2 class="group">{html.escape(g)}</h2>'
        + "".join(section_html(s, fmt) for s in sections if s.group == g)
        for g in groups
    )
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in provenance)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may load from elsewhere: images are data URIs, the one script is inline.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1>{lines}</header>"
        f"<main><nav>{nav}</nav>{body}</main><script>{SCRIPT}</script></body></html>\n"
    )
