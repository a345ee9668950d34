"""Image preprocessing: the single implementation used for evaluation, calibration, parity checks
and on the device, so training and deployment can never disagree.

Pure PIL + numpy. The resize/crop arithmetic mirrors torchvision's PIL path (timm's eval transform:
resize the shorter side to ``resize``, centre-crop ``crop``), so numbers match the PyTorch pipeline.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EdgetlError, ImageError
from .fileio import list_files

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


class SpecError(EdgetlError, ValueError):
    """A preprocessing spec (recipe, checkpoint, model metadata, manifest) has a malformed value.

    `key` is the field at fault ("" for the spec as a whole), so callers can name it in their terms.
    """

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def _integer(key: str, value) -> int:
    # bool is an int in Python; `crop = true` is a mistake, never 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"preprocess '{key}' must be an integer, got {value!r}", key=key)
    return value


def _triple(key: str, value) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or not all(math.isfinite(v) for v in value):
        raise SpecError(f"preprocess '{key}' must be a list of 3 numbers (R, G, B), got {value!r}", key=key)
    return tuple(float(v) for v in value)


def _one_of(key: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise SpecError(f"preprocess '{key}' must be one of {', '.join(choices)}, got {value!r}", key=key)
    return value


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
        interpolation = _one_of(
            "interpolation",
            getattr(self.interpolation, "value", self.interpolation),
            [i.value for i in Interpolation],
        )
        object.__setattr__(self, "interpolation", Interpolation(interpolation))
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if any(v <= 0 for v in self.std):
            raise SpecError(f"preprocess 'std' must be 3 numbers > 0, got {list(self.std)!r}", key="std")
        crop, resize = _integer("crop", self.crop), _integer("resize", self.resize)
        if crop <= 0 or resize < crop:
            raise SpecError(
                f"preprocess needs 0 < 'crop' <= 'resize', got crop={crop} resize={resize}", key="crop"
            )
        _one_of("layout", self.layout, ("NCHW", "NHWC"))
        _one_of("channels", self.channels, ("RGB",))

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

    def describe(self) -> str:
        return (
            f"resize {self.resize} {self.interpolation.value}, crop {self.crop}, mean {list(self.mean)}, "
            f"std {list(self.std)}, {self.layout}"
        )

    def summary(self) -> dict:
        return self.to_dict()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interpolation"] = self.interpolation.value
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        """Strict: a non-table, a missing or unknown key, or a wrong type raises SpecError naming it."""
        if not isinstance(d, dict):
            raise SpecError(f"preprocess must be a table of {', '.join(cls.__dataclass_fields__)}, got {d!r}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise SpecError(f"preprocess has unknown key(s) {', '.join(map(str, unknown))}")
        missing = sorted(set(cls.__dataclass_fields__) - set(d))
        if missing:
            raise SpecError(f"preprocess lacks key(s) {', '.join(missing)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            d = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise SpecError(f"preprocess is not valid JSON ({e})") from None
        return cls.from_dict(d)


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes held in memory (an upload), and the name its errors call it by."""

    name: str
    data: bytes


ImageInput = str | Path | Image.Image | np.ndarray | EncodedImage


