"""The text reader: folders and tables, what it skips and decodes, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinytext import sentences, write_text_folder

from edgetl.errors import DataError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_folder_reader_counts_what_it_skips_and_decodes(tmp_path):
    from edgetl.data.texts import load_texts

    data = write_text_folder(tmp_path / "d", per_class=6)
    (data / "sport" / "empty.txt").write_text("  \n")
    (data / "sport" / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (data / "money" / "latin1.txt").write_bytes("caf\xe9 march\xe9 bank price".encode("latin-1"))
    (data / "tech" / "long.txt").write_text("chip " * 2_000_000)  # a 10 MB line
    texts = load_texts(data, val_fraction=0.25, seed=0)
    assert texts.labels == ("money", "sport", "tech")
    assert (texts.stats.empty, texts.stats.unreadable, texts.stats.fallback_decoded) == (1, 1, 1)
    assert texts.stats.files == 6 * 3 + 4
    assert len(texts.train_texts) + len(texts.val_texts) == 6 * 3 + 2
    assert any("café marché" in t for t in (*texts.train_texts, *texts.val_texts))


def test_train_val_folders_and_duplicates_are_reported(tmp_path, capsys):
    from edgetl.data.texts import load_texts

    for split in ("train", "val"):
        write_text_folder(tmp_path / split, per_class=3, seed=0)  # the same texts in both splits
    texts = load_texts(tmp_path)
    assert texts.stats.duplicates == len(texts.val_texts) == 9
    assert "also occur in train" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_tables(tmp_path, suffix):
    from edgetl.data.texts import load_texts, read_recorded

    rows = [(t, topic) for topic in ("sport", "money") for t in sentences(topic, 5)] + [
        ("no label here", " ")
    ]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(f"text{sep}label\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows))
    texts = load_texts(path, val_fraction=0.2)
    assert texts.labels == ("money", "sport") and texts.stats.unlabelled == 1
    assert read_recorded([p for p, _ in texts.splits.val]) == list(texts.val_texts)


@pytest.mark.parametrize(
    "content, message",
    [
        ("words,label\nhello,a\n", "no text column"),
        ("text,label\nhello,a\u0007b\nworld,c\n", "control characters"),
        ("text,label\nhello,a\n", "at least 2"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, content, message):
    from edgetl.data.texts import load_texts

    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_texts(path)
