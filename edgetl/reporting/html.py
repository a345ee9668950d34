"""The report's HTML: jinja2 templates (reporting/templates) with autoescape on everywhere, so every
name, path and message from a run is text on the page; no script, font or image is fetched.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence


def pct(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.{digits}f}%" if abs(value) <= 1 else f"{value:.{digits}f}%"


def mib(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 2**20:.2f} MiB" if size >= 2**17 else f"{size / 1024:.1f} KiB"


@functools.cache
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edgetl.reporting", "templates"),
        autoescape=True,  # every .j2 and .css alike: only template text itself is markup
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(pct=pct, mib=mib, fmt=format)
    return env


def render(template: str, **context):
    """One template rendered (a section's body, a gallery card) as markup the page inserts as is."""
    from markupsafe import Markup

    return Markup(_environment().get_template(template).render(**context))


def page(title: str, subtitle: str, sections: Sequence) -> str:
    """The whole page; `title` and `subtitle` are text, each section's body its rendered template."""
    # Two half sections share a row; a half section without a half neighbour takes the full width.
    halves = [
        s.half and ((i > 0 and sections[i - 1].half) or (i + 1 < len(sections) and sections[i + 1].half))
        for i, s in enumerate(sections)
    ]
    return str(
        render(
            "page.html.j2",
            title=title,
            subtitle=subtitle,
            sections=sections,
            rows=zip(sections, halves, strict=True),
        )
    )
