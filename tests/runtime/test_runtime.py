from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from badfiles import write_corrupt_image
from PIL import Image

from edgetl.backbones.checkpoint import load_checkpoint
from edgetl.bundler.package import build_bundle
from edgetl_runtime import BundleError, Predictor
from edgetl_runtime.bundle import extract_bundle, verify_bundle, write_gzip
from edgetl_runtime.cli import EXIT_ERROR, EXIT_SOME_INPUTS_FAILED
from edgetl_runtime.cli import main as run_main
from edgetl_runtime.errors import EdgetlError
from edgetl_runtime.fileio import write_text_atomic
from edgetl_runtime.preprocess import list_images, preprocess_batch

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def bundles(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return build_bundle(tiny_run, out / "bundle").path, build_bundle(tiny_run, out / "bundle.tar.gz").path


@pytest.fixture(scope="module")
def val_images(digits_dir) -> list[Path]:
    return list_images(digits_dir / "val")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_runtime_matches_pytorch(tiny_run, bundles, val_images):
    model, info = load_checkpoint(tiny_run / "best.safetensors")
    batch = preprocess_batch(val_images, info.preprocess)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    for bundle in bundles:
        predictor = Predictor.from_bundle(bundle, backend="onnxruntime-cpu", precision="fp32")
        np.testing.assert_allclose(predictor.logits(batch), expected, atol=1e-4)
        results = predictor.predict(val_images, top_k=2, batch_size=5)
        assert [r.index for r in results] == expected.argmax(1).tolist()
        assert [r.label for r in results] == [info.labels[i] for i in expected.argmax(1)]
    direct = Predictor.from_model(tiny_run / "model.onnx").predict(val_images)
    assert [r.index for r in direct] == expected.argmax(1).tolist()


def test_predict_mixed_inputs_with_a_corrupt_file(bundles, val_images, tmp_path):
    predictor = Predictor.from_bundle(bundles[0])  # auto: the INT8 model on a CPU
    assert predictor.precision == "int8" and predictor.backend == "onnxruntime-cpu"
    corrupt = write_corrupt_image(tmp_path / "broken.png")
    first = val_images[0]
    pil = Image.open(first)
    array = np.asarray(Image.open(first).convert("RGB"))
    inputs = [first, corrupt, pil, array, tmp_path / "missing.jpg", str(val_images[1])]
    results = predictor.predict(inputs, top_k=3, batch_size=2)
    assert [r.ok for r in results] == [True, False, True, True, False, True]
    assert results[0].source == str(first) and results[3].source == "<ndarray #3>"
    assert "broken.png" in results[1].error and "missing.jpg" in results[4].error
    # one image, three forms: the same classes and scores (to float rounding: the three forms fall in
    # batches of different sizes, and onnxruntime's INT8 kernels may sum in another order then)
    for other in (results[2], results[3]):
        assert [(label, i) for label, i, _ in other.top_k] == [(label, i) for label, i, _ in results[0].top_k]
        assert np.allclose([s for *_, s in other.top_k], [s for *_, s in results[0].top_k], rtol=0, atol=1e-6)
    top = results[0].top_k
    assert len(top) == 3 and [s for _, _, s in top] == sorted((s for _, _, s in top), reverse=True)
    assert 0 < top[-1][2] <= top[0][2] <= 1 and results[0].score == top[0][2]
    # a single image and an NHWC batch are accepted too
    assert [c for c, *_ in predictor.predict(first)[0].top_k] == [c for c, *_ in results[0].top_k]
    assert len(predictor.predict(np.stack([array, array]))) == 2


def test_tampered_bundle_is_refused(bundles, tmp_path):
    folder = Path(shutil.copytree(bundles[0], tmp_path / "folder"))
    flip_byte(folder / "model.int8.onnx", 5000)
    with pytest.raises(BundleError, match=r"model.int8.onnx was modified"):
        Predictor.from_bundle(folder, precision="fp32")  # every file is checked, not only the one used
    for offset in (10, 400, -30):
        manifest = Path(shutil.copytree(bundles[0], tmp_path / f"m{offset}"))
        flip_byte(manifest / "manifest.json", offset)
        with pytest.raises(BundleError, match=r"manifest\.json"):
            verify_bundle(manifest)
    size = bundles[1].stat().st_size
    for offset in (4, 9, size // 2, size - 3):  # gzip mtime, OS byte, deflate data, trailer
        archive = tmp_path / f"a{offset}.tar.gz"
        shutil.copyfile(bundles[1], archive)
        flip_byte(archive, offset)
        with pytest.raises(BundleError):
            Predictor.from_bundle(archive)


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw.seek(0)
    return write_gzip(raw, path)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("../evil.txt"), "unsafe"),
        (_member("/tmp/evil.txt"), "unsafe"),
        (_member("sub/evil.txt"), "unsafe"),
        (_member("evil.txt", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("evil.txt", tarfile.LNKTYPE, "manifest.json"), "link"),
        (_member("evil.txt", tarfile.CHRTYPE), "non-file"),
        (_member("evil.txt"), "not in the manifest"),
    ],
)
def test_malicious_archive_is_rejected(bundles, tmp_path, member, message):
    # the manifest alone suffices: names and types are refused before any file is checked
    manifest = (bundles[0] / "manifest.json").read_bytes()
    archive = _archive(tmp_path / "evil.tar.gz", [(_member("manifest.json"), manifest), (member, b"pwned")])
    target = tmp_path / "out"
    with pytest.raises(BundleError, match=message):
        extract_bundle(archive, target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]


