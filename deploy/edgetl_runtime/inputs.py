"""One table of input kinds: what differs between an image model and a text model on the device.

Everything else (bundles, backends, the predictor, the CLI) reads the model's modality from its
metadata and looks its kind up here, so no caller branches on modality.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TextError
from .modality import Modality
from .preprocess import EncodedImage, PreprocessSpec, list_images, preprocess_image
from .textinput import MAX_TEXT_BYTES, TextSpec, encode_texts, example_feed, list_texts, read_text

InputSpec = PreprocessSpec | TextSpec
Feed = np.ndarray | dict[str, np.ndarray]  # one array for the single-input image models


@dataclass(frozen=True)
class TextInput:
    """An in-memory text with the name it is reported under (a line of a file, stdin, an argument)."""

    source: str
    text: str


@dataclass(frozen=True)
class InputKind:
    modality: Modality
    noun: str  # what one input is called in messages ("image", "text")
    parse_spec: Callable[[dict], InputSpec]
    list_files: Callable[[Path], list[Path]]  # the inputs a folder holds
    load: Callable[[Any, InputSpec], Any]  # one input ready to batch; InputError when unreadable
    collate: Callable[[list, InputSpec], Feed]
    example: Callable[[InputSpec, int], Feed]  # a well-formed batch for probes
    sample: Callable[[InputSpec, int, np.random.Generator], Feed]  # a random batch for timing
    name: Callable[[Any, int], str]  # how an input is named in results
    from_argument: Callable[[str], list]  # a command-line argument as inputs (a folder: its files)


def _image_name(item, position: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, EncodedImage):  # an upload to `edgetl-run serve`
        return item.name
    return f"<{type(item).__name__} #{position}>"


def _load_text(item, spec: TextSpec) -> str:
    """A Path is a file to read; a str or TextInput is the text itself."""
    if isinstance(item, TextInput):
        item = item.text
    if isinstance(item, os.PathLike):
        return read_text(item, MAX_TEXT_BYTES)[0]  # as far as training reads a file
    if not isinstance(item, str):
        raise TextError(f"a text input must be a str, a TextInput or a path, got {type(item).__name__}")
    if not item.strip():
        raise TextError("an empty text (nothing to classify)")
    return item


def _image_arguments(argument: str) -> list:
    path = Path(argument)
    return list_images(path) if path.is_dir() else [path]


SNIPPET = 60


def _text_arguments(argument: str) -> list:
    """A folder: its .txt files; an existing file: that file; anything else is the text itself."""
    path = Path(argument)
    if path.is_dir():
        return list_texts(path)
    if path.is_file():
        return [path]
    one_line = " ".join(argument.split())
    name = one_line if len(one_line) <= SNIPPET else one_line[: SNIPPET - 3] + "..."
    return [TextInput(name, argument)]


def _text_name(item, position: int) -> str:
    if isinstance(item, TextInput):
        return item.source
    if isinstance(item, os.PathLike):
        return str(item)
    return f"<text #{position}>"


INPUT_KINDS: dict[Modality, InputKind] = {
    Modality.IMAGE: InputKind(
        Modality.IMAGE,
        "image",
        PreprocessSpec.from_dict,
        list_images,
        preprocess_image,
        lambda arrays, spec: np.stack(arrays),
        lambda spec, batch: np.zeros(spec.input_shape(batch), np.float32),
        lambda spec, batch, rng: rng.standard_normal(spec.input_shape(batch), dtype=np.float32),
        _image_name,
        _image_arguments,
    ),
    Modality.TEXT: InputKind(
        Modality.TEXT,
        "text",
        TextSpec.from_dict,
        list_texts,
        _load_text,
        lambda texts, spec: encode_texts(texts, spec).feed(spec),
        lambda spec, batch: example_feed(spec, batch),
        lambda spec, batch, rng: example_feed(spec, batch, min(128, spec.max_length), rng),
        _text_name,
        _text_arguments,
    ),
}


def input_kind(modality: Modality | str) -> InputKind:
    return INPUT_KINDS[Modality(modality)]


def parse_modality(value: str | None, where: str) -> Modality:
    """A recorded modality; absent means image (everything written before text existed)."""
    from .errors import BundleError

    if value is None or value == "":
        return Modality.IMAGE
    try:
        return Modality(value)
    except ValueError:
        raise BundleError(
            f"{where}: modality {value!r} is not one of {', '.join(m.value for m in Modality)}; "
            "install the edgetl-runtime release that matches the edgetl that built it"
        ) from None


def batch_size_of(feed: Feed) -> int:
    return len(feed) if isinstance(feed, np.ndarray) else len(feed["input_ids"])


def slice_feed(feed: Feed, start: int, stop: int) -> Feed:
    if isinstance(feed, np.ndarray):
        return feed[start:stop]
    return {k: v[start:stop] for k, v in feed.items()}


def parse_spec(modality: Modality, d: dict) -> InputSpec:
    return INPUT_KINDS[modality].parse_spec(d)


__all__ = ["INPUT_KINDS", "Feed", "InputKind", "InputSpec", "TextInput", "input_kind", "parse_modality"]
