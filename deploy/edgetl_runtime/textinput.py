"""Text input: the one tokenizer path used for training, export checks, calibration and on the device.

The model's own ``tokenizer.json`` travels in its metadata (and its bundle) and is run by Hugging Face
``tokenizers`` (a Rust wheel, no torch), so the device produces the token ids training saw, by
construction. Sequences are truncated to the spec's ``max_length`` and padded to the longest in
the batch.
"""

from __future__ import annotations

import codecs
import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from .errors import EdgetlError, TextError
from .fileio import list_files
from .preprocess import SpecError

TEXT_SUFFIXES = frozenset({".txt"})
# A NUL byte in the first block of a file without a UTF-16/32 BOM marks a binary file renamed .txt.
BINARY_PROBE = 8192
# Text whose BOM says it is UTF-16 or UTF-32 (Windows Notepad's "Unicode" is UTF-16 LE); longest
# first, since the UTF-32 LE BOM starts with the UTF-16 LE one. A UTF-8 BOM is read with UTF-8 below.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Tried in order after UTF-8; latin-1 maps every byte, so decoding always ends somewhere.
FALLBACK_ENCODINGS = ("cp1252", "latin-1")
# What a client may declare as a text body's charset (HTTP Content-Type), by codecs' canonical names:
# zlib, base64 or rot13 are codecs too, but not text encodings.
DECLARED_CHARSETS = frozenset(
    {
        "utf-8",
        "utf-16",
        "utf-16-le",
        "utf-16-be",
        "utf-32",
        "utf-32-le",
        "utf-32-be",
        "ascii",
        "iso8859-1",
        "cp1252",
    }
)
# The most of one text file that is read: far more than any model reads (max_length tokens), so a
# 50 MB one-line file costs what its first MiB costs.
MAX_TEXT_BYTES = 1 << 20
# Characters tokenized per token the model reads. The tokenizer's memory grows with the whole text
# (about 140 bytes per character), not with the max_length tokens kept, so a text is cut here first;
# 64 characters a token is far past real prose (about 5), so only runs of blanks or giant words lose
# tokens the model would have read.
CHARS_PER_TOKEN = 64


class Pooling(str, Enum):
    MEAN = "mean"  # average of the token states under the attention mask (sentence-transformers)
    CLS = "cls"


@dataclass(frozen=True)
class TextSpec:
    """How a text model wants its input: its tokenizer, the longest sequence, the pooling it was
    trained with, and the names of its inputs. Saved as JSON in checkpoints, ONNX metadata and
    bundle manifests."""

    tokenizer: str  # the tokenizer.json document
    max_length: int = 128
    pooling: Pooling = Pooling.MEAN
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, str) or not self.tokenizer.strip():
            raise SpecError("preprocess 'tokenizer' must be a tokenizer.json document", key="tokenizer")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise SpecError(
                f"preprocess 'max_length' must be an integer >= 2, got {self.max_length!r}", key="max_length"
            )
        try:
            object.__setattr__(self, "pooling", Pooling(getattr(self.pooling, "value", self.pooling)))
        except ValueError:
            raise SpecError(
                f"preprocess 'pooling' must be one of {', '.join(p.value for p in Pooling)}, got {self.pooling!r}",
                key="pooling",
            ) from None
        names = tuple(self.inputs)
        if not names or names[0] != "input_ids" or not all(isinstance(n, str) for n in names):
            raise SpecError(
                f"preprocess 'inputs' must start with input_ids, got {self.inputs!r}", key="inputs"
            )
        object.__setattr__(self, "inputs", names)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pooling"], d["inputs"] = self.pooling.value, list(self.inputs)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def tokenizer_sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.tokenizer.encode()).hexdigest()

    def summary(self) -> dict:
        """to_dict with the tokenizer named by its digest: the whole vocabulary is no summary."""
        return {**self.to_dict(), "tokenizer": "sha256:" + self.tokenizer_sha256[:16]}

    def describe(self) -> str:
        return f"tokenizer.json, max_length {self.max_length}, {self.pooling.value} pooling, inputs {', '.join(self.inputs)}"

    @classmethod
    def from_dict(cls, d: dict) -> TextSpec:
        """Strict: a non-table, a missing or unknown key, or a wrong type raises SpecError naming it."""
        if not isinstance(d, dict):
            raise SpecError(
                f"preprocess must be a table of {', '.join(cls.__dataclass_fields__)}, got {type(d).__name__}"
            )
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise SpecError(f"preprocess has unknown key(s) {', '.join(map(str, unknown))}")
        if "tokenizer" not in d:
            raise SpecError("preprocess lacks key(s) tokenizer")
        return cls(**{**d, "inputs": tuple(d.get("inputs", cls.inputs))})


@dataclass(frozen=True)
class Encoded:
    """A tokenized batch: (N, L) int64 ids and mask, L the longest sequence after truncation."""

    ids: np.ndarray
    mask: np.ndarray
    truncated: int  # texts cut at max_length

    def feed(self, spec: TextSpec) -> dict[str, np.ndarray]:
        arrays = {
            "input_ids": self.ids,
            "attention_mask": self.mask,
            "token_type_ids": np.zeros_like(self.ids),
        }
        return {name: arrays[name] for name in spec.inputs}


