"""The parity gate: a converted model must reproduce PyTorch's logits within a tolerance and its top-1
on every check image, or nothing is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetl.backbones.registry import EdgeModel
from edgetl.console import log
from edgetl.errors import EdgetlError, GateError
from edgetl.options import DEFAULT_OPSET
from edgetl_runtime.backends import load_session
from edgetl_runtime.modelinfo import Precision

# FP16 keeps ~11 significant bits (eps 9.8e-4); rounding compounds over a network's layers, so the FP16
# gate allows 1% of the largest |logit| (measured on efficientnet_lite0 / ImageNet photos: ~0.3%).
FP16_RELATIVE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Parity:
    """One runtime's agreement with PyTorch on the check images."""

    runtime: str
    n_images: int
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    top1_flips: int  # images whose top-1 class differs from PyTorch's
    ties_excused: int  # flips allowed because PyTorch's top-2 margin was within the tolerance (FP16 only)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_flips == self.ties_excused


def torch_logits(model: EdgeModel, batch: np.ndarray, chunk: int) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [
                model(torch.from_numpy(batch[i : i + chunk])).float().numpy()
                for i in range(0, len(batch), chunk)
            ]
        )


def compare_logits(
    runtime: str, reference: np.ndarray, got: np.ndarray, tolerance: float, excuse_ties: bool
) -> Parity:
    """Max |difference| and top-1 agreement; with `excuse_ties`, a top-1 flip counts as agreement when
    the reference's top-2 margin is within the tolerance (a numerical tie, not a conversion error)."""
    diff = float(np.abs(reference.astype(np.float64) - got.astype(np.float64)).max())
    agree = reference.argmax(1) == got.argmax(1)
    excused = 0
    if excuse_ties:
        top2 = np.sort(reference, axis=1)[:, -2:]
        excused = int(np.sum(~agree & (top2[:, 1] - top2[:, 0] <= tolerance)))
    return Parity(runtime, len(reference), diff, float(agree.mean()), tolerance, int(np.sum(~agree)), excused)


def _run_runtime(path: Path, runtime: str, batch: np.ndarray, chunk: int) -> np.ndarray:
    try:
        session = load_session(path, runtime, exact=True)  # the file's own precision, not bf16
    except EdgetlError:
        raise
    except Exception as e:  # onnxruntime/openvino load errors (e.g. an opset newer than they support)
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise EdgetlError(
            f"{runtime} cannot load the exported model ({last}); try --opset {DEFAULT_OPSET}"
        ) from None
    return np.concatenate([session.run(batch[i : i + chunk]) for i in range(0, len(batch), chunk)])


def gate(
    path: Path,
    runtime: str,
    reference: np.ndarray,
    batch: np.ndarray,
    tolerance: float,
    precision: Precision,
    chunk: int,
) -> Parity:
    parity = compare_logits(
        runtime, reference, _run_runtime(path, runtime, batch, chunk), tolerance, precision is Precision.FP16
    )
    log(
        f"parity {runtime}: max |logit diff| {parity.max_abs_diff:.2e} (tolerance {tolerance:.1e}), "
        f"top-1 agreement {parity.top1_agreement:.1%} on {parity.n_images} images"
    )
    if not parity.passed:
        raise GateError(
            f"export parity gate failed on {runtime}: max |logit diff| {parity.max_abs_diff:.3e} vs tolerance "
            f"{tolerance:.1e}, top-1 agreement {parity.top1_agreement:.1%} on {parity.n_images} images; "
            "nothing was written (try another --opset, drop --optimize, or raise --tolerance if expected)"
        )
    return parity


def gate_tolerance(tolerance: float, precision: Precision, reference: np.ndarray) -> float:
    if precision is Precision.FP16:
        return max(tolerance, FP16_RELATIVE_TOLERANCE * float(np.abs(reference).max()))
    return tolerance
