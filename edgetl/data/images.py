"""Images in, model inputs out, for every stage that evaluates, calibrates or times a model.

The runtime's preprocessing does the work; unreadable files are skipped, counted and named once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from edgetl.console import warn
from edgetl_runtime.errors import ImageError
from edgetl_runtime.preprocess import ImageInput, PreprocessSpec, preprocess_image

_CHUNK = 64


def warn_skipped(problems: Sequence[str], what: str) -> None:
    """One warning for all unreadable files: how many, and the first few reasons."""
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        warn(f"skipped {len(problems)} unreadable {what} image(s): {shown}")


def preprocess_readable(
    sources: Sequence[ImageInput], spec: PreprocessSpec, what: str, limit: int | None = None
) -> tuple[list[np.ndarray], list[int], int]:
    """Preprocess `sources` in order until `limit` are readable (all when None).

    Returns the arrays, the indices into `sources` they came from, and how many were skipped.
    """

    def attempt(source: ImageInput) -> np.ndarray | str:
        try:
            return preprocess_image(source, spec)
        except ImageError as e:
            return str(e)

    arrays: list[np.ndarray] = []
    kept: list[int] = []
    problems: list[str] = []
    pending = enumerate(sources)
    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        while limit is None or len(arrays) < limit:
            chunk = list(islice(pending, _CHUNK if limit is None else min(_CHUNK, limit - len(arrays))))
            if not chunk:
                break
            for (index, _), result in zip(chunk, pool.map(attempt, [s for _, s in chunk]), strict=True):
                if isinstance(result, str):
                    problems.append(result)
                else:
                    arrays.append(result)
                    kept.append(index)
    warn_skipped(problems, what)
    return arrays, kept, len(problems)
