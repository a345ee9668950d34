"""The Python API: `import edgetl` stays light, and the README's five-line example runs end to end."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgetl
from edgetl import api
from edgetl_runtime.cli import main as run_main
from edgetl_runtime.preprocess import list_images

README = Path(__file__).resolve().parents[2] / "README.md"


def test_import_is_light_and_fast():
    probe = (
        "import sys, time; t = time.perf_counter(); import edgetl; s = time.perf_counter() - t; "
        "heavy = sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'openvino', 'timm', 'nncf') if m in sys.modules); "
        "print(s, ','.join(heavy))"
    )
    seconds, heavy = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split(" ")
    assert heavy.strip() == "", f"import edgetl loaded {heavy.strip()}"
    assert float(seconds) < 0.5


def test_the_verbs_are_the_cli_commands():
    from edgetl.cli import COMMANDS

    assert set(edgetl.VERBS) <= set(COMMANDS)
    assert all(callable(getattr(edgetl, verb)) for verb in edgetl.VERBS)
    with pytest.raises(AttributeError):
        edgetl.no_such_verb  # noqa: B018


@pytest.mark.slow  # the whole pipeline end to end
def test_readme_example_runs_and_its_bundle_predicts(tmp_path, monkeypatch, digits_dir, capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "edgetl.train(" in code and "edgetl.package(" in code
    (tmp_path / "data").symlink_to(digits_dir)
    monkeypatch.chdir(tmp_path)
    # the README trains with the recipe's defaults; the test keeps its schedule and images tiny
    monkeypatch.setattr(
        api,
        "train",
        functools.partial(api.train, image_size=32, frozen_epochs=3, epochs=2, batch_size=16, cache_views=1),
    )
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)

    run, bundle = scope["run"], scope["bundle"]
    assert run.run == Path("runs/a") and (run.run / "model.int8.onnx").is_file()
    assert bundle.path == Path("runs/a/bundle.tar.gz") and bundle.path.is_file()
    images = [str(p) for p in list_images(digits_dir / "val")][:4]
    capsys.readouterr()
    assert run_main(["predict", str(bundle.path), *images, "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["source"] for p in predictions] == images
    assert all(p["label"] in run.labels for p in predictions)


def test_a_step_result_stands_for_its_run(tmp_path):
    class Exported:
        artifact = tmp_path / "run" / "model.onnx"

    (tmp_path / "run").mkdir()
    assert api.resolve_source(Exported()) == Exported.artifact  # no run folder around it
    (tmp_path / "run" / "splits.json").write_text("{}")
    assert api.resolve_source(Exported()) == tmp_path / "run"
    assert api.resolve_source("elsewhere.onnx") == Path("elsewhere.onnx")
