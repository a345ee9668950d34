"""Hostile requests to `edgetl-run serve` (issue 33): query abuse, requests the HTTP parser refuses,
heads that never finish, texts the reader used to call binary, multipart edge cases. One real server
on the tiny text bundle answers them all, and keeps answering."""

from __future__ import annotations

import codecs
import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from serveprobe import Server, assert_error, no_torch_env

TIMEOUT_S = 3  # --timeout-s: a body, a prediction and now a request head must arrive within it


@pytest.fixture(scope="module")
def server(text_run, tmp_path_factory) -> Iterator[Server]:
    env = no_torch_env(tmp_path_factory.mktemp("no_torch"))
    s = Server(text_run.parent / "bundle.tar.gz", env, "--workers", "1", "--timeout-s", str(TIMEOUT_S))
    yield s
    assert s.stop() == 0


def _predict(server: Server, query: str, body: bytes = b"the late goal won the match", media="text/plain"):
    return server.request("POST", f"/v1/predict{query}", body, {"Content-Type": media})


@pytest.mark.parametrize(
    "query, option",
    [
        ("?top_k=%C2%B2", "top_k"),  # a superscript two: str.isdigit() says yes, int() says no
        ("?top_k=" + "9" * 5000, "top_k"),
        ("?top_k=%EF%BC%93", "top_k"),  # a full-width three
        ("?top_k=1&top_k=2", "top_k"),
        ("?top_k=", "top_k"),
        ("?topk=3", "topk"),
    ],
)
def test_every_query_parameter_is_checked(server, query, option):
    status, _, body = _predict(server, query)
    assert assert_error(status, body, 400, "bad_input")["option"] == option
    assert len(body) < 1000  # a 5000-digit value is not echoed back


@pytest.mark.parametrize(
    "request_bytes, status, kind",
    [
        (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: abc\r\n\r\nhi",
            400,
            "bad_input",
        ),
        (b"GARBAGE\r\n\r\n", 400, "bad_input"),
        (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
            400,
            "bad_input",
        ),
    ],
    ids=["200 KB header", "Content-Length abc", "no request line", "two Content-Lengths"],
)
def test_requests_the_parser_refuses_are_json_errors(server, request_bytes, status, kind):
    got, headers, body = server.raw(request_bytes)
    assert headers["content-type"] == "application/json"
    assert_error(got, body, status, kind)
    assert server.request("GET", "/healthz")[0] == 200


def test_a_request_head_that_never_finishes_is_closed(server):
    """Slowloris: before, uvicorn waited for the rest of a head forever, one file descriptor each."""
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT_S * 4) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert sock.recv(1024) == b""  # closed by the server, not by this socket's timeout
    assert time.monotonic() - started < TIMEOUT_S * 3
    assert server.request("GET", "/healthz")[0] == 200


@pytest.mark.parametrize(
    "bom, encoding", [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]
)
def test_a_utf16_text_with_a_bom_is_classified(server, bom, encoding):
    status, _, body = _predict(server, "?top_k=1", bom + "the late goal won the match".encode(encoding))
    assert status == 200 and json.loads(body)["failed"] == 0, body


@pytest.mark.parametrize("charset", ["utf-16-le", "cp1252", "latin-1"])
def test_a_declared_charset_is_how_the_body_is_read(server, charset):
    text = "the late goal won the match, café"
    status, _, body = _predict(server, "?top_k=1", text.encode(charset), f"text/plain; charset={charset}")
    assert status == 200 and json.loads(body)["failed"] == 0, body


@pytest.mark.parametrize(
    "charset, body, message",
    [
        ("zlib", b"x\x9c\xcbH\xcd\xc9\xc9\x07\x00\x06,\x02\x15", "charset 'zlib' is not read here"),
        ("koi8-r", "гол".encode("koi8-r"), "charset 'koi8-r' is not read here"),
        ("utf-8", "café".encode("latin-1"), "not utf-8 as declared"),
    ],
    ids=["a bytes codec", "a charset not read", "not what it says"],
)
def test_a_charset_that_cannot_be_read_is_400(server, charset, body, message):
    status, _, answer = _predict(server, "", body, f"text/plain; charset={charset}")
    assert message in assert_error(status, answer, 400, "bad_input")["message"]


def _multipart(parts: list[tuple[str, str, bytes]], end: bool = True) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for name, extra, data in parts
    )
    body += f"--{boundary}--\r\n".encode() if end else b""
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "parts, end, message",
    [
        (
            [("file", '; filename="a.txt"', b"goal"), ("file", '; filename="b.txt"', b"bank")],
            True,
            "Too many files",
        ),
        ([(f"f{i}", "", b"x") for i in range(40)], True, "Too many fields"),
        ([("file", "", b"goal")], True, "no file field named 'file'"),
        ([("file", '; filename="a.txt"', b"goal")], False, "no file field named 'file'"),
    ],
    ids=["two files", "40 fields", "a field, not a file", "no closing boundary"],
)
def test_multipart_edge_cases_are_400(server, parts, end, message):
    status, _, body = server.request("POST", "/v1/predict", *_multipart(parts, end))
    assert message in assert_error(status, body, 400, "bad_input")["message"]


def test_a_multipart_text_with_a_bom_is_classified(server):
    body, headers = _multipart([("file", '; filename="note.txt"', "goal".encode("utf-16"))])
    status, _, answer = server.request("POST", "/v1/predict", body, headers)
    assert status == 200 and json.loads(answer)["predictions"][0]["source"] == "note.txt", answer
