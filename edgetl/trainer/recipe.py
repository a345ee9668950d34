"""Training recipes: what a fine-tuning run does, as data (a TOML file in models/ per backbone).

A recipe is a list of stages. A stage with `unfreeze = 0` trains only the head on cached features;
a stage with `unfreeze = K` also trains the last K backbone stages, with learning rates that decay
toward the input; `unfreeze_layers = N` instead trains the last N parameterised layers (Keras'
`base_model.layers[-N:]`); `gradual = true` unfreezes one more stage every `epochs` epochs up to K.
CLI options and `train()`'s keyword options replace recipe values, never the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from edgetl.backbones.registry import DEFAULT_BACKBONE
from edgetl.errors import EdgetlError
from edgetl.options import Balance
from edgetl_runtime.preprocess import PreprocessSpec, SpecError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def _models_dir() -> Traversable:
    """The recipes: edgetl/models inside an installed wheel, else the checkout's models/ (development)."""
    packaged = resources.files("edgetl") / "models"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "models"


MODELS_DIR = _models_dir()


class RecipeError(EdgetlError):
    """A recipe file or override has a missing, unknown or out-of-range value."""


class Optimizer(str, Enum):
    ADAMW = "adamw"  # decoupled weight decay
    ADAM = "adam"  # weight_decay is an L2 term in the gradient, as in Keras/PyTorch Adam
    SGD = "sgd"  # with `momentum` (Nesterov off)


class LrSchedule(str, Enum):
    COSINE = "cosine"  # warmup, then cosine decay to 1% within each stage
    CONSTANT = "constant"  # warmup, then the stage's learning rates unchanged (Keras' default)


@dataclass(frozen=True)
class PhasePlan:
    """One stage of the schedule: `epochs` epochs with the last `unfreeze` backbone stages trainable
    (or the last `unfreeze_layers` parameterised layers)."""

    epochs: int
    unfreeze: int = 0
    lr: float = 1e-3  # head
    lr_backbone: float = 1e-4  # the last unfrozen stage; earlier ones get lr_backbone * lr_decay**distance
    warmup: int = 0  # epochs of linear warmup before the cosine decay
    unfreeze_layers: int = 0  # instead of `unfreeze`: layers with weights, counted from the top
    gradual: bool = False  # expands to stages unfreezing 1, 2, ... `unfreeze` stages, `epochs` each

    @property
    def frozen(self) -> bool:
        return self.unfreeze == 0 and self.unfreeze_layers == 0


