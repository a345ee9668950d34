"""`edgetl-run`: classify images, describe and time a bundle on the device (argparse: no extra deps).

Exit codes (errors.py, shared with `edgetl`): 0 success; 1 nothing could run (bundle refused, backend
unavailable, no images); 2 bad usage; 3 some inputs were unreadable (the others were classified and
printed); 70 an internal error (a bug). With --json, stdout holds exactly one JSON object, also on
failure: {"error": {"message", "option", "path", "kind"}}.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .cli_options import (
    EPILOG,
    VersionAction,
    add_bench_options,
    add_info_options,
    add_predict_options,
    add_serve_options,
)
from .errors import EXIT_ERROR, EXIT_PARTIAL, EXIT_USAGE, EdgetlError
from .fileio import print_json, report_crash, report_error

EXIT_SOME_INPUTS_FAILED = EXIT_PARTIAL
MAX_TIMED_S = 3600.0  # bench --warmup-s / --min-s: an hour; larger values are typos, not plans
POOL = 4  # distinct random inputs bench cycles through


class _UsageError(EdgetlError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that lets main() report usage errors in the shared shape instead of exiting itself."""

    def error(self, message: str):
        named = re.search(r"argument (--[a-z0-9-]+)", message)
        raise _UsageError(f"{self.prog}: {message}", option=named.group(1) if named else None)


def _load_options(args: argparse.Namespace) -> dict:
    """Trust and size limits shared by every command that opens a bundle."""
    from .preprocess import set_max_pixels
    from .signing import trusted_keys_from

    if getattr(args, "max_pixels", None) is not None:
        set_max_pixels(args.max_pixels)
    return {"trusted": trusted_keys_from(args.trust), "max_bytes": args.max_bundle_mb << 20}


def _expand(predictor, arguments: Sequence[str], lines: Sequence[Path]) -> list:
    """Inputs as the model's kind reads arguments (files as given, folders as their files, sorted;
    for text anything that is not a path is the text itself), then the lines of --lines files and of
    stdin ("-")."""
    from .inputs import TextInput
    from .modality import Modality
    from .preprocess import EncodedImage

    items: list = []
    for argument in arguments:
        if argument == "-" and predictor.modality is Modality.TEXT:
            items += _lines(sys.stdin.read(), "stdin")
            continue
        if argument == "-":  # an image model reads one image's bytes
            items.append(EncodedImage("stdin", sys.stdin.buffer.read()))
            continue
        found = predictor.kind.from_argument(argument)
        if not found and Path(argument).is_dir():
            print(f"warning: {argument}: no {predictor.kind.noun} files in this folder", file=sys.stderr)
        items.extend(found)
    for path in lines:
        from .textinput import read_text

        items += _lines(read_text(path)[0], str(path))
    return [i for i in items if not isinstance(i, TextInput) or i.text.strip()]


def _lines(text: str, source: str) -> list:
    from .inputs import TextInput

    # lines end at "\n" (and "\r\n"): str.splitlines() would also cut a text at U+2028 or U+0085
    lines = text.split("\n")
    return [
        TextInput(f"{source}:{n}", line.removesuffix("\r")) for n, line in enumerate(lines, 1) if line.strip()
    ]


def _is_model_file(path: Path) -> bool:
    """A single model file (.onnx, OpenVINO .xml) with edgetl metadata stands in for a bundle (no manifest
    to verify)."""
    from .modelfile import is_model_file

    return is_model_file(path)


def _load(args: argparse.Namespace):
    from .predictor import Predictor

    options = _load_options(args)
    if not _is_model_file(args.bundle):
        return Predictor.from_bundle(
            args.bundle, backend=args.backend, precision=args.precision, threads=args.threads, **options
        )
    if options["trusted"]:
        raise EdgetlError(
            f"{args.bundle}: a single model file carries no signature, and a trusted key is configured; "
            "give a signed bundle (edgetl package --sign)"
        )
    predictor = Predictor.from_model(args.bundle, backend=args.backend, threads=args.threads)
    if args.precision not in ("auto", predictor.precision):
        raise EdgetlError(
            f"--precision {args.precision}: {args.bundle} is a {predictor.precision} model; drop --precision"
        )
    return predictor


