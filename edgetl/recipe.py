"""Training recipes: what a fine-tuning run does, as data (a TOML file in models/ per backbone).

A recipe is a list of stages. A stage with `unfreeze = 0` trains only the head on cached features;
a stage with `unfreeze = K` also trains the last K backbone stages, with learning rates that decay
toward the input. CLI options and `train()`'s keyword options replace recipe values, never the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from edgetl_runtime.preprocess import PreprocessSpec

from .backbones import DEFAULT_BACKBONE
from .errors import EdgetlError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class RecipeError(EdgetlError):
    """A recipe file or override has a missing, unknown or out-of-range value."""


class Balance(str, Enum):
    AUTO = "auto"  # class-weighted loss when the largest class is 1.5x the smallest or more
    LOSS = "loss"  # always class-weighted loss
    SAMPLER = "sampler"  # class-balanced sampling of batches
    NONE = "none"


@dataclass(frozen=True)
class StagePlan:
    """One stage of the schedule: `epochs` epochs with the last `unfreeze` backbone stages trainable."""

    epochs: int
    unfreeze: int = 0
    lr: float = 1e-3  # head
    lr_backbone: float = 1e-4  # the last unfrozen stage; earlier ones get lr_backbone * lr_decay**distance
    warmup: int = 0  # epochs of linear warmup before the cosine decay

    @property
    def frozen(self) -> bool:
        return self.unfreeze == 0


@dataclass(frozen=True)
class Recipe:
    """Defaults are the embedded efficientnet_lite0 recipe (models/efficientnet_lite0.toml repeats them).

    The default leans on cheap frozen epochs on cached features, then one short partial unfreeze: it
    beats ten full fine-tuning epochs on small datasets at a fraction of their time.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str = "default"
    stages: tuple[StagePlan, ...] = (
        StagePlan(epochs=30, unfreeze=0, lr=3e-3, warmup=1),
        StagePlan(epochs=2, unfreeze=2, lr=1e-3, lr_backbone=1e-4, warmup=0),
    )
    lr_decay: float = 0.5
    batch_size: int = 32
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    dropout: float = 0.2
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
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        _validate(self)

    def preprocess_spec(self, base: PreprocessSpec) -> PreprocessSpec:
        """The backbone's spec with this recipe's overrides and image size applied."""
        try:
            spec = PreprocessSpec.from_dict({**base.to_dict(), **self.preprocess})
        except ValueError as e:
            raise RecipeError(f"recipe [preprocess]: {e}") from None
        return spec.with_size(self.image_size) if self.image_size else spec

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["balance"] = self.balance.value
        d["scale"] = list(self.scale)
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
                stages.append(StagePlan(epochs=stage_over.get("epochs", 1), unfreeze=stage_over["unfreeze"]))
            else:
                stages[first] = replace(stages[first], unfreeze=stage_over["unfreeze"])
        for i, s in enumerate(stages):
            key = "frozen_epochs" if s.frozen else "epochs"
            if key in stage_over:
                s = replace(s, epochs=stage_over[key])
            s = replace(s, **{k: stage_over[k] for k in ("lr", "lr_backbone", "warmup") if k in stage_over})
            stages[i] = s
        return replace(self, **overrides, stages=tuple(s for s in stages if s.epochs > 0))


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


