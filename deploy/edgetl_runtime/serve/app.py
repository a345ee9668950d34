"""The HTTP API of `edgetl-run serve` (starlette): routes, request limits and the one error shape.

Every error a client can cause or meet is {"error": {"message", "option", "path", "kind"}}, the shape
`edgetl-run --json` prints, with the HTTP status from ERROR_STATUS; nothing else (no traceback, no
HTML error page) ever leaves the server.
"""

from __future__ import annotations

import hashlib
import re
import time
from base64 import b64encode
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from importlib.resources import files

import anyio
from python_multipart.multipart import parse_options_header
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import TextError, error_fields
from ..fileio import json_text
from ..inputs import TextInput
from ..modality import Modality
from ..predictor import Predictor, summarize_predictions
from ..preprocess import EncodedImage
from ..textinput import MAX_TEXT_BYTES, decode_bytes, decode_declared
from .inference import InferencePool, Overloaded
from .metrics import ServeMetrics


class ErrorKind(str, Enum):
    BAD_INPUT = "bad_input"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"  # the client sent its body too slowly
    TOO_LARGE = "too_large"
    HEADERS_TOO_LARGE = "headers_too_large"  # request line and headers over the HTTP parser's buffer
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"  # the prediction did not finish within --timeout-s
    CRASH = "crash"  # a bug: the message says so, the traceback stays in the server's log


ERROR_STATUS = {
    ErrorKind.BAD_INPUT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.METHOD_NOT_ALLOWED: 405,
    ErrorKind.REQUEST_TIMEOUT: 408,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.HEADERS_TOO_LARGE: 431,
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.TIMEOUT: 503,
    ErrorKind.CRASH: 500,
}
# starlette's own HTTPExceptions (routing) in our terms
HTTP_KINDS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}


def _text_upload(name: str, body: bytes, charset: str | None) -> TextInput:
    # read as far as a text file is read in training; the tokenizer caps what it takes of that again
    start, complete = body[:MAX_TEXT_BYTES], len(body) <= MAX_TEXT_BYTES
    try:
        if charset:
            text = decode_declared(start, name, charset, complete=complete)
        else:
            text, _ = decode_bytes(start, name, complete=complete)
    except TextError as e:
        raise ServeError(ErrorKind.BAD_INPUT, str(e)) from None
    if not text.strip():
        raise ServeError(ErrorKind.BAD_INPUT, "an empty text: nothing to classify")
    return TextInput(name, text)


@dataclass(frozen=True)
class Upload:
    """What one model's POST /v1/predict takes: raw body media types, and the body as an input."""

    raw: re.Pattern
    hint: str
    item: Callable[[str, bytes, str | None], EncodedImage | TextInput]  # name, body, declared charset


UPLOADS: dict[Modality, Upload] = {
    Modality.IMAGE: Upload(
        re.compile(r"^image/[a-z0-9.+-]+$"),
        "the image as the raw body with Content-Type image/* (e.g. image/jpeg)",
        lambda name, body, _charset: EncodedImage(name, body),
    ),
    Modality.TEXT: Upload(
        re.compile(r"^text/plain$"),
        "the text as the raw body with Content-Type text/plain (UTF-8)",
        _text_upload,
    ),
}
COMMON_HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-store"}


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 16 << 20
    timeout_s: float = 30.0
    workers: int = 2
    queue: int = 16
    retry_after_s: int = 1


class ServeError(Exception):
    def __init__(self, kind: ErrorKind, message: str, *, option: str | None = None, headers=None) -> None:
        super().__init__(message)
        self.kind = kind
        self.option = option
        self.headers = headers or {}


def error_body(kind: ErrorKind, message: str, option=None, path=None) -> dict:
    """The shared error shape; its HTTP status is ERROR_STATUS[kind]."""
    return {"error": {**error_fields(message, option, path), "kind": kind.value}}


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        json_text(body), status, {**COMMON_HEADERS, **(headers or {})}, media_type="application/json"
    )


# top_k past the number of classes is all of them; six digits bound int() and the echo of a bad value
TOP_K = re.compile(r"[0-9]{1,6}")
PREDICT_QUERY = ("top_k",)


