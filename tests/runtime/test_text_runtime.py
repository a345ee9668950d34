"""Text bundles on the device: a round trip through `edgetl-run` (texts, files, --lines, stdin), no
torch on the device, modality-less (older) image records, and a strict text spec."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_bundle_round_trip_through_the_device_cli(text_run, tmp_path, capsys):
    from edgetl_runtime.cli import main
    from edgetl_runtime.predictor import Predictor

    bundle = text_run.parent / "bundle.tar.gz"
    predictor = Predictor.from_bundle(bundle)
    assert predictor.modality.value == "text" and predictor.precision == "int8"
    results = predictor.predict(["match goal team", Path(tmp_path / "missing.txt")])
    assert results[0].label in predictor.labels and "no such file" in results[1].error
    (tmp_path / "a.txt").write_text("stock bank market price")
    (tmp_path / "lines.txt").write_text("goal team\n\nchip code\n")
    sys.stdin = io.StringIO("profit trade\n")
    try:
        code = main(
            [
                "predict",
                str(bundle),
                "some text",
                str(tmp_path / "a.txt"),
                "-",
                "--lines",
                str(tmp_path / "lines.txt"),
                "--json",
            ]
        )
    finally:
        sys.stdin = sys.__stdin__
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["modality"] == "text"
    assert [p["source"] for p in out["predictions"]] == [
        "some text",
        str(tmp_path / "a.txt"),
        "stdin:1",
        f"{tmp_path / 'lines.txt'}:1",
        f"{tmp_path / 'lines.txt'}:3",
    ]
    assert all(set(p) == {"source", "label", "index", "score", "top_k"} for p in out["predictions"])
    assert main(["info", str(bundle)]) == 0
    assert "text: tokenizer.json, max_length 128" in capsys.readouterr().out


def test_device_runtime_without_torch(text_run, tmp_path):
    for name in ("torch", "transformers"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this device')\n")
    script = textwrap.dedent(
        """
        import json, sys
        from edgetl_runtime.cli import main
        code = main(["predict", sys.argv[1], "the team scored a goal", "--json"])
        print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}), file=sys.stderr)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(DEPLOY)])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(text_run.parent / "bundle.tar.gz")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr


def test_records_without_a_modality_are_images():
    from edgetl_runtime.modality import Modality
    from edgetl_runtime.modelinfo import ModelInfo
    from edgetl_runtime.preprocess import PreprocessSpec

    info = ModelInfo(labels=("a", "b"), preprocess=PreprocessSpec(), backbone="x")
    meta = {k: v for k, v in info.to_metadata().items() if k != "edgetl.modality"}
    assert ModelInfo.from_metadata(meta).modality is Modality.IMAGE
    with pytest.raises(Exception, match="modality 'audio'"):
        ModelInfo.from_metadata({**meta, "edgetl.modality": "audio"})


def test_text_spec_is_strict(bert):
    from edgetl_runtime.preprocess import SpecError
    from edgetl_runtime.textinput import TextSpec

    spec = TextSpec((bert / "tokenizer.json").read_text(), 64)
    assert TextSpec.from_dict(json.loads(spec.to_json())) == spec
    for bad in (
        {**spec.to_dict(), "max_length": True},
        {**spec.to_dict(), "pooling": "max"},
        {"max_length": 3},
    ):
        with pytest.raises(SpecError):
            TextSpec.from_dict(bad)
    assert np.array_equal(spec.inputs, ("input_ids", "attention_mask"))
