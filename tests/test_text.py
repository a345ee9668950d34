"""Text classification on tiny inputs: a random 2-layer, 32-wide BERT and a few dozen short texts.

The reader and its hostile cases, the schedule's trainable parameters, the cached top layers, export
parity, token-for-token equality of training and device tokenization, the INT8 gate, a bundle round
trip through `edgetl-run` (texts, files, --lines, stdin), and modality-less (older) image records.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tinytext import sentences, write_text_folder, write_tiny_bert

from edgetl.errors import DataError

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, bert) -> Path:
    """A trained, exported, quantized and packaged tiny text run."""
    import edgetl

    root = tmp_path_factory.mktemp("textrun")
    data = write_text_folder(root / "data", per_class=14)
    run = root / "run"
    edgetl.train(data, run, backbone="all-minilm-l6-v2", weights=str(bert), frozen_epochs=8, epochs=1, seed=0)
    edgetl.export(run)
    edgetl.quantize(run, allow_drop=True)
    edgetl.package(run, root / "bundle.tar.gz")
    return run


# --- the reader ---------------------------------------------------------------------------------------


def test_folder_reader_counts_what_it_skips_and_decodes(tmp_path):
    from edgetl.data.texts import load_texts

    data = write_text_folder(tmp_path / "d", per_class=6)
    (data / "sport" / "empty.txt").write_text("  \n")
    (data / "sport" / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (data / "money" / "latin1.txt").write_bytes("caf\xe9 march\xe9 bank price".encode("latin-1"))
    (data / "tech" / "long.txt").write_text("chip " * 2_000_000)  # a 10 MB line
    texts = load_texts(data, val_fraction=0.25, seed=0)
    assert texts.labels == ("money", "sport", "tech")
    assert (texts.stats.empty, texts.stats.unreadable, texts.stats.fallback_decoded) == (1, 1, 1)
    assert texts.stats.files == 6 * 3 + 4
    assert len(texts.train_texts) + len(texts.val_texts) == 6 * 3 + 2
    assert any("café marché" in t for t in (*texts.train_texts, *texts.val_texts))


def test_train_val_folders_and_duplicates_are_reported(tmp_path, capsys):
    from edgetl.data.texts import load_texts

    for split in ("train", "val"):
        write_text_folder(tmp_path / split, per_class=3, seed=0)  # the same texts in both splits
    texts = load_texts(tmp_path)
    assert texts.stats.duplicates == len(texts.val_texts) == 9
    assert "also occur in train" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_tables(tmp_path, suffix):
    from edgetl.data.texts import load_texts, read_recorded

    rows = [(t, topic) for topic in ("sport", "money") for t in sentences(topic, 5)] + [
        ("no label here", " ")
    ]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(f"text{sep}label\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows))
    texts = load_texts(path, val_fraction=0.2)
    assert texts.labels == ("money", "sport") and texts.stats.unlabelled == 1
    assert read_recorded([p for p, _ in texts.splits.val]) == list(texts.val_texts)


@pytest.mark.parametrize(
    "content, message",
    [
        ("words,label\nhello,a\n", "no text column"),
        ("text,label\nhello,a\u0007b\nworld,c\n", "control characters"),
        ("text,label\nhello,a\n", "at least 2"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, content, message):
    from edgetl.data.texts import load_texts

    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_texts(path)


# --- the schedule -------------------------------------------------------------------------------------


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


# --- export, INT8, bundle, device ---------------------------------------------------------------------


def test_export_parity_at_several_lengths(text_run, bert):
    record = json.loads((text_run / "export.json").read_text())
    runtimes = [c["runtime"] for c in record["checks"]]
    assert runtimes == ["onnxruntime-cpu@16", "onnxruntime-cpu@64", "onnxruntime-cpu@128"]
    assert all(c["passed"] and c["max_abs_diff"] < 1e-4 for c in record["checks"])
    from edgetl_runtime.modelfile import read_model_info

    info = read_model_info(text_run / "model.onnx")
    assert info.modality.value == "text" and info.preprocess.max_length == 128
    assert (
        info.preprocess.tokenizer == (bert / "tokenizer.json").read_text()
    )  # the model carries its tokenizer


def test_int8_gate_and_record(text_run):
    q = json.loads((text_run / "quantize.json").read_text())
    from edgetl.quantizer.nncf_backend import nncf_available

    methods = {"dynamic", "static-qdq-matmul"} | ({"nncf-transformer"} if nncf_available() else set())
    assert {a["method"] for a in q["attempts"]} == methods
    assert q["gate"]["images"] == q["eval_images"] > 0 and q["method"] in methods
    import onnx

    graph = onnx.load(str(text_run / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "Gather" in ops and (
        "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops or "QuantizeLinear" in ops
    )


def test_bundle_round_trip_through_the_device_cli(text_run, tmp_path, capsys):
    from edgetl_runtime.cli import main
    from edgetl_runtime.predictor import Predictor

    bundle = text_run.parent / "bundle.tar.gz"
    predictor = Predictor.from_bundle(bundle)
    assert predictor.modality.value == "text" and predictor.precision == "int8"
    results = predictor.predict(["match goal team", Path(tmp_path / "missing.txt")])
    assert results[0].label in predictor.labels and "no such file" in results[1].error
    (tmp_path / "a.txt").write_text("stock bank market price")
    (tmp_path / "lines.txt").write_text("goal team\n\nchip code\n")
    sys.stdin = io.StringIO("profit trade\n")
    try:
        code = main(
            [
                "predict",
                str(bundle),
                "some text",
                str(tmp_path / "a.txt"),
                "-",
                "--lines",
                str(tmp_path / "lines.txt"),
                "--json",
            ]
        )
    finally:
        sys.stdin = sys.__stdin__
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["modality"] == "text"
    assert [p["source"] for p in out["predictions"]] == [
        "some text",
        str(tmp_path / "a.txt"),
        "stdin:1",
        f"{tmp_path / 'lines.txt'}:1",
        f"{tmp_path / 'lines.txt'}:3",
    ]
    assert all(set(p) == {"source", "label", "index", "score", "top_k"} for p in out["predictions"])
    assert main(["info", str(bundle)]) == 0
    assert "text: tokenizer.json, max_length 128" in capsys.readouterr().out


def test_device_runtime_without_torch(text_run, tmp_path):
    for name in ("torch", "transformers"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this device')\n")
    script = textwrap.dedent(
        """
        import json, sys
        from edgetl_runtime.cli import main
        code = main(["predict", sys.argv[1], "the team scored a goal", "--json"])
        print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}), file=sys.stderr)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(DEPLOY)])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(text_run.parent / "bundle.tar.gz")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr


