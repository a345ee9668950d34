"""`edgetl-run serve` under load on loopback, against the same model in a plain Python loop.

Figures (one JSON object, also a table on stderr):

- plain loop: `Predictor.predict` on one in-memory image file at a time (decode, preprocess, one model
  call: the work a request does), its throughput and p50/p99; the same at batch 8, and with 2 and 4
  threads sharing the session, to show whether micro-batching concurrent requests would pay;
- server: throughput and p50/p99 per request for 1, 4 and 16 concurrent clients (keep-alive
  connections, raw image bodies), each level bounded by --requests and --max-s;
- the server's resident memory (VmRSS) after warm-up and after --rss-requests more requests;
- the overhead the server adds per request: round trip minus the server's own preprocess + inference
  time of that same request (its Server-Timing header), p50 at 1 client. Being per request, it holds
  on a busy machine, where the server-vs-plain-loop difference of p50s (also given) drifts with load.

Loopback only (127.0.0.1); the clients share the machine with the server, so on a small machine
they take CPU from it: the figures are what a device serving itself and its neighbours would see.

    uv run --frozen python benchmarks/bench_serve.py --out benchmarks/results/serve_loopback.json
    uv run --frozen python benchmarks/bench_serve.py --bundle b.tar.gz --images ../shared/data/imagenet-dev

Without --bundle, one is built with edgetl's own pipeline (224 px efficientnet_lite0, 1 frozen epoch
on generated digits, INT8 minmax) in a temporary folder. Without --images, real photos from
../shared/data/imagenet-dev are used when present, else the generated digits (224 px PNG).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = ROOT / ".." / "shared" / "data" / "imagenet-dev"
SUFFIXES = {".jpg", ".jpeg", ".png"}


def run_quiet(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)


def build_bundle(work: Path, size: int) -> tuple[Path, Path]:
    """edgetl's own pipeline: data -> train (1 frozen epoch) -> export -> quantize -> package."""
    from edgetl.data.samples import write_digits_imagefolder

    data = write_digits_imagefolder(work / "data", size=size, classes=3, per_class=12, val_fraction=0.25)
    edgetl = [sys.executable, "-m", "edgetl"]
    run_quiet(
        *edgetl, "train", "--data", str(data), "--out", str(work / "run"), "--frozen-epochs", "1",
        "--epochs", "0", "--no-hflip", "--device", "cpu", "--image-size", str(size), "--json",
    )  # fmt: skip
    run_quiet(*edgetl, "export", str(work / "run"), "--json")
    run_quiet(
        *edgetl, "quantize", str(work / "run"), "--method", "minmax", "--num-calibration", "12",
        "--allow-drop", "--json",
    )  # fmt: skip
    run_quiet(*edgetl, "package", str(work / "run"), "--out", str(work / "bundle.tar.gz"), "--json")
    return work / "bundle.tar.gz", data / "val"


def load_images(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)[:limit]
    if not paths:
        raise SystemExit(f"--images {folder}: no .jpg/.png images there")
    return [("image/png" if p.suffix.lower() == ".png" else "image/jpeg", p.read_bytes()) for p in paths]


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {"p50_ms": round(pick(0.5), 2), "p99_ms": round(pick(0.99), 2), "n": len(ordered)}


