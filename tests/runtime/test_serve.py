"""`edgetl-run serve`: a real server process on 127.0.0.1 answering real HTTP requests.

Each server runs where torch cannot be imported (a fake torch that raises), as on a device. Every
request loop is bounded in count and every request and process wait in time.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from headless_browser import CHROMIUM, UPLOAD_JS, Browser
from PIL import Image
from serveprobe import START_S, Server, no_torch_env
from serveprobe import assert_error as _error

from edgetl.bundler.package import build_bundle
from edgetl_runtime.cli import main as run_main
from edgetl_runtime.preprocess import list_images
from edgetl_runtime.signing import generate_keypair


@pytest.fixture(scope="module")
def signed_bundle(tiny_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A signed .tar.gz bundle, its signer's public key, and another key that did not sign it."""
    out = tmp_path_factory.mktemp("serve")
    private, public, _ = generate_keypair(out / "release")
    _, stranger, _ = generate_keypair(out / "stranger")
    return build_bundle(tiny_run, out / "bundle.tar.gz", sign=private).path, public, stranger


@pytest.fixture(scope="module")
def images(digits_dir) -> list[Path]:
    return list_images(digits_dir / "val")


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict:
    return no_torch_env(tmp_path_factory.mktemp("no_torch"))


def _multipart(name: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(signed_bundle, no_torch) -> Iterator[Server]:
    bundle, public, _ = signed_bundle
    # 4096 pixels: the 32 px test images pass, a 128 px one is over the decode cap
    s = Server(bundle, no_torch, "--trust", str(public), "--max-pixels", "4096", "--workers", "2")
    yield s
    assert s.stop() == 0


def test_predict_answers_what_predict_json_prints(server, signed_bundle, images, capsys):
    bundle, public, _ = signed_bundle
    assert (
        run_main(["predict", str(bundle), str(images[0]), "--json", "--top-k", "2", "--trust", str(public)])
        == 0
    )
    expected = json.loads(capsys.readouterr().out)
    status, headers, body = server.request(
        "POST", "/v1/predict?top_k=2", images[0].read_bytes(), {"Content-Type": "image/png"}
    )
    assert status == 200, body
    got = json.loads(body)
    assert got["predictions"][0].pop("source") == "upload"
    expected["predictions"][0].pop("source")
    assert got == expected
    assert "preprocess;dur=" in headers["server-timing"]
    status, _, body = server.request(
        "POST", "/v1/predict?top_k=2", *_multipart("digit.png", images[0].read_bytes())
    )
    assert status == 200 and json.loads(body)["predictions"][0]["source"] == "digit.png"
    assert json.loads(body)["predictions"][0]["top_k"] == got["predictions"][0]["top_k"]


def test_each_error_is_one_json_error_and_the_server_keeps_answering(server, images):
    png = images[0].read_bytes()
    status, _, body = server.request(
        "POST", "/v1/predict", png[: len(png) // 2], {"Content-Type": "image/png"}
    )
    assert "not a readable image" in _error(status, body, 400, "bad_input")["message"]
    status, _, body = server.request("POST", "/v1/predict", _png(128), {"Content-Type": "image/png"})
    assert "over the limit of 4096 pixels" in _error(status, body, 400, "bad_input")["message"]
    status, _, body = server.request("POST", "/v1/predict?top_k=0", png, {"Content-Type": "image/png"})
    assert _error(status, body, 400, "bad_input")["option"] == "top_k"
    status, _, body = server.request(
        "POST", "/v1/predict?top_k=1&top_k=2", png, {"Content-Type": "image/png"}
    )
    assert "top_k must be given once" in _error(status, body, 400, "bad_input")["message"]
    one, headers = _multipart("a.png", png)
    boundary = headers["Content-Type"].split("boundary=")[1]
    two = one.replace(
        f"--{boundary}--".encode(), one[: one.index(png)] + png + f"\r\n--{boundary}--".encode()
    )
    status, _, body = server.request("POST", "/v1/predict", two, headers)  # two files: one is allowed
    assert "malformed multipart body (Too many files" in _error(status, body, 400, "bad_input")["message"]
    status, _, body = server.request(
        "POST", "/v1/predict", b"--zz--", {"Content-Type": "multipart/form-data; boundary=zz"}
    )
    assert "no file field named 'file'" in _error(status, body, 400, "bad_input")["message"]
    status, _, body = server.request("POST", "/v1/predict", b"a cat", {"Content-Type": "text/plain"})
    _error(status, body, 415, "unsupported_media_type")
    # 64 MB, declared up front and sent in full by the client: refused before it is read
    big = bytes(64 << 20)
    status, _, body = server.request("POST", "/v1/predict", big, {"Content-Type": "image/jpeg"}, timeout=60)
    assert _error(status, body, 413, "too_large")["option"] == "--max-body-mb"
    # chunked, no length to refuse up front: stopped while streaming, at the cap
    chunks = (big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20))
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request(
        "POST", "/v1/predict", body=chunks, headers={"Content-Type": "image/jpeg"}, encode_chunked=True
    )
    response = conn.getresponse()
    _error(response.status, response.read(), 413, "too_large")
    conn.close()
    status, _, body = server.request("GET", "/v2/predict")
    _error(status, body, 404, "not_found")
    status, headers, body = server.request("DELETE", "/v1/info")
    _error(status, body, 405, "method_not_allowed")
    assert "GET" in headers["allow"]
    status, _, body = server.request("POST", "/v1/predict", png, {"Content-Type": "image/png"})
    assert status == 200 and json.loads(body)["failed"] == 0
    assert server.request("GET", "/healthz")[:1] == (200,)


def test_top_k_counts_from_one(server, images):
    png = images[0].read_bytes()
    status, _, body = server.request("POST", "/v1/predict?top_k=1", png, {"Content-Type": "image/png"})
    assert status == 200 and len(json.loads(body)["predictions"][0]["top_k"]) == 1
    status, _, body = server.request("POST", "/v1/predict?top_k=0", png, {"Content-Type": "image/png"})
    assert _error(status, body, 400, "bad_input")["option"] == "top_k"


def test_a_declared_over_size_body_is_refused_before_it_is_sent(server):
    """The header alone decides: 64 MiB declared, 4 bytes sent, the rest never. Only the early
    refusal answers this; the streaming count would wait for a body that does not come (the
    streaming count's own test is the chunked upload above)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/predict")
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(64 << 20))
        conn.endheaders(b"\x89PNG")
        response = conn.getresponse()
        error = _error(response.status, response.read(), 413, "too_large")
        assert "over the limit of" in error["message"] and error["option"] == "--max-body-mb"
    finally:
        conn.close()


def test_info_and_metrics(server):
    status, _, body = server.request("GET", "/v1/info")
    info = json.loads(body)
    assert status == 200 and info["verified"] is True
    assert info["labels"] == ["0", "1", "2"] and info["precision"] == "int8"
    assert info["signer"] and len(info["sha256"]) == 64 and info["preprocess"]["crop"] == 32
    server.request("GET", "/nowhere")
    status, headers, body = server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'edgetl_requests_total{route="other",status="404"}' in text
    assert 'edgetl_errors_total{kind="not_found"}' in text
    for histogram in ("edgetl_preprocess_seconds", "edgetl_inference_seconds", "edgetl_request_seconds"):
        assert f"# TYPE {histogram} histogram" in text and f'{histogram}_bucket{{le="+Inf"}}' in text


def test_concurrent_load_without_a_failure(server, images):
    """8 clients x 50 requests, each on its own keep-alive connection."""
    bodies = [p.read_bytes() for p in images]

    def client(n: int) -> list[int]:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        statuses = []
        for i in range(50):
            conn.request(
                "POST",
                "/v1/predict?top_k=1",
                body=bodies[(n + i) % len(bodies)],
                headers={"Content-Type": "image/png"},
            )
            response = conn.getresponse()
            statuses.append(response.status if json.loads(response.read())["failed"] == 0 else -1)
        conn.close()
        return statuses

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(client, range(8), timeout=240) for s in result]
    assert statuses == [200] * 400, f"{sum(s != 200 for s in statuses)} failures"
    assert time.monotonic() - started < 240


def _hold_a_slot(server: Server) -> http.client.HTTPConnection:
    """A request whose body is still on its way: it holds an admission slot until it is sent."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.putrequest("POST", "/v1/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", "100")
    conn.endheaders(b"\x89PNG")
    return conn


def test_overload_is_503_with_retry_after_and_slow_bodies_time_out(signed_bundle, no_torch, images):
    s = Server(signed_bundle[0], no_torch, "--workers", "1", "--queue", "0", "--timeout-s", "2")
    try:
        slow = _hold_a_slot(s)
        time.sleep(0.3)
        status, headers, body = s.request(
            "POST", "/v1/predict", images[0].read_bytes(), {"Content-Type": "image/png"}
        )
        _error(status, body, 503, "overloaded")
        assert headers["retry-after"] == "1"
        response = slow.getresponse()  # the slow body never completes: 408 after --timeout-s
        _error(response.status, response.read(), 408, "request_timeout")
        slow.close()
        status, _, _ = s.request("POST", "/v1/predict", images[0].read_bytes(), {"Content-Type": "image/png"})
        assert status == 200  # its slot was given back
    finally:
        assert s.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(signed_bundle, no_torch, images):
    s = Server(signed_bundle[0], no_torch)
    png = images[0].read_bytes()
    conn = http.client.HTTPConnection(s.host, s.port, timeout=30)
    conn.putrequest("POST", "/v1/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(len(png)))
    conn.endheaders(png[:10])
    time.sleep(0.3)
    signalled = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    conn.send(png[10:])
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["failed"] == 0
    assert s.proc.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 5
    assert "stopped by SIGTERM" in s.proc.stderr.read()


def test_bundle_is_verified_before_the_port_opens(signed_bundle, no_torch, tmp_path):
    bundle, _, stranger = signed_bundle
    command = [sys.executable, "-m", "edgetl_runtime.cli", "serve", str(bundle), "--port", "0", "--json"]
    done = subprocess.run(
        [*command, "--trust", str(stranger)], env=no_torch, capture_output=True, text=True, timeout=START_S
    )
    assert done.returncode == 1 and json.loads(done.stdout)["error"]["kind"] == "error"
    tampered = tmp_path / "tampered.tar.gz"
    shutil.copyfile(bundle, tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    command[4] = str(tampered)
    done = subprocess.run(command, env=no_torch, capture_output=True, text=True, timeout=START_S)
    assert done.returncode == 1 and "url" not in done.stdout and "error" in json.loads(done.stdout)


def test_the_page_is_self_contained_and_its_headers_forbid_fetching_or_framing(server):
    status, headers, body = server.request("GET", "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    # nothing is fetched from elsewhere, and the CSP forbids it anyway
    assert "http://" not in page and "https://" not in page and " src=" not in page
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_page_classifies_a_photo_in_headless_chromium(server, images, tmp_path):
    browser = Browser(f"http://{server.host}:{server.port}/", str(tmp_path / "profile"))
    try:
        deadline = time.monotonic() + 60
        session = browser.attach_page(deadline)
        phone = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
        browser.call("Emulation.setDeviceMetricsOverride", phone, session)
        browser.wait_loaded(session, f"http://{server.host}:{server.port}/", deadline)
        photo = base64.b64encode(images[0].read_bytes()).decode()
        shown = browser.call(
            "Runtime.evaluate",
            {"expression": f"{UPLOAD_JS}({json.dumps(photo)})", "awaitPromise": True, "returnByValue": True},
            session,
            timeout=90,
        )["result"]["value"]
        shot = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
    finally:
        browser.close()
    # the script ran under the page's CSP: bundle info from /v1/info, then the top-k of the photo
    assert shown["model"] == "run · int8 on onnxruntime-cpu · 3 labels", shown
    assert len(shown["results"]) == 3 and all(r.endswith(" %") for r in shown["results"]), shown
    assert "ms round trip" in shown["status"] and "inference" in shown["status"], shown
    with Image.open(io.BytesIO(shot)) as im:
        lo, hi = im.convert("L").getextrema()
        assert im.size == (390, 844) and hi - lo > 100  # a phone's screen, not a blank page
    assert shown["width"] <= 390, "the page is wider than a phone's screen"


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory) -> Path:
    """A tiny text run (random 2-layer BERT, three topics), trained, exported and packaged."""
    from tinytext import write_text_folder, write_tiny_bert

    import edgetl

    root = tmp_path_factory.mktemp("servetext")
    bert = write_tiny_bert(root / "bert")
    run = root / "run"
    edgetl.train(
        write_text_folder(root / "data"),
        run,
        backbone="all-minilm-l6-v2",
        weights=str(bert),
        frozen_epochs=8,
        epochs=1,
    )
    edgetl.export(run)
    return edgetl.package(run, root / "bundle.tar.gz").path


def test_a_text_bundle_takes_text_plain_and_answers_what_predict_json_prints(text_bundle, no_torch, capsys):
    text = "the team scored a late goal to win the league match"
    assert run_main(["predict", str(text_bundle), text, "--json", "--top-k", "2"]) == 0
    expected = json.loads(capsys.readouterr().out)
    server = Server(text_bundle, no_torch)
    try:
        status, _, body = server.request("GET", "/v1/info")
        assert status == 200 and json.loads(body)["modality"] == "text"
        status, _, body = server.request(
            "POST", "/v1/predict?top_k=2", text.encode(), {"Content-Type": "text/plain; charset=utf-8"}
        )
        assert status == 200, body
        got = json.loads(body)
        assert got["predictions"][0].pop("source") == "upload"
        expected["predictions"][0].pop("source")
        assert got == expected
        status, _, body = server.request("POST", "/v1/predict", *_multipart("note.txt", text.encode()))
        assert status == 200 and json.loads(body)["predictions"][0]["source"] == "note.txt"
        assert "text/plain" in _error(
            *server.request("POST", "/v1/predict", _png(32), {"Content-Type": "image/png"})[::2], 415,
            "unsupported_media_type",
        )["message"]  # fmt: skip
        for bad in (b"   ", b"\x00binary\x00"):
            _error(
                *server.request("POST", "/v1/predict", bad, {"Content-Type": "text/plain"})[::2],
                400,
                "bad_input",
            )
        assert server.request("GET", "/healthz")[0] == 200
    finally:
        assert server.stop() == 0


def test_a_crash_is_a_500_naming_no_traceback_and_the_server_keeps_answering(
    signed_bundle, no_torch, images, tmp_path
):
    import os
    import textwrap

    hook = tmp_path / "hook"  # a fault in the server process: top_k=13 raises inside the app
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import edgetl_runtime.serve.app as app
        parse = app._query_top_k
        def crashing(request):
            if request.query_params.get("top_k") == "13":
                raise ZeroDivisionError("division by zero")
            return parse(request)
        app._query_top_k = crashing
    """)
    )
    env = {**no_torch, "PYTHONPATH": os.pathsep.join([str(hook), no_torch["PYTHONPATH"]])}
    bundle, public, _ = signed_bundle
    s = Server(bundle, env, "--trust", str(public))
    try:
        png = images[0].read_bytes()
        status, _, body = s.request("POST", "/v1/predict?top_k=13", png, {"Content-Type": "image/png"})
        error = _error(status, body, 500, "crash")
        assert error["message"] == "internal error (ZeroDivisionError); this is a bug, please report it"
        status, _, body = s.request("POST", "/v1/predict?top_k=2", png, {"Content-Type": "image/png"})
        assert status == 200 and len(json.loads(body)["predictions"][0]["top_k"]) == 2
    finally:
        s.stop()