def cmd_predict(args: argparse.Namespace) -> int:
    from .modality import Modality
    from .predictor import summarize_predictions

    predictor = _load(args)
    if args.lines and predictor.modality is not Modality.TEXT:
        raise EdgetlError(
            f"--lines: {args.bundle} classifies {predictor.kind.noun}s; --lines is for text models"
        )
    paths = _expand(predictor, args.images, args.lines)
    if not paths:
        noun = predictor.kind.noun
        raise EdgetlError(f"no {noun}s to classify: give {noun} files or folders that contain them")
    results = predictor.predict(paths, top_k=args.top_k, batch_size=args.batch_size)
    failed = [r for r in results if not r.ok]
    if args.json:
        print_json(summarize_predictions(str(args.bundle), predictor, results))
    else:
        for r in results:
            if r.ok:
                others = ", ".join(f"{lb} {s:.3f}" for lb, _, s in r.top_k[1:])
                print(f"{r.source}\t{r.label}\t{r.score:.3f}" + (f"\t({others})" if others else ""))
        for r in failed:
            print(f"error: {r.error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} inputs could not be read (see errors)", file=sys.stderr)
        return EXIT_SOME_INPUTS_FAILED
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve.app import ServeLimits
        from .serve.server import serve_predictor
    except ImportError as e:
        raise EdgetlError(
            f"serve needs the serve extra ({e.name} is missing): pip install 'edgetl-runtime[serve]'"
        ) from None
    limits = ServeLimits(
        max_body_bytes=args.max_body_mb << 20,
        timeout_s=args.timeout_s,
        workers=args.workers or os.cpu_count() or 1,
        queue=args.queue,
    )
    predictor = _load(args)  # hashes and the signature are checked here, before the port opens
    serve_predictor(
        predictor,
        args.bundle,
        host=args.host,
        port=args.port,
        limits=limits,
        access_log=args.access_log,
        as_json=args.json,
    )
    return 0


