"""What a model classifies, read from the model itself: its backbone name, its checkpoint header, or
its exported file's metadata. Each stage keeps one table keyed by `Modality` (TRAINERS, EXPORTERS,
QUANTIZERS_BY_MODALITY, ARCHITECTURES, GALLERIES, the runtime's INPUT_KINDS) and looks the model's
modality up here, so no stage branches on it."""

from __future__ import annotations

from pathlib import Path

from edgetl.backbones.text import TEXT_BACKBONES
from edgetl_runtime.modality import Modality

__all__ = ["Modality", "backbone_modality", "model_modality", "source_modality"]


def backbone_modality(name: str | None) -> Modality:
    """The text encoders of the text registry, images for every other name (timm and torchvision)."""
    return Modality.TEXT if name in TEXT_BACKBONES else Modality.IMAGE


def model_modality(path: str | Path) -> Modality:
    """An exported model's modality (images for files without edgetl metadata, as before text)."""
    from edgetl_runtime.modelfile import read_model_info
    from edgetl_runtime.modelinfo import MetadataMissing

    try:
        return read_model_info(path).modality
    except MetadataMissing:
        return Modality.IMAGE


def source_modality(source: str | Path | None) -> Modality:
    """The modality of what a stage was given: a run folder (its checkpoint, else its model.onnx), a
    checkpoint, or a model file. Anything unreadable answers images, so the image path reports it."""
    from edgetl.backbones.checkpoint import read_checkpoint_info
    from edgetl.errors import EdgetlError
    from edgetl.runfolder.folder import RunFolder

    if source is None:
        return Modality.IMAGE
    path = Path(source)
    candidates = [path]
    if path.is_dir():
        folder = RunFolder(path)
        candidates = [p for p in (folder.checkpoint(), folder.model) if p is not None]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            if candidate.suffix == ".safetensors":
                return read_checkpoint_info(candidate).modality
            return model_modality(candidate)
        except EdgetlError:
            return Modality.IMAGE
    return Modality.IMAGE
