"""Helpers of the serve tests: `edgetl-run serve` in a subprocess where torch cannot be imported, plain
and raw-socket requests to it, and the shared JSON error shape asserted."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
START_S = 60  # load + verify on a busy 2-core machine


def no_torch_env(fake: Path) -> dict:
    """An environment where importing torch, torchvision or timm fails (packages written under `fake`)."""
    for name in ("torch", "torchvision", "timm"):
        (fake / name).mkdir()
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this device')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(DEPLOY)])}


class Server:
    """`edgetl-run serve BUNDLE --port 0 --json` in a subprocess; `url` from its one JSON line."""

    def __init__(self, bundle: Path, env: dict, *options: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgetl_runtime.cli",
                "serve",
                str(bundle),
                "--port",
                "0",
                "--json",
                *options,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = _readline(self.proc, START_S)
        if not line:
            self.stop()
            raise AssertionError(f"server did not start: {self.proc.stderr.read()}")
        self.info = json.loads(line)
        self.host, port = self.info["url"].removeprefix("http://").split(":")
        self.port = int(port)

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 30):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def raw(self, request: bytes, timeout: float = 30) -> tuple[int, dict, bytes]:
        """Send bytes no HTTP client would; (status, headers, body) of the answer. Sent in pieces, and
        no more once the server has answered: it closes then, and bytes it never read would reset the
        connection before its answer is read."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            for start in range(0, len(request), 4096):
                if select.select([sock], [], [], 0.01)[0]:
                    break
                sock.sendall(request[start : start + 4096])
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines)
        return int(status_line.split()[1]), headers, body

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""


def assert_error(status: int, body: bytes, want_status: int, kind: str) -> dict:
    assert status == want_status, body
    data = json.loads(body)
    assert set(data) == {"error"} and set(data["error"]) == {"message", "option", "path", "kind"}, data
    assert data["error"]["kind"] == kind, data
    assert "Traceback" not in data["error"]["message"]
    return data["error"]
