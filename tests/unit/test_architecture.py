"""The shape of the `lab` package (docs/architecture.md): no import cycle, small modules, imports at the top
(a lazy one only with its reason), and the report path and the CLI light."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from lab.backends.registry import BACKENDS
from lab.config import BACKEND_MODES, run_label

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "lab"
FIXTURE = ROOT / "tests" / "fixtures" / "run-cpu-tiny"
MAX_LINES = 400
HEAVY = ("torch", "vllm", "transformers")


def modules() -> dict[str, Path]:
    """'lab.report.writer' -> its file, for every module of the package."""
    found = {}
    for path in sorted(LAB.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def lab_imports(tree: ast.AST, known: dict[str, Path]) -> set[str]:
    """The lab modules a module imports, anywhere in it (`from lab import x` counts x where it is a module)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("lab"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lab"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(known)
            out.update(submodules or {node.module})
    return out & set(known)


def nested_imports(tree: ast.AST) -> list[ast.AST]:
    """Import statements inside a function or class body."""
    nested = []
    for outer in ast.walk(tree):
        if isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for node in ast.walk(outer):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    nested.append(node)
    return nested


def test_no_import_cycle_among_lab_modules():
    known = modules()
    graph = {name: lab_imports(ast.parse(path.read_text()), known) - {name} for name, path in known.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name) :] + [name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, path + [name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_no_module_is_longer_than_about_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules: {long}"


def test_every_import_inside_a_function_gives_its_reason():
    unexplained = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in nested_imports(ast.parse("\n".join(lines))):
            line = lines[node.lineno - 1]
            comment = line.partition("# noqa: PLC0415")[2].lstrip(" -")
            if len(comment) < 10:
                unexplained.append(f"{name}:{node.lineno}: {line.strip()}")
    assert not unexplained, "a lazy import needs `# noqa: PLC0415 - <why>`:\n" + "\n".join(unexplained)


def test_only_engines_and_their_backend_modules_are_imported_lazily():
    lazy = set()
    for path in modules().values():
        for node in nested_imports(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            lazy.update(n.split(".")[0] if not n.startswith("lab.") else n for n in names)
    assert lazy <= {
        *HEAVY,
        "tokenizers",
        "matplotlib",
        "lab.backends.hf",
        "lab.backends.hf_continuous",
        "lab.backends.vllm",
    }, lazy


def test_every_backend_mode_has_a_class_to_run_it():
    assert set(BACKENDS) == {run_label(b, m) for b, modes in BACKEND_MODES.items() for m in modes}


def test_the_report_path_imports_neither_torch_nor_vllm(tmp_path):
    run_dir = shutil.copytree(FIXTURE, tmp_path / FIXTURE.name)
    code = (
        "import sys\n"
        "from lab.report.writer import write_report\n"
        "from lab.report.compare import render_comparison\n"
        f"write_report({str(run_dir)!r})\n"
        f"render_comparison([{str(run_dir)!r}, {str(run_dir)!r}])\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.split()[-1] == "none"
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()


def test_the_cli_loads_no_engine_and_no_plotting_library():
    """Every `lab` process (a backend's, the collector's) starts with the CLI; their memory is measured."""
    code = (
        f"import sys, lab.cli\nprint(' '.join(m for m in {(*HEAVY, 'matplotlib')!r} if m in sys.modules) or 'none')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.split()[-1] == "none"
