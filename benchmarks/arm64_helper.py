"""Helper of arm64_check.sh: pip configuration for the arm64 userland, versions, and the comparison.

Standard library only: the same file runs on x86 (the project venv) and inside the arm64 chroot.

  arm64_helper.py split SRC DEST TRAIN VAL INPUTS  # per class: DEST/data/{train,val}, DEST/inputs
  arm64_helper.py pip-config ROOT          # host pip config -> ROOT/etc/pip.conf (+ its CA files)
  arm64_helper.py versions                 # JSON: machine, python and the runtime's libraries
  arm64_helper.py compare NAME FORMAT PRECISION X86.json ARM.json X86V.json ARMV.json OUT.json
  arm64_helper.py skip NAME FORMAT PRECISION REASON OUT.json
  arm64_helper.py report RESULTS_DIR OUT.json [--min-agreement 0.99]
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

# Options whose value is a file the chroot needs too: copied to the same path inside it.
FILE_OPTIONS = {"cert", "client-cert"}
# Options that may name host-only places (a local wheel folder, a file:// index): kept only when
# they are network addresses, since those folders hold x86 wheels and do not exist in the chroot.
LOCATION_OPTIONS = {"find-links", "index-url", "extra-index-url"}
RUNTIME_LIBRARIES = ("edgetl-runtime", "numpy", "onnxruntime", "pillow", "tokenizers", "ai-edge-litert")


def _host_pip_config_files() -> list[Path]:
    """The files pip itself reads, in its order (later ones win), as `pip config debug` lists them."""
    home = Path.home()
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [Path("/etc/pip.conf")]
    files += [
        home / ".pip" / "pip.conf",
        Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "pip" / "pip.conf",
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def _is_local(value: str) -> bool:
    return value.startswith(("/", "file:", "./", "../", "~"))


def pip_config(root: Path) -> None:
    merged: dict[str, dict[str, str]] = {}
    for f in _host_pip_config_files():
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(f)
        for section in parser.sections():
            merged.setdefault(section, {}).update(parser[section])
    # PIP_FOO_BAR overrides every file, as for pip; it becomes foo-bar in [global].
    for var, value in os.environ.items():
        if var.startswith("PIP_") and var != "PIP_CONFIG_FILE":
            merged.setdefault("global", {})[var[4:].lower().replace("_", "-")] = value

    out = configparser.ConfigParser(interpolation=None)
    for section, options in merged.items():
        out[section] = {}
        for key, value in options.items():
            if key in FILE_OPTIONS and Path(value).is_file():
                target = root / value.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(value, target)
                print(f"pip config: copied {key} {value} into the userland", file=sys.stderr)
            elif key in LOCATION_OPTIONS:
                kept = [v for v in value.split() if not _is_local(v)]
                dropped = [v for v in value.split() if _is_local(v)]
                if dropped:
                    print(f"pip config: dropped host-only {key} {' '.join(dropped)}", file=sys.stderr)
                if not kept:
                    continue
                value = "\n".join(kept)
            out[section][key] = value
    conf = root / "etc" / "pip.conf"
    with conf.open("w") as fh:
        out.write(fh)


def split(args: argparse.Namespace) -> None:
    """A small ImageFolder (links into SRC) and held-out inputs (copies, named CLASS_FILE, flat).

    Per class, in sorted file order: the first TRAIN files train, the next VAL validate and the next
    INPUTS are what both machines predict. Copies, since the chroot cannot follow links to the host.
    """
    classes = sorted(d for d in args.src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise SystemExit(f"{args.src}: no class folders")
    inputs = args.dest / "inputs"
    inputs.mkdir(parents=True)
    for c in classes:
        files = sorted(f for f in c.iterdir() if f.is_file() and not f.name.startswith("."))
        if len(files) < args.train + args.val + args.inputs:
            raise SystemExit(f"{c}: {len(files)} files, fewer than {args.train + args.val + args.inputs}")
        for part, chosen in (
            ("train", files[: args.train]),
            ("val", files[args.train : args.train + args.val]),
        ):
            folder = args.dest / "data" / part / c.name
            folder.mkdir(parents=True)
            for f in chosen:
                (folder / f.name).symlink_to(f.resolve())
        for f in files[args.train + args.val : args.train + args.val + args.inputs]:
            shutil.copyfile(f, inputs / f"{c.name}_{f.name}")
    print(len(classes))


def versions() -> None:
    found = {}
    for name in RUNTIME_LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), **found}))


def _load_predictions(path: Path) -> dict[str, dict]:
    """Predictions keyed by file name: the two sides see the same files under different folders."""
    data = json.loads(path.read_text())
    if data.get("failed"):
        raise SystemExit(f"{path}: {data['failed']} inputs failed: {data.get('errors')}")
    by_name = {}
    for p in data["predictions"]:
        by_name[Path(p["source"]).name] = {t["index"]: t["score"] for t in p["top_k"]} | {"top1": p["index"]}
    return by_name


def compare(args: argparse.Namespace) -> None:
    x86 = _load_predictions(args.x86)
    arm = _load_predictions(args.arm)
    if x86.keys() != arm.keys():
        missing = sorted(x86.keys() ^ arm.keys())
        raise SystemExit(f"{args.name}: x86 and arm64 saw different inputs, e.g. {missing[:5]}")
    same = sum(x86[k]["top1"] == arm[k]["top1"] for k in x86)
    deltas = []
    for k in x86:
        classes = (x86[k].keys() | arm[k].keys()) - {"top1"}
        # --top-k was the class count, so a class missing on one side means a different output size.
        if x86[k].keys() != arm[k].keys():
            raise SystemExit(f"{args.name}: {k}: x86 and arm64 list different classes")
        deltas.extend(abs(x86[k][c] - arm[k][c]) for c in classes)
    row = {
        "name": args.name,
        "format": args.format,
        "precision": args.precision,
        "inputs": len(x86),
        "same_top1": same,
        "agreement": same / len(x86),
        "max_abs_dprob": max(deltas),
        # the max is one value out of inputs x classes; the mean says whether it is typical
        "mean_abs_dprob": sum(deltas) / len(deltas),
        "x86": json.loads(args.x86_versions.read_text()),
        "arm64": json.loads(args.arm_versions.read_text()),
    }
    args.out.write_text(json.dumps(row, indent=2) + "\n")


def skip(args: argparse.Namespace) -> None:
    row = {"name": args.name, "format": args.format, "precision": args.precision, "skipped": args.reason}
    args.out.write_text(json.dumps(row, indent=2) + "\n")


def report(args: argparse.Namespace) -> int:
    rows = [json.loads(p.read_text()) for p in sorted(args.results.glob("*.json"))]
    bad = [r["name"] for r in rows if "skipped" not in r and r["agreement"] < args.min_agreement]
    doc = {
        "what": "edgetl-run predict on x86 and in an emulated arm64 Debian userland (qemu-user), same bundles "
        "and inputs; agreement = same top-1 / inputs, max_abs_dprob over every class of every input. "
        "Emulated timings are not latencies and are not recorded.",
        "min_agreement": args.min_agreement,
        "passed": not bad,
        "bundles": rows,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<16} {r['format']:<7} {r['precision']:<5} skipped: {r['skipped']}")
        else:
            print(
                f"{r['name']:<16} {r['format']:<7} {r['precision']:<5} same top-1 {r['same_top1']}/{r['inputs']}"
                f"  |dprob| max {r['max_abs_dprob']:.2e} mean {r['mean_abs_dprob']:.2e}"
            )
    if bad:
        print(f"below {args.min_agreement:.0%} agreement: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split")
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    for name in ("train", "val", "inputs"):
        p.add_argument(name, type=int)
    p = sub.add_parser("pip-config")
    p.add_argument("root", type=Path)
    sub.add_parser("versions")
    p = sub.add_parser("compare")
    for name in ("name", "format", "precision"):
        p.add_argument(name)
    for name in ("x86", "arm", "x86_versions", "arm_versions", "out"):
        p.add_argument(name, type=Path)
    p = sub.add_parser("skip")
    for name in ("name", "format", "precision", "reason"):
        p.add_argument(name)
    p.add_argument("out", type=Path)
    p = sub.add_parser("report")
    p.add_argument("results", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--min-agreement", type=float, default=0.99)
    args = parser.parse_args()

    if args.command == "split":
        split(args)
    elif args.command == "pip-config":
        pip_config(args.root)
    elif args.command == "versions":
        versions()
    elif args.command == "compare":
        compare(args)
    elif args.command == "skip":
        skip(args)
    else:
        return report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
