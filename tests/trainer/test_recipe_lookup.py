"""Recipes are found by name from an installed wheel (edgetl/models), and a missing name is an error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.trainer.recipe import RecipeError, recipe_names, resolve_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_missing_recipe_name_lists_the_known_ones():
    with pytest.raises(RecipeError) as err:
        resolve_recipe("resnet34")  # a real backbone, but no recipe ships for it
    message = str(err.value)
    assert "\n" not in message and "--recipe resnet34" in message
    assert all(name in message for name in recipe_names())


def test_backbone_without_recipe_uses_the_defaults_with_that_backbone():
    assert "resnet34" not in recipe_names()
    assert resolve_recipe(backbone="resnet34").backbone == "resnet34"


@pytest.mark.slow  # builds the wheel and installs it
def test_named_recipe_resolves_from_an_installed_wheel(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH: cannot build the wheel")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("edgetl-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [uv, "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import json, edgetl, edgetl.trainer.recipe as r; "
        "rec = r.resolve_recipe('resnet18'); "
        "print(json.dumps({'module': edgetl.__file__, 'models': str(r.MODELS_DIR), "
        "'unfreeze': [s.unfreeze for s in rec.stages], 'names': r.recipe_names()}))"
    )
    # the installed copy first on sys.path, ahead of the checkout's editable install
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, check=True, capture_output=True, text=True
    )
    found = json.loads(out.stdout)
    assert Path(found["module"]).is_relative_to(site)
    assert Path(found["models"]) == site / "edgetl" / "models"
    assert found["unfreeze"] == [0, 1]  # models/resnet18.toml, not the built-in defaults ([0, 2])
    assert found["names"] == recipe_names()
