"""The report's page: one HTML file with its CSS inline; no script, font or image is fetched."""

from __future__ import annotations

import functools
from collections.abc import Sequence

CSS = """
:root { --ink:#1b2a3a; --muted:#5b6b7b; --line:#dde3ea; --card:#fff; --bg:#f4f6f9; --accent:#1f6fb2;
        --bad:#c0392b; --ok:#2b8a3e; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { background:var(--ink); color:#fff; padding:18px 32px 12px; }
header h1 { margin:0; font-size:22px; font-weight:600; }
header p { margin:4px 0 10px; color:#c8d3de; font-size:13px; }
nav a { color:#fff; margin-right:14px; font-size:13px; text-decoration:none; border-bottom:1px dotted #8aa; }
nav a.absent { color:#8fa0b0; }
main { max-width:1220px; margin:0 auto; padding:18px 20px 48px; display:grid;
       grid-template-columns:minmax(0, 1fr) minmax(0, 1fr); gap:16px; align-items:start; }
section { grid-column:1 / -1; background:var(--card); border:1px solid var(--line); border-radius:8px;
          padding:14px 20px 16px; }
section.half { grid-column:auto; }
@media (max-width: 900px) { section.half { grid-column:1 / -1; } }
h2 { margin:0 0 10px; font-size:18px; }
h3 { margin:18px 0 6px; font-size:14px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.note { color:var(--muted); font-size:13px; margin:4px 0 10px; }
.missing { color:var(--muted); font-style:italic; }
code { font:12px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; background:#f0f3f7; padding:1px 4px;
       border-radius:3px; word-break:break-all; }
img.plot { display:block; max-width:100%; height:auto; margin:6px auto; }
dl.facts { display:grid; grid-template-columns:repeat(auto-fill, minmax(210px, 1fr)); gap:8px 18px; margin:0; }
dl.facts div { border-left:3px solid var(--accent); padding:2px 10px; }
dt { color:var(--muted); font-size:12px; }
dd { margin:0; font-size:15px; font-weight:600; }
table { border-collapse:collapse; width:100%; font-size:13px; margin:6px 0; }
th, td { padding:4px 8px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
th { color:var(--muted); font-weight:600; background:#f8fafc; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
table.hashes td:nth-child(2) { width:60%; }
.barcell { display:inline-flex; align-items:center; gap:6px; justify-content:flex-end; width:100%; }
.barcell > span:last-child { min-width:3.6em; text-align:right; }
.track { display:inline-block; width:80px; height:8px; background:#e6ecf2; border-radius:2px; }
.bar { display:block; height:8px; background:var(--accent); border-radius:2px; }
.perclass td:nth-child(5) { min-width:150px; }
.ok { color:var(--ok); font-weight:700; }
.bad { color:var(--bad); font-weight:700; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(108px, 1fr)); gap:10px; }
figure { margin:0; background:#f8fafc; border:1px solid var(--line); border-radius:6px; padding:6px;
         text-align:center; }
figure img { width:100%; max-width:112px; aspect-ratio:1; object-fit:contain; image-rendering:auto;
             background:#e9eef3; border-radius:4px; }
figcaption { font-size:12px; line-height:1.3; margin-top:4px; word-break:break-word; }
figcaption b { color:var(--bad); }
figcaption .true { color:var(--muted); }
.noimg { height:128px; display:flex; align-items:center; justify-content:center; color:var(--muted); }
ul.reasons { font-size:13px; color:var(--muted); margin:4px 0; padding-left:20px; }
"""


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">\
<title>{{ title }}</title><style>{{ css }}</style></head>\
<body><header><h1>{{ title }}</h1><p>{{ subtitle }}</p><nav>\
{% for s in sections %}<a href="#{{ s.name }}" class="{{ 'absent' if s.missing else '' }}">{{ s.title }}</a>{% endfor %}\
</nav></header><main>\
{% for s, half in rows %}<section id="{{ s.name }}" class="{{ 'half' if half else '' }}"><h2>{{ s.title }}</h2>\
{{ s.body | safe }}</section>{% endfor %}\
</main></body></html>
"""


@functools.cache
def _template():
    import jinja2

    # autoescape: every value is escaped unless marked safe; only the sections' own HTML bodies are
    env = jinja2.Environment(autoescape=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE)


def page(title: str, subtitle: str, sections: Sequence) -> str:
    """The whole page; `title` and `subtitle` are text (escaped here), each section's body is HTML."""
    from markupsafe import Markup

    # Two half sections share a row; a half section without a half neighbour takes the full width.
    halves = [
        s.half and ((i > 0 and sections[i - 1].half) or (i + 1 < len(sections) and sections[i + 1].half))
        for i, s in enumerate(sections)
    ]
    return _template().render(
        title=title,
        subtitle=subtitle,
        css=Markup(CSS),
        sections=sections,
        rows=list(zip(sections, halves, strict=True)),
    )
