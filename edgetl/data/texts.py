"""Text datasets in, labelled texts in memory out.

DATA is a folder with one sub-folder of .txt files per class (optionally under train/ and val/, as
for images), or a .csv, .tsv or .jsonl file with `text` and `label` columns. Text is decoded by its
BOM (UTF-8, UTF-16, UTF-32), else as UTF-8, else with a counted fallback (cp1252, then latin-1);
empty and binary files are skipped and counted; a file over MAX_TEXT_BYTES is read up to it (and
counted); texts found in both train and val are reported, never silently dropped. Class names are
Unicode NFC, so a macOS folder name (NFD) and the same name typed in a table are one class.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.console import warn
from edgetl.errors import DataError
from edgetl.runfolder.splits import Splits
from edgetl_runtime.errors import TextError
from edgetl_runtime.textinput import FALLBACK_ENCODINGS, MAX_TEXT_BYTES, decode_bytes, list_texts, read_text

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
ROW_MARK = "#row"  # a table row's source: FILE#rowN (1-based, the header is row 0)
# csv refuses fields over 128 KiB by default; a long document is a legitimate field
csv.field_size_limit(1 << 30)


@dataclass(frozen=True)
class TextStats:
    files: int = 0  # inputs seen (files or table rows)
    empty: int = 0  # skipped: no text
    unreadable: int = 0  # skipped: binary or unreadable
    unlabelled: int = 0  # skipped: table rows with a blank label
    fallback_decoded: int = 0  # not UTF-8: decoded as cp1252 or latin-1
    cut: int = 0  # files over MAX_TEXT_BYTES (table texts over as many characters): their start only
    duplicates: int = 0  # val texts that also occur in train (kept, reported)
    problems: tuple[str, ...] = field(default_factory=tuple)  # the first few reasons, for the warning

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "problems"}


@dataclass(frozen=True)
class TextData:
    splits: Splits
    train_texts: tuple[str, ...]
    val_texts: tuple[str, ...]
    stats: TextStats

    @property
    def labels(self) -> tuple[str, ...]:
        return self.splits.labels

    @property
    def train_targets(self) -> np.ndarray:
        return np.array([y for _, y in self.splits.train], dtype=np.int64)

    @property
    def val_targets(self) -> np.ndarray:
        return np.array([y for _, y in self.splits.val], dtype=np.int64)


def is_table(path: Path) -> bool:
    return path.suffix.lower() in TABLE_SUFFIXES


def _check_label(name: str, where: str) -> str:
    name = unicodedata.normalize("NFC", name)
    if not name.strip():
        raise DataError(f"{where}: a blank class name; name every class")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise DataError(f"{where}: class name {name!r} holds control characters; rename it")
    return name


class _Reader:
    """Reads texts, counting what it skips and how it decoded."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.problems: list[str] = []

    def file(self, path: Path) -> str | None:
        self.counts["files"] += 1
        try:
            text, encoding = read_text(path, MAX_TEXT_BYTES)
            self.counts["cut"] += path.stat().st_size > MAX_TEXT_BYTES
        except TextError as e:
            self.counts["empty" if "empty" in str(e) else "unreadable"] += 1
            self.problems.append(str(e))
            return None
        if encoding in FALLBACK_ENCODINGS:
            self.counts["fallback_decoded"] += 1
        return text

    def stats(self, duplicates: int) -> TextStats:
        return TextStats(duplicates=duplicates, problems=tuple(self.problems[:5]), **self.counts)


