"""The run folder's record of which images trained and validated the model (RUN/splits.json).

Export, quantization and packaging read it to evaluate on the run's own validation images and to
calibrate on its training images, without the user repeating --data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.runfolder.records import read_json
from edgetl.runfolder.typed import typed_record
from edgetl_runtime.fileio import write_text_atomic

SPLITS = "splits.json"


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
        splits = typed_record(cls, read_json(path), str(path))
        n = len(splits.labels)
        for split in ("train", "val"):
            for i, (_, label) in enumerate(getattr(splits, split)):
                if not 0 <= label < n:  # typed_record checks types; an index must also name a label
                    raise EdgetlError(
                        f"{path}: key '{split}[{i}]' has label index {label}, not one of the {n} labels; "
                        "rerun the stage that writes it"
                    )
        return splits
