"""Run-folder states and messages: a run killed before its first epoch, a foreign ONNX model, a stale
bundle next to a retrained checkpoint, and third-party warnings on stderr."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import onnx
import pytest
from cliprobe import assert_json_error, assert_one_line, invoke

from edgetl.backbones.checkpoint import load_checkpoint, save_checkpoint
from edgetl_runtime.errors import EXIT_ERROR


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_a_run_killed_before_its_first_epoch_points_to_overwrite(extra, tiny_run, digits_dir, tmp_path):
    """kill -9 during the first epoch leaves splits.json and no checkpoint: nothing to resume. Both
    train and train --resume say --overwrite (they sent the user to each other before)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "splits.json", run)
    args = ["train", "--data", str(digits_dir), "--out", str(run), "--device", "cpu", "--json", *extra]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, "interrupted before its first epoch ended")
    assert "pass --overwrite" in outcome.err and "without --resume" not in outcome.err
    assert_json_error(outcome, "nothing to resume", option="--out")
    assert sorted(p.name for p in run.iterdir()) == ["splits.json"]


def test_quantizing_a_foreign_onnx_points_to_describe(tiny_run, digits_dir, tmp_path):
    proto = onnx.load(str(tiny_run / "model.onnx"))
    del proto.metadata_props[:]
    foreign = tmp_path / "clf.onnx"
    onnx.save(proto, str(foreign))
    out = tmp_path / "q.onnx"
    args = ["quantize", str(foreign), "--calibration", str(digits_dir / "val"), "--out", str(out), "--json"]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, "no edgetl metadata")
    assert f"edgetl describe {foreign} --labels" in outcome.err
    assert not out.exists()


def test_report_flags_a_bundle_of_another_checkpoint(tiny_run, tmp_path):
    from edgetl.bundler.package import build_bundle

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    build_bundle(run, run / "bundle.tar.gz")
    outcome = invoke("edgetl", ["report", str(run), "--json"])
    assert outcome.code == 0 and "stale bundle" not in outcome.err
    assert "Stale:" not in (run / "report.html").read_text()
    model, info = load_checkpoint(run / "best.safetensors")
    save_checkpoint(
        model, info.__class__(**{**info.__dict__, "epoch": info.epoch + 1}), run / "best.safetensors"
    )
    outcome = invoke("edgetl", ["report", str(run), "--json"])
    assert outcome.code == 0, outcome.err
    assert "stale bundle, packaged from another checkpoint" in outcome.err
    assert "Stale: packaged from another checkpoint" in (run / "report.html").read_text()


def test_tight_layout_warnings_stay_quiet(tmp_path):
    """matplotlib's "Tight layout not applied" reached stderr after every one-epoch train and its
    report (the curves of a single epoch); it stays quiet unless --verbose."""
    from edgetl.reporting import plots
    from edgetl.runfolder.records import EpochRecord

    one_epoch = [EpochRecord(epoch=1, train_loss=1.0, val_loss=1.1, train_accuracy=0.3, val_accuracy=0.4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.save_png(plots.curves_figure(one_epoch, 1), tmp_path / "c.png")
        plots.save_png(plots.curves_figure(one_epoch, 1, stacked=True), tmp_path / "s.png")
    assert not [w for w in caught if "layout" in str(w.message).lower()], [str(w.message) for w in caught]
