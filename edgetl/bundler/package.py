"""Package a run for a device: model file(s), manifest.json, labels.txt and a README, as a folder or
a byte-reproducible .tar.gz that `edgetl-runtime` verifies and runs without PyTorch.

Everything comes from the run folder: the models (model_files.py: model.onnx and model.int8.onnx, or
with `format="openvino"` the IRs model.xml/.bin and model.int8.xml/.bin), quantize.json, benchmark.json,
splits.json, the checkpoint; what is missing is left out of the manifest rather than guessed.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgetl.bundler.model_files import MODEL_BACKENDS, choose_models, copy_model, tensor_specs
from edgetl.bundler.readme import render_readme
from edgetl.bundler.run_summary import (
    DatasetSummary,
    read_git_commit,
    summarize_benchmark,
    summarize_dataset,
    summarize_quantization,
)
from edgetl.errors import BundleError, EdgetlError
from edgetl.options import ExportFormat, PackagePrecision, choices
from edgetl.runfolder.folder import TMP_PREFIX, Kind, RunFolder, Step
from edgetl.runfolder.outputs import check_outputs
from edgetl_runtime.bundle import bundle_sha256, is_archive, verify_bundle, write_archive
from edgetl_runtime.fileio import check_writable, sha256_file
from edgetl_runtime.manifest import LABELS, MANIFEST, README, FileEntry, Manifest
from edgetl_runtime.modelfile import BY_NAME, model_files, model_format, read_model_info
from edgetl_runtime.modelinfo import ModelInfo, Precision
from edgetl_runtime.signing import load_private_key, sign_manifest
from edgetl_runtime.timing import installed_versions

VERSIONED = ("edgetl", "edgetl-runtime", "torch", "onnx", "onnxruntime")


@dataclass(frozen=True)
class Bundle:
    """A written bundle: where it is, what it holds, and a sha256 that identifies it."""

    path: Path
    manifest: Manifest
    archive: bool
    sha256: str  # of the archive, or of the folder's manifest.json (which pins every file)
    size_bytes: int
    dataset: DatasetSummary | None = None  # the manifest's provenance["dataset"]

    @property
    def artifact(self) -> Path:
        """The bundle archive or folder."""
        return self.path

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path),
            "format": "tar.gz" if self.archive else "folder",
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "name": m.name,
            "created": m.created,
            "labels": list(m.labels),
            "models": [e.to_dict() for e in m.models],
            "metrics": m.metrics,
            "dataset_fingerprint": self.dataset.fingerprint if self.dataset else None,
        }


def _check_consistent(
    run: Path, infos: dict[Path, ModelInfo], checkpoint_labels: tuple[str, ...] | None
) -> ModelInfo:
    (first_path, first), *rest = infos.items()
    for path, info in rest:
        if info.labels != first.labels or info.preprocess != first.preprocess:
            raise BundleError(
                f"{path}: labels or preprocessing differ from {first_path.name}; re-run `edgetl quantize {run}`"
            )
    if checkpoint_labels is not None and checkpoint_labels != first.labels:
        raise BundleError(
            f"{first_path}: exported from another checkpoint (labels differ); re-run `edgetl export {run}`"
        )
    return first


def _creation_epoch(sources: list[Path]) -> int:
    """SOURCE_DATE_EPOCH when set, else the newest input's mtime: never now(), so rebuilds match."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if value:
        # the reproducible-builds spec: a decimal count of seconds since 1970; tar needs it in 0 .. 8**11
        if not (value.isascii() and value.isdigit()) or int(value) >= 8**11:
            raise EdgetlError(
                f"SOURCE_DATE_EPOCH={value!r}: not a Unix time (whole seconds since 1970, 0 .. {8**11 - 1}); "
                "fix or unset it"
            )
        return int(value)
    return max(int(p.stat().st_mtime) for p in sources)


