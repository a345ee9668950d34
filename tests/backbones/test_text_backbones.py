"""The embedded text encoder: listed with its parameter count and loaded offline."""

from __future__ import annotations

import json
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_embedded_encoder_is_listed_and_loads_offline():
    from click.testing import CliRunner

    from edgetl.backbones.text import TEXT_BACKBONES, create_text_model
    from edgetl.cli import main

    result = CliRunner().invoke(main, ["backbones", "all-*", "--json"])
    (row,) = json.loads(result.stdout)["backbones"]
    assert (row["modality"], row["offline_weights"]) == ("text", True)
    model, files = create_text_model("all-minilm-l6-v2", 4)
    assert (
        sum(p.numel() for p in model.encoder.parameters())
        == row["parameters"]
        == TEXT_BACKBONES["all-minilm-l6-v2"].parameters
    )
    assert files.config["hidden_size"] == 384 and len(model.layers) == 6
