"""`edgetl report RUN`: one self-contained HTML page about a run (no network, images as data URIs).

Each section is a function over the run's files (SECTIONS); a section whose artifact is missing
says which command writes it instead of failing the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgetl import __version__
from edgetl.errors import EdgetlError
from edgetl.reporting.html import page
from edgetl.reporting.records import GALLERY_LIMIT, RunFiles, Section
from edgetl.reporting.sections import SECTIONS
from edgetl.runfolder.folder import Kind, RunFolder
from edgetl.runfolder.outputs import check_outputs
from edgetl_runtime.fileio import write_text_atomic


@dataclass(frozen=True)
class Report:
    path: Path
    sections: tuple[Section, ...]

    def to_dict(self) -> dict:
        return {
            "report": str(self.path),
            "sections": [s.name for s in self.sections if s.missing is None],
            "missing": {s.name: s.missing for s in self.sections if s.missing is not None},
        }


def build_report(
    run: str | Path,
    out: str | Path | None = None,
    *,
    bundle: str | Path | None = None,
    gallery_limit: int = GALLERY_LIMIT,
) -> Report:
    """Write RUN/report.html (or `out`) from whatever the run folder holds."""
    run = Path(run)
    if not run.is_dir():
        raise EdgetlError(f"{run}: no such run folder; give the folder `edgetl train --out` wrote")
    folder = RunFolder(run)
    if not folder.splits.is_file() and not folder.summary.is_file():
        raise EdgetlError(
            f"{run}: not a run folder (no splits.json or summary.json); train with `edgetl train --out {run}`"
        )
    out = Path(out) if out else folder.report_html
    check_outputs([("--out", out, Kind.REPORT)], inputs=[bundle])
    # locked: a page read while another command rewrites the run could mix two of its states
    with folder.lock("report", read_only_ok=True):
        files = RunFiles(run, Path(bundle) if bundle else None, gallery_limit)
        sections = tuple(section(files) for section in SECTIONS)
        title = f"edgetl report: {run.resolve().name}"
        generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_text_atomic(
            out, page(title, f"{run} · generated {generated} by edgetl {__version__}", sections)
        )
    return Report(out, sections)
