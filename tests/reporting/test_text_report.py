"""The report of a text run: misclassified texts as snippets and the tokenization said."""

from __future__ import annotations

from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_report_shows_misclassified_texts_as_snippets(text_run, tmp_path):
    import edgetl

    page = edgetl.report(text_run, tmp_path / "report.html").path.read_text()
    assert "Misclassified validation texts" in page
    assert 'class="snippet"' in page or "No mistakes." in page
    assert "up to 128 tokens (mean pooling)" in page
