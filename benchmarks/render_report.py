"""Render a run's report in headless Chromium and check the screenshot is not blank.

    uv run python benchmarks/render_report.py RUN [--shot report.png] [--height 2000]

Writes RUN/report.html (edgetl report), screenshots it at 1280 px wide and fails when the picture is
(almost) one colour, i.e. the page did not render. Skips with a message when Chromium is absent
(Debian: `apt-get install chromium`). Look at the PNG yourself: this only proves something rendered.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def screenshot(
    html: Path, png: Path, *, width: int = 1280, height: int = 2000, chromium: str | None = None
) -> Path:
    """Headless Chromium screenshot of a local HTML file; a throwaway profile, no network needed."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="edgetl-chromium-") as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
             html.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return png


def blank_share(png: Path) -> float:
    """Share of pixels equal to the most common colour: near 1.0 means nothing was drawn."""
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return max(count for count, _ in colours) / sum(count for count, _ in colours)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--shot", type=Path, help="screenshot path [default: RUN/report.png]")
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--no-build", action="store_true", help="screenshot the existing RUN/report.html")
    args = parser.parse_args()
    if find_chromium() is None:
        print("skipped: Chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
        return 0
    html = args.run / "report.html"
    if not args.no_build:
        from edgetl.reporting.report import build_report

        html = build_report(args.run).path
    shot = screenshot(html, args.shot or args.run / "report.png", height=args.height)
    share = blank_share(shot)
    print(f"{shot}: {share:.1%} of pixels are the dominant colour")
    return 0 if share < 0.97 else 1


if __name__ == "__main__":
    sys.exit(main())
