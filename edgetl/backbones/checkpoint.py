"""Checkpoints: safetensors weights plus a JSON header (labels, backbone, preprocessing, recipe).

No pickle: loading never executes code from the file. Written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgetl.backbones.registry import EdgeModel, Weights, create_model
from edgetl.errors import EdgetlError
from edgetl_runtime.fileio import atomic_output
from edgetl_runtime.inputs import InputSpec, parse_modality, parse_spec
from edgetl_runtime.modality import Modality

HEAD_PREFIX = "head."


@dataclass(frozen=True)
class CheckpointInfo:
    backbone: str
    labels: tuple[str, ...]
    preprocess: InputSpec
    epoch: int = 0
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data_fingerprint: str = ""  # the splits' fingerprint: which data trained these weights
    modality: Modality = Modality.IMAGE  # absent in checkpoints written before text: images
    architecture: dict = field(default_factory=dict)  # a text encoder's Hugging Face config

    def to_json(self) -> str:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["preprocess"] = self.preprocess.to_dict()
        d["modality"] = self.modality.value
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | Path = "checkpoint") -> CheckpointInfo:
        """Strict: anything but the header edgetl writes raises one EdgetlError naming the key."""
        fix = "retrain, or give the checkpoint `edgetl train` wrote"
        try:
            d = json.loads(text)
        except ValueError as e:
            raise EdgetlError(f"{source}: its edgetl header is not JSON ({e}); {fix}") from None
        if not isinstance(d, dict):
            raise EdgetlError(f"{source}: its edgetl header is not a JSON object; {fix}")
        fields = cls.__dataclass_fields__
        unknown = sorted(set(d) - set(fields))
        missing = [k for k in ("backbone", "labels", "preprocess") if k not in d]
        if unknown or missing:
            what = f"unknown key {unknown[0]!r}" if unknown else f"key {missing[0]!r} missing"
            raise EdgetlError(f"{source}: edgetl header: {what}; {fix}")
        types = {
            "backbone": str,
            "labels": list,
            "epoch": int,
            "recipe": dict,
            "metrics": dict,
            "data_fingerprint": str,
            "architecture": dict,
        }
        for key, kind in types.items():
            if key in d and not isinstance(d[key], kind):
                raise EdgetlError(f"{source}: edgetl header key {key!r} must be a {kind.__name__}; {fix}")
        if not all(isinstance(label, str) for label in d["labels"]):
            raise EdgetlError(f"{source}: edgetl header key 'labels' must list strings; {fix}")
        try:
            d["modality"] = parse_modality(d.get("modality"), f"{source}: edgetl header key 'modality'")
            d["preprocess"] = parse_spec(d["modality"], d["preprocess"])
        except (ValueError, TypeError, EdgetlError) as e:
            raise EdgetlError(f"{source}: edgetl header key 'preprocess': {e}; {fix}") from None
        d["labels"] = tuple(d["labels"])
        return cls(**d)


def save_state(state: dict, info: CheckpointInfo, path: str | Path) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"edgetl": info.to_json()})
    return Path(path)


def save_checkpoint(model: EdgeModel, info: CheckpointInfo, path: str | Path) -> Path:
    return save_state(model.state_dict(), info, path)


def save_head(model: EdgeModel, info: CheckpointInfo, path: str | Path) -> Path:
    """Only the head's tensors: what a cached-feature epoch changes (KBs instead of the backbone's MBs)."""
    return save_state({k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIX)}, info, path)


def with_head(state: dict, path: str | Path) -> dict:
    """`state` with its head replaced by the head-only checkpoint at `path`."""
    head = load_file(str(path))
    if not head or set(head) - {k for k in state if k.startswith(HEAD_PREFIX)}:
        raise EdgetlError(f"{path}: not a head checkpoint of this model; start over with --overwrite")
    # copies: the result must not alias the live parameters a later stage goes on training
    return {**{k: v.detach().clone() for k, v in state.items()}, **head}


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EdgetlError(f"{path}: no such checkpoint; train first with `edgetl train`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise EdgetlError(f"{path}: not a readable checkpoint ({e})") from None
    if "edgetl" not in meta:
        raise EdgetlError(f"{path}: not an edgetl checkpoint (no edgetl header)")
    return CheckpointInfo.from_json(meta["edgetl"], path)


def _image_architecture(info: CheckpointInfo) -> torch.nn.Module:
    hidden = tuple(info.recipe.get("head_hidden", ()))
    return create_model(info.backbone, num_classes=len(info.labels), weights=Weights.NONE, head_hidden=hidden)


def _text_architecture(info: CheckpointInfo) -> torch.nn.Module:
    from edgetl.backbones.text import TextClassifier, build_encoder

    # the recipe's head dropout, which a resumed run trains on with (the encoder's is in its config)
    dropout = info.recipe.get("dropout", 0.1)
    return TextClassifier(
        build_encoder(info.architecture), len(info.labels), info.preprocess.pooling, dropout
    )


# how each modality's checkpoint rebuilds its architecture without downloading weights
ARCHITECTURES = {Modality.IMAGE: _image_architecture, Modality.TEXT: _text_architecture}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[EdgeModel, CheckpointInfo]:
    """Rebuild the model of a checkpoint (architecture without downloading weights) and load it."""
    info = read_checkpoint_info(path)
    model = ARCHITECTURES[info.modality](info)
    try:
        model.load_state_dict(load_file(str(path), device=str(device)))
    except RuntimeError as e:
        raise EdgetlError(
            f"{path}: weights do not fit backbone {info.backbone} ({str(e).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), info