def _write_staging(
    run: Path,
    staging: Path,
    precision: PackagePrecision | None,
    name: str,
    form: ExportFormat,
    dataset: DatasetSummary | None,
) -> tuple[Manifest, int]:
    """Write the bundle's files into the empty folder `staging`; returns the manifest and its epoch."""
    from edgetl.backbones.checkpoint import read_checkpoint_info

    fmt = BY_NAME[form.value]
    chosen = choose_models(run, precision, form)
    checkpoint = RunFolder(run).checkpoint()
    ckpt_info = read_checkpoint_info(checkpoint) if checkpoint else None
    infos = {path: read_model_info(path) for _, path, _ in chosen}
    info = _check_consistent(run, infos, ckpt_info.labels if ckpt_info else None)
    specs = {tensor_specs(path) for _, path, _ in chosen}
    if len(specs) != 1:
        raise BundleError(
            f"{run}: the FP32 and INT8 models have different inputs or outputs; re-run `edgetl quantize {run}`"
        )
    (input_spec, output_spec) = specs.pop()
    int8 = next((path for p, path, _ in chosen if p is Precision.INT8), None)
    quantization, metrics = summarize_quantization(run, infos.get(int8), int8)
    if ckpt_info is not None and ckpt_info.metrics:
        metrics["train"] = ckpt_info.metrics
    epoch = _creation_epoch([path for _, path, _ in chosen] + ([checkpoint] if checkpoint else []))

    models, companions = [], []
    for p, path, backends in chosen:
        target = staging / path.name
        copy_model(path, target)
        models.append(FileEntry(path.name, sha256_file(target), target.stat().st_size, p, backends))
        # an IR's .bin is pinned like any bundle file, so a changed weight byte is refused on load
        companions += [f.name for f in fmt.files(target)[1:]]
    (staging / LABELS).write_text("".join(f"{label}\n" for label in info.labels), encoding="utf-8")
    (staging / README).write_text(render_readme(name, info.labels, info, models, form), encoding="utf-8")
    files = [
        FileEntry(f, sha256_file(staging / f), (staging / f).stat().st_size)
        for f in (*companions, LABELS, README)
    ]

    manifest = Manifest(
        name=name,
        labels=info.labels,
        modality=info.modality,
        preprocess=info.preprocess,
        input=input_spec,
        output=output_spec,
        models=tuple(models),
        files=tuple(files),
        created=datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        quantization=quantization,
        metrics=metrics,
        benchmark=summarize_benchmark(run),
        provenance={
            "backbone": info.backbone,
            "versions": installed_versions(VERSIONED),
            "git_commit": read_git_commit(),
            "dataset": dataset.to_dict() if dataset else None,
            "recipe": ckpt_info.recipe if ckpt_info else None,
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
            # each model's own source: the checkpoint for FP32, the FP32 model for INT8 (run lineage)
            "models": {
                m.path: {"sha256": m.sha256, "source_sha256": infos[path].source_sha256}
                for m, (_, path, _) in zip(models, chosen, strict=True)
            },
        },
    )
    (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    for path in staging.iterdir():
        os.utime(path, (epoch, epoch))
    verify_bundle(staging)
    return manifest, epoch


def _is_bundle(path: Path) -> bool:
    if path.is_dir():
        return (path / MANIFEST).is_file()
    try:
        with tarfile.open(path, "r:gz") as tar:
            return MANIFEST in tar.getnames()
    except (OSError, tarfile.TarError, EOFError):
        return False


def _check_out(run: Path, out: Path, archive: bool, overwrite: bool) -> None:
    """Refused before any work: the run folder itself, a folder where an archive goes (or the reverse),
    anything that is not a bundle, and an existing bundle unless `overwrite`."""
    if out.exists() and out.resolve() == run.resolve():
        raise EdgetlError(f"--out {out}: is the run folder itself; give a new path such as {run / 'bundle'}")
    if archive and out.is_dir():
        raise EdgetlError(f"--out {out}: is a folder; give a new .tar.gz path")
    if not archive and out.exists() and not out.is_dir():
        raise EdgetlError(f"--out {out}: exists and is not a folder; choose another path")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not _is_bundle(out):
        raise EdgetlError(f"--out {out}: exists and is not a bundle; choose another path")
    if not overwrite:
        raise EdgetlError(f"--out {out}: holds a bundle already; pass --overwrite to replace it")


def _publish_folder(staging: Path, out: Path) -> None:
    """Swap the finished folder in, replacing an older bundle."""
    old = out.with_name(f"{TMP_PREFIX}{out.name}.old") if out.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.chmod(0o755)  # mkdtemp made it private; a bundle is meant to be read by others
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_bundle(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str | PackagePrecision | None = None,
    format: str | ExportFormat = ExportFormat.ONNX,
    name: str | None = None,
    sign: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Package a run folder into `out`: a folder, or a reproducible archive when it ends in .tar.gz/.tgz.

    precision: "int8", "fp32" or "both"; default both when the run has an INT8 model, else fp32.
    format: "onnx" (model.onnx, model.int8.onnx) or "openvino" (the IRs model.xml and model.int8.xml,
    each with its .bin; `edgetl-run` runs them with OpenVINO).
    The same inputs always give the same archive bytes (the creation time comes from the inputs or
    SOURCE_DATE_EPOCH). Written atomically: a failure leaves nothing at `out`. An existing bundle at
    `out` is replaced only with `overwrite`; any other existing file or non-empty folder is refused.
    The run's lineage is checked first (StaleArtifact), so a bundle never mixes two trainings.
    sign: an ed25519 private key file (`edgetl keygen`); the manifest is signed (manifest.sig).
    """
    run, out = Path(run), Path(out)
    if not run.is_dir():
        problem = "not a folder" if run.exists() else "no such run folder"
        raise EdgetlError(f"{run}: {problem}; give the folder `edgetl train --out` wrote")
    if precision is not None:
        try:
            precision = PackagePrecision(precision)
        except ValueError:
            raise EdgetlError(
                f"--precision {precision!r}: choose one of {', '.join(choices(PackagePrecision))}"
            ) from None
    try:
        form = ExportFormat(format)
    except ValueError:
        raise EdgetlError(f"--format {format!r}: choose one of {', '.join(choices(ExportFormat))}") from None
    name = name or run.resolve().name
    signing_key = load_private_key(sign) if sign else None
    archive = is_archive(out)
    check_outputs([("--out", out, Kind.BUNDLE)], inputs=[sign])
    _check_out(run, out, archive, overwrite)
    check_writable(out.parent, "--out", folder=True)
    folder = RunFolder(run)
    with folder.lock("package", read_only_ok=True):
        folder.check_for(Step.PACKAGE)
        dataset = summarize_dataset(folder)
        staging = Path(
            tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.", dir=None if archive else out.parent)
        )
        try:
            manifest, epoch = _write_staging(run, staging, precision, name, form, dataset)
            if signing_key is not None:
                sign_manifest(staging, signing_key, epoch)
            if archive:
                write_archive(staging, out, epoch)
            else:
                _publish_folder(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    size = out.stat().st_size if archive else sum(p.stat().st_size for p in out.iterdir())
    return Bundle(out, manifest, archive, bundle_sha256(out), size, dataset)


def build_bundle_from_models(
    models: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    name: str | None = None,
    sign: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Package model files that carry edgetl metadata (`edgetl export`, or `edgetl describe` for a
    model from elsewhere): an FP32 model and/or its INT8 model, told apart by their metadata.

    They are laid out as a run folder's model.onnx / model.int8.onnx (or model.xml / model.int8.xml
    for OpenVINO IRs; mtimes kept, so the archive is as reproducible as a run's) and packaged like one.
    """
    paths = [Path(m) for m in models]
    check_outputs([("--out", out, Kind.BUNDLE)], inputs=[f for p in paths for f in model_files(p)])
    chosen: dict[Precision, Path] = {}
    for path in paths:
        if not path.is_file():
            raise EdgetlError(
                f"{path}: no such model file; give ONNX or OpenVINO .xml files, or one run folder"
            )
        if model_format(path) is not model_format(paths[0]):
            raise EdgetlError(f"{path}: not a {paths[0].suffix} file like {paths[0].name}; give one format")
        precision = read_model_info(path).precision
        if precision not in MODEL_BACKENDS:
            raise EdgetlError(
                f"{path}: a {precision.value} model; a bundle holds an FP32 and/or an INT8 model"
            )
        if precision in chosen:
            raise EdgetlError(
                f"{path}: a second {precision.value} model (first: {chosen[precision]}); give one of each"
            )
        chosen[precision] = path
    fp32, int8 = chosen.get(Precision.FP32), chosen.get(Precision.INT8)
    # without a run folder's records, the INT8 model's own record of its FP32 model is the lineage
    made_from = read_model_info(int8).quantized_from if fp32 and int8 else None
    if made_from and made_from != sha256_file(fp32):
        raise BundleError(
            f"{int8}: quantized from another FP32 model than {fp32} (the sha256 it records differs); "
            f"give the model it was quantized from, or quantize {fp32} again"
        )
    with tempfile.TemporaryDirectory(prefix=".edgetl-models-") as tmp:
        run = Path(tmp) / (name or paths[0].stem)
        run.mkdir()
        fmt = model_format(paths[0])
        for precision, path in chosen.items():
            target = RunFolder(run).model_file(precision, fmt.suffix)
            copy_model(path, target)
            for part, copied in zip(fmt.files(path), fmt.files(target), strict=True):
                stat = part.stat()
                os.utime(copied, (stat.st_atime, stat.st_mtime))
        both = len(chosen) == 2
        precision = PackagePrecision.BOTH if both else PackagePrecision(next(iter(chosen)).value)
        return build_bundle(
            run,
            out,
            precision=precision,
            format=fmt.name,
            name=name or paths[0].stem,
            sign=sign,
            overwrite=overwrite,
        )
