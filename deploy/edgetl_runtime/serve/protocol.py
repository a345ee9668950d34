"""The HTTP connection before the app sees a request: parser errors in JSON, a deadline for the head.

uvicorn answers a request h11 cannot parse (a request line and headers over h11's buffer, a
Content-Length that is not a number, a broken request line) itself, before any app runs, in plain
text; and it waits for a request's head without end, so connections that drip their headers a byte
at a time (or send nothing) are held until the process runs out of file descriptors. This is
uvicorn's h11 protocol with that answer in JSON and a deadline for each request head; the server
pins it, so whether httptools happens to be installed does not change what a client gets.
"""

from __future__ import annotations

import asyncio
import sys
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..fileio import json_text
from .app import COMMON_HEADERS, ERROR_STATUS, ErrorKind, error_body

# h11's own default: the request line and headers together; a longer request gets 431
MAX_HEAD_BYTES = 16 * 1024
REASON_CHARS = 80  # h11's reason may quote the offending line; a client's bytes are not echoed at length


def describe_protocol_error(error: BaseException | None) -> tuple[int, dict]:
    """(status, body) for the parser's RemoteProtocolError (None when uvicorn gave no cause)."""
    if isinstance(error, h11.RemoteProtocolError) and error.error_status_hint == 431:
        kind = ErrorKind.HEADERS_TOO_LARGE
        message = (
            f"the request line and headers are over {MAX_HEAD_BYTES // 1024} KiB; "
            "send a shorter URL and fewer or smaller headers"
        )
    else:
        kind = ErrorKind.BAD_INPUT
        reason = str(error)[:REASON_CHARS] if error is not None else "unparseable"
        message = f"malformed HTTP request ({reason}); check the request line, headers and Content-Length"
    return ERROR_STATUS[kind], error_body(kind, message)


class JsonErrorProtocol(H11Protocol):
    def __init__(self, *args, head_timeout_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_head()  # the next request on this kept-alive connection has a deadline too

    def handle_events(self) -> None:
        super().handle_events()
        if not self._waiting_for_head():
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        # no request yet, so nothing to answer: closed like uvicorn closes an idle kept-alive connection
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside its `except h11.RemoteProtocolError`: the one place the cause is known
        status, body = describe_protocol_error(sys.exc_info()[1])
        payload = json_text(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
            *((k.encode(), v.encode()) for k, v in COMMON_HEADERS.items()),
        ]
        response = h11.Response(
            status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode()
        )
        for event in (response, h11.Data(data=payload), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
