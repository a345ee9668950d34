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
    session = load_session(path, "onnxruntime-cpu")
    order = np.argsort([len(t) for t in texts])  # similar lengths together: little padding
    parts = {}
    for start in range(0, len(texts), BATCH):
        index = order[start : start + BATCH]
        parts[start] = (index, session.run(encode_texts([texts[i] for i in index], spec).feed(spec)))
    out = np.zeros((len(texts), next(iter(parts.values()))[1].shape[1]), np.float32)
    for index, logits in parts.values():
        out[index] = logits
    return out
