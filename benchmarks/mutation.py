"""Mutation testing of the safety modules: one small fault at a time, each against the module's own
fast tests; a mutant no test fails on (a survivor) is a hole in the tests or an equivalent change.

    uv run --frozen python benchmarks/mutation.py [--module gate] [--max-mutants N] [--timeout 120]
        [--out benchmarks/results/mutation.json]

The faults (from the module's syntax tree, each applied to its source text): a comparison flipped
(< <=, > >=, == !=, in / not in, is / is not), and/or swapped, `not` dropped, + - and * / swapped,
True/False swapped, a number +1, `return x` -> `return None`, a `raise` removed, an `if` guard's
body emptied. Message text, log and warning calls and docstrings are left alone: their mutants
cannot change what a user relies on.

The repository is copied once to a temporary folder and each mutant written into that copy; the
tests run there with the project's interpreter and PYTHONPATH on the copy (edgetl and edgetl_runtime
are editable installs, so the copy on PYTHONPATH is the one imported, server subprocesses included).
One pytest process per mutant, `-x`; the shared tiny runs are built once (EDGETL_TEST_FIXTURES, see
tests/conftest.py) and restored if a mutant changes them. Before the mutants, each module's tests
must pass unmutated. Prints every survivor with its diff and writes the JSON result.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --timeout=0: pytest-timeout's 300 s per test would fail a tiny run's build on a loaded machine (the
# build is then retried by every later process); the worker's deadline per mutant bounds each run
PYTEST = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "--timeout=0"]

# module -> the tests that guard it (files or node ids), all fast once the tiny runs exist
MODULES: dict[str, tuple[str, ...]] = {
    "edgetl/quantizer/gate.py": (
        "tests/quantizer/test_gate_verdicts.py",
        "tests/quantizer/test_quantize.py::test_interval_on_constructed_outcomes",
        "tests/quantizer/test_quantize.py::test_compare_logits_counts_agreement_and_kl",
        "tests/quantizer/test_gate_outcome.py",
    ),
    "edgetl/quantizer/ladder.py": (
        "tests/quantizer/test_gate_verdicts.py",
        "tests/quantizer/test_gate_outcome.py",
        "tests/quantizer/test_quantize.py::test_forced_failing_gate_walks_each_rung_once",
    ),
    "edgetl/quantizer/text.py": ("tests/quantizer/test_text_quantize.py",),
    "edgetl/runfolder/folder.py": (
        "tests/runfolder/test_run.py",
        "tests/bundler/test_consistency.py",
    ),
    "edgetl/runfolder/lineage.py": (
        "tests/runfolder/test_run.py",
        "tests/bundler/test_consistency.py",
    ),
    "edgetl/bundler/package.py": (
        "tests/bundler/test_consistency.py",
        "tests/bundler/test_package.py",
    ),
    "edgetl/exporter/parity.py": ("tests/exporter/test_parity.py",),
    "deploy/edgetl_runtime/bundle.py": (
        "tests/hostile/test_hostile_archives.py",
        "tests/hostile/test_hostile_cli.py::test_hostile_archives",
        "tests/hostile/test_hostile_cli.py::test_hostile_bundle_folders",
        "tests/hostile/test_hostile_cli.py::test_oversized_member_is_refused_before_writing_past_the_cap",
        "tests/hostile/test_hostile_cli.py::test_gzip_bomb_after_the_tar_end_is_bounded",
    ),
    "deploy/edgetl_runtime/signing.py": ("tests/runtime/test_signing.py",),
    "deploy/edgetl_runtime/serve/app.py": (
        "tests/runtime/test_serve.py::test_each_error_is_one_json_error_and_the_server_keeps_answering",
        "tests/runtime/test_serve.py::test_a_declared_over_size_body_is_refused_before_it_is_sent",
        "tests/runtime/test_serve.py::test_info_and_metrics",
        "tests/runtime/test_serve.py::test_the_page_is_self_contained_and_its_headers_forbid_fetching_or_framing",
        "tests/runtime/test_serve.py::test_a_crash_is_a_500_naming_no_traceback_and_the_server_keeps_answering",
    ),
}
QUIET_CALLS = {"log", "warn", "warning", "debug", "info", "print"}


@dataclass(frozen=True)
class Mutant:
    module: str
    id: str  # module:line:col:operator, stable while the module is unchanged
    line: int
    operator: str
    source: str  # the mutated module
    original: str  # the module it was made from


@dataclass(frozen=True)
class Outcome:
    id: str
    status: str  # killed, survived, timeout (counted as killed), error (the tests did not run)
    seconds: float
    diff: str = ""


def _offsets(raw: bytes) -> list[int]:
    """The byte offset of each line's start (ast's lines split at \\n, its columns count bytes)."""
    starts, total = [], 0
    for line in raw.split(b"\n"):
        starts.append(total)
        total += len(line) + 1
    return starts


class _Finder(ast.NodeVisitor):
    """Collects (node, operator, replacement) for every mutable spot outside messages and logging."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.AST, str, str]] = []

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in QUIET_CALLS:
            return
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return  # message text

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # docstring
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        self.found.append((node, "remove-raise", "pass"))
        # the exception raised is a message: not mutated further

    def visit_Compare(self, node: ast.Compare) -> None:
        flips = {
            ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
        }  # fmt: skip
        for i, op in enumerate(node.ops):
            mutated = copy.deepcopy(node)
            mutated.ops[i] = flips[type(op)]()
            self.found.append((node, f"{type(op).__name__}->{flips[type(op)].__name__}", _expr(mutated)))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        mutated = copy.deepcopy(node)
        mutated.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.found.append((node, f"{type(node.op).__name__}->{type(mutated.op).__name__}", _expr(mutated)))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self.found.append((node, "drop-not", _expr(node.operand)))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swaps = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
        if type(node.op) in swaps and not _is_string(node):
            mutated = copy.deepcopy(node)
            mutated.op = swaps[type(node.op)]()
            self.found.append(
                (node, f"{type(node.op).__name__}->{type(mutated.op).__name__}", _expr(mutated))
            )
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self.found.append((node, f"{value}->{not value}", repr(not value)))
        elif isinstance(value, (int, float)):
            self.found.append((node, "number+1", repr(value + 1)))

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self.found.append((node, "return-None", "return None"))
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return  # imports for annotations only: no mutant there can run
        single_raise = len(node.body) == 1 and isinstance(node.body[0], ast.Raise)
        if not single_raise:  # a lone raise is already removed by remove-raise
            self.found.append((node.body, "empty-if-body", "pass"))
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        # annotations and decorators say nothing a mutant could change
        for child in (node.args, *node.body):
            self.visit(child)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_arguments(self, node: ast.arguments) -> None:
        for default in (*node.defaults, *(d for d in node.kw_defaults if d is not None)):
            self.visit(default)


