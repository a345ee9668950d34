"""Fixtures of the hostile-input tables: the tiny run's bundle, and the process-wide pixel limit
restored after every test (a row that lowers it must not leak it into the next)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl_runtime.preprocess import DEFAULT_MAX_PIXELS, set_max_pixels


@pytest.fixture(autouse=True)
def _default_pixel_limit():
    yield
    set_max_pixels(DEFAULT_MAX_PIXELS)


@pytest.fixture(scope="session")
def bundle(tiny_run, tmp_path_factory) -> Path:
    from edgetl.bundler.package import build_bundle

    return build_bundle(tiny_run, tmp_path_factory.mktemp("hostile2") / "bundle").path
