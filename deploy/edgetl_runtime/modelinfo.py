"""What a model file says about itself: labels, preprocessing, names, provenance.

edgetl writes this into ONNX ``metadata_props`` (and OpenVINO ``rt_info``) under ``edgetl.*`` keys
(modelfile.py holds the formats, reads a file's ModelInfo and tells an INT8 graph); this module parses
it, so an exported file is enough to run inference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import Enum

from .errors import BundleError
from .inputs import InputSpec, parse_modality, parse_spec
from .modality import Modality
from .preprocess import SpecError

PREFIX = "edgetl."


class MetadataMissing(BundleError):
    """A model without edgetl metadata (made elsewhere); malformed metadata is a plain BundleError.

    Callers that fall back to defaults for foreign models catch this one only, never a malformed value.
    """


class Precision(str, Enum):
    """The numeric format of a model file's weights and arithmetic."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:  # "int8" in messages on every Python (3.11 changed a mixin's format)
        return self.value


@dataclass(frozen=True)
class ModelInfo:
    labels: tuple[str, ...]
    preprocess: InputSpec  # PreprocessSpec for images, TextSpec for text (see inputs.INPUT_KINDS)
    backbone: str
    input_name: str = "input"
    output_name: str = "logits"
    precision: Precision = Precision.FP32  # serialised as its string
    edgetl_version: str = ""
    source_sha256: str = ""
    quantization: dict = field(default_factory=dict)
    modality: Modality = Modality.IMAGE

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))

    def with_(self, **changes) -> ModelInfo:
        return replace(self, **changes)

    @property
    def quantized_from(self) -> str | None:
        """The sha256 of the FP32 model an INT8 model was quantized from, where the quantizer recorded it."""
        return self.quantization.get("fp32_sha256") or None

    def to_metadata(self) -> dict[str, str]:
        """Flat str -> str mapping, the form ONNX metadata_props and rt_info hold."""
        values = {
            "labels": json.dumps(list(self.labels)),
            "preprocess": self.preprocess.to_json(),
            "backbone": self.backbone,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "precision": self.precision.value,
            "edgetl_version": self.edgetl_version,
            "source_sha256": self.source_sha256,
            "quantization": json.dumps(self.quantization, sort_keys=True),
            "modality": self.modality.value,
        }
        return {PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> ModelInfo:
        values = {k[len(PREFIX) :]: v for k, v in meta.items() if k.startswith(PREFIX)}
        missing = {"labels", "preprocess", "backbone"} - values.keys()
        if missing:
            raise MetadataMissing(
                f"{source}: no edgetl metadata ({', '.join(sorted(missing))} missing); "
                "a model from elsewhere gets its labels and preprocessing with `edgetl describe "
                f"{source} --labels LABELS.txt --preprocess imagenet --out described.onnx` (edgetl's own "
                "models: `edgetl export`)"
            )
        bad = f"{source}: metadata {PREFIX}"
        fix = "re-export the model with `edgetl export`"
        labels = _json_value(values["labels"], f"{bad}labels", fix)
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)):
            raise BundleError(f"{bad}labels must be a JSON list of non-empty strings; {fix}")
        modality = parse_modality(values.get("modality"), f"{source}: metadata {PREFIX}modality")
        try:
            spec = parse_spec(modality, _json_value(values["preprocess"], f"{bad}preprocess", fix))
        except SpecError as e:
            raise BundleError(f"{bad}preprocess: {e}; {fix}") from None
        quantization = _json_value(values.get("quantization") or "{}", f"{bad}quantization", fix)
        if not isinstance(quantization, dict):
            raise BundleError(f"{bad}quantization must be a JSON object; {fix}")
        precision = values.get("precision", "fp32")
        if precision not in {p.value for p in Precision}:
            raise BundleError(
                f"{bad}precision must be one of {', '.join(p.value for p in Precision)}, got {precision!r}; {fix}"
            )
        return cls(
            labels=tuple(labels),
            preprocess=spec,
            backbone=values["backbone"],
            input_name=values.get("input_name", "input"),
            output_name=values.get("output_name", "logits"),
            precision=Precision(precision),
            edgetl_version=values.get("edgetl_version", ""),
            source_sha256=values.get("source_sha256", ""),
            quantization=quantization,
            modality=modality,
        )


def _json_value(text: str, where: str, fix: str):
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where} is not valid JSON ({e}); {fix}") from None
