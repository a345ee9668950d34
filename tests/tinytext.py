"""Tiny text fixtures: a random 2-layer, 32-wide BERT folder with a tokenizer built by `tokenizers`
from a small vocabulary, and a few dozen short labelled texts in three topics."""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = {
    "sport": "match goal team player score win league coach ball season",
    "money": "bank market price stock shares profit economy trade rate growth",
    "tech": "computer software phone internet chip data code network device screen",
}
COMMON = "the a of and in to is was for on with by this that it new year"


def write_tiny_bert(
    folder: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0, dropout: float = 0.1
) -> Path:
    """config.json + model.safetensors + tokenizer.json, as a Hugging Face BERT folder holds them;
    `dropout` 0 makes training deterministic (runs on different process counts can be compared)."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in TOPICS.values() for w in t.split()} | set(COMMON.split()))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.save(str(folder / "tokenizer.json"))
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=512, pad_token_id=0,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=False)
    (folder / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def sentences(topic: str, n: int, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    own, common = TOPICS[topic].split(), COMMON.split()
    return [
        " ".join(rng.choice(own if rng.random() < 0.6 else common) for _ in range(int(rng.integers(4, 14))))
        for _ in range(n)
    ]


def write_text_folder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """One folder of .txt files per topic."""
    for k, topic in enumerate(TOPICS):
        (root / topic).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(sentences(topic, per_class, seed + k)):
            (root / topic / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    return root


def fixed_latency(run: Path, ratio: float):
    """A stand-in for edgetl.quantizer.text.latencies_ms with fixed timings: FP32 (RUN/model.onnx)
    10 ms, every INT8 candidate `ratio` of it, so the FP32-ships rule is tested without a stopwatch."""

    def latencies(paths, spec, *, length=128):
        return {
            name: 10.0 if Path(path) == run / "model.onnx" else 10.0 * ratio for name, path in paths.items()
        }

    return latencies