def _class_texts(folder: Path, reader: _Reader) -> dict[str, list[tuple[str, str]]]:
    classes = {}
    for d in sorted(folder.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and d.name not in ("train", "val"):
            name = _check_label(d.name, str(d))
            if name in classes:
                raise DataError(
                    f"{d}: names the same class as another folder (equal once Unicode-normalised); merge them"
                )
            texts = [(str(p.resolve()), t) for p in list_texts(d) if (t := reader.file(p)) is not None]
            classes[name] = texts
    return classes


def _read_json_rows(path: Path, content: str) -> list[tuple[int, dict]]:
    rows = []
    # JSON Lines end at "\n" only: str.splitlines() would also split inside a string at U+2028,
    # U+2029 or U+0085, which json.dumps(ensure_ascii=False) writes raw
    for n, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not a JSON object ({e.msg}); one object per line") from None
        except RecursionError:
            raise DataError(f"{path}:{n}: nested too deeply; one flat object per line") from None
        if not isinstance(row, dict):
            raise DataError(f'{path}:{n}: not a JSON object; one {{"text": ..., "label": ...}} per line')
        label, text = row.get("label"), row.get("text")
        if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)):
            raise DataError(
                f"{path}:{n}: label must be a string or an integer, got {type(label).__name__}; "
                "one class name per line"
            )
        if text is not None and not isinstance(text, str):
            raise DataError(f"{path}:{n}: text must be a string, got {type(text).__name__}")
        rows.append((n, row))
    return rows


def _read_csv_rows(path: Path, content: str, delimiter: str) -> tuple[list[tuple[int, dict]], set]:
    # newline="" is what csv expects: a quoted field keeps its newlines (CRLF ones too)
    table = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        return list(enumerate(table, 1)), set(table.fieldnames or ())
    except csv.Error as e:
        raise DataError(f"{path}: malformed {path.suffix[1:]} ({e})") from None


def _read_table(path: Path, reader: _Reader) -> dict[str, list[tuple[str, str]]]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"--data {path}: cannot be read ({e.strerror or e})") from None
    try:
        content, encoding = decode_bytes(raw, str(path))
    except TextError as e:
        raise DataError(f"--data {e}") from None
    if encoding in FALLBACK_ENCODINGS:
        warn(f"{path}: not UTF-8; decoded as {encoding}")
    delimiter = TABLE_SUFFIXES[path.suffix.lower()]
    if delimiter is None:
        rows = _read_json_rows(path, content)
        columns = set().union(*(r.keys() for _, r in rows)) if rows else set()
    else:
        rows, columns = _read_csv_rows(path, content, delimiter)
    missing = sorted({"text", "label"} - columns)
    if missing:
        raise DataError(
            f"--data {path}: no {' or '.join(missing)} column (found: {', '.join(sorted(map(str, columns))) or 'none'}); "
            "name the columns text and label"
        )
    classes: dict[str, list[tuple[str, str]]] = {}
    for n, row in rows:
        reader.counts["files"] += 1
        text, label = row.get("text"), row.get("label")
        label = "" if label is None else str(label).strip()
        if not label:
            reader.counts["unlabelled"] += 1
            reader.problems.append(f"{path}{ROW_MARK}{n}: blank label")
            continue
        if not isinstance(text, str) or not text.strip():
            reader.counts["empty"] += 1
            reader.problems.append(f"{path}{ROW_MARK}{n}: empty text")
            continue
        if len(text) > MAX_TEXT_BYTES:  # as for a file: what lies past it costs memory, never tokens
            reader.counts["cut"] += 1
            text = text[:MAX_TEXT_BYTES]
        classes.setdefault(_check_label(label, f"{path}{ROW_MARK}{n}"), []).append(
            (f"{path.resolve()}{ROW_MARK}{n}", text)
        )
    return dict(sorted(classes.items()))


def _split(classes: dict, val_fraction: float, seed: int, where: str):
    rng = np.random.default_rng(seed)
    train, val = {}, {}
    for name, items in classes.items():
        if len(items) < 2:
            raise DataError(
                f"{where}/{name}: only {len(items)} readable text; without a val split each class needs at least 2"
            )
        order = rng.permutation(len(items))
        n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
        val[name] = [items[j] for j in sorted(order[:n_val])]
        train[name] = [items[j] for j in sorted(order[n_val:])]
    return train, val


def _normal(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).casefold().encode()).hexdigest()