@dataclass(frozen=True)
class Recipe:
    """Defaults are the embedded efficientnet_lite0 recipe (models/efficientnet_lite0.toml repeats them).

    The default leans on cheap frozen epochs on cached features, then one short partial unfreeze: it
    beats ten full fine-tuning epochs on small datasets at a fraction of their time.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str = "default"
    stages: tuple[PhasePlan, ...] = (
        PhasePlan(epochs=30, unfreeze=0, lr=3e-3, warmup=1),
        PhasePlan(epochs=2, unfreeze=2, lr=1e-3, lr_backbone=1e-4, warmup=0),
    )
    lr_decay: float = 0.5
    batch_size: int = 32
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    dropout: float = 0.2  # before the head's first Linear
    head_hidden: tuple[int, ...] = ()  # hidden widths of an MLP head (Linear -> ReLU -> Dropout each)
    head_dropout: float = 0.0  # the Dropout after each hidden layer
    optimizer: Optimizer = Optimizer.ADAMW
    momentum: float = 0.9  # sgd only
    lr_schedule: LrSchedule = LrSchedule.COSINE
    patience: int = 8  # epochs without a better validation score before a stage stops early
    balance: Balance = Balance.AUTO
    hflip: bool = True  # off for data whose meaning flips with the image (digits, text)
    scale: tuple[float, float] = (0.35, 1.0)  # random resized crop: area fraction range
    cache_views: int = 2  # augmented views per training image cached for frozen stages (+1 plain view)
    val_fraction: float = 0.2  # used when DATA has no val/ folder
    image_size: int | None = None  # None: the backbone's own input size
    preprocess: dict = field(default_factory=dict)  # overrides of the backbone's PreprocessSpec fields

    def __post_init__(self) -> None:
        object.__setattr__(self, "balance", _choice(Balance, self.balance, "balance"))
        object.__setattr__(self, "optimizer", _choice(Optimizer, self.optimizer, "optimizer"))
        object.__setattr__(self, "lr_schedule", _choice(LrSchedule, self.lr_schedule, "lr_schedule"))
        # validated before conversion, so a wrongly typed value is named instead of crashing a cast
        _validate(self)
        object.__setattr__(self, "stages", expand_gradual(tuple(self.stages)))
        object.__setattr__(self, "head_hidden", tuple(self.head_hidden))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))

    def preprocess_spec(self, base: PreprocessSpec) -> PreprocessSpec:
        """The backbone's spec with this recipe's overrides and image size applied."""
        try:
            spec = PreprocessSpec.from_dict({**base.to_dict(), **self.preprocess})
        except SpecError as e:
            raise RecipeError(f"recipe [preprocess] with the backbone's defaults: {e}") from None
        return spec.with_size(self.image_size) if self.image_size else spec

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["balance"] = self.balance.value
        d["optimizer"] = self.optimizer.value
        d["lr_schedule"] = self.lr_schedule.value
        d["scale"] = list(self.scale)
        d["head_hidden"] = list(self.head_hidden)
        return d

    def with_overrides(self, **overrides) -> Recipe:
        """Apply CLI-style overrides; None means "keep the recipe's value".

        Besides the Recipe fields: `frozen_epochs` (epochs of frozen stages), `epochs` (epochs of
        unfreezing stages), `unfreeze` (the first unfreezing stage's K), `lr` and `lr_backbone` (all stages).
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        stage_keys = {"frozen_epochs", "epochs", "unfreeze", "lr", "lr_backbone", "warmup"}
        stage_over = {k: overrides.pop(k) for k in stage_keys & overrides.keys()}
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise RecipeError(f"unknown recipe option(s): {', '.join(sorted(unknown))}")
        stages = list(self.stages)
        if "unfreeze" in stage_over:
            first = next((i for i, s in enumerate(stages) if not s.frozen), None)
            if first is None:
                stages.append(PhasePlan(epochs=stage_over.get("epochs", 1), unfreeze=stage_over["unfreeze"]))
            else:
                stages[first] = replace(stages[first], unfreeze=stage_over["unfreeze"], unfreeze_layers=0)
        for i, s in enumerate(stages):
            key = "frozen_epochs" if s.frozen else "epochs"
            if key in stage_over:
                s = replace(s, epochs=stage_over[key])
            s = replace(s, **{k: stage_over[k] for k in ("lr", "lr_backbone", "warmup") if k in stage_over})
            stages[i] = s
        kept = tuple(s for s in stages if not isinstance(s.epochs, int) or s.epochs != 0)
        if not kept:
            raise RecipeError(
                "--epochs 0 with --frozen-epochs 0 leaves no training stage; give one of them >= 1"
            )
        return replace(self, **overrides, stages=kept)


def expand_gradual(stages: tuple[PhasePlan, ...]) -> tuple[PhasePlan, ...]:
    """A `gradual` stage becomes `unfreeze` stages that unfreeze 1, 2, ... stages from the top
    (ULMFiT's gradual unfreezing), each with the stage's epochs and learning rates."""
    out = []
    for s in stages:
        expand = isinstance(s, PhasePlan) and s.gradual and s.unfreeze_layers == 0
        if expand and isinstance(s.unfreeze, int) and s.unfreeze >= 1:
            out += [replace(s, unfreeze=k, gradual=False) for k in range(1, s.unfreeze + 1)]
            continue
        out.append(s)
    return tuple(out)


def _choice(enum: type[Enum], value, key: str):
    try:
        return enum(value)
    except ValueError:
        raise RecipeError(
            f"recipe key '{key}': {value!r} is not one of {', '.join(e.value for e in enum)}"
        ) from None


def _require(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise RecipeError(f"recipe key '{key}' must be {what}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # `epochs = true` is not 1


def _is_number(value) -> bool:
    # TOML has `inf` and `nan`: `lr = inf` trains to a NaN loss, so neither is a number here
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value, key: str, minimum: int) -> None:
    _require(_is_int(value) and value >= minimum, key, f"an integer >= {minimum}", value)


def _number(value, key: str, what: str, ok) -> None:
    """A number (not a bool, not a string) for which ok(value) holds; `what` is the range in words."""
    _require(_is_number(value) and ok(value), key, f"a number {what}", value)


def _validate(r: Recipe) -> None:
    _require(isinstance(r.backbone, str) and r.backbone, "backbone", "a backbone name (string)", r.backbone)
    _require(isinstance(r.weights, str) and r.weights, "weights", "a string", r.weights)
    _require(
        isinstance(r.stages, (list, tuple)) and len(r.stages) > 0,
        "stages",
        "a non-empty list of stages",
        r.stages,
    )
    for i, s in enumerate(r.stages):
        _require(isinstance(s, PhasePlan), f"stages[{i}]", "a table of stage settings", s)
        _integer(s.epochs, f"stages[{i}].epochs", 1)
        _integer(s.unfreeze, f"stages[{i}].unfreeze", 0)
        _integer(s.unfreeze_layers, f"stages[{i}].unfreeze_layers", 0)
        _require(
            s.unfreeze == 0 or s.unfreeze_layers == 0,
            f"stages[{i}].unfreeze_layers",
            "0 when `unfreeze` is set (count stages or layers, not both)",
            s.unfreeze_layers,
        )
        _require(isinstance(s.gradual, bool), f"stages[{i}].gradual", "true or false", s.gradual)
        _require(
            not s.gradual or (s.unfreeze >= 1 and s.unfreeze_layers == 0),
            f"stages[{i}].gradual",
            "used with `unfreeze` >= 1 (stages, not layers)",
            s.gradual,
        )
        _number(s.lr, f"stages[{i}].lr", "> 0", lambda v: v > 0)
        _number(s.lr_backbone, f"stages[{i}].lr_backbone", "> 0", lambda v: v > 0)
        _integer(s.warmup, f"stages[{i}].warmup", 0)
    _number(r.lr_decay, "lr_decay", "in (0, 1]", lambda v: 0 < v <= 1)
    _integer(r.batch_size, "batch_size", 1)
    _number(r.weight_decay, "weight_decay", ">= 0", lambda v: v >= 0)
    _number(r.label_smoothing, "label_smoothing", "in [0, 1)", lambda v: 0 <= v < 1)
    _number(r.dropout, "dropout", "in [0, 1)", lambda v: 0 <= v < 1)
    _require(
        isinstance(r.head_hidden, (list, tuple)) and all(_is_int(h) and h >= 1 for h in r.head_hidden),
        "head_hidden",
        "a list of layer widths >= 1",
        r.head_hidden,
    )
    _number(r.head_dropout, "head_dropout", "in [0, 1)", lambda v: 0 <= v < 1)
    _number(r.momentum, "momentum", "in [0, 1)", lambda v: 0 <= v < 1)
    _integer(r.patience, "patience", 1)
    _require(isinstance(r.hflip, bool), "hflip", "true or false", r.hflip)
    _require(
        isinstance(r.scale, (list, tuple))
        and len(r.scale) == 2
        and all(map(_is_number, r.scale))
        and 0 < r.scale[0] <= r.scale[1] <= 1,
        "scale",
        "[min, max] (2 numbers) with 0 < min <= max <= 1",
        r.scale,
    )
    _integer(r.cache_views, "cache_views", 0)
    _number(r.val_fraction, "val_fraction", "in (0, 1)", lambda v: 0 < v < 1)
    if r.image_size is not None:
        _integer(r.image_size, "image_size", 16)
    fields_ = ", ".join(PreprocessSpec.__dataclass_fields__)
    _require(isinstance(r.preprocess, dict), "preprocess", f"a table of {fields_}", r.preprocess)
    unknown = set(r.preprocess) - set(PreprocessSpec.__dataclass_fields__)
    _require(not unknown, "preprocess", f"a table of {fields_}", r.preprocess)
    # checked against the generic defaults now, so a bad value fails before any data is read or written
    try:
        PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), **r.preprocess})
    except SpecError as e:
        if e.key and e.key in r.preprocess:
            raise RecipeError(f"recipe key 'preprocess.{e.key}': {e}") from None
        raise RecipeError(f"recipe [preprocess]: {e}") from None