def test_extract_bundle_and_duplicates(bundles, tmp_path):
    manifest = extract_bundle(bundles[1], tmp_path / "x")
    assert verify_bundle(tmp_path / "x") == manifest
    with pytest.raises(BundleError, match="already exists"):
        extract_bundle(bundles[1], tmp_path / "x")
    readme = (tmp_path / "x" / "README.md").read_bytes()
    dup = _archive(tmp_path / "dup.tar.gz", [(_member("README.md"), readme), (_member("README.md"), readme)])
    with pytest.raises(BundleError, match="twice"):
        extract_bundle(dup, tmp_path / "y")


def test_cli_predict_info_bench(bundles, digits_dir, tmp_path, capsys):
    corrupt = write_corrupt_image(tmp_path / "broken.png")
    code = run_main(
        ["predict", str(bundles[1]), str(digits_dir / "val"), str(corrupt), "--json", "--top-k", "2"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_SOME_INPUTS_FAILED
    assert out["images"] == 13 and out["failed"] == 1 and out["errors"][0]["source"] == str(corrupt)
    assert all(len(p["top_k"]) == 2 for p in out["predictions"] if "error" not in p)
    assert out["precision"] == "int8"

    assert run_main(["predict", str(bundles[0]), str(digits_dir / "val" / "0"), "--precision", "fp32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.count("\t") >= 2 for line in lines)

    assert run_main(["info", str(bundles[1]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] and info["manifest"]["labels"] == ["0", "1", "2"]
    assert info["backends"]["onnxruntime-cpu"] == "available"

    args = ["bench", str(bundles[0]), "--json", "--warmup-s", "0", "--min-s", "0.05", "--min-runs", "3"]
    assert run_main(args) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["runs"] >= 3 and 0 < bench["min_ms"] <= bench["p50_ms"] <= bench["p99_ms"]

    tampered = tmp_path / "t.tar.gz"
    shutil.copyfile(bundles[1], tampered)
    flip_byte(tampered, tampered.stat().st_size // 3)
    assert run_main(["predict", str(tampered), str(digits_dir / "val"), "--json"]) == EXIT_ERROR
    captured = capsys.readouterr()
    assert "error" in json.loads(captured.out) and "refusing" in captured.err
    with pytest.raises(SystemExit) as usage:
        run_main(["predict", str(bundles[0]), "x.png", "--top-k", "0"])
    assert usage.value.code == 2


def test_runtime_runs_where_torch_cannot_be_imported(bundles, val_images, tmp_path):
    """The device has no torch: a fake torch/torchvision/timm that raise on import must not matter, and a
    cold predict imports nothing it does not use."""
    for name in ("torch", "torchvision", "timm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this device')\n")
    script = textwrap.dedent(
        """
        import json, sys
        from edgetl_runtime.cli import main
        code = main(["predict", sys.argv[1], *sys.argv[2:], "--json"])
        # importlib.metadata: only --version needs it, and it costs a cold predict ~40 ms
        heavy = sorted(m for m in ("torch", "torchvision", "timm", "openvino", "importlib.metadata") if m in sys.modules)
        print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(DEPLOY)])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(bundles[1]), *map(str, val_images[:3])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr
    result = json.loads(done.stdout)
    assert [p["source"] for p in result["predictions"]] == [str(p) for p in val_images[:3]]


def test_writes_onto_a_folder_or_under_a_file_are_clear_errors(tmp_path):
    with pytest.raises(EdgetlError, match="is a folder"):
        write_text_atomic(tmp_path, "x")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EdgetlError, match="cannot write there"):
        write_text_atomic(blocker / "sub" / "a.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_negative_bench_time_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_main(["bench", str(tmp_path), "--min-s", "-1"])
    assert exc.value.code == 2


def test_version_prints_the_installed_distributions_version_and_exits_0(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        run_main(["--version"])
    assert done.value.code in (0, None)
    assert capsys.readouterr().out == f"edgetl-runtime {version('edgetl-runtime')}\n"