def text_fingerprint(labels, train, val) -> str:
    """sha256 over labels and each text's split, label and content: equal means the same data."""
    digest = hashlib.sha256(json.dumps(list(labels)).encode())
    for split, items in (("train", train), ("val", val)):
        for y, text in items:
            digest.update(f"{split}\t{y}\t{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    return digest.hexdigest()


def load_texts(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> TextData:
    """Read, split (seeded, stratified, unless DATA has val/) and check a text dataset once."""
    root = Path(root)
    reader = _Reader()
    if root.is_file() and is_table(root):
        train, val = _split(_read_table(root, reader), val_fraction, seed, str(root))
    elif root.is_dir():
        base = root / "train" if (root / "train").is_dir() else root
        train = _class_texts(base, reader)
        if (root / "val").is_dir():
            val = _class_texts(root / "val", reader)
            if set(val) != set(train):
                raise DataError(
                    f"{root / 'val'}: class folders differ from {base}; use the same class folders in both"
                )
        else:
            train, val = _split(train, val_fraction, seed, str(base))
    else:
        problem = (
            "no such file or folder" if not root.exists() else "neither a folder nor a .csv/.tsv/.jsonl file"
        )
        raise DataError(
            f"--data {root}: {problem}; give a folder of class folders of .txt files, or a table with text and label columns"
        )
    if len(train) < 2:
        raise DataError(f"--data {root}: found {len(train)} class(es) with texts; need at least 2")
    for split, classes in (("train", train), ("val", val)):
        for name, items in classes.items():
            if not items:
                raise DataError(
                    f"{root}: class {name} has no readable texts in {split}; add texts or remove it"
                )
    labels = tuple(train)
    flat = {
        s: [(p, labels.index(n), t) for n in labels for p, t in c[n]]
        for s, c in (("train", train), ("val", val))
    }
    seen = {_normal(t) for _, _, t in flat["train"]}
    duplicates = sum(1 for _, _, t in flat["val"] if _normal(t) in seen)
    stats = reader.stats(duplicates)
    skipped = stats.empty + stats.unreadable + stats.unlabelled
    if skipped:
        warn(
            f"skipped {skipped} of {stats.files} texts ({stats.empty} empty, {stats.unreadable} unreadable, {stats.unlabelled} unlabelled): {'; '.join(stats.problems[:3])}"
        )
    if stats.cut:
        warn(
            f"{stats.cut} text(s) over {MAX_TEXT_BYTES >> 20} MiB: only their first {MAX_TEXT_BYTES >> 20} MiB "
            "is read (the model reads the first max_length tokens of that)"
        )
    if stats.fallback_decoded:
        warn(f"{stats.fallback_decoded} text(s) were not UTF-8 and were decoded as cp1252/latin-1")
    if duplicates:
        warn(
            f"{duplicates} validation text(s) also occur in train (kept; validation accuracy is optimistic by up to that many)"
        )
    splits = Splits(
        labels=labels,
        train=tuple((p, y) for p, y, _ in flat["train"]),
        val=tuple((p, y) for p, y, _ in flat["val"]),
        data_root=str(root.resolve()),
        skipped=skipped,
    )
    fingerprint = text_fingerprint(
        labels, [(y, t) for _, y, t in flat["train"]], [(y, t) for _, y, t in flat["val"]]
    )
    return TextData(
        splits.with_fingerprint(fingerprint),
        tuple(t for _, _, t in flat["train"]),
        tuple(t for _, _, t in flat["val"]),
        stats,
    )


def read_recorded(sources: list[str]) -> list[str]:
    """The texts a run's splits.json names again (files, or rows of a table) for export and quantize."""
    tables: dict[str, dict[str, str]] = {}
    out = []
    for source in sources:
        if ROW_MARK in source:
            table = source.rsplit(ROW_MARK, 1)[0]
            if table not in tables:
                reader = _Reader()
                tables[table] = {
                    p: t for items in _read_table(Path(table), reader).values() for p, t in items
                }
            if source not in tables[table]:
                raise DataError(f"{source}: this row is gone from the table; re-train on the current data")
            out.append(tables[table][source])
        else:
            try:
                out.append(read_text(source, MAX_TEXT_BYTES)[0])
            except TextError as e:
                raise DataError(f"{e}; the run's data changed since training") from None
    return out