def plain_loop(bundle: Path, images: list[tuple[str, bytes]], requests: int, max_s: float) -> dict:
    """The same work as one request, with no server: the floor the server is measured against."""
    from edgetl_runtime.predictor import Predictor
    from edgetl_runtime.preprocess import EncodedImage

    predictor = Predictor.from_bundle(bundle)
    items = [EncodedImage(f"img{i}", data) for i, (_, data) in enumerate(images)]
    predictor.predict(items[:8])  # warm-up

    def loop(count: int, batch: int, start: int = 0) -> list[float]:
        times, deadline = [], time.monotonic() + max_s
        for i in range(count):
            chunk = [items[(start + i * batch + j) % len(items)] for j in range(batch)]
            t = time.perf_counter()
            predictor.predict(chunk, batch_size=batch)
            times.append(time.perf_counter() - t)
            if time.monotonic() > deadline:
                break
        return times

    rows = {}
    for label, batch, threads in (
        ("batch1", 1, 1),
        ("batch8", 8, 1),
        ("batch1_2threads", 1, 2),
        ("batch1_4threads", 1, 4),
    ):
        count = max(1, requests // batch // threads)
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            samples = [
                s
                for part in pool.map(
                    loop, [count] * threads, [batch] * threads, [t * 7 for t in range(threads)]
                )
                for s in part
            ]
        elapsed = time.perf_counter() - started
        rows[label] = {"img_per_s": round(len(samples) * batch / elapsed, 1), **percentiles(samples)}
    return rows


class Served:
    def __init__(
        self,
        bundle: Path,
        workers: int | None,
        options: tuple[str, ...] = ("--queue", "64"),
        launcher: tuple[str, ...] = ("-m", "edgetl_runtime.cli"),  # profile_runtime.py runs it under cProfile
    ) -> None:
        serve = ("serve", str(bundle), "--port", "0", "--json", *options)
        command = [sys.executable, *launcher, *serve]
        if workers:
            command += ["--workers", str(workers)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        if not line or not line[0].strip():
            self.proc.kill()
            raise SystemExit("the server did not start within 120 s")
        host, port = json.loads(line[0])["url"].removeprefix("http://").split(":")
        self.host, self.port = host, int(port)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def load(self, images: list[tuple[str, bytes]], clients: int, requests: int, max_s: float) -> dict:
        """`clients` keep-alive connections sending until `requests` are answered or max_s passes."""
        counter = iter(range(requests))
        lock = threading.Lock()
        deadline = time.monotonic() + max_s
        failures, outside = [], []

        def client(n: int) -> list[float]:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            conn.connect()
            # as curl, browsers and urllib3 do: without it http.client's separate header and body
            # writes meet Nagle + delayed ACK and each request waits tens of ms for nothing
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                kind, body = images[(i + n) % len(images)]
                t = time.perf_counter()
                conn.request("POST", "/v1/predict?top_k=1", body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                response.read()
                times.append(time.perf_counter() - t)
                # the same request's own preprocess + inference, as the server timed them
                spent = response.getheader("server-timing", "")
                inside = sum(float(part.split("dur=")[1]) for part in spent.split(",") if "dur=" in part)
                outside.append(times[-1] - inside / 1e3)
                if response.status != 200:
                    failures.append(response.status)
            conn.close()
            return times

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            samples = [s for part in pool.map(client, range(clients)) for s in part]
        elapsed = time.perf_counter() - started
        return {
            "clients": clients,
            "req_per_s": round(len(samples) / elapsed, 1),
            **percentiles(samples),
            "failures": len(failures),
            "outside_model_p50_ms": percentiles(outside)["p50_ms"] if outside else None,
        }

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=30)


def machine_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: build a 224 px one)")
    parser.add_argument(
        "--images", type=Path, help="images to send (default: imagenet-dev, else generated digits)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="input size of the built bundle")
    parser.add_argument(
        "--requests", type=int, default=400, help="requests per concurrency level (default 400)"
    )
    parser.add_argument("--max-s", type=float, default=60, help="time bound per level, seconds (default 60)")
    parser.add_argument(
        "--rss-requests", type=int, default=5000, help="requests between the two RSS readings"
    )
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers (default: the server's)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        bundle, images_dir = args.bundle, args.images
        if bundle is None:
            print(
                "building a bundle with edgetl (train 1 frozen epoch, export, quantize, package)...",
                file=sys.stderr,
            )
            bundle, digits = build_bundle(Path(tmp), args.image_size)
            images_dir = images_dir or (IMAGENET if IMAGENET.is_dir() else digits)
        images_dir = images_dir or (IMAGENET if IMAGENET.is_dir() else None)
        if images_dir is None:
            raise SystemExit("give --images DIR (../shared/data/imagenet-dev is absent)")
        images = load_images(images_dir, 64)
        load_before = machine_load()
        plain = plain_loop(bundle, images, args.requests, args.max_s)
        server = Served(bundle, args.workers)
        try:
            server.load(images, 4, 64, args.max_s)  # warm-up
            levels = [server.load(images, int(c), args.requests, args.max_s) for c in args.clients.split(",")]
            rss_before = server.rss_mb()
            soak = server.load(images, 4, args.rss_requests, max(args.max_s, 300))
            rss_after = server.rss_mb()
        finally:
            code = server.stop()
    one_client = next((row for row in levels if row["clients"] == 1), levels[0])
    result = {
        "bundle": str(args.bundle or f"built: efficientnet_lite0 {args.image_size} px, 3 classes, INT8"),
        "images": f"{images_dir} ({len(images)} files, sent round-robin)",
        "cpus": os.cpu_count(),
        "load_average_before_after": [load_before, machine_load()],
        "plain_loop": plain,
        "server": levels,
        "rss_mb": {
            "after_warmup": rss_before,
            "after_more_requests": rss_after,
            "requests": soak["n"],
            "failures": soak["failures"],
        },
        "overhead_ms_per_request_p50": one_client["outside_model_p50_ms"],
        "server_minus_plain_p50_ms": round(one_client["p50_ms"] - plain["batch1"]["p50_ms"], 2),
        "server_exit_code": code,
    }
    for name, row in plain.items():
        print(
            f"plain {name:16s} {row['img_per_s']:7.1f} img/s  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms",
            file=sys.stderr,
        )
    for row in levels:
        print(
            f"serve {row['clients']:2d} clients       {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.2f} ms  "
            f"p99 {row['p99_ms']:7.2f} ms  ({row['n']} requests, {row['failures']} failed)",
            file=sys.stderr,
        )
    print(
        f"RSS {rss_before} MB -> {rss_after} MB over {soak['n']} requests; overhead "
        f"{result['overhead_ms_per_request_p50']} ms/request (p50); load {result['load_average_before_after']}",
        file=sys.stderr,
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
