"""Files made to be unreadable, for the tests of the skip-and-count and error paths."""

from __future__ import annotations

from pathlib import Path


def write_corrupt_image(path: str | Path) -> Path:
    """A file with an image suffix that no decoder can read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path