def _is_string(node: ast.BinOp) -> bool:
    return any(isinstance(n, (ast.JoinedStr,)) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
               for n in (node.left, node.right))  # fmt: skip


def _expr(node: ast.AST) -> str:
    return f"({ast.unparse(node)})"


def _span(target) -> tuple[int, int, int, int]:
    first, last = (target[0], target[-1]) if isinstance(target, list) else (target, target)
    return first.lineno, first.col_offset, last.end_lineno, last.end_col_offset


def find_mutants(module: str) -> Iterator[Mutant]:
    text = (ROOT / module).read_text()
    raw = text.encode()
    starts = _offsets(raw)
    finder = _Finder()
    finder.visit(ast.parse(text))
    for target, operator, replacement in finder.found:
        line, col, end_line, end_col = _span(target)
        begin, end = starts[line - 1] + col, starts[end_line - 1] + end_col  # col offsets are in bytes
        source = (raw[:begin] + replacement.encode() + raw[end:]).decode()
        try:
            compile(source, module, "exec")
        except SyntaxError:
            continue
        if source != text:
            yield Mutant(module, f"{module}:{line}:{col}:{operator}", line, operator, source, text)


def diff_of(mutant: Mutant) -> str:
    before = mutant.original.splitlines(keepends=True)
    lines = difflib.unified_diff(
        before, mutant.source.splitlines(keepends=True), mutant.module, mutant.module, n=1
    )
    return "".join(lines)


def _fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())  # fmt: skip


# third-party imports the tests need, made once in the worker before it forks a child per mutant
# (they take most of a pytest start on a busy 2-core machine); edgetl itself is imported by each
# child, so each sees its own mutant
PRELOAD = ("numpy", "scipy.stats", "torch", "timm", "onnx", "onnxruntime", "PIL.Image", "click",
           "safetensors", "tokenizers", "starlette.applications", "pytest")  # fmt: skip


def _status(code: int) -> str:
    # 2 and 3: the mutant broke collection or pytest itself, which fails the tests too; 4 and 5 (usage,
    # nothing collected) are this script's error
    return {0: "survived", 1: "killed", 2: "killed", 3: "killed"}.get(code, "error")


def serve_worker() -> None:
    """--worker: one JSON request per stdin line ({"tests": [...], "timeout": s}), each run by pytest
    in a forked child in its own process group (killed whole on timeout); one JSON answer per line."""
    import importlib
    import signal

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import pytest

    for line in sys.stdin:
        request = json.loads(line)
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd in (1, 2):
                os.dup2(log, fd)
            code = 3
            try:
                code = int(pytest.main([*PYTEST, *request["tests"]]))
            finally:
                os._exit(code)
        deadline = started + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                answer = _status(os.waitstatus_to_exitcode(status))
                break
            if time.perf_counter() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                answer = "timeout"
                break
            time.sleep(0.2)
        print(json.dumps({"status": answer, "seconds": time.perf_counter() - started}), flush=True)