def _query_top_k(request: Request) -> int:
    """The one query parameter of POST /v1/predict; anything else in the query is refused by name."""
    params = request.query_params
    for name in params:
        if name not in PREDICT_QUERY:
            raise ServeError(
                ErrorKind.BAD_INPUT,
                f"unknown query parameter {name[:64]!r}; POST /v1/predict takes only {', '.join(PREDICT_QUERY)}",
                option=name[:64],
            )
    values = params.getlist("top_k") or ["5"]
    raw = values[0]
    if len(values) > 1 or not TOP_K.fullmatch(raw) or int(raw) < 1:
        shown = raw[:16] + ("..." if len(raw) > 16 else "")
        raise ServeError(
            ErrorKind.BAD_INPUT,
            f"top_k must be given once, as a whole number from 1 to 999999 in ASCII digits, got {shown!r}"
            + (f" and {len(values) - 1} more" if len(values) > 1 else ""),
            option="top_k",
        )
    return int(raw)


def _media_type(request: Request, upload: Upload) -> str:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data" and not upload.raw.match(media):
        raise ServeError(
            ErrorKind.UNSUPPORTED_MEDIA_TYPE,
            f"content type {media or '(none)'!r} is not accepted: send {upload.hint}, "
            "or as multipart/form-data field 'file'",
        )
    return media


def _too_large(cap: int) -> ServeError:
    return ServeError(
        ErrorKind.TOO_LARGE,
        f"request body is over the limit of {cap} bytes ({cap / (1 << 20):g} MiB); send a smaller image "
        "or start the server with a larger --max-body-mb",
        option="--max-body-mb",
    )


def _check_length(request: Request, cap: int) -> None:
    """Refuse a declared over-size body before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise ServeError(ErrorKind.BAD_INPUT, f"Content-Length {declared!r} is not a number")
    if int(declared) > cap:
        raise _too_large(cap)


async def _read_body(request: Request, cap: int) -> bytes:
    """The body, counted as it streams in: a chunked or lying client is stopped at the cap too."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploaded_file(request: Request, body: bytes, kind: Upload) -> EncodedImage | TextInput:
    async def once():
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=16).parse()
    except MultiPartException as e:
        raise ServeError(ErrorKind.BAD_INPUT, f"malformed multipart body ({e.message})") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ServeError(ErrorKind.BAD_INPUT, "multipart body has no file field named 'file'")
        return kind.item(
            upload.filename or "file", await upload.read(), _parse_charset(upload.headers.get("content-type"))
        )
    finally:
        await form.close()


async def _read_input(request: Request, media: str, cap: int, upload: Upload) -> EncodedImage | TextInput:
    body = await _read_body(request, cap)
    if media == "multipart/form-data":
        return await _uploaded_file(request, body, upload)
    return upload.item("upload", body, _parse_charset(request.headers.get("content-type")))


def _parse_charset(content_type: str | None) -> str | None:
    charset = parse_options_header(content_type)[1].get(b"charset")
    return charset.decode("latin-1") if charset else None


def describe_service(bundle: str, predictor: Predictor, sha256: str, limits: ServeLimits) -> dict:
    """GET /v1/info: what is served and under which limits."""
    from .. import __version__

    manifest = predictor.manifest
    return {
        "bundle": bundle,
        "sha256": sha256,
        "verified": manifest is not None,  # a bundle's files were checked against its manifest
        "signer": predictor.signer,
        "name": manifest.name if manifest else predictor.model,
        "created": manifest.created if manifest else None,
        **predictor.describe(),
        "metrics": dict(manifest.metrics) if manifest else {},
        "limits": asdict(limits),
        "runtime": f"edgetl-runtime {__version__}",
    }


def _csp_hash(page: str, tag: str) -> str:
    block = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S)
    if block is None:
        return "'none'"
    return "'sha256-" + b64encode(hashlib.sha256(block.group(1).encode()).digest()).decode() + "'"


