"""Hostile text inputs (issue 33): one giant text, CSV fields with newlines, JSONL labels that are not
names, line separators inside JSON strings, UTF-16 files, Unicode-equal class names, and a bundle
whose tokenizer was swapped; and `edgetl-run predict IMAGE_BUNDLE -`, the image battery's leftover.
Each test failed before its fix."""

from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path

import pytest
from cliprobe import assert_one_line, invoke, rewrite_manifest
from tinytext import sentences, write_text_folder

from edgetl.errors import DataError
from edgetl_runtime.errors import EXIT_ERROR, TextError


def _jsonl(path: Path, rows: list[dict], **dumps) -> Path:
    path.write_text("".join(json.dumps(r, **dumps) + "\n" for r in rows), encoding="utf-8")
    return path


def _two_topics(n: int = 3) -> list[dict]:
    return [{"text": t, "label": y} for y in ("sport", "money") for t in sentences(y, n)]


def test_a_long_text_is_read_and_tokenized_only_as_far_as_the_model_reads(
    tmp_path, bert, monkeypatch, capsys
):
    from edgetl.data.texts import load_texts
    from edgetl_runtime import textinput
    from edgetl_runtime.textinput import MAX_TEXT_BYTES, TextSpec, encode_texts, tokenized_chars

    data = write_text_folder(tmp_path / "d", per_class=4)
    # one line past the read cap, ending in a character the cap cuts in two: dropped, not mis-decoded
    (data / "tech" / "long.txt").write_bytes(b"chip " * (MAX_TEXT_BYTES // 5) + "é".encode() * 8)
    texts = load_texts(data)
    assert texts.stats.cut == 1 and texts.stats.fallback_decoded == 0
    assert max(map(len, (*texts.train_texts, *texts.val_texts))) <= MAX_TEXT_BYTES
    assert "only their first 1 MiB is read" in capsys.readouterr().err

    spec = TextSpec((bert / "tokenizer.json").read_text(), max_length=16)
    real = textinput._tokenizer(spec.tokenizer, spec.max_length)
    seen: list[int] = []

    class Recording:
        def encode_batch(self, batch):
            seen.extend(map(len, batch))
            return real.encode_batch(batch)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(textinput, "_tokenizer", lambda *_: Recording())
    encoded = encode_texts(["chip " * 100_000, "a short text"], spec)
    assert max(seen) <= tokenized_chars(spec) and encoded.truncated == 1


def test_a_long_table_text_is_cut_like_a_file(tmp_path):
    from edgetl.data.texts import load_texts, read_recorded
    from edgetl_runtime.textinput import MAX_TEXT_BYTES

    rows = [*_two_topics(), {"text": "goal " * (MAX_TEXT_BYTES // 4), "label": "sport"}]
    texts = load_texts(_jsonl(tmp_path / "data.jsonl", rows), val_fraction=0.5)
    assert texts.stats.cut == 1 and max(map(len, (*texts.train_texts, *texts.val_texts))) == MAX_TEXT_BYTES
    assert read_recorded([p for p, _ in texts.splits.train]) == list(texts.train_texts)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_quoted_csv_field_keeps_its_newlines(tmp_path, newline):
    from edgetl.data.texts import load_texts

    rows = [f'"{t}{newline}second line",{y}' for y in ("sport", "money") for t in sentences(y, 3)]
    path = tmp_path / "data.csv"
    path.write_bytes(newline.join(["text,label", *rows, ""]).encode())
    texts = load_texts(path)
    assert all(t.endswith(f"{newline}second line") for t in (*texts.train_texts, *texts.val_texts))


@pytest.mark.parametrize(
    "label, message",
    [
        ({"x": 1}, "got dict"),
        ([1, 2], "got list"),
        (1.5, "got float"),
        (True, "got bool"),
    ],
)
def test_a_jsonl_label_must_be_a_name(tmp_path, label, message):
    from edgetl.data.texts import load_texts

    path = _jsonl(tmp_path / "data.jsonl", [*_two_topics(), {"text": "odd one", "label": label}])
    with pytest.raises(DataError, match=rf"data\.jsonl:7: label must be a string or an integer, {message}"):
        load_texts(path)


def test_jsonl_integer_labels_are_class_names(tmp_path):
    from edgetl.data.texts import load_texts

    rows = [{"text": r["text"], "label": 3 if r["label"] == "sport" else 7} for r in _two_topics()]
    assert load_texts(_jsonl(tmp_path / "data.jsonl", rows)).labels == ("3", "7")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": ["not", "text"], "label": "sport"}', "text must be a string, got list"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_a_jsonl_line_of_the_wrong_shape_names_its_line(tmp_path, line, message):
    from edgetl.data.texts import load_texts

    path = _jsonl(tmp_path / "data.jsonl", _two_topics())
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DataError, match=rf"data\.jsonl:7: {message}"):
        load_texts(path)


def test_jsonl_lines_end_at_newline_only(tmp_path):
    from edgetl.data.texts import load_texts

    rows = [
        {**r, "text": r["text"] + sep + "more"}
        for r, sep in zip(_two_topics(), "\u2028\u2029\x85\x0c\x1c\u2028", strict=True)
    ]
    texts = load_texts(_jsonl(tmp_path / "data.jsonl", rows, ensure_ascii=False))
    assert sorted((*texts.train_texts, *texts.val_texts)) == sorted(r["text"] for r in rows)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_utf16_text_with_a_bom_is_text(tmp_path, encoding):
    from edgetl_runtime.textinput import BOMS, read_text

    bom = dict((e, b) for b, e in BOMS)[encoding]
    path = tmp_path / "note.txt"
    path.write_bytes(bom + "naïve café — 東京".encode(encoding))
    assert read_text(path) == ("naïve café — 東京", encoding)
    path.write_bytes(codecs.BOM_UTF16_LE + b"\x00\xd8")  # a lone surrogate: not UTF-16 after all
    with pytest.raises(TextError, match="starts with a utf-16-le BOM but is not"):
        read_text(path)


def test_unicode_equal_class_names_are_one_class(tmp_path):
    from edgetl.data.texts import load_texts

    rows = [{**r, "label": "Cafe\u0301" if i % 2 else "Caf\u00e9"} for i, r in enumerate(_two_topics(4))]
    rows += [{"text": t, "label": "tea"} for t in sentences("tech", 4)]
    assert load_texts(_jsonl(tmp_path / "data.jsonl", rows)).labels == ("Caf\u00e9", "tea")
    folder = write_text_folder(tmp_path / "d", per_class=2)
    (folder / "sport").rename(folder / "Caf\u00e9")
    (folder / "money").rename(folder / "Cafe\u0301")  # what a macOS file system hands back
    with pytest.raises(DataError, match="names the same class as another folder"):
        load_texts(folder)


@pytest.fixture(scope="module")
def text_bundle(text_run, tmp_path_factory) -> Path:
    from edgetl_runtime.bundle import extract_to

    folder = tmp_path_factory.mktemp("textbundle")
    extract_to(text_run.parent / "bundle.tar.gz", folder)
    return folder


def test_a_bundle_whose_tokenizer_was_swapped_is_refused(text_bundle, tmp_path):
    import dataclasses
    import shutil

    from edgetl_runtime.manifest import MANIFEST, Manifest

    folder = tmp_path / "bundle"
    shutil.copytree(text_bundle, folder)
    manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
    tokenizer = json.loads(manifest.preprocess.tokenizer)
    vocab = tokenizer["model"]["vocab"]
    vocab["goal"], vocab["bank"] = vocab["bank"], vocab["goal"]  # an edit that flips what words mean
    rewrite_manifest(
        folder, preprocess=dataclasses.replace(manifest.preprocess, tokenizer=json.dumps(tokenizer))
    )
    outcome = invoke("edgetl-run", ["predict", str(folder), "the late goal won the match"])
    assert_one_line(outcome, EXIT_ERROR, "is not the one this model carries")


def test_predict_lines_end_at_newline_only(text_bundle, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("one text\u2028still the first\r\nthe second\n", encoding="utf-8")
    outcome = invoke("edgetl-run", ["predict", str(text_bundle), "--lines", str(lines), "--json"])
    assert outcome.code == 0, outcome.err
    assert [p["source"] for p in json.loads(outcome.out)["predictions"]] == [f"{lines}:1", f"{lines}:2"]


def test_predict_image_bundle_reads_one_image_from_stdin(bundle, digits_dir, monkeypatch):
    import io

    from edgetl_runtime.preprocess import list_images

    png = list_images(digits_dir / "val")[0].read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(png)))
    outcome = invoke("edgetl-run", ["predict", str(bundle), "-", "--json"])
    assert outcome.code == 0, outcome.err
    assert [p["source"] for p in json.loads(outcome.out)["predictions"]] == ["stdin"]