def _validate(r: Recipe) -> None:
    _require(len(r.stages) > 0, "stages", "a non-empty list of stages", list(r.stages))
    for i, s in enumerate(r.stages):
        _require(isinstance(s, StagePlan), f"stages[{i}]", "a table of stage settings", s)
        _require(
            isinstance(s.epochs, int) and s.epochs > 0, f"stages[{i}].epochs", "an integer >= 1", s.epochs
        )
        _require(
            isinstance(s.unfreeze, int) and s.unfreeze >= 0,
            f"stages[{i}].unfreeze",
            "an integer >= 0",
            s.unfreeze,
        )
        _require(s.lr > 0, f"stages[{i}].lr", "> 0", s.lr)
        _require(s.lr_backbone > 0, f"stages[{i}].lr_backbone", "> 0", s.lr_backbone)
        _require(
            isinstance(s.warmup, int) and s.warmup >= 0, f"stages[{i}].warmup", "an integer >= 0", s.warmup
        )
    _require(0 < r.lr_decay <= 1, "lr_decay", "in (0, 1]", r.lr_decay)
    _require(
        isinstance(r.batch_size, int) and r.batch_size >= 1, "batch_size", "an integer >= 1", r.batch_size
    )
    _require(r.weight_decay >= 0, "weight_decay", ">= 0", r.weight_decay)
    _require(0 <= r.label_smoothing < 1, "label_smoothing", "in [0, 1)", r.label_smoothing)
    _require(0 <= r.dropout < 1, "dropout", "in [0, 1)", r.dropout)
    _require(isinstance(r.patience, int) and r.patience >= 1, "patience", "an integer >= 1", r.patience)
    _require(isinstance(r.hflip, bool), "hflip", "true or false", r.hflip)
    _require(
        len(r.scale) == 2 and 0 < r.scale[0] <= r.scale[1] <= 1,
        "scale",
        "[min, max] with 0 < min <= max <= 1",
        r.scale,
    )
    _require(
        isinstance(r.cache_views, int) and r.cache_views >= 0, "cache_views", "an integer >= 0", r.cache_views
    )
    _require(0 < r.val_fraction < 1, "val_fraction", "in (0, 1)", r.val_fraction)
    _require(
        r.image_size is None or (isinstance(r.image_size, int) and r.image_size >= 16),
        "image_size",
        "an integer >= 16",
        r.image_size,
    )
    unknown = set(r.preprocess) - set(PreprocessSpec.__dataclass_fields__)
    _require(
        not unknown,
        "preprocess",
        f"a table of {', '.join(PreprocessSpec.__dataclass_fields__)}",
        r.preprocess,
    )


def recipe_from_dict(d: dict, source: str = "recipe") -> Recipe:
    known = {f.name for f in fields(Recipe)}
    unknown = set(d) - known
    if unknown:
        raise RecipeError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    d = dict(d)
    if "stages" in d:
        stage_keys = {f.name for f in fields(StagePlan)}
        stages = []
        for i, s in enumerate(d["stages"]):
            if not isinstance(s, dict):
                raise RecipeError(f"{source}: stages[{i}] must be a table ([[stages]])")
            bad = set(s) - stage_keys
            if bad:
                raise RecipeError(f"{source}: stages[{i}] has unknown key(s) {', '.join(sorted(bad))}")
            if "epochs" not in s:
                raise RecipeError(f"{source}: stages[{i}] needs 'epochs'")
            stages.append(StagePlan(**s))
        d["stages"] = tuple(stages)
    try:
        return Recipe(**d)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    except TypeError as e:
        raise RecipeError(f"{source}: {e}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"--recipe {path}: no such file; give a TOML file or a backbone name") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"--recipe {path}: not valid TOML ({e})") from None
    return recipe_from_dict(data, source=str(path))


def _is_backbone(name: str) -> bool:
    from .backbones import get_backbone

    try:
        get_backbone(name)
    except EdgetlError:
        return False
    return True


def resolve_recipe(recipe: str | Path | Recipe | None = None, backbone: str | None = None) -> Recipe:
    """A Recipe object, a TOML path, or a backbone name (models/<name>.toml, else the defaults).

    `backbone` picks the recipe when none is given, and replaces the recipe's backbone when one is.
    """
    if isinstance(recipe, Recipe):
        resolved = recipe
    elif recipe is not None and (Path(recipe).suffix == ".toml" or Path(recipe).is_file()):
        resolved = load_recipe(recipe)
    else:
        name = str(recipe or backbone or DEFAULT_BACKBONE)
        file = MODELS_DIR / f"{name}.toml"
        if recipe is not None and not file.is_file() and not _is_backbone(name):
            raise RecipeError(
                f"--recipe {recipe}: no such file and no models/{name}.toml; give a TOML file or a backbone name"
            )
        # Installed without the models/ folder, the built-in defaults are the embedded recipe.
        resolved = load_recipe(file) if file.is_file() else Recipe(backbone=name)
    return replace(resolved, backbone=backbone) if backbone else resolved
