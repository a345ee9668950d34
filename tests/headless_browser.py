"""Headless Chromium driven over the DevTools protocol on a pipe, stdlib only (test_serve's page test)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from pathlib import Path

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
CHROMIUM_FLAGS = (
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
)


class BrowserError(Exception):
    pass


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4): stdlib only."""

    def __init__(self, url: str, profile: str) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", url]
        remap = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", remap, CHROMIUM, *flags],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id = b"", 0

    def call(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60
    ) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                assert time.monotonic() < deadline, f"no answer to {method} within {timeout} s"
                ready, _, _ = select.select([self._in], [], [], 1)
                if ready:
                    chunk = os.read(self._in, 1 << 16)
                    assert chunk, "the browser closed its pipe"
                    self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply["result"]

    def attach_page(self, deadline: float) -> str:
        """A session on the browser's first page, once it has one (before `deadline`, monotonic)."""
        while not (
            pages := [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        ):
            assert time.monotonic() < deadline, "Chromium opened no page"
            time.sleep(0.2)
        target = {"targetId": pages[0]["targetId"], "flatten": True}
        return self.call("Target.attachToTarget", target)["sessionId"]

    def wait_loaded(self, session: str, url: str, deadline: float) -> None:
        """Until `url` has loaded (the first document is about:blank: evaluate only in the page)."""
        loaded = {"expression": "location.href + ' ' + document.readyState", "returnByValue": True}
        while True:
            with contextlib.suppress(BrowserError):
                if self.call("Runtime.evaluate", loaded, session)["result"]["value"] == f"{url} complete":
                    return
            assert time.monotonic() < deadline, f"{url} did not load in time"
            time.sleep(0.2)

    def close(self) -> None:
        with contextlib.suppress(OSError, AssertionError, BrowserError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._out)
        os.close(self._in)


# Waits for the page's own script to load /v1/info, picks a photo the way the file input does, and
# waits for the top-k list: the path a phone user takes, in the page's own code.
UPLOAD_JS = """
(async (b64) => {
  const until = async (test) => {
    for (let i = 0; i < 400 && !test(); i++) await new Promise((r) => setTimeout(r, 50));
    return test();
  };
  await until(() => document.querySelector("#info dd"));
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  choose(new File([bytes], "digit.png", { type: "image/png" }));
  await until(() => document.querySelector("#results li") || document.querySelector("#status.error"));
  return {
    model: document.getElementById("model").textContent,
    status: document.getElementById("status").textContent,
    results: [...document.querySelectorAll("#results li")].map((li) => li.textContent),
    width: document.documentElement.scrollWidth,
  };
})
"""
