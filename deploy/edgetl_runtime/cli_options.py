"""What each `edgetl-run` command accepts: its arguments, options, defaults and help texts (cli.py
builds the parser from these and runs the command)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from .errors import EXIT_CODES_HELP
from .modelinfo import Precision

EPILOG = (
    """\
examples:
  edgetl-run predict bundle.tar.gz photo.jpg images/ --top-k 3
  edgetl-run predict bundle/ images/ --json
  edgetl-run info bundle.tar.gz
  edgetl-run bench bundle.tar.gz --backend onnxruntime-cpu --batch-size 1
  edgetl-run predict bundle.tar.gz images/ --trust release.pub   # refuse unsigned/foreign bundles
  edgetl-run predict model.onnx photo.jpg       # a single model file with edgetl metadata
  edgetl-run serve bundle.tar.gz --port 8080    # HTTP API + page on localhost (pip install edgetl-runtime[serve])

trusted keys: --trust KEY.pub (repeatable; a file may hold several keys) or EDGETL_TRUSTED_KEYS=a.pub:b.pub
"""
    + EXIT_CODES_HELP
    + "\n"
)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "bundle",
        type=Path,
        help="bundle folder or .tar.gz from `edgetl package`, or an .onnx with edgetl metadata",
    )
    p.add_argument(
        "--backend", default="auto", help="inference backend (default: auto), e.g. onnxruntime-cpu"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *(p.value for p in Precision)],
        help="model file to use",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backend's)")
    add_bundle_options(p)


def add_bundle_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust",
        action="append",
        metavar="KEY.pub",
        help="public key(s) a bundle must be signed with (else EDGETL_TRUSTED_KEYS; none: signatures unchecked)",
    )
    p.add_argument(
        "--max-bundle-mb",
        type=int,
        default=2048,
        help="largest bundle an archive may unpack to, in MiB (default 2048)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_predict_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument(
        "images",
        nargs="*",
        metavar="INPUT",
        help="image files and/or folders; for a text model also texts themselves, .txt files, "
        "folders of .txt files, and - (stdin, one text per line)",
    )
    p.add_argument(
        "--lines",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="text models: a file holding one text per line (repeatable)",
    )
    p.add_argument("--top-k", type=int, default=5, help="classes to list per image (default 5)")
    p.add_argument("--batch-size", type=int, default=None, help="images per model call (default 8)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image (width x height) to decode; larger ones are per-file errors (default 89478485)",
    )


def add_info_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder or .tar.gz, or an .onnx with edgetl metadata")
    add_bundle_options(p)


def add_bench_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--batch-size", type=int, default=1, help="batch size to time (default 1)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="untimed warm-up seconds (default 1)")
    p.add_argument("--min-s", type=float, default=3.0, help="minimum timed seconds (default 3)")
    p.add_argument("--min-runs", type=int, default=30, help="minimum timed runs (default 30)")


def add_serve_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this device only)"
    )
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--workers", type=int, default=None, help="predictions run at once, threads (default: CPUs)"
    )
    p.add_argument(
        "--queue", type=int, default=16, help="requests that may wait beyond those; more get 503 (default 16)"
    )
    p.add_argument(
        "--max-body-mb", type=int, default=16, help="largest request body in MiB; larger get 413 (default 16)"
    )
    p.add_argument(
        "--timeout-s", type=float, default=30.0, help="per-request time limit in seconds (default 30)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image (width x height) to decode; larger ones get 400 (default 89478485)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")


class VersionAction(argparse.Action):
    """--version, looked up only when asked: importlib.metadata costs every cold predict ~40 ms."""

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        from . import __version__

        print(f"edgetl-runtime {__version__}")
        parser.exit()
