"""The run folder's guarantees: lineage, safe re-runs, one writer at a time, no temporaries left."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgetl.backbones.checkpoint import load_checkpoint, save_checkpoint
from edgetl.bundler.package import build_bundle
from edgetl.cli import main
from edgetl.data.samples import write_digits_imagefolder
from edgetl.errors import EdgetlError
from edgetl.exporter.export import export_onnx
from edgetl.runfolder.folder import BEST, LOCK, Kind, RunFolder, RunLocked, Step
from edgetl.runfolder.lineage import StaleArtifact
from edgetl.runfolder.outputs import check_outputs
from edgetl.runfolder.splits import Splits

TRAIN = ["--frozen-epochs", "2", "--epochs", "0", "--image-size", "32", "--no-hflip", "--device", "cpu"]


def _train(data: Path, out: Path, *extra: str):
    options = ["--device", "cpu"] if "--resume" in extra else TRAIN
    return CliRunner().invoke(
        main, ["train", "--data", str(data), "--out", str(out), "--json", *options, *extra]
    )


def _error(result) -> str:
    """The one error line (progress and warnings go to stderr before it)."""
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != LOCK)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_dir) -> Path:
    """A run as `edgetl train` leaves it (2 cached-feature epochs at 32 px)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    result = _train(digits_dir, run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_train_records_the_fingerprint_in_splits_and_checkpoint(trained):
    splits = Splits.load(trained)
    assert len(splits.fingerprint) == 64
    assert load_checkpoint(trained / BEST)[1].data_fingerprint == splits.fingerprint
    RunFolder(trained).check_for(Step.PACKAGE)  # a fresh run is consistent


def test_train_into_a_run_is_refused_without_resume_or_overwrite(trained, digits_dir):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    result = _train(digits_dir, trained)
    assert result.exit_code == 1
    assert "holds a run already; pass --resume" in _error(result) and "--overwrite" in _error(result)
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before
    result = _train(digits_dir, trained, "--resume", "--overwrite")
    assert result.exit_code == 1 and "choose one" in result.output


def test_resume_with_other_data_is_one_line_and_leaves_splits_untouched(trained, tmp_path):
    other = write_digits_imagefolder(tmp_path / "other", size=32, classes=4, per_class=8, val_fraction=0.25)
    splits = (trained / "splits.json").read_bytes()
    result = _train(other, trained, "--resume")
    assert result.exit_code == 1, result.output
    assert "--resume: --data differs" in _error(result)
    assert (trained / "splits.json").read_bytes() == splits


def test_a_second_writer_is_refused_at_once(trained, digits_dir):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from edgetl.runfolder.folder import RunFolder
            with RunFolder({str(trained)!r}).lock("train"):
                print("locked", flush=True)
                sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = _train(digits_dir, trained, "--resume")
        assert result.exit_code == 1
        assert "another edgetl command is writing this run folder" in result.output
        with pytest.raises(RunLocked, match="before `edgetl package`"):
            build_bundle(trained, trained.parent / "bundle")
        assert not (trained.parent / "bundle").exists()
    finally:
        holder.communicate("")
    with RunFolder(trained).lock("train"):  # released with its holder
        pass


def test_quantize_onto_its_input_or_another_kind_is_refused(run_copy, tmp_path):
    with pytest.raises(EdgetlError, match="own input"):
        check_outputs([("--out", run_copy / "model.onnx", Kind.INT8_MODEL)], inputs=[run_copy / "model.onnx"])
    with pytest.raises(EdgetlError, match="holds a FP32/FP16 model, not a INT8 model"):
        check_outputs([("--out", run_copy / "model.onnx", Kind.INT8_MODEL)], inputs=[run_copy])
    outside = shutil.copyfile(run_copy / "model.onnx", tmp_path / "fp32.onnx")
    with pytest.raises(EdgetlError, match="holds a FP32/FP16 model"):
        check_outputs([("--out", outside, Kind.INT8_MODEL)])
    with pytest.raises(EdgetlError, match="holds the run's checkpoint"):
        check_outputs([("--out", run_copy / "last.safetensors", Kind.INT8_MODEL)])
    check_outputs(
        [("--out", run_copy / "model.int8.onnx", Kind.INT8_MODEL)], inputs=[run_copy / "model.onnx"]
    )
    check_outputs([("--out", tmp_path / "new.int8.onnx", Kind.INT8_MODEL)], inputs=[run_copy / "model.onnx"])
    with pytest.raises(EdgetlError, match="holds a INT8 model"):
        export_onnx(run_copy, run_copy / "model.int8.onnx")


def test_retraining_makes_every_older_artifact_stale(run_copy, tmp_path):
    """Old runs (or copied files) can hold artifacts of two trainings: every stage names the stale one."""
    build_bundle(run_copy, tmp_path / "ok")
    model, info = load_checkpoint(run_copy / BEST)
    torch.manual_seed(1)
    model.reset_head(len(info.labels))
    save_checkpoint(model, info, run_copy / BEST)  # "trained again"
    for stage in (Step.QUANTIZE, Step.BENCHMARK, Step.PACKAGE):
        with pytest.raises(
            StaleArtifact, match=r"model.onnx: exported from an older checkpoint.*`edgetl export"
        ):
            RunFolder(run_copy).check_for(stage)
    result = CliRunner().invoke(main, ["package", str(run_copy), "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 1 and "edgetl export" in result.output
    assert not (tmp_path / "b").exists()
    export_onnx(run_copy)
    with pytest.raises(
        StaleArtifact, match=r"model.int8.onnx: quantized from an older training.*`edgetl quantize"
    ):
        build_bundle(run_copy, tmp_path / "b")
    with pytest.raises(StaleArtifact, match=r"model\.int8\.onnx"):
        # its quantize.json metrics would go into the manifest: refused too
        build_bundle(run_copy, tmp_path / "b", precision="fp32")
    assert not (tmp_path / "b").exists()


def test_stale_benchmark_record_is_named(run_copy):
    folder = RunFolder(run_copy)
    (run_copy / "benchmark.json").write_text(json.dumps({"rows": [], "sources": {"model.onnx": "0" * 64}}))
    with pytest.raises(StaleArtifact, match=r"benchmark\.json: timed an older model\.onnx.*edgetl benchmark"):
        folder.check_for(Step.PACKAGE)
    folder.check_for(Step.BENCHMARK)


def test_overwrite_removes_every_artifact_then_package_refuses(trained, tmp_path, digits_dir):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    export_onnx(run)
    (run / "quantize.json").write_text("{}")
    (run / "benchmark.json").write_text("{}")
    old = (run / BEST).read_bytes()
    result = _train(digits_dir, run, "--overwrite", "--seed", "1")
    assert result.exit_code == 0, result.output
    left = {p.name for p in run.iterdir()}
    assert not left & {"model.onnx", "export.json", "quantize.json", "benchmark.json"}
    assert (run / BEST).read_bytes() != old
    result = CliRunner().invoke(main, ["package", str(run), "--out", str(tmp_path / "b")])
    assert (
        result.exit_code == 1 and "model.onnx: missing" in result.output and "edgetl export" in result.output
    )


def test_kill_during_export_then_export_again_leaves_no_temporary(trained, tmp_path):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    killer = textwrap.dedent(f"""
        import os, signal
        import edgetl.exporter.export as export
        saved = export.save_onnx
        def save_then_die(*args):
            saved(*args)
            os.kill(os.getpid(), signal.SIGKILL)
        export.save_onnx = save_then_die
        export.export_onnx({str(run)!r})
    """)
    done = subprocess.run([sys.executable, "-c", killer], capture_output=True, timeout=600, check=False)
    assert done.returncode == -9
    assert _temporaries(run), "the killed export should have left its temporary file"
    assert not (run / "model.onnx").exists()
    export_onnx(run)
    assert _temporaries(run) == []
    assert (run / "model.onnx").is_file()


def test_train_val_accuracy_equals_runtime_predictions_on_the_fp32_bundle(trained, tmp_path):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    export_onnx(run)
    bundle = build_bundle(run, tmp_path / "bundle", precision="fp32").path
    splits = Splits.load(run)
    images = [p for p, _ in splits.val]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [shutil.which("edgetl-run") or "edgetl-run", "predict", str(bundle), *images, "--json"],
        capture_output=True, text=True, timeout=600, check=True, env=env,
    )  # fmt: skip
    predictions = {p["source"]: p["label"] for p in json.loads(done.stdout)["predictions"]}
    correct = sum(predictions[str(Path(p))] == splits.labels[y] for p, y in splits.val)
    assert len(images) == summary["num_val"] == 12
    assert correct / len(images) == summary["best_val_accuracy"]


# --- one test per lineage refusal, each on a copy of the shared run ------------------------------------


def _interrupt_training(run: Path) -> None:
    shutil.copyfile(run / BEST, run / "last_state.pt")  # a resumable state, and no summary.json


def _train_on_other_data(run: Path) -> None:
    splits = Splits.load(run)
    splits.with_fingerprint("f" * 64).save(run)


def _remove_fp32(run: Path) -> None:
    (run / "model.onnx").unlink()


def _with_note(path: Path) -> None:
    """The same model with one more metadata entry: its source is unchanged, its sha256 is not."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "note", "edited"
    onnx.save(proto, str(path))


def _reexport_fp32(run: Path) -> None:
    _with_note(run / "model.onnx")


def _reexport_fp32_after_losing_the_record(run: Path) -> None:
    """quantize.json gone: the INT8 model's lineage is still read, from calibration.json."""
    (run / "quantize.json").unlink()
    _reexport_fp32(run)


def _replace_int8(run: Path) -> None:
    _with_note(run / "model.int8.onnx")


LINEAGE = {
    "interrupted-training": (_interrupt_training, Step.EXPORT, r"training was interrupted \(summary\.json missing\).*--resume", "export"),
    "other-data": (_train_on_other_data, Step.EXPORT, r"best\.safetensors: trained on other data than .*splits\.json.*--overwrite", "export"),
    "fp32-gone": (_remove_fp32, Step.BENCHMARK, r"model\.int8\.onnx: its FP32 model .*model\.onnx is gone.*edgetl export", "benchmark"),
    "int8-from-another-fp32": (_reexport_fp32, Step.BENCHMARK, r"model\.int8\.onnx: quantized from another model\.onnx than the current one.*edgetl quantize", "benchmark"),
    "int8-without-record-from-another-fp32": (_reexport_fp32_after_losing_the_record, Step.BENCHMARK, r"model\.int8\.onnx: quantized from another model\.onnx than the current one", "benchmark"),
    "record-of-another-int8": (_replace_int8, Step.PACKAGE, r"quantize\.json: describes another INT8 model.*edgetl quantize", "package"),
}  # fmt: skip


def _command(name: str, run: Path, tmp_path: Path, digits_dir: Path) -> list[str]:
    return {
        "train": ["train", "--data", str(digits_dir), "--out", str(run), "--overwrite", *TRAIN],
        "export": ["export", str(run)],
        "quantize": ["quantize", str(run)],
        "benchmark": ["benchmark", str(run), "--backend", "onnxruntime-cpu", "--min-runs", "1"],
        "package": ["package", str(run), "--out", str(tmp_path / "bundle")],
        "report": ["report", str(run)],
    }[name] + ["--json"]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK}


@pytest.mark.parametrize("case", LINEAGE)
def test_each_stale_link_is_refused_by_name_and_nothing_is_written(case, run_copy, tmp_path, digits_dir):
    RunFolder(run_copy).check_for(Step.PACKAGE)  # the copy is consistent before it is broken
    breaks, stage, message, command = LINEAGE[case]
    breaks(run_copy)
    with pytest.raises(StaleArtifact, match=message):
        RunFolder(run_copy).check_for(stage)
    before = _snapshot(run_copy)
    result = CliRunner().invoke(main, _command(command, run_copy, tmp_path, digits_dir))
    assert result.exit_code == 1, result.output
    assert re.search(message, json.loads(result.stdout)["error"]["message"])
    assert _snapshot(run_copy) == before and not (tmp_path / "bundle").exists()


@pytest.fixture()
def locked_copy(run_copy):
    """The copy's write lock held by another process for the test's duration."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from edgetl.runfolder.folder import RunFolder
            with RunFolder({str(run_copy)!r}).lock("train"):
                print("locked", flush=True)
                sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield run_copy
    finally:
        holder.communicate("", timeout=60)


@pytest.mark.parametrize("command", ["train", "export", "quantize", "benchmark", "package", "report"])
def test_every_writing_command_refuses_a_locked_run(command, locked_copy, tmp_path, digits_dir):
    before = _snapshot(locked_copy)
    result = CliRunner().invoke(main, _command(command, locked_copy, tmp_path, digits_dir))
    assert result.exit_code == 1, result.output
    message = json.loads(result.stdout)["error"]["message"]
    assert "another edgetl command is writing this run folder" in message
    assert f"before `edgetl {command}`" in message
    assert _snapshot(locked_copy) == before and not (tmp_path / "bundle").exists()


def test_a_run_folder_is_made_with_its_parents_and_removed_if_nothing_was_written(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "new" / "run")
    with folder.lock("train"):
        assert folder.root.is_dir()
    folder.discard_if_empty()  # only the lock file was left: the folder goes
    assert not folder.root.exists() and (tmp_path / "runs" / "new").is_dir()
    with folder.lock("train"):
        (folder.root / "splits.json").write_text("{}")
    folder.discard_if_empty()
    assert (folder.root / "splits.json").is_file()


def test_taking_the_lock_sweeps_what_killed_commands_left_and_nothing_else(tmp_path):
    from edgetl.runfolder.folder import TMP_PREFIX

    root = tmp_path / "run"
    work = root / f"{TMP_PREFIX}quantize-abc123"  # a work folder (text quantize, export staging)
    work.mkdir(parents=True)
    (work / "dynamic.onnx").write_bytes(b"x")
    atomic = root / ".quantize.json.a1B2c3_d.tmp.json"  # atomic_output's temporary
    atomic.write_text("{")
    kept = [root / "quantize.json", root / ".hidden-but-mine"]
    for path in kept:
        path.write_text("{}")
    with RunFolder(root).lock("quantize"):
        assert not work.exists() and not atomic.exists()
        assert all(path.is_file() for path in kept)


def test_clearing_a_run_removes_its_bundle_folder_but_not_a_folder_it_did_not_write(run_copy, tmp_path):
    other = Path(shutil.copytree(run_copy, tmp_path / "other"))
    build_bundle(run_copy, run_copy / "bundle")
    (other / "bundle").mkdir()
    (other / "bundle" / "notes.txt").write_text("mine")  # a folder named like the bundle, no manifest
    for root in (run_copy, other):
        with RunFolder(root).lock("train") as folder:
            removed = folder.clear()
        assert ("bundle" in removed) is (root == run_copy)
    assert not (run_copy / "bundle").exists() and (other / "bundle" / "notes.txt").read_text() == "mine"
