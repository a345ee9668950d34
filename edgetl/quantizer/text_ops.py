"""What the text INT8 candidates share: the op types dynamic INT8 quantizes and a model's logits
over texts (its own module so that text.py and each candidate module can import it without a cycle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl_runtime.backends import load_session
from edgetl_runtime.textinput import TextSpec, encode_texts

QUANTIZED_OPS = ["MatMul", "Gemm"]
BATCH = 16


def text_logits(path: Path, texts: list[str], spec: TextSpec) -> np.ndarray:
    """The model's logits for `texts` on onnxruntime's CPU, in their order."""
    return session_logits(load_session(path, "onnxruntime-cpu"), texts, spec)


def session_logits(session, texts: list[str], spec: TextSpec) -> np.ndarray:
    """A loaded session's logits for `texts`, in their order, BATCH at a time. Dynamic INT8 takes its
    activation ranges per batch, padding included, so every measurement batches the same way."""
    order = np.argsort([len(t) for t in texts])  # similar lengths together: little padding
    parts = {}
    for start in range(0, len(texts), BATCH):
        index = order[start : start + BATCH]
        parts[start] = (index, session.run(encode_texts([texts[i] for i in index], spec).feed(spec)))
    out = np.zeros((len(texts), next(iter(parts.values()))[1].shape[1]), np.float32)
    for index, logits in parts.values():
        out[index] = logits
    return out