def page_response_headers(page: str) -> dict:
    """The page may run its own inline script and style and talk to this server, nothing else."""
    csp = (
        f"default-src 'none'; script-src {_csp_hash(page, 'script')}; style-src {_csp_hash(page, 'style')}; "
        "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {**COMMON_HEADERS, "content-security-policy": csp}


class CountRequests:
    """ASGI middleware: edgetl_requests by route and status (unknown paths as one "other" route)."""

    def __init__(self, app, metrics: ServeMetrics, routes: frozenset[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering

        async def counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests.labels(route, str(status)).inc()


def build_app(
    predictor: Predictor,
    *,
    bundle: str,
    sha256: str,
    limits: ServeLimits,
    metrics: ServeMetrics | None = None,
) -> Starlette:
    metrics = metrics or ServeMetrics()
    pool = InferencePool(predictor, workers=limits.workers, queue=limits.queue, metrics=metrics)
    info = describe_service(bundle, predictor, sha256, limits)
    upload = UPLOADS[predictor.modality]
    page = files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    page_headers = page_response_headers(page)

    def error_response(kind: ErrorKind, message: str, option=None, path=None, headers=None) -> Response:
        metrics.errors.labels(kind.value).inc()
        return json_response(error_body(kind, message, option, path), ERROR_STATUS[kind], headers)

    async def on_serve_error(request: Request, e: ServeError) -> Response:
        return error_response(e.kind, str(e), e.option, headers=e.headers)

    async def on_http_error(request: Request, e: HTTPException) -> Response:
        kind = HTTP_KINDS.get(e.status_code, ErrorKind.BAD_INPUT)
        allow = {k.lower(): v for k, v in (e.headers or {}).items() if k.lower() == "allow"}
        message = f"{request.method} {request.url.path}: {e.detail}"
        if kind is ErrorKind.NOT_FOUND:
            message += "; the API is POST /v1/predict, GET /v1/info, /healthz, /metrics and the page at /"
        return error_response(kind, message, headers=allow)

    async def on_crash(request: Request, e: Exception) -> Response:
        # the traceback goes to the server's log (uvicorn prints it), never to the client
        return error_response(
            ErrorKind.CRASH, f"internal error ({type(e).__name__}); this is a bug, please report it"
        )

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        top_k = _query_top_k(request)
        media = _media_type(request, upload)
        _check_length(request, limits.max_body_bytes)
        reading = True
        try:
            with pool.admit() as slot, anyio.fail_after(limits.timeout_s):
                item = await _read_input(request, media, limits.max_body_bytes, upload)
                reading = False
                outcome = await slot.run(item, top_k)
        except Overloaded:
            raise ServeError(
                ErrorKind.OVERLOADED,
                f"server busy: {pool.capacity} requests already queued or running; retry shortly",
                option="--queue",
                headers={"retry-after": str(limits.retry_after_s)},
            ) from None
        except TimeoutError:
            kind, what = (
                (ErrorKind.REQUEST_TIMEOUT, "the request body did not arrive")
                if reading
                else (ErrorKind.TIMEOUT, "the prediction did not finish")
            )
            raise ServeError(
                kind,
                f"{what} within {limits.timeout_s:g} s; retry (the server may be overloaded)",
                option="--timeout-s",
                headers={"retry-after": str(limits.retry_after_s)},
            ) from None
        result = outcome.prediction
        if not result.ok:
            return error_response(ErrorKind.BAD_INPUT, result.error, path=result.source)
        metrics.request_seconds.observe(time.perf_counter() - started)
        timing = (
            f"preprocess;dur={outcome.preprocess_s * 1e3:.2f}, inference;dur={outcome.inference_s * 1e3:.2f}"
        )
        return json_response(
            summarize_predictions(bundle, predictor, [result]), headers={"server-timing": timing}
        )

    async def describe(request: Request) -> Response:
        return json_response(info)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), headers=COMMON_HEADERS, media_type=metrics.content_type)

    async def index(request: Request) -> Response:
        return Response(page, headers=page_headers, media_type="text/html")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v1/info", describe, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(CountRequests, metrics=metrics, routes=frozenset(r.path for r in routes))],
        exception_handlers={ServeError: on_serve_error, HTTPException: on_http_error, Exception: on_crash},
    )
    app.state.pool = pool
    return app
