"""Names from a run are text on the report page: a class folder, an image file, a backend and a
benchmark reason that hold HTML and script show as typed, make no element and run nothing, checked
in the page's HTML and in headless Chromium's DOM.
"""

from __future__ import annotations

import json
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from headless_browser import CHROMIUM, Browser

from edgetl.reporting.report import build_report

# valid names on Linux (no '/'); each would run script, or add an element or attribute, if inserted raw
CLASS = "<img src=x onerror=alert(1)>"
FILE = '<script>alert(2)<script>x" onmouseover="alert(3).png'
BACKEND = "<b onclick=alert(4)>ort</b>"
REASON = "<iframe srcdoc='<script>alert(5)</script>'></iframe>"
GATE = "<script>alert(6)</script>"
SHOWN = (CLASS, BACKEND, REASON, GATE)  # as page text; FILE is in the cards' title and alt


@pytest.fixture(scope="module")
def hostile_run(tiny_run, tmp_path_factory) -> Path:
    """tiny_run with class 0 renamed CLASS, every validation image copied to a FILE-like name and
    labelled as the next class (so the gallery shows every one), a benchmark naming BACKEND and
    REASON, and a gate whose metric and reason are GATE."""
    root = tmp_path_factory.mktemp("hostile")
    run = Path(shutil.copytree(tiny_run, root / "run"))
    splits = json.loads((run / "splits.json").read_text())
    labels = [CLASS, *splits["labels"][1:]]
    n = len(labels)
    val = []
    for i, (path, label) in enumerate(splits["val"]):
        folder = root / "data" / labels[label]
        folder.mkdir(parents=True, exist_ok=True)
        copy = shutil.copy(path, folder / f"{i}{FILE}")
        val.append([str(copy), (label + 1) % n])
    splits.update(labels=labels, val=val)
    (run / "splits.json").write_text(json.dumps(splits))
    matrix = [[4 if t == p else 0 for p in range(n)] for t in range(n)]
    (run / "confusion.json").write_text(json.dumps({"labels": labels, "matrix": matrix}))
    rows = [
        {"backend": BACKEND, "model": FILE, "precision": "fp32", "status": "ok", "p50_ms": 2.0, "p90_ms": 2.2,
         "p99_ms": 2.5, "throughput": 500.0, "cv": 0.01},
        {"backend": BACKEND, "precision": "int8", "status": "failed", "reason": REASON},
    ]  # fmt: skip
    (run / "benchmark.json").write_text(json.dumps({"rows": rows, "environment": {"cpu": CLASS}}))
    quantize = json.loads((run / "quantize.json").read_text())
    quantize["gate"].update(metric=GATE, reason=GATE)
    (run / "quantize.json").write_text(json.dumps(quantize))
    return run


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text, as a browser's parser reads the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


@pytest.fixture(scope="module")
def page(hostile_run) -> Path:
    return build_report(hostile_run).path


def test_hostile_names_are_escaped_text_in_the_html(page):
    html = page.read_text()
    parser = _Elements()
    parser.feed(html)
    assert not {"script", "iframe"} & {t for t, _ in parser.tags}
    assert not [a for _, a in parser.tags if {"onerror", "onmouseover", "onclick", "srcdoc"} & set(a)]
    assert not [a for t, a in parser.tags if t == "img" and a.get("src") == "x"]
    # the names are there, as text: captions, the latency table and its reasons, the files' titles
    for name in SHOWN:
        assert name in parser.text, name
    titles = [a["title"] for t, a in parser.tags if t == "figure"]
    assert titles and all(t.endswith(FILE) for t in titles)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_hostile_names_run_nothing_in_chromium(page, tmp_path):
    browser = Browser("about:blank", str(tmp_path / "profile"))
    try:
        deadline = time.monotonic() + 60
        session = browser.attach_page(deadline)
        browser.call("Page.enable", {}, session)
        # before any of the page's own code could run: every way a payload announces itself is recorded
        spy = "window.ran = []; for (const f of ['alert', 'confirm', 'prompt']) window[f] = (x) => window.ran.push(String(x));"
        browser.call("Page.addScriptToEvaluateOnNewDocument", {"source": spy}, session)
        url = page.resolve().as_uri()
        browser.call("Page.navigate", {"url": url}, session)
        browser.wait_loaded(session, url, deadline)
        time.sleep(1)  # a failed <img src=x> reports its error asynchronously
        check = """({
            ran: window.ran,
            text: document.body.innerText,
            scripts: document.querySelectorAll('script, iframe').length,
            handlers: [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
            x: document.querySelectorAll('img[src="x"]').length,
            titles: [...document.querySelectorAll('figure')].map(f => f.title),
            alts: [...document.querySelectorAll('figure img')].map(i => i.alt),
        })"""  # fmt: skip
        found = browser.call("Runtime.evaluate", {"expression": check, "returnByValue": True}, session)
    finally:
        browser.close()
    seen = found["result"]["value"]
    assert seen["ran"] == [], seen["ran"]
    assert seen["scripts"] == seen["handlers"] == seen["x"] == 0
    for name in SHOWN:
        assert name in seen["text"], name
    assert seen["titles"] and all(title.endswith(FILE) for title in seen["titles"])
    assert seen["alts"] and all(alt.endswith(FILE) for alt in seen["alts"])