def recipe_from_dict(d: dict, source: str = "recipe") -> Recipe:
    known = {f.name for f in fields(Recipe)}
    unknown = set(d) - known
    if unknown:
        raise RecipeError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    d = dict(d)
    if "stages" in d:
        if not isinstance(d["stages"], list):
            raise RecipeError(
                f"{source}: recipe key 'stages' must be a list of tables ([[stages]]), got {d['stages']!r}"
            )
        stage_keys = {f.name for f in fields(PhasePlan)}
        stages = []
        for i, s in enumerate(d["stages"]):
            if not isinstance(s, dict):
                raise RecipeError(f"{source}: stages[{i}] must be a table ([[stages]])")
            bad = set(s) - stage_keys
            if bad:
                raise RecipeError(f"{source}: stages[{i}] has unknown key(s) {', '.join(sorted(bad))}")
            if "epochs" not in s:
                raise RecipeError(f"{source}: stages[{i}] needs 'epochs'")
            stages.append(PhasePlan(**s))
        d["stages"] = tuple(stages)
    try:
        return Recipe(**d)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    except TypeError as e:
        raise RecipeError(f"{source}: {e}") from None


def load_recipe(path: str | Path | Traversable) -> Recipe:
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"--recipe {path}: no such file; give a TOML file or a backbone name") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"--recipe {path}: not valid TOML ({e})") from None
    return recipe_from_dict(data, source=str(path))


