"""Which validation images the model gets wrong, and small pictures of them for the report.

Predictions come from RUN/model.onnx through the device runtime (torch-free, what the device will
compute) when it exists, else from the best checkpoint with the runtime's preprocessing. Either way
the input pixels are the runtime's, so the gallery shows what deployment would get wrong.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl_runtime.modality import Modality

# A report must stay quick: beyond this many validation images a seeded sample is classified.
MAX_EVAL_IMAGES = 2000
THUMBNAIL_PX = 128


@dataclass(frozen=True)
class Miss:
    path: str
    true: str
    predicted: str
    score: float  # softmax probability of the wrong prediction
    true_score: float

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class Misses:
    source: str  # what made the predictions, in words
    evaluated: int
    sampled: bool
    unreadable: int
    misses: tuple[Miss, ...]  # worst (most confident) first


def _probabilities_onnx(model: Path, paths: list[str]) -> tuple[np.ndarray, list[int]]:
    from edgetl_runtime import Predictor
    from edgetl_runtime.backends import BackendName

    predictor = Predictor.from_model(model, backend=BackendName.ORT_CPU)
    inputs = VIEWS[predictor.modality].inputs(paths)
    results = predictor.predict(inputs, top_k=len(predictor.labels))
    kept = [i for i, r in enumerate(results) if r.ok]
    probs = np.zeros((len(kept), len(predictor.labels)), dtype=np.float32)
    for row, i in enumerate(kept):
        for _, index, p in results[i].top_k:
            probs[row, index] = p
    return probs, kept


def _probabilities_checkpoint(checkpoint: Path, paths: list[str]) -> tuple[np.ndarray, list[int]]:
    import torch

    from edgetl.backbones.checkpoint import load_checkpoint
    from edgetl_runtime.predictor import softmax

    model, info = load_checkpoint(checkpoint)
    arrays, kept = VIEWS[info.modality].checkpoint_inputs(paths, info.preprocess)
    logits = []
    with torch.no_grad():
        for i in range(0, len(arrays), 64):
            logits.append(
                model(*VIEWS[info.modality].tensors(arrays[i : i + 64], info.preprocess)).float().numpy()
            )
    return softmax(np.concatenate(logits)) if logits else np.zeros((0, len(info.labels))), kept


def find_misses(run: Path, labels: list[str], val: list[tuple[str, int]], *, seed: int = 0) -> Misses:
    """Classify the run's validation images and return the misclassified ones, most confident first."""
    sampled = len(val) > MAX_EVAL_IMAGES
    if sampled:
        val = random.Random(seed).sample(val, MAX_EVAL_IMAGES)
    paths = [p for p, _ in val]
    from edgetl.runfolder.folder import RunFolder

    folder = RunFolder(run)
    if folder.model.is_file():
        probs, kept = _probabilities_onnx(folder.model, paths)
        source = "model.onnx on onnxruntime-cpu (edgetl-runtime preprocessing)"
    else:
        checkpoint = folder.require_checkpoint()
        probs, kept = _probabilities_checkpoint(checkpoint, paths)
        source = f"{checkpoint.name} in PyTorch (edgetl-runtime preprocessing)"
    misses = []
    for row, i in enumerate(kept):
        truth = val[i][1]
        guess = int(probs[row].argmax())
        if guess != truth:
            misses.append(
                Miss(
                    paths[i], labels[truth], labels[guess], float(probs[row, guess]), float(probs[row, truth])
                )
            )
    misses.sort(key=lambda m: (-m.score, m.path))
    return Misses(source, len(kept), sampled, len(paths) - len(kept), tuple(misses))


def thumbnail_data_uri(path: str | Path, size: int = THUMBNAIL_PX) -> str | None:
    """A small JPEG of the image as a data: URI (None when it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- how each modality's validation examples are read and shown ---------------------------------------


def _image_checkpoint_inputs(paths: list[str], spec) -> tuple[list, list[int]]:
    from edgetl.data.images import preprocess_readable

    arrays, kept, _ = preprocess_readable(paths, spec, "validation")
    return arrays, kept


def _image_tensors(arrays: list, spec) -> tuple:
    import torch

    return (torch.from_numpy(np.stack(arrays)),)


def _thumbnail(miss: Miss) -> str | None:
    return thumbnail_data_uri(miss.path)


def _text_inputs(paths: list[str]) -> list:
    from edgetl.data.texts import read_recorded
    from edgetl_runtime.inputs import TextInput

    return [TextInput(p, t) for p, t in zip(paths, read_recorded(paths), strict=True)]


def _text_checkpoint_inputs(paths: list[str], spec) -> tuple[list, list[int]]:
    from edgetl.data.texts import read_recorded

    return read_recorded(paths), list(range(len(paths)))


def _text_tensors(texts: list, spec) -> tuple:
    import torch

    from edgetl_runtime.textinput import encode_texts

    encoded = encode_texts(texts, spec)
    return torch.from_numpy(encoded.ids), torch.from_numpy(encoded.mask)


def _text_snippet(miss: Miss) -> str:
    from edgetl.data.texts import read_recorded

    text = " ".join(read_recorded([miss.path])[0].split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


SNIPPET_CHARS = 280


@dataclass(frozen=True)
class ExampleView:
    """How a modality's validation examples reach a model and appear on the report page."""

    noun: str  # "images", "texts"
    inputs: Callable[[list[str]], list]  # recorded sources -> what Predictor.predict takes
    checkpoint_inputs: Callable  # (sources, spec) -> (prepared, indices kept)
    tensors: Callable  # (prepared batch, spec) -> the PyTorch model's arguments
    card: Callable[[Miss], str | None]  # what a card shows of a miss: a thumbnail's data: URI, a snippet
    template: str  # the card's template, given `miss` and `shown`


VIEWS = {
    Modality.IMAGE: ExampleView("images", list, _image_checkpoint_inputs, _image_tensors, _thumbnail, "image_card.html.j2"),
    Modality.TEXT: ExampleView("texts", _text_inputs, _text_checkpoint_inputs, _text_tensors, _text_snippet, "text_card.html.j2"),
}  # fmt: skip