@functools.lru_cache(maxsize=4)
def _tokenizer(document: str, max_length: int):
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError:
        raise EdgetlError(
            "this is a text model: install tokenizers (pip install 'edgetl-runtime[text]')"
        ) from None
    try:
        tok = Tokenizer.from_str(document)
    except Exception as e:
        raise SpecError(
            f"preprocess 'tokenizer' is not a readable tokenizer.json ({e})", key="tokenizer"
        ) from None
    # padding is ours (to the longest of a batch); truncation is the spec's, whatever the file said
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def pad_id(spec: TextSpec) -> int:
    tok = _tokenizer(spec.tokenizer, spec.max_length)
    for token in ("[PAD]", "<pad>"):
        found = tok.token_to_id(token)
        if found is not None:
            return found
    return 0


def tokenized_chars(spec: TextSpec) -> int:
    """How many characters of a text are tokenized at most (see CHARS_PER_TOKEN)."""
    return spec.max_length * CHARS_PER_TOKEN


def encode_texts(texts: Sequence[str], spec: TextSpec) -> Encoded:
    """Tokenize, truncate to max_length, pad to the longest: the same ids in training and on the device."""
    tok = _tokenizer(spec.tokenizer, spec.max_length)
    cap = tokenized_chars(spec)
    texts = list(texts)
    encodings = tok.encode_batch([t[:cap] for t in texts])
    length = max((len(e.ids) for e in encodings), default=1) or 1
    ids = np.full((len(encodings), length), pad_id(spec), np.int64)
    mask = np.zeros((len(encodings), length), np.int64)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    cut = sum(1 for e, t in zip(encodings, texts, strict=True) if e.overflowing or len(t) > cap)
    return Encoded(ids, mask, cut)


def example_feed(
    spec: TextSpec, batch: int = 1, length: int = 16, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """A well-formed input of `batch` x `length` tokens (all ones in the mask) for probes and timing."""
    rng = rng or np.random.default_rng(0)
    vocab = _tokenizer(spec.tokenizer, spec.max_length).get_vocab_size()
    ids = rng.integers(min(1000, vocab - 1), vocab, size=(batch, length), dtype=np.int64)
    return Encoded(ids, np.ones_like(ids), 0).feed(spec)


def decode_bytes(data: bytes, source: str, *, complete: bool = True) -> tuple[str, str]:
    """(text, encoding): by its UTF-16 or UTF-32 BOM, else UTF-8 (with or without BOM), else the first
    fallback that decodes.

    `complete=False` says `data` is the start of a longer text: a character cut at its end is dropped.
    """
    for bom, encoding in BOMS:
        if data.startswith(bom):
            decoder = codecs.getincrementaldecoder(encoding)()
            try:
                return decoder.decode(data[len(bom) :], final=complete), encoding
            except UnicodeDecodeError as e:
                raise TextError(
                    f"{source}: starts with a {encoding} BOM but is not {encoding} ({e.reason} at byte "
                    f"{e.start + len(bom)}); save it again as UTF-8"
                ) from None
    # NUL bytes never occur in 8-bit or UTF-8 text: only the UTF-16/32 found above may hold them
    if b"\x00" in data[:BINARY_PROBE]:
        raise TextError(
            f"{source}: a binary file, not text (NUL bytes, no BOM); give a UTF-8, UTF-16 (with BOM) or "
            "Latin-1 text file"
        )
    for encoding in ("utf-8-sig", *FALLBACK_ENCODINGS):
        try:
            text = codecs.getincrementaldecoder(encoding)().decode(data, final=complete)
            return text, encoding.removesuffix("-sig")
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def decode_declared(data: bytes, source: str, charset: str, *, complete: bool = True) -> str:
    """`data` in the charset its sender declared, strictly (see decode_bytes for `complete`)."""
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        name = ""
    if name not in DECLARED_CHARSETS:
        raise TextError(
            f"{source}: charset {charset[:40]!r} is not read here; send UTF-8 (or UTF-16, UTF-32, ASCII, "
            "Latin-1, cp1252), or leave the charset out"
        )
    try:  # utf-16 and utf-32 read their own BOM; a UTF-8 one is dropped too
        return codecs.getincrementaldecoder("utf-8-sig" if name == "utf-8" else name)().decode(
            data, final=complete
        )
    except UnicodeDecodeError as e:
        raise TextError(
            f"{source}: not {charset} as declared ({e.reason} at byte {e.start}); fix the charset"
        ) from None


def read_text(path: str | Path, limit: int | None = None) -> tuple[str, str]:
    """One text file as (text, encoding), its first `limit` bytes only when given; TextError naming
    the file when it is not usable text."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(-1 if limit is None else limit + 1)
    except FileNotFoundError:
        raise TextError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TextError(f"{path}: is a folder, not a text file") from None
    except OSError as e:
        raise TextError(f"{path}: cannot be read ({e.strerror or e})") from None
    cut = limit is not None and len(data) > limit
    text, encoding = decode_bytes(data[:limit] if cut else data, str(path), complete=not cut)
    if not text.strip():
        raise TextError(f"{path}: empty (no text to classify)")
    return text, encoding


def list_texts(folder: str | Path) -> list[Path]:
    """.txt files under `folder` (recursive), sorted; hidden files skipped."""
    return list_files(folder, TEXT_SUFFIXES)
