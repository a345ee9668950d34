"""The export parity gate on crafted logits through a one-node ONNX model (Identity): what passes,
what is refused and why, and the FP16 allowance for numerical ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tinyonnx import write_identity

from edgetl.errors import GateError
from edgetl.exporter.parity import compare_logits, gate, gate_tolerance
from edgetl_runtime.modelinfo import Precision


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> Path:
    """A model whose logits are its input: the runtime answers exactly what the test feeds it."""
    return write_identity(tmp_path_factory.mktemp("parity") / "identity.onnx", ["n", 3])


LOGITS = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [0.5, 0.0, 0.2]], np.float32)


def _gate(identity: Path, reference: np.ndarray, tolerance: float, precision=Precision.FP32):
    return gate(identity, "onnxruntime-cpu", reference, LOGITS, tolerance, precision, chunk=3)


def test_equal_logits_pass_and_a_difference_within_the_tolerance_passes(identity):
    same = _gate(identity, LOGITS, 0.0)
    assert same.passed and same.max_abs_diff == 0 and same.top1_agreement == 1 and same.n_images == 4
    at = _gate(identity, LOGITS + np.float32(0.25), 0.25)  # exactly at the tolerance
    assert at.passed and at.max_abs_diff == pytest.approx(0.25)


def test_a_difference_over_the_tolerance_is_refused(identity):
    reference = LOGITS.copy()
    reference[3, 1] += 0.1  # no top-1 changes, one logit is off by 0.1
    with pytest.raises(GateError, match="export parity gate failed on onnxruntime-cpu") as refused:
        _gate(identity, reference, 0.05)
    assert "max |logit diff| 1.000e-01" in str(refused.value) and "nothing was written" in str(refused.value)
    assert "top-1 agreement 100.0% on 4 images" in str(refused.value)


def test_a_top1_flip_is_refused_even_within_the_tolerance(identity):
    reference = LOGITS.copy()
    reference[3] = [0.2, 0.0, 0.5]  # top-1 class 2 where the model says 0: off by 0.3 at most
    with pytest.raises(GateError, match=r"top-1 agreement 75\.0% on 4 images"):
        _gate(identity, reference, 1.0)


def test_fp16_excuses_a_flip_only_on_a_numerical_tie():
    reference = np.array([[1.0, 1.004, 0.0], [2.0, 0.0, 0.0]], np.float32)
    got = np.array([[1.004, 1.0, 0.0], [2.0, 0.0, 0.0]], np.float32)
    tie = compare_logits("fp16", reference, got, 0.005, excuse_ties=True)
    assert (tie.top1_flips, tie.ties_excused, tie.passed) == (1, 1, True)
    fp32 = compare_logits("fp32", reference, got, 0.005, excuse_ties=False)
    assert (fp32.top1_flips, fp32.ties_excused, fp32.passed) == (1, 0, False)
    wide = compare_logits("fp16", reference, got, 0.003, excuse_ties=True)  # the margin is over it
    assert (wide.ties_excused, wide.passed) == (0, False)


def test_fp16_tolerance_scales_with_the_largest_logit_and_fp32_keeps_the_given_one():
    reference = np.array([[-50.0, 10.0]], np.float32)
    assert gate_tolerance(1e-4, Precision.FP16, reference) == pytest.approx(0.5)
    assert gate_tolerance(1.0, Precision.FP16, reference) == 1.0
    assert gate_tolerance(1e-4, Precision.FP32, reference) == 1e-4


def test_a_model_the_runtime_cannot_load_is_one_error_naming_the_fix(tmp_path):
    from edgetl.errors import EdgetlError

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(EdgetlError, match=r"onnxruntime-cpu cannot load the exported model .*try --opset"):
        _gate(broken, LOGITS, 1.0)


def test_torch_logits_in_chunks_equal_one_forward_pass():
    import torch

    from edgetl.exporter.parity import torch_logits

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).eval()
    batch = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(batch)).numpy()
    got = torch_logits(model, batch, chunk=2)
    assert got.shape == (5, 2) and np.allclose(got, whole, atol=1e-6)