class Worker:
    """The --worker process, started on the copied tree."""

    def __init__(self, tree: Path, env: dict) -> None:
        self.log = tree.parent / "pytest.log"  # the last run's output
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=tree, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
        request = {"tests": list(tests), "timeout": timeout, "log": str(self.log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return answer["status"], answer["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _copy_tree(dest: Path) -> Path:
    tree = dest / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                             ".ruff_cache", ".pytest_cache", "results"))  # fmt: skip
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--module", action="append", help="a key of MODULES, or its file name (gate.py); repeatable"
    )
    parser.add_argument("--max-mutants", type=int, default=0, help="per module, evenly spread (0: all)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant's tests")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mutation.json")
    parser.add_argument(
        "--fixtures",
        type=Path,
        help="reuse the tiny runs built in this folder by unmutated code (EDGETL_TEST_FIXTURES)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        serve_worker()
        return 0
    chosen = [m for m in MODULES if not args.module or m in args.module or Path(m).name in args.module
              or m.replace("/", ".").removesuffix(".py").endswith(tuple(args.module))]  # fmt: skip
    if not chosen:
        parser.error(f"--module: choose from {', '.join(MODULES)}")
    found = {m: list(find_mutants(m)) for m in chosen}
    mutants = dict(found)
    if args.max_mutants:
        for m, listed in mutants.items():
            step = max(1, len(listed) / args.max_mutants)
            mutants[m] = [listed[int(i * step)] for i in range(min(args.max_mutants, len(listed)))]
    if args.list:
        for listed in mutants.values():
            for mutant in listed:
                print(mutant.id)
        return 0
    command = "python benchmarks/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-mutation-") as tmp:
        tree = _copy_tree(Path(tmp))
        fixtures = args.fixtures or Path(tmp) / "fixtures"
        fixtures.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "deploy")]),
               "EDGETL_TEST_FIXTURES": str(fixtures), "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
        worker = Worker(tree, env)
        for module in chosen:
            module_started = time.perf_counter()
            tests = MODULES[module]
            status, seconds = worker.run(tests, args.timeout * 10)
            print(f"{module}: {len(mutants[module])} mutants; its tests unmutated: {status} in {seconds:.0f} s",
                  flush=True)  # fmt: skip
            if status != "survived":
                print("".join(worker.log.read_text().splitlines(keepends=True)[-30:]), flush=True)
                results[module] = {"error": f"its tests do not pass unmutated ({status})", "command": command}
                report = merged_report(args.out, results)
                continue
            pristine = Path(tmp) / "pristine"
            shutil.rmtree(pristine, ignore_errors=True)
            shutil.copytree(fixtures, pristine, symlinks=True)
            built = _fingerprint(fixtures)
            original = (tree / module).read_text()
            outcomes: list[Outcome] = []
            try:
                for mutant in mutants[module]:
                    (tree / module).write_text(mutant.source)
                    status, seconds = worker.run(tests, args.timeout)
                    diff = diff_of(mutant) if status == "survived" else ""
                    outcomes.append(Outcome(mutant.id, status, round(seconds, 1), diff))
                    print(f"  {status:8} {seconds:6.1f} s  {mutant.id}", flush=True)
                    if status == "survived":
                        print(diff, flush=True)
                    partial = {
                        **_summary(outcomes, len(found[module])),
                        "complete": False,
                        "command": command,
                    }
                    merged_report(args.out, {**results, module: partial})  # an interrupted run keeps its part
                    if _fingerprint(fixtures) != built:  # a mutant wrote into a shared run: restore it
                        shutil.rmtree(fixtures)
                        shutil.copytree(pristine, fixtures, symlinks=True)
            finally:
                (tree / module).write_text(original)
            results[module] = {
                **_summary(outcomes, len(found[module])),
                "complete": True,
                "command": command,
                "wall_seconds": round(time.perf_counter() - module_started),
            }
            report = merged_report(args.out, results)  # after each module: a long run keeps what it did
        worker.close()
    print(f"{report['mutants']} mutants, {report['killed']} killed, {report['survived']} survived "
          f"in {report['seconds']} s (all modules in {args.out})")  # fmt: skip
    return 0


def merged_report(out: Path, results: dict[str, dict]) -> dict:
    """The modules just run replace their earlier results in `out`; the totals cover every module
    recorded, so the file can be filled one module at a time."""
    modules = json.loads(out.read_text())["modules"] if out.is_file() else {}
    modules.update(results)
    modules = {m: modules[m] for m in MODULES if m in modules}
    done = [r for r in modules.values() if "mutants" in r]
    total = {k: sum(r[k] for r in done) for k in ("mutants", "killed", "survived", "seconds")}
    report = {
        **total,
        "score": round(total["killed"] / total["mutants"], 3) if total["mutants"] else None,
        "modules": modules,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _summary(outcomes: list[Outcome], found: int) -> dict:
    killed = [o for o in outcomes if o.status in ("killed", "timeout")]
    survivors = [o for o in outcomes if o.status == "survived"]
    return {
        "mutants": len(outcomes),
        "killed": len(killed),
        "survived": len(survivors),
        "timeouts": sum(o.status == "timeout" for o in outcomes),
        "errors": [o.id for o in outcomes if o.status == "error"],
        "found": found,  # mutants in the module; more than `mutants` when --max-mutants sampled them
        "seconds": round(sum(o.seconds for o in outcomes)),
        "survivors": [asdict(o) for o in survivors],
    }


if __name__ == "__main__":
    raise SystemExit(main())