def recipe_names() -> list[str]:
    """Names of the recipes edgetl ships (models/<name>.toml)."""
    if not MODELS_DIR.is_dir():
        raise RecipeError(f"edgetl's recipes are missing ({MODELS_DIR} is not a folder): reinstall edgetl")
    return sorted(f.name.removesuffix(".toml") for f in MODELS_DIR.iterdir() if f.name.endswith(".toml"))


def resolve_recipe(recipe: str | Path | Recipe | None = None, backbone: str | None = None) -> Recipe:
    """A Recipe object, a TOML path, or a recipe name (models/<name>.toml).

    Without a recipe, `backbone` (else the default backbone) picks models/<backbone>.toml, or the
    built-in defaults for a backbone edgetl has no recipe for (any timm model). With one, `backbone`
    replaces the recipe's backbone. A recipe name that is not shipped is an error, never the defaults.
    """
    if isinstance(recipe, Recipe):
        resolved = recipe
    elif recipe is not None and (Path(recipe).suffix == ".toml" or Path(recipe).is_file()):
        resolved = load_recipe(recipe)
    else:
        name = str(recipe or backbone or DEFAULT_BACKBONE)
        names = recipe_names()
        if name in names:
            resolved = load_recipe(MODELS_DIR / f"{name}.toml")
        elif recipe is not None:
            raise RecipeError(
                f"--recipe {recipe}: no such file and no recipe of that name (known: {', '.join(names)}); for another backbone use --backbone NAME"
            )
        else:
            resolved = Recipe(backbone=name)
    return replace(resolved, backbone=backbone) if backbone else resolved
