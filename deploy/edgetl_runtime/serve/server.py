"""Run the app on uvicorn: listen only once the bundle is loaded, stop gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
from collections.abc import Callable

from ..bundle import bundle_sha256
from ..errors import EdgetlError
from ..fileio import print_json, sha256_file
from ..modelfile import is_model_file
from ..predictor import Predictor
from .app import ServeLimits, build_app
from .protocol import MAX_HEAD_BYTES, JsonErrorProtocol

# In-flight requests get this long to finish after SIGTERM: under the 5 s a service manager or a
# test waits, longer than one prediction on a device.
GRACE_S = 3.0


def open_listener(host: str, port: int) -> socket.socket:
    """Bind here, not in uvicorn, so a taken port is one clear error before anything is served."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise EdgetlError(
            f"--host {host}: not an address to listen on ({e}); e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise EdgetlError(
            f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(
    predictor: Predictor,
    *,
    bundle: str,
    sha256: str,
    limits: ServeLimits,
    sock: socket.socket,
    access_log: bool = False,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Serve until SIGTERM or SIGINT; returns once in-flight requests are answered (or GRACE_S passed)."""
    import uvicorn

    app = build_app(predictor, bundle=bundle, sha256=sha256, limits=limits)
    config = uvicorn.Config(
        app,
        lifespan="off",
        # a request's head must arrive within --timeout-s, as its body must
        http=functools.partial(JsonErrorProtocol, head_timeout_s=limits.timeout_s),
        ws="none",  # no WebSocket route: an upgrade request is an ordinary request here
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=GRACE_S,
        server_header=False,
    )
    server = uvicorn.Server(config)
    stopped_by: list[int] = []
    # uvicorn re-raises the stopping signal once it has shut down, to the handler found before it ran;
    # this one only notes it, so a requested stop ends with exit code 0 instead of death by SIGTERM.
    previous = {
        sig: signal.signal(sig, lambda s, _f: stopped_by.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    # uvicorn has no hook for "listening"; the socket is already bound, so ready means bound here
    on_ready()
    try:
        if not stopped_by:  # a signal that came before uvicorn took over already asked to stop
            server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        app.state.pool.close()
        sock.close()
    if stopped_by:
        print(f"edgetl-run serve: stopped by {signal.Signals(stopped_by[0]).name}", file=sys.stderr)


def serve_predictor(
    predictor: Predictor,
    bundle: str | os.PathLike,
    *,
    host: str,
    port: int,
    limits: ServeLimits,
    access_log: bool = False,
    as_json: bool = False,
) -> None:
    """`edgetl-run serve` once the bundle is verified and loaded: listen, announce, serve until stopped.

    With `as_json`, the one JSON object on stdout says where it listens (useful with --port 0).
    """
    sha256 = sha256_file(bundle) if is_model_file(bundle) else bundle_sha256(bundle)
    sock = open_listener(host, port)
    url = url_of(sock)

    def announce() -> None:
        signer = f", signed by {predictor.signer}" if predictor.signer else ""
        print(
            f"serving {bundle} ({predictor.precision} on {predictor.backend}{signer}) at {url}/ "
            f"with {limits.workers} workers; SIGTERM or Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        if as_json:
            print_json({"bundle": str(bundle), "url": url, "sha256": sha256, "signer": predictor.signer})

    run_server(
        predictor,
        bundle=str(bundle),
        sha256=sha256,
        limits=limits,
        sock=sock,
        access_log=access_log,
        on_ready=announce,
    )
