"""benchmarks/gpu_check.py: one JSON row per GPU path; on a machine without a GPU each says why not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
CHECKS = [
    "train-cuda-amp",
    "pytorch-cuda",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "bundle-predict-cuda",
    "torchrun-nccl",
]


def test_gpu_check_lists_every_path_with_a_status_and_a_reason(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # exactly one JSON object
    assert json.loads(out.read_text()) == result
    rows = {row["check"]: row for row in result["checks"]}
    assert list(rows) == CHECKS
    for name, row in rows.items():
        assert row["status"] in ("ok", "unavailable"), row
        assert row["status"] == "ok" or row["reason"], f"{name}: unavailable without a reason"
    if not torch.cuda.is_available():
        # no GPU: nothing ran, and each says why in words a user can act on
        assert all(row["status"] == "unavailable" for row in rows.values())
        assert "CUDA" in rows["train-cuda-amp"]["reason"] and "GPU" in rows["torchrun-nccl"]["reason"]
        assert result["environment"]["gpus"] == []
