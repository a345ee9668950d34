"""Text training on a random 2-layer, 32-wide BERT: the schedule's trainable parameters, the cached
lower layers, token-for-token equality of training and device tokenization, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tinytext import sentences, write_text_folder

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _tiny_model(bert, classes=3):
    from edgetl.backbones.text import create_text_model

    return create_text_model("all-minilm-l6-v2", classes, weights=str(bert))


def test_trainable_parameters_per_stage(bert):
    from edgetl.trainer.recipe import PhasePlan
    from edgetl.trainer.text import _trainable

    model, _ = _tiny_model(bert)
    head = {id(p) for p in model.head.parameters()}
    groups = _trainable(model, len(model.layers), PhasePlan(epochs=1), 0.5)
    assert {id(p) for p in model.parameters() if p.requires_grad} == head and len(groups) == 1
    plan = PhasePlan(epochs=1, unfreeze=2, lr=1e-3, lr_backbone=1e-4)
    groups = _trainable(model, 0, plan, 0.5)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    layers = {id(p) for p in model.layers.parameters()}
    assert trainable == head | layers  # embeddings stay frozen
    assert [g["lr"] for g in groups] == [1e-3, 0.5e-4, 1e-4]  # decays toward the embeddings


def test_cached_lower_layers_give_the_full_models_logits(bert):
    from edgetl.trainer.text import Tokens, advance_cache, cache_states, run_top
    from edgetl_runtime.textinput import TextSpec

    model, files = _tiny_model(bert)
    spec = TextSpec(files.tokenizer, 16)
    tokens = Tokens.of(sentences("tech", 10), spec)
    cached = cache_states(model, tokens, 1, 0)
    depth = len(model.layers)
    # the frozen stage's pooled outputs: moved up from the unfreezing stage's cache, or made directly
    direct = advance_cache(model, cache_states(model, tokens, depth, 0), depth, depth)
    for pooled in (advance_cache(model, cached, 1, depth), direct):
        with torch.no_grad():
            for (index, states, mask), (_, pooled_states, _) in zip(cached, pooled, strict=True):
                ids, full_mask = tokens.batch(index, 0)
                assert torch.equal(mask, full_mask)
                torch.testing.assert_close(
                    run_top(model, states, mask, 1), model(ids, mask), atol=1e-5, rtol=1e-5
                )
                torch.testing.assert_close(model.head(pooled_states), model(ids, mask), atol=1e-5, rtol=1e-5)


def test_training_and_device_tokenize_token_for_token(bert):
    from tokenizers import Tokenizer

    from edgetl.trainer.text import Tokens
    from edgetl_runtime.inputs import input_kind
    from edgetl_runtime.textinput import TextSpec

    spec = TextSpec((bert / "tokenizer.json").read_text(), 8)
    texts = [*sentences("money", 6), "Bank PRICE, stock!", "x " * 50]
    train = Tokens.of(texts, spec)
    kind = input_kind("text")
    feed = kind.collate([kind.load(t, spec) for t in texts], spec)
    for row, ids in enumerate(train.ids):
        assert feed["input_ids"][row][feed["attention_mask"][row] == 1].tolist() == ids.tolist()
    reference = Tokenizer.from_file(str(bert / "tokenizer.json"))
    reference.enable_truncation(8)
    assert [e.ids for e in reference.encode_batch(texts)] == [t.tolist() for t in train.ids]
    assert train.truncated == sum(len(reference.encode(t).overflowing) > 0 for t in texts) > 0


def test_cli_train_resumes_an_interrupted_text_run(bert, tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import main

    data = write_text_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--backbone", "all-minilm-l6-v2", "--weights", str(bert)]
    args += ["--out", str(run), "--frozen-epochs", "2", "--epochs", "1", "--json"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["stages"][1]["epochs_run"] == 1
    # as if stopped after the frozen stage: --resume trains stage 2 again, from the saved state
    state = json.loads((run / "last_state.json").read_text())
    state["history"] = [r for r in state["history"] if r["stage"] == 1]
    state.update(stage=1, stage_epoch=0, stages=state["stages"][:1])
    (run / "last_state.json").write_text(json.dumps(state))
    resumed = CliRunner().invoke(
        main, ["train", "--data", str(data), "--out", str(run), "--resume", "--json"]
    )
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert [s["index"] for s in summary["stages"]] == [1, 2] and summary["epochs"] == 3
    assert [r["stage"] for r in json.loads((run / "metrics.json").read_text())] == [1, 1, 2]
    other = write_text_folder(tmp_path / "other", per_class=6, seed=5)
    changed = CliRunner().invoke(
        main, ["train", "--data", str(other), "--out", str(run), "--resume", "--json"]
    )
    assert changed.exit_code == 1 and "differs" in json.loads(changed.stdout)["error"]["message"]