def test_records_without_a_modality_are_images():
    from edgetl_runtime.modality import Modality
    from edgetl_runtime.modelinfo import ModelInfo
    from edgetl_runtime.preprocess import PreprocessSpec

    info = ModelInfo(labels=("a", "b"), preprocess=PreprocessSpec(), backbone="x")
    meta = {k: v for k, v in info.to_metadata().items() if k != "edgetl.modality"}
    assert ModelInfo.from_metadata(meta).modality is Modality.IMAGE
    with pytest.raises(Exception, match="modality 'audio'"):
        ModelInfo.from_metadata({**meta, "edgetl.modality": "audio"})


def test_text_spec_is_strict(bert):
    from edgetl_runtime.preprocess import SpecError
    from edgetl_runtime.textinput import TextSpec

    spec = TextSpec((bert / "tokenizer.json").read_text(), 64)
    assert TextSpec.from_dict(json.loads(spec.to_json())) == spec
    for bad in (
        {**spec.to_dict(), "max_length": True},
        {**spec.to_dict(), "pooling": "max"},
        {"max_length": 3},
    ):
        with pytest.raises(SpecError):
            TextSpec.from_dict(bad)
    assert np.array_equal(spec.inputs, ("input_ids", "attention_mask"))


def test_report_shows_misclassified_texts_as_snippets(text_run, tmp_path):
    import edgetl

    page = edgetl.report(text_run, tmp_path / "report.html").path.read_text()
    assert "Misclassified validation texts" in page
    assert 'class="snippet"' in page or "No mistakes." in page
    assert "up to 128 tokens (mean pooling)" in page


def test_benchmark_at_sequence_lengths_with_tokenization_apart(text_run):
    import edgetl
    from edgetl_runtime.cli import main

    report = edgetl.benchmark(text_run, backends=["onnxruntime-cpu"], warmup_s=0, min_s=0, min_runs=2)
    ok = [r for r in report.rows if r.status == "ok"]
    assert {(r.precision, r.batch, r.seq_len) for r in ok} == {
        (p, b, n) for p in ("fp32", "int8") for b in (1, 8) for n in (16, 64, 128, 256)
    }
    assert all(r.tokens_per_s == pytest.approx(r.batch * r.seq_len * 1000 / r.p50_ms) for r in ok)
    assert len(report.tokenization) == 8 and all(t.p50_ms > 0 for t in report.tokenization)
    assert json.loads((text_run / "benchmark_text.json").read_text())["rows"]
    bundle = str(text_run.parent / "bundle.tar.gz")
    assert main(["bench", bundle, "--min-s", "0", "--warmup-s", "0", "--min-runs", "2"]) == 0


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


def test_an_int8_candidate_not_clearly_faster_than_fp32_is_not_chosen():
    from edgetl.quantizer.text import TextCandidate, rank_candidate

    slow = TextCandidate("nncf-transformer", 0.95, 0.0007, 1.0, -5.0, (-5.0, 4.75), 0.26, 45.8, "warn")
    fast = TextCandidate("dynamic", 0.95, 0.0011, 1.0, -5.0, (-5.0, 4.75), 0.65, 19.3, "warn")
    assert min([slow, fast], key=lambda c: rank_candidate(c, 31.0)) is fast
    # agreeing on one more text does not buy a model that a busy machine timed at 0.9x FP32
    barely = TextCandidate("nncf-transformer", 0.96, 0.0007, 1.0, -5.0, (-5.0, 4.75), 0.26, 27.9, "warn")
    assert min([barely, fast], key=lambda c: rank_candidate(c, 31.0)) is fast
    # one flipped text of 80 (warn) does not outweigh a KL seventy times lower
    close = TextCandidate("dynamic", 79 / 80, 0.0007, 0.95, 1.25, (-1.19, 1.25), 0.65, 14.2, "warn")
    coarse = TextCandidate("static-qdq-matmul", 1.0, 0.046, 0.96, 0.0, (0.0, 0.0), 0.65, 18.0, "pass")
    assert min([coarse, close], key=lambda c: rank_candidate(c, 40.0)) is close
    failing = TextCandidate("static-qdq-matmul", 0.5, 0.9, 0.5, 40.0, (30.0, 50.0), 0.65, 10.0, "fail")
    assert min([failing, slow], key=lambda c: rank_candidate(c, 31.0)) is slow
