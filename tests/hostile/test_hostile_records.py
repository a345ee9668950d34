"""Hostile run-folder records: not JSON, valid JSON of the wrong shape, a checkpoint with a broken
header or no bytes at all. Each is one line naming the file (and the key), exit 1, never the
"internal error ... this is a bug" of exit 70 they gave before.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cliprobe import assert_json_error, assert_one_line, invoke
from safetensors.torch import load_file, save_file

from edgetl_runtime.errors import EXIT_ERROR


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / name).write_text(text, encoding="utf-8")


def _edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        d = json.loads((run / name).read_text())
        edit(d)
        (run / name).write_text(json.dumps(d))

    return apply


def _header(text: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        path = run / "best.safetensors"
        save_file(load_file(str(path)), str(path), metadata={"edgetl": text})

    return apply


def _edit_header(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(run / "best.safetensors"), "pt") as f:
            d = json.loads(f.metadata()["edgetl"])
        edit(d)
        _header(json.dumps(d))(run)

    return apply


def _benchmark(d: dict) -> Callable[[Path], None]:
    return _write("benchmark.json", json.dumps(d))


# row -> (break the run copy, command after RUN, message)
ROWS = {
    "splits.json not JSON, then export": (_write("splits.json", "{not json"), ["export"], "splits.json: unreadable"),
    "splits.json labels a string": (
        _edit_json("splits.json", lambda d: d.update(labels="abc")), ["export"], "splits.json: key 'labels' must be a JSON list"
    ),
    "splits.json without train": (
        _edit_json("splits.json", lambda d: d.pop("train")), ["quantize"], "splits.json: key 'train' must be present"
    ),
    "splits.json label index out of range": (
        _edit_json("splits.json", lambda d: d["val"][0].__setitem__(1, 7)), ["export"], "label index 7"
    ),
    "splits.json a list": (_write("splits.json", "[1, 2]"), ["export"], "splits.json: not an edgetl record"),
    "checkpoint header not JSON, then export": (_header("{not json"), ["export"], "edgetl header is not JSON"),
    "checkpoint header without labels": (
        _edit_header(lambda d: d.pop("labels")), ["export"], "edgetl header: key 'labels' missing"
    ),
    "checkpoint header labels a number": (
        _edit_header(lambda d: d.update(labels=3)), ["export"], "edgetl header key 'labels' must be a list"
    ),
    "checkpoint header preprocess broken": (
        _edit_header(lambda d: d["preprocess"].update(crop="x")), ["export"], "edgetl header key 'preprocess'"
    ),
    "zero-byte checkpoint, then report": (_write("best.safetensors", ""), ["report"], "best.safetensors: not a readable"),
    "zero-byte checkpoint, then export": (_write("best.safetensors", ""), ["export"], "best.safetensors: not a readable"),
    "benchmark.json rows a string, then package": (
        _benchmark({"rows": "x"}), ["package", "--out", "{tmp}/b.tar.gz"], "benchmark.json: key 'rows' must be a JSON list"
    ),
    "benchmark.json rows a string, then report": (
        _benchmark({"rows": "x"}), ["report"], "benchmark.json: key 'rows' must be a JSON list"
    ),
    "benchmark.json sources a list, then package": (
        _benchmark({"rows": [], "sources": ["a"]}), ["package", "--out", "{tmp}/b.tar.gz"], "key 'sources'"
    ),
    "quantize.json int8_model a number, then package": (
        _edit_json("quantize.json", lambda d: d.update(int8_model=5)), ["package", "--out", "{tmp}/b.tar.gz"],
        "quantize.json: key 'int8_model' must be a string",
    ),
    "summary.json stages a string, then report": (
        _write("summary.json", json.dumps({"stages": "x"})), ["report"], "summary.json: key '"
    ),
    "metrics.json an object, then report": (
        _write("metrics.json", json.dumps({"epoch": 1})), ["report"], "metrics.json: not a list of epoch records"
    ),
    "confusion.json matrix a string, then report": (
        _write("confusion.json", json.dumps({"labels": ["0"], "matrix": "x"})), ["report"], "key 'matrix'"
    ),
    "metrics.json epoch without val_accuracy, then report": (
        _write("metrics.json", json.dumps([{"epoch": 1, "train_loss": 1, "train_accuracy": 0.5, "val_loss": 1}])),
        ["report"], "metrics.json epoch 1: key 'val_accuracy' must be present",
    ),
    "benchmark.json row of an unknown status, then report": (
        _benchmark({"rows": [{"backend": "x", "precision": "fp32", "status": "fast"}]}), ["report"],
        "benchmark.json: key 'rows[0].status' must be 'ok' or 'unavailable'",
    ),
    "quantize.json per_class entry a number, then report": (
        _edit_json("quantize.json", lambda d: d.update(per_class={"0": 1})), ["report"],
        "quantize.json: key 'per_class.0' must be a JSON object",
    ),
    "quantize.json cross-fit folds a string, then report": (
        _edit_json("quantize.json", lambda d: d["gate"].update(cross_fit={"folds": "<script>", "shipped_vs_fold_models_agreement": 1.0})),
        ["report"], "quantize.json gate.cross_fit: key 'folds' must be an integer",
    ),
    "checkpoint header recipe stages a string, then report": (
        _edit_header(lambda d: d["recipe"].update(stages="x")), ["report"],
        "best.safetensors (edgetl header): key 'recipe.stages' must be a JSON list",
    ),
}  # fmt: skip


@pytest.mark.parametrize("row", list(ROWS))
def test_broken_records_are_one_line_naming_file_and_key(row, tiny_run, tmp_path):
    breaks, command, message = ROWS[row]
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    breaks(run)
    before = sorted(p.name for p in run.iterdir())
    args = [command[0], str(run), *(a.format(tmp=tmp_path) for a in command[1:]), "--json"]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, message)
    assert_json_error(outcome, message)
    assert outcome.error["kind"] == "error"
    assert sorted(p.name for p in run.iterdir() if p.name != ".edgetl.lock") == [
        n for n in before if n != ".edgetl.lock"
    ]
    assert not (tmp_path / "b.tar.gz").exists()
