"""Classify images or texts with a bundle or an exported model: the device-side API.

The preprocessing is the model's input kind (`inputs.INPUT_KINDS`: `preprocess` for images, the
model's own tokenizer for text) with the spec stored in the manifest (or the model's metadata), the
same code edgetl evaluates with, so device and training agree by construction.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .backends import AUTO_ORDER, BACKENDS, Backend, Session, load_session, resolve_backend
from .bundle import MAX_BUNDLE_BYTES, open_bundle
from .errors import BundleError, InputError
from .inputs import InputSpec, batch_size_of, input_kind, slice_feed
from .manifest import Manifest
from .modality import Modality
from .modelfile import model_format, read_model_info
from .preprocess import EncodedImage, ImageInput
from .signing import TrustedKey
from .textinput import TextSpec

DEFAULT_BATCH = 8


def pick_backend(name: str, runnable: Sequence[str]) -> Backend:
    """A named backend must be available; "auto" takes the first available one of AUTO_ORDER that
    can run the model (`runnable`: the backends its bundle lists or its format allows), else the
    first available of `runnable`, so an OpenVINO IR gets openvino-cpu and an ONNX model onnxruntime."""
    if name != "auto":
        return resolve_backend(name)
    for candidate in dict.fromkeys((*AUTO_ORDER, *runnable)):
        if candidate in runnable and candidate in BACKENDS and BACKENDS[candidate].check() is None:
            return BACKENDS[candidate]
    # none is usable here: the model's first backend says why (e.g. openvino not installed)
    return resolve_backend(runnable[0] if runnable else "auto")


@dataclass(frozen=True)
class Prediction:
    """One input's result: the top class and the top-k list, or the error that input got."""

    source: str
    label: str | None = None
    index: int | None = None
    score: float | None = None  # softmax probability of `label`
    top_k: tuple[tuple[str, int, float], ...] = ()  # (label, index, probability), best first
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if not self.ok:
            return {"source": self.source, "error": self.error}
        return {
            "source": self.source,
            "label": self.label,
            "index": self.index,
            "score": self.score,
            "top_k": [{"label": lb, "index": i, "score": s} for lb, i, s in self.top_k],
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One input or many; a 4-D array is a batch of HxWxC images."""
    from .inputs import TextInput

    if isinstance(images, (str, os.PathLike, Image.Image, EncodedImage, TextInput)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _check_tokenizer(bundled: TextSpec, model: Path) -> None:
    """The manifest's tokenizer must be the one the model file was exported with: the manifest's own
    checksum cannot tell, whoever rewrites the tokenizer can re-hash the manifest (signed or not)."""
    carried = getattr(read_model_info(model).preprocess, "tokenizer_sha256", "none")
    if carried != bundled.tokenizer_sha256:
        raise BundleError(
            f"{model.name}: the bundle's tokenizer (sha256 {bundled.tokenizer_sha256[:16]}) is not the one "
            f"this model carries ({carried[:16]}); the bundle was altered, rebuild it with `edgetl package`"
        )


class Predictor:
    """A loaded model with its labels and preprocessing. Build it with `from_bundle` or `from_model`."""

    def __init__(
        self,
        session: Session,
        labels: Sequence[str],
        preprocess: InputSpec,
        *,
        modality: Modality = Modality.IMAGE,
        fixed_batch: int | None = None,
        model: str = "",
        precision: str = "",
        manifest: Manifest | None = None,
        signer: str | None = None,
    ) -> None:
        self.session = session
        self.labels = tuple(labels)
        self.preprocess = preprocess
        self.modality = Modality(modality)
        self.kind = input_kind(self.modality)
        self.fixed_batch = fixed_batch
        self.model = model
        self.precision = precision
        self.manifest = manifest
        self.signer = signer
        self._probe()

    def _probe(self) -> None:
        """Labels that do not fit the model fail at load, in one line: checked against the output shape
        the model declares, or, where it declares no class count, one run on zeros (a model call a cold
        start does not pay when the shape says it all)."""
        shape = self.session.output_shape
        if shape is not None and shape[-1] is not None:
            self._check_width(len(shape), shape[-1])
            return
        try:
            out = self.session.run(self.kind.example(self.preprocess, self.fixed_batch or 1))
        except Exception:  # e.g. a fixed batch this spec does not know: the real run checks it instead
            return
        self._check_outputs(out)

    def _check_outputs(self, out: np.ndarray) -> None:
        self._check_width(out.ndim, out.shape[-1] if out.ndim else 0)

    def _check_width(self, ndim: int, width: int) -> None:
        if ndim != 2 or width != len(self.labels):
            raise BundleError(
                f"{self.model}: the model has {width} outputs but "
                f"{len(self.labels)} labels; the labels do not belong to this model, rebuild the bundle"
            )

    @property
    def backend(self) -> str:
        return self.session.backend

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        *,
        trusted: Sequence[TrustedKey] = (),
        max_bytes: int = MAX_BUNDLE_BYTES,
    ) -> Predictor:
        """Verify a bundle (folder or .tar.gz) and load its model for `backend`.

        With `trusted` public keys (signing.trusted_keys_from), an unsigned bundle or one signed by
        another key is refused. An archive may unpack to at most `max_bytes`.

        precision "auto" takes the first model of the bundle meant for the chosen backend (INT8 on
        CPU when the bundle has it, FP32 on a GPU).
        """
        with open_bundle(path, trusted=trusted, max_bytes=max_bytes) as bundle:
            manifest = bundle.manifest
            chosen = pick_backend(backend, [b for m in manifest.models for b in m.backends])
            entry = manifest.select_model(precision, chosen.name)
            if manifest.modality is Modality.TEXT:
                _check_tokenizer(manifest.preprocess, bundle.file(entry.path))
            session = load_session(bundle.file(entry.path), chosen.name, threads)
        return cls(
            session,
            manifest.labels,
            manifest.preprocess,
            modality=manifest.modality,
            fixed_batch=manifest.input.fixed_batch,
            model=entry.path,
            precision=entry.precision.value,
            manifest=manifest,
            signer=bundle.signer,
        )

    @classmethod
    def from_model(
        cls, path: str | os.PathLike, backend: str = "auto", threads: int | None = None
    ) -> Predictor:
        """Load an exported model file (ONNX or OpenVINO IR); labels and preprocessing come from its
        edgetl metadata."""
        info = read_model_info(path)
        session = load_session(path, pick_backend(backend, model_format(path).backends).name, threads)
        return cls(
            session,
            info.labels,
            info.preprocess,
            modality=info.modality,
            model=Path(path).name,
            precision=info.precision,
        )

    def logits(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """Raw model output for a preprocessed batch, split to the model's fixed batch size if it has one."""
        n = batch_size_of(batch)
        step = self.fixed_batch or n
        out = np.concatenate([self.session.run(slice_feed(batch, i, i + step)) for i in range(0, n, step)])
        self._check_outputs(out)
        return out

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        top_k: int = 5,
        batch_size: int | None = None,
    ) -> list[Prediction]:
        """Classify inputs, one Prediction per input, in order: for an image model paths, PIL images
        or HxWxC uint8 arrays; for a text model strings (the text itself), TextInput or Path (a file).

        An unreadable input gets a Prediction with `error` set; the others are still classified.
        """
        items = _as_list(images)
        size = batch_size or self.fixed_batch or DEFAULT_BATCH
        results: list[Prediction | None] = [None] * len(items)
        for start in range(0, len(items), size):
            arrays, readable = [], []
            for i in range(start, min(start + size, len(items))):
                try:
                    arrays.append(self.kind.load(items[i], self.preprocess))
                    readable.append(i)
                except InputError as e:
                    results[i] = Prediction(self.kind.name(items[i], i), error=str(e))
            if arrays:
                probs = self.probabilities(self.kind.collate(arrays, self.preprocess))
                for i, p in zip(readable, probs, strict=True):
                    results[i] = self.decode(self.kind.name(items[i], i), p, top_k)
        return results

    def probabilities(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (softmax) for a preprocessed batch."""
        return softmax(self.logits(batch))

    def decode(self, source: str, probs: np.ndarray, top_k: int) -> Prediction:
        """One input's Prediction from its probabilities: the best `top_k` classes (1..labels)."""
        k = max(1, min(top_k, len(self.labels)))
        best = np.argsort(-probs, kind="stable")[:k]
        top = tuple((self.labels[i], int(i), float(probs[i])) for i in best)
        return Prediction(source, label=top[0][0], index=top[0][1], score=top[0][2], top_k=top)

    def describe(self) -> dict:
        return {
            "model": self.model,
            "precision": self.precision,
            "backend": self.backend,
            "providers": list(self.session.providers),
            "threads": getattr(self.session, "threads", None),
            "labels": list(self.labels),
            "modality": self.modality.value,
            "preprocess": self.preprocess.summary(),
        }


def summarize_predictions(bundle: str, predictor: Predictor, results: Sequence[Prediction]) -> dict:
    """The JSON object `edgetl-run predict --json` prints, and `edgetl-run serve` answers for one input."""
    failed = [r for r in results if not r.ok]
    return {
        "bundle": bundle,
        **predictor.describe(),
        "predictions": [r.to_dict() for r in results],
        "images": len(results),
        "failed": len(failed),
        "errors": [{"source": r.source, "error": r.error} for r in failed],
    }
