"""Image preprocessing: the single implementation used for evaluation, calibration, parity checks
and on the device, so training and deployment can never disagree.

Pure PIL + numpy. The resize/crop arithmetic mirrors torchvision's PIL path (timm's eval transform:
resize the shorter side to ``resize``, centre-crop ``crop``), so numbers match the PyTorch pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class Interpolation(str, Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


_PIL_FILTERS = {
    Interpolation.NEAREST: Image.Resampling.NEAREST,
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    Interpolation.LANCZOS: Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input: resize shorter side, centre crop, scale to [0, 1], normalise.

    Saved as JSON in checkpoints, ONNX metadata and bundle manifests.
    """

    crop: int = 224
    resize: int = 256
    interpolation: Interpolation = Interpolation.BILINEAR
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"
    channels: str = "RGB"

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.crop <= 0 or self.resize < self.crop:
            raise ValueError(
                f"preprocessing needs 0 < crop <= resize, got crop={self.crop} resize={self.resize}"
            )
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, got {self.layout!r}")

    @property
    def crop_pct(self) -> float:
        return self.crop / self.resize

    def with_size(self, crop: int) -> PreprocessSpec:
        """The same recipe at another input size, keeping the crop fraction (timm's convention)."""
        return replace(self, crop=crop, resize=int(crop / self.crop_pct))

    def input_shape(self, batch: int | str = 1) -> tuple:
        if self.layout == "NCHW":
            return (batch, 3, self.crop, self.crop)
        return (batch, self.crop, self.crop, 3)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interpolation"] = self.interpolation.value
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls.from_dict(json.loads(text))


ImageInput = str | Path | Image.Image | np.ndarray


def load_image(source: ImageInput) -> Image.Image:
    """Open any supported input as an RGB PIL image; raise ImageError naming the file otherwise."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ImageError(f"array input must be HxW, HxWx3 or HxWx4 uint8, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ImageError(f"array input must be uint8 (0-255), got {arr.dtype}")
        return Image.fromarray(arr).convert("RGB")
    path = Path(source)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def resize_crop(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize the shorter side to spec.resize and centre-crop spec.crop (torchvision's rounding)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != (w, h):
        image = image.resize(size, _PIL_FILTERS[spec.interpolation])
    w, h = image.size
    top = round((h - spec.crop) / 2.0)
    left = round((w - spec.crop) / 2.0)
    return image.crop((left, top, left + spec.crop, top + spec.crop))


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HxWx3 uint8 -> float32 in spec.layout (without batch dimension)."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if spec.layout == "NCHW" else x)


def preprocess_image(source: ImageInput, spec: PreprocessSpec) -> np.ndarray:
    """One image -> float32 array of shape (3, crop, crop) for NCHW."""
    return normalize(np.asarray(resize_crop(load_image(source), spec)), spec)


def preprocess_batch(sources: Sequence[ImageInput], spec: PreprocessSpec) -> np.ndarray:
    """Several images -> one float32 batch. Raises ImageError on the first unreadable input."""
    return np.stack([preprocess_image(s, spec) for s in sources])


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted for reproducibility; hidden files skipped."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
