"""Hostile numbers: NaN, infinities and huge values in every numeric option and variable.

Every float option refuses NaN and infinities (click's FloatRange lets both through: NaN compares
false with every bound, so `--max-drop nan` switched the accuracy gate off), seeds are bounded to
what numpy and torch take, and SOURCE_DATE_EPOCH must be a Unix time.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from cliprobe import assert_json_error, assert_one_line, invoke

from edgetl.errors import EdgetlError
from edgetl_runtime.errors import EXIT_ERROR, EXIT_USAGE
from edgetl_runtime.fileio import check_writable

HUGE_SEED = "99999999999999999999999"

# (command line, option the usage error names); MODEL/RUN/DATA are filled in by the test
USAGE_ROWS = {
    "quantize --max-drop nan": (["quantize", "RUN", "--max-drop", "nan"], "--max-drop"),
    "quantize --max-drop inf": (["quantize", "RUN", "--max-drop", "inf"], "--max-drop"),
    "quantize --min-agreement nan": (["quantize", "RUN", "--min-agreement", "nan"], "--min-agreement"),
    "quantize --min-agreement 2": (["quantize", "RUN", "--min-agreement", "2"], "--min-agreement"),
    "quantize --num-calibration 0": (["quantize", "RUN", "--num-calibration", "0"], "--num-calibration"),
    "quantize --seed huge": (["quantize", "RUN", "--seed", HUGE_SEED], "--seed"),
    "train --lr inf": (["train", "--data", "DATA", "--out", "OUT", "--lr", "inf"], "--lr"),
    "train --lr nan": (["train", "--data", "DATA", "--out", "OUT", "--lr", "nan"], "--lr"),
    "train --lr-backbone inf": (["train", "--data", "DATA", "--out", "OUT", "--lr-backbone", "inf"], "--lr-backbone"),
    "train --lr-decay nan": (["train", "--data", "DATA", "--out", "OUT", "--lr-decay", "nan"], "--lr-decay"),
    "train --label-smoothing nan": (
        ["train", "--data", "DATA", "--out", "OUT", "--label-smoothing", "nan"], "--label-smoothing"
    ),
    "train --val-fraction nan": (["train", "--data", "DATA", "--out", "OUT", "--val-fraction", "nan"], "--val-fraction"),
    "train --seed huge": (["train", "--data", "DATA", "--out", "OUT", "--seed", HUGE_SEED], "--seed"),
    "train --seed -1": (["train", "--data", "DATA", "--out", "OUT", "--seed", "-1"], "--seed"),
    "demo --seed huge": (["demo", "--out", "OUT", "--seed", HUGE_SEED], "--seed"),
    "benchmark --warmup-s nan": (["benchmark", "MODEL", "--warmup-s", "nan"], "--warmup-s"),
    "benchmark --min-s nan": (["benchmark", "MODEL", "--min-s", "nan"], "--min-s"),
    "benchmark --min-s inf": (["benchmark", "MODEL", "--min-s", "inf"], "--min-s"),
    "benchmark --min-s 1e300": (["benchmark", "MODEL", "--min-s", "1e300"], "--min-s"),
    "benchmark --min-runs huge": (["benchmark", "MODEL", "--min-runs", "10000000000000"], "--min-runs"),
    "benchmark --rounds 0": (["benchmark", "MODEL", "--rounds", "0"], "--rounds"),
    "benchmark --threads 0": (["benchmark", "MODEL", "--threads", "0"], "--threads"),
    "export --tolerance nan": (["export", "RUN", "--tolerance", "nan"], "--tolerance"),
    "export --tolerance inf": (["export", "RUN", "--tolerance", "inf"], "--tolerance"),
    "export --batch 0": (["export", "RUN", "--batch", "0"], "--batch"),
    "export --opset 7": (["export", "RUN", "--opset", "7"], "--opset"),
}  # fmt: skip


@pytest.mark.parametrize("row", list(USAGE_ROWS))
def test_nan_inf_and_huge_options_are_usage_errors(row, tiny_run, digits_dir, tmp_path):
    args, option = USAGE_ROWS[row]
    names = {"RUN": tiny_run, "MODEL": tiny_run / "model.onnx", "DATA": digits_dir, "OUT": tmp_path / "out"}
    before = sorted(p.name for p in tiny_run.iterdir())
    outcome = invoke("edgetl", [str(names.get(a, a)) for a in args] + ["--json"])
    assert outcome.code == EXIT_USAGE, (outcome.code, outcome.err)
    assert_json_error(outcome, "", option=option)
    assert outcome.error["kind"] == "usage" and outcome.error["path"] is None
    assert sorted(p.name for p in tiny_run.iterdir()) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda run: _api().quantize(run, max_drop=math.nan), "--max-drop nan"),
        (lambda run: _api().quantize(run, max_drop=math.inf), "--max-drop inf"),
        (lambda run: _api().quantize(run, num_calibration=0), "--num-calibration 0"),
        (lambda run: _api().export(run, tolerance=math.nan), "--tolerance nan"),
        (lambda run: _api().quantize(run, seed=10**23), "--seed 1"),
        (lambda run: _api().train(run, run.parent / "elsewhere", seed=-1), "--seed -1"),
        (lambda run: _api().benchmark(run, warmup_s=math.nan, backends=["onnxruntime-cpu"]), "warm-up"),
        (lambda run: _api().benchmark(run, min_s=math.inf, backends=["onnxruntime-cpu"]), "warm-up"),
    ],
)
def test_the_python_api_refuses_the_same_numbers(call, message, tiny_run):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()}
    with pytest.raises(EdgetlError, match=message.replace("-", r"\-")):
        call(tiny_run)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir() if p.name in before} == before


def _api():
    import edgetl.api

    return edgetl.api


def test_a_batch_that_cannot_fit_is_refused_with_the_memory_it_needs(tiny_run, monkeypatch):
    import edgetl.bench.benchmark as bench

    monkeypatch.setattr(bench, "available_memory_bytes", lambda: 8 << 30)  # an 8 GiB machine
    args = [
        "benchmark",
        str(tiny_run / "model.onnx"),
        "--backend",
        "onnxruntime-cpu",
        "--batch",
        "100000",
        "--json",
    ]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, "--batch 100000: needs about")
    assert "GiB of memory" in outcome.err and "8.0 GiB is available" in outcome.err
    assert_json_error(outcome, "use a smaller batch", option="--batch")


def test_a_non_integer_batch_names_the_option_not_a_path(tiny_run):
    outcome = invoke("edgetl", ["benchmark", str(tiny_run), "--batch", "abc", "--json"])
    assert_one_line(outcome, EXIT_ERROR, "--batch 'abc'")
    assert outcome.error["option"] == "--batch" and outcome.error["path"] is None


@pytest.mark.parametrize("value", ["abc", "-5", "1e9", "99999999999999", " 12 34"])
def test_source_date_epoch_must_be_a_unix_time(value, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    out = tmp_path / "b.tar.gz"
    outcome = invoke("edgetl", ["package", str(tiny_run), "--out", str(out), "--json"])
    assert_one_line(outcome, EXIT_ERROR, "SOURCE_DATE_EPOCH=")
    assert_json_error(outcome, "not a Unix time")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_a_refused_command_leaves_no_folder_it_made(tmp_path):
    """check_writable probes without creating a file's folders: quantize --num-calibration 0 left an
    empty calibration/ folder behind."""
    target = tmp_path / "a" / "calibration" / "m.json"
    assert check_writable(target, "--manifest") == target
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EdgetlError, match="is a file, not a folder"):
        check_writable(blocker / "sub" / "m.json", "--manifest")


def test_quantize_refused_late_leaves_no_calibration_folder(tiny_run, digits_dir, tmp_path):
    model = Path(shutil.copyfile(tiny_run / "model.onnx", tmp_path / "M.onnx"))
    out = tmp_path / "q" / "M.int8.onnx"
    # a flat folder of one image: refused after the output checks, before any writing
    lone = tmp_path / "one"
    lone.mkdir()
    shutil.copy(next((digits_dir / "val" / "0").iterdir()), lone)
    outcome = invoke(
        "edgetl", ["quantize", str(model), "--calibration", str(lone), "--out", str(out), "--json"]
    )
    assert outcome.code == EXIT_ERROR, outcome.err
    assert not (tmp_path / "q").exists(), json.dumps(sorted(str(p) for p in tmp_path.rglob("*")))


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--warmup-s", "nan"], "--warmup-s"),
        (["--min-s", "inf"], "--min-s"),
        (["--min-s", "1e300"], "--min-s"),
        (["--min-runs", "0"], "--min-runs"),
    ],
)
def test_runtime_bench_refuses_nan_inf_and_huge(args, option, bundle):
    outcome = invoke("edgetl-run", ["bench", str(bundle), *args, "--json"])
    assert outcome.code == EXIT_USAGE, outcome.err
    assert_json_error(outcome, option, option=option)


def test_runtime_bench_refuses_a_batch_that_cannot_fit(bundle, monkeypatch):
    import edgetl_runtime.timing as timing

    monkeypatch.setattr(timing, "available_memory_bytes", lambda: 1 << 30)
    outcome = invoke("edgetl-run", ["bench", str(bundle), "--batch-size", "100000", "--json"])
    assert_one_line(outcome, EXIT_ERROR, "--batch-size 100000: needs about")
    assert_json_error(outcome, "1.0 GiB is available", option="--batch-size")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("weight_decay = inf\n", "weight_decay"),
        ("lr_decay = nan\n", "lr_decay"),
        ("[[stages]]\nepochs = 1\nlr = inf\n", "stages[0].lr"),
    ],
)
def test_a_recipe_with_nan_or_inf_is_refused_naming_the_key(toml, key, digits_dir, tmp_path):
    """TOML has `inf` and `nan`; a recipe number must be finite (the API's lr=inf goes the same way)."""
    (tmp_path / "r.toml").write_text(toml)
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(digits_dir),
        "--out",
        str(out),
        "--recipe",
        str(tmp_path / "r.toml"),
        "--json",
    ]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, f"recipe key '{key}' must be a number")
    assert not out.exists()
    with pytest.raises(EdgetlError, match="recipe key 'stages"):
        _api().train(digits_dir, out, lr=math.inf)
    assert not out.exists()
