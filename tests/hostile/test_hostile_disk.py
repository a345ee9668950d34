"""Full and read-only disks: exit 1 with one line naming the path (not exit 70 "this is a bug"), and
nothing left behind. Real file systems where this process may mount them (a 64 KiB tmpfs, remounted
read-only); otherwise the same errno raised by a patched write, so the handling is tested everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cliprobe import assert_json_error, assert_one_line, invoke

from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import RunFolder
from edgetl_runtime.errors import EXIT_ERROR
from edgetl_runtime.fileio import atomic_output, disk_error, report_crash


def _mount(folder: Path, size: str = "64k") -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    return done.returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled up to its last 8 KiB: every real artifact overflows it."""
    folder = tmp_path / "full"
    if not _mount(folder):
        pytest.skip("cannot mount a tmpfs here (needs root and mount); the patched-write tests cover it")
    try:
        (folder / FILLER).write_bytes(bytes(56 << 10))  # 8 KiB left: smaller than any artifact
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


FILLER = "filler"


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != FILLER)


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["export", "{run}", "--out", "{full}/model.onnx"], "--out"),
        (["package", "{run}", "--out", "{full}/bundle.tar.gz"], "--out"),
        (["package", "{run}", "--out", "{full}/bundle"], "--out"),
        (["report", "{run}", "--out", "{full}/report.html"], "--out"),
    ],
)
def test_a_full_disk_is_one_line_naming_the_path(command, option, full_disk, tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    args = [a.format(run=run, full=full_disk) for a in command]
    outcome = invoke("edgetl", [*args, "--json"])
    assert_one_line(outcome, EXIT_ERROR, "no space left on the device")
    assert_json_error(outcome, str(full_disk))
    assert outcome.error["kind"] == "error" and str(full_disk) in outcome.error["path"]
    assert _left(full_disk) == []


def test_a_full_tmpdir_is_one_line_and_leaves_nothing(full_disk, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(full_disk))  # TMPDIR=full
    out = tmp_path / "b.tar.gz"
    outcome = invoke("edgetl", ["package", str(tiny_run), "--out", str(out), "--json"])
    assert_one_line(outcome, EXIT_ERROR, "no space left on the device")
    assert not out.exists() and _left(full_disk) == []


def test_packaging_from_a_read_only_run_works_and_writing_it_is_one_line(tiny_run, tmp_path):
    """A run on a read-only mount (EROFS, not EACCES): package writes elsewhere; export, which must
    write the run, says so in one line."""
    mount = tmp_path / "ro"
    if not _mount(mount, "64m"):
        pytest.skip("cannot mount a tmpfs here; test_a_read_only_lock_is_handled covers the errno")
    try:
        run = Path(shutil.copytree(tiny_run, mount / "run"))
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        out = tmp_path / "b.tar.gz"
        outcome = invoke("edgetl", ["package", str(run), "--out", str(out), "--json"])
        assert outcome.code == 0, outcome.err
        assert out.is_file()
        outcome = invoke("edgetl", ["export", str(run), "--out", str(tmp_path / "m.onnx"), "--json"])
        assert_one_line(outcome, EXIT_ERROR, "cannot write to this run folder")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_lock_is_handled(code, tiny_run, monkeypatch):
    from filelock import FileLock

    def refuse(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(tiny_run / ".edgetl.lock"))

    monkeypatch.setattr(FileLock, "acquire", refuse)
    with RunFolder(tiny_run).lock("package", read_only_ok=True) as folder:
        assert folder.root == tiny_run
    with (
        pytest.raises(EdgetlError, match="cannot write to this run folder"),
        RunFolder(tiny_run).lock("export"),
    ):
        pass


def test_a_write_that_fills_the_disk_names_the_artifact_and_leaves_nothing(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(EdgetlError) as raised, atomic_output(target, "--out") as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(raised.value) == f"{target}: no space left on the device; free space or choose another path"
    assert list(tmp_path.iterdir()) == []


def test_disk_errors_met_anywhere_are_handled_not_crashes(capsys):
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/somewhere/x.bin")
    assert report_crash(error, as_json=False, tool="edgetl") == EXIT_ERROR
    assert capsys.readouterr().err.strip() == (
        "error: /somewhere/x.bin: no space left on the device; free space or choose another path"
    )
    assert disk_error(ValueError("no")) is None
    assert disk_error(OSError(errno.ENOENT, "missing")) is None
