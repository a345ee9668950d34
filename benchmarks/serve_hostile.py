"""`edgetl-run serve` under hostile load on loopback: is its memory bounded?

Starts the server on a bundle (127.0.0.1, --port 0) and samples its resident memory (psutil, every
20 ms, and the kernel's high-water mark VmHWM at the end of each phase) through:

1. warm-up: 20 ordinary requests, one at a time;
2. a burst: --burst concurrent requests at once, each one connection with a --body-kb body (a text
   bundle gets one long line of words, far past what the model reads; an image bundle the image
   given); the queue admits workers + queue of them, the rest get 503;
3. slow connections: --slow connections that send their head and then drip their body a byte every
   0.5 s, and half as many again that drip their head; bodies must arrive within --timeout-s (408),
   heads too (closed); a probe request every 0.5 s meanwhile says whether the server still answers.

Every loop is bounded in count and time; traffic goes to 127.0.0.1 only.

    uv run --frozen python benchmarks/serve_hostile.py --bundle text.tar.gz \\
        --out benchmarks/results/serve_hostile.json
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from bench_serve import Served

TEXT = b"the late goal won the match and the bank raised its price "


class Sampler:
    """The server's RSS every 20 ms while running; `peak_mb` over the samples since `reset`."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def reset(self) -> None:
        self.samples = []

    def peak_mb(self) -> float:
        return round(max(self.samples, default=0) / 2**20, 1)

    def hwm_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0


def post(host: str, port: int, body: bytes, media: str, timeout: float = 60) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/predict?top_k=1", body=body, headers={"Content-Type": media})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError as e:
        return -(getattr(e, "errno", None) or 1)  # a refused or reset connection, by errno
    finally:
        conn.close()


def burst(host: str, port: int, n: int, body: bytes, media: str) -> dict:
    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(lambda _: post(host, port, body, media), range(n), timeout=600))
    return dict(sorted(collections.Counter(map(str, statuses)).items()))


def slow_connections(host: str, port: int, n: int, media: str, timeout_s: float) -> dict:
    """n body drips and n // 2 head drips, for at most 3 x timeout_s; what each got, and the probes."""
    body_socks, head_socks = [], []
    for i in range(n + n // 2):
        sock = socket.create_connection((host, port), timeout=10)
        if i < n:
            sock.sendall(
                f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {media}\r\nContent-Length: 1000000\r\n\r\n".encode()
            )
            body_socks.append(sock)
        else:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
            head_socks.append(sock)
    probes, open_socks, deadline = [], set(body_socks + head_socks), time.monotonic() + 3 * timeout_s
    while open_socks and time.monotonic() < deadline:
        for sock in list(open_socks):
            try:
                sock.send(b"x")
            except OSError:
                open_socks.discard(sock)
        probes.append(post(host, port, TEXT, media, timeout=10) if media == "text/plain" else 0)
        time.sleep(0.5)
    answers = collections.Counter()
    for sock in body_socks + head_socks:
        kind = "body" if sock in body_socks else "head"
        sock.settimeout(2)
        try:
            first = sock.recv(64)
            answers[f"{kind}: " + (first.split(b" ")[1].decode() if first else "closed")] += 1
        except OSError:
            answers[f"{kind}: {'still open' if sock in open_socks else 'reset'}"] += 1
        sock.close()
    return {"answers": dict(sorted(answers.items())), "probes": dict(collections.Counter(map(str, probes)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--image", type=Path, help="the body for an image bundle")
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--body-kb", type=int, default=1024)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    media, body = ("image/png", args.image.read_bytes()) if args.image else ("text/plain", b"")
    if not args.image:
        body = (TEXT * (args.body_kb * 1024 // len(TEXT) + 1))[: args.body_kb * 1024]
    options = ("--queue", "16", "--timeout-s", str(args.timeout_s))
    load_before = os.getloadavg()
    served = Served(args.bundle, 2, options)
    proc, host, port = served.proc, served.host, served.port
    sampler = Sampler(proc.pid)
    try:
        warm = [post(host, port, TEXT if not args.image else body, media) for _ in range(20)]
        idle = {"rss_mb": sampler.peak_mb(), "statuses": dict(collections.Counter(map(str, warm)))}
        sampler.reset()
        burst_statuses = burst(host, port, args.burst, body, media)
        burst_row = {"peak_rss_mb": sampler.peak_mb(), "statuses": burst_statuses}
        sampler.reset()
        slow = slow_connections(host, port, args.slow, media, args.timeout_s)
        slow_row = {"peak_rss_mb": sampler.peak_mb(), **slow}
        hwm = sampler.hwm_mb()
        after = post(host, port, TEXT if not args.image else body, media)
    finally:
        sampler.running = False
        proc.terminate()
        code = proc.wait(timeout=30)
    result = {
        "bundle": str(args.bundle),
        "server": f"edgetl-run serve --workers 2 {' '.join(options)} (127.0.0.1)",
        "cpus": os.cpu_count(),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "rss": "psutil.Process.memory_info().rss every 20 ms; VmHWM from /proc/PID/status at the end",
        "warm_up": idle,
        f"burst_{args.burst}_concurrent_{args.body_kb}kb": burst_row,
        f"slow_{args.slow}_body_drips_{args.slow // 2}_head_drips": slow_row,
        "vm_hwm_mb": hwm,
        "answered_after": after,
        "exit_code_after_sigterm": code,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