def _model_file_info(args: argparse.Namespace) -> int:
    from .backends import BACKENDS
    from .modelfile import read_model_info

    info = read_model_info(args.bundle)
    backends = {name: b.check() or "available" for name, b in BACKENDS.items()}
    if args.json:
        meta = {k.removeprefix("edgetl."): v for k, v in info.to_metadata().items()}
        meta.update(
            labels=list(info.labels), preprocess=info.preprocess.summary(), quantization=info.quantization
        )
        print_json({"model": str(args.bundle), "verified": False, "info": meta, "backends": backends})
        return 0
    print(f"model       {args.bundle} ({info.precision}; a single file: no manifest, no sha256 check)")
    print(f"name        {info.backbone}")
    print(f"labels      {len(info.labels)}: {', '.join(info.labels)}")
    print(f"preprocess  {info.modality.value}: {info.preprocess.describe()}")
    print(f"tensors     {info.input_name} -> {info.output_name}")
    for name, state in backends.items():
        print(f"backend     {name}: {state}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .backends import BACKENDS
    from .bundle import open_bundle

    if _is_model_file(args.bundle):
        return _model_file_info(args)
    with open_bundle(args.bundle, **_load_options(args)) as bundle:
        manifest = bundle.manifest
    if bundle.signer:
        signature = f"signed by trusted key {bundle.signer}"
    else:
        signature = "signed (no trusted key configured to check it)" if bundle.signed else "unsigned"
    backends = {name: b.check() or "available" for name, b in BACKENDS.items()}
    if args.json:
        print_json(
            {
                "bundle": str(args.bundle),
                "verified": True,
                "signed": bundle.signed,
                "signer": bundle.signer,
                "manifest": manifest.to_dict(),
                "backends": backends,
            }
        )
        return 0
    print(f"bundle      {args.bundle} (verified: every file matches its sha256)")
    print(f"signature   {signature}")
    print(f"name        {manifest.name}  (created {manifest.created})")
    print(f"labels      {len(manifest.labels)}: {', '.join(manifest.labels)}")
    print(f"preprocess  {manifest.modality.value}: {manifest.preprocess.describe()}")
    print(f"input       {manifest.input.name} {list(manifest.input.shape)} {manifest.input.dtype}")
    print(f"output      {manifest.output.name} {list(manifest.output.shape)} {manifest.output.dtype}")
    for m in manifest.models:
        print(
            f"model       {m.path}  {m.precision.value}  {m.size / 1e6:.2f} MB  for {', '.join(m.backends)}"
        )
    for key, value in manifest.metrics.items():
        print(f"metric      {key} = {value}")
    for name, state in backends.items():
        print(f"backend     {name}: {state}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    from .timing import available_memory_bytes, measure_latency, peak_rss_mb

    predictor = _load(args)
    batch = predictor.fixed_batch or args.batch_size
    rng = np.random.default_rng(0)
    # a few distinct inputs so no figure comes from one cached tensor (the benchmark's method)
    first = predictor.kind.sample(predictor.preprocess, batch, rng)
    size = first.nbytes if isinstance(first, np.ndarray) else sum(a.nbytes for a in first.values())
    # the pool below plus one call's activations (~16x its input): refused before it cannot fit
    needed, available = (POOL + 16) * size, available_memory_bytes()
    if available is not None and needed > available:
        raise EdgetlError(
            f"--batch-size {batch}: needs about {needed / (1 << 30):.1f} GiB of memory, "
            f"{available / (1 << 30):.1f} GiB is available; use a smaller batch"
        )
    pool = [first, *(predictor.kind.sample(predictor.preprocess, batch, rng) for _ in range(POOL - 1))]
    stats = measure_latency(
        predictor.session.run, pool, warmup_s=args.warmup_s, min_s=args.min_s, min_runs=args.min_runs
    )
    row = {
        "bundle": str(args.bundle),
        **predictor.describe(),
        **stats.to_dict(),
        "peak_rss_mb": peak_rss_mb(),
    }
    row.pop("labels")
    if args.json:
        print_json(row)
    else:
        print(
            f"{row['model']} ({row['precision']}) on {row['backend']}, batch {batch}: "
            f"p50 {stats.p50_ms:.2f} ms, p90 {stats.p90_ms:.2f} ms, p99 {stats.p99_ms:.2f} ms, "
            f"{stats.throughput:.1f} img/s over {stats.runs} runs (cv {stats.cv:.2f})"
        )
        if stats.noisy:
            print(
                "warning: noisy measurement (cv above 0.15); close other programs and rerun", file=sys.stderr
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgetl-run",
        description="Run an edgetl deploy bundle on this device (no PyTorch needed).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    predict = sub.add_parser("predict", help="classify images or texts (files, folders, lines, stdin)")
    add_predict_options(predict)
    predict.set_defaults(run=cmd_predict)

    info = sub.add_parser("info", help="verify a bundle and describe it")
    add_info_options(info)
    info.set_defaults(run=cmd_info)

    bench = sub.add_parser("bench", help="time the model here (the method of `edgetl benchmark`)")
    add_bench_options(bench)
    bench.set_defaults(run=cmd_bench)

    serve = sub.add_parser(
        "serve",
        help="serve the model over HTTP: POST /v1/predict, GET /v1/info, /healthz, /metrics and a page at /",
    )
    add_serve_options(serve)
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    # an over-limit image is reported as a per-file error; Pillow's warning about it is noise here
    from PIL import Image

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command == "predict":
            # a "*" positional is matched (empty) before the options: inputs after an option arrive here
            args.images += [a for a in extra if a == "-" or not a.startswith("-")]
            extra = [a for a in extra if a != "-" and a.startswith("-")]
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        for option in (
            *("top_k", "batch_size", "threads", "min_runs", "max_pixels", "max_bundle_mb"),
            *("workers", "max_body_mb", "timeout_s"),
        ):
            value = getattr(args, option, None)
            if value is not None and value < 1:
                raise _UsageError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
        if args.command == "predict" and not args.images and not args.lines:
            raise _UsageError(
                "predict: give inputs to classify: files, folders, texts, --lines FILE or - (stdin)"
            )
        if getattr(args, "port", None) is not None and not 0 <= args.port <= 65535:
            raise _UsageError(f"--port must be 0-65535, got {args.port}")
        for option in ("warmup_s", "min_s", "queue"):
            value = getattr(args, option, None)
            if value is not None and not 0 <= value <= MAX_TIMED_S:  # NaN fails this too
                raise _UsageError(
                    f"--{option.replace('_', '-')} must be between 0 and {MAX_TIMED_S:.0f}, got {value}"
                )
    except _UsageError as e:
        report_error(e, as_json=as_json, kind="usage")
        raise SystemExit(EXIT_USAGE) from None
    try:
        return args.run(args)
    except EdgetlError as e:
        report_error(e, as_json=args.json)
        return EXIT_ERROR
    except Exception as e:  # anything else is a bug: say so in one line, with its own exit code
        return report_crash(e, as_json=args.json, tool="edgetl-run")


def run_command() -> NoReturn:
    """The `edgetl-run` program: main(), then leave without tearing the interpreter down.

    Once the answer is printed, nothing is left to do but free memory the OS frees anyway; unloading
    numpy, onnxruntime and their threads took 45-90 ms of a 0.5 s cold predict. Every file is closed by
    then (bundles are opened in `with` blocks), so only stdout and stderr need flushing."""
    try:
        code = main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else _print_exit(e.code))
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`| head`): Python's own exit status for an unflushable stdout
        code = 120
    os._exit(code)


def _print_exit(message: object) -> int:
    print(message, file=sys.stderr)
    return 1


if __name__ == "__main__":
    run_command()