# Pillow's own decompression-bomb limit (89.5 Mpx) is the default; set_max_pixels raises or lowers it.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def set_max_pixels(limit: int) -> None:
    """Largest image (width x height) any decode in this process accepts; larger ones are unreadable.

    One process-wide value because Pillow checks its own global while opening a file.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise EdgetlError(f"--max-pixels must be an integer >= 1, got {limit!r}")
    Image.MAX_IMAGE_PIXELS = limit


def _float_to_8bit(image: Image.Image, source: str | Path) -> Image.Image:
    """A 32-bit float image (TIFF mode F): 0..1 scaled to 0..255, 0..255 kept; Pillow's convert
    would clip 0..1 to black. Any other range (or NaN) has no meaning we can guess: refused."""
    values = np.asarray(image, dtype=np.float64)
    finite = bool(np.isfinite(values).all())
    low, high = (float(values.min()), float(values.max())) if finite and values.size else (0.0, 0.0)
    if not finite or low < 0 or high > 255:
        shown = "NaN or infinite values" if not finite else f"values {low:g}..{high:g}"
        raise ImageError(
            f"{source}: a 32-bit float image with {shown}; edgetl reads float images in 0..1 or 0..255, "
            "convert it to 8-bit"
        )
    scale = 255.0 if high <= 1 else 1.0
    return Image.fromarray(np.round(values * scale).astype(np.uint8), "L")


def _to_rgb(image: Image.Image, source: str | Path = "image") -> Image.Image:
    """8-bit RGB; 16-bit greyscale and float images are scaled (Pillow's convert would clip them)."""
    if image.mode == "F":
        image = _float_to_8bit(image, source)
    if image.mode in _SIXTEEN_BIT:
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _over_limit(path: Path | str, size: str) -> str:
    return (
        f"{path}: {size}over the limit of {Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb?); "
        "raise it with --max-pixels if the image is genuine"
    )


def _check_size(image: Image.Image, path: Path | str) -> None:
    w, h = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageError(_over_limit(path, f"{w}x{h} = {w * h} pixels, "))


def decode_image(source: str | Path | EncodedImage, *, short_side: int | None = None) -> Image.Image:
    """The one decoder of image files: size limit, EXIF orientation, 16-bit scaling, RGB.

    `source` is a path or an EncodedImage (bytes in memory); both get the same checks.
    `short_side` lets a JPEG decode at reduced size (DCT-domain draft, several times faster on
    full-size photos) when only that many pixels on the shorter side are needed.
    Raises ImageError naming the file for anything unreadable.
    """
    if isinstance(source, EncodedImage):
        path, opened = source.name, io.BytesIO(source.data)
    else:
        path = opened = Path(source)
    try:
        with Image.open(opened) as im:
            _check_size(im, path)
            if short_side is not None:
                w, h = im.size
                scale = short_side / min(w, h)
                if scale < 1:
                    im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return _to_rgb(im, path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except Image.DecompressionBombError:
        raise ImageError(_over_limit(path, "")) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def load_image(source: ImageInput) -> Image.Image:
    """Open any supported input as an RGB PIL image; raise ImageError naming the file otherwise."""
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ImageError(f"array input must be HxW, HxWx3 or HxWx4 uint8, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ImageError(f"array input must be uint8 (0-255), got {arr.dtype}")
        return Image.fromarray(arr).convert("RGB")
    return decode_image(source)


def check_pixels(size: tuple[int, int], path: str | Path, what: str = "resized to ") -> None:
    """The --max-pixels limit for an image about to be made (after resizing as well as on decode):
    a 1 x 100000 PNG of 475 bytes scaled to a short side of 73 would be 7.3 M pixels long."""
    w, h = size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageError(_over_limit(Path(path), f"{what}{w}x{h} = {w * h} pixels, "))


def resize_crop(image: Image.Image, spec: PreprocessSpec, source: str | Path = "image") -> Image.Image:
    """Resize the shorter side to spec.resize and centre-crop spec.crop (torchvision's rounding).

    The resized image is held whole, so its size is bounded like a decoded one (check_pixels).
    """
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != (w, h):
        check_pixels(size, source)
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
    name = source if isinstance(source, (str, Path)) else "image"
    return normalize(np.asarray(resize_crop(load_image(source), spec, name)), spec)


def preprocess_batch(sources: Sequence[ImageInput], spec: PreprocessSpec) -> np.ndarray:
    """Several images -> one float32 batch. Raises ImageError on the first unreadable input."""
    return np.stack([preprocess_image(s, spec) for s in sources])


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted for reproducibility; hidden files skipped."""
    return list_files(folder, IMAGE_SUFFIXES)
