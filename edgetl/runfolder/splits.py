"""The run folder's record of which images trained and validated the model (RUN/splits.json).

Export, quantization and packaging read it to evaluate on the run's own validation images and to
calibrate on its training images, without the user repeating --data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl_runtime.fileio import write_text_atomic

SPLITS = "splits.json"


def _strings(values) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError("not a list of strings")
    return values


def _item(value, n_labels: int) -> tuple[str, int]:
    """One [image path, label index] pair."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
        raise TypeError(f"{value!r} is not an [image path, label index] pair")
    label = value[1]
    if type(label) is not int or not 0 <= label < n_labels:
        raise ValueError(f"label index {label!r} is not one of the {n_labels} labels")
    return value[0], label


@dataclass(frozen=True)
class Splits:
    labels: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (absolute image path, label index)
    val: tuple[tuple[str, int], ...]
    data_root: str = ""
    skipped: int = 0  # unreadable files left out, reported in summaries
    fingerprint: str = ""  # run.dataset_fingerprint, computed once when train reads the data

    def with_fingerprint(self, fingerprint: str) -> Splits:
        return replace(self, fingerprint=fingerprint)

    def save(self, run: str | Path) -> Path:
        d = {
            "labels": list(self.labels),
            "data_root": self.data_root,
            "skipped": self.skipped,
            "fingerprint": self.fingerprint,
            "train": [list(x) for x in self.train],
            "val": [list(x) for x in self.val],
        }
        return write_text_atomic(Path(run) / SPLITS, json.dumps(d, indent=1))

    @classmethod
    def load(cls, run: str | Path) -> Splits:
        path = Path(run) / SPLITS
        if not path.is_file():
            raise EdgetlError(f"{path}: missing; the run folder was not written by `edgetl train`")
        retrain = "retrain with `edgetl train --data DATA --out RUN --overwrite`"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EdgetlError(f"{path}: not readable JSON ({type(e).__name__}); {retrain}") from None
        key = "(the file)"
        try:
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            key = "labels"
            labels = tuple(_strings(d["labels"]))
            items = {}
            for key in ("train", "val"):
                items[key] = tuple(_item(x, len(labels)) for x in d[key])
            key = "data_root"
            data_root = _strings([d.get("data_root", "")])[0]
            key = "skipped"
            skipped = d.get("skipped", 0)
            if type(skipped) is not int or skipped < 0:
                raise TypeError("not a count")
            key = "fingerprint"
            fingerprint = _strings([d.get("fingerprint", "")])[0]
        except (KeyError, TypeError, ValueError) as e:
            problem = "missing" if isinstance(e, KeyError) else f"invalid ({e})"
            raise EdgetlError(f"{path}: key {key!r} {problem}; {retrain}") from None
        return cls(labels, items["train"], items["val"], data_root, skipped, fingerprint)
