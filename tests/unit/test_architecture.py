"""The shape of the package: a pure core, a pinned public API, generated code in sync."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import abkit

ROOT = Path(__file__).parents[2]
CORE = ROOT / "abkit" / "core"

ALLOWED_THIRD_PARTY = {"numpy", "scipy", "statsmodels"}
FORBIDDEN_STDLIB = {
    "os", "io", "sys", "socket", "subprocess", "pathlib", "shutil", "tempfile", "sqlite3",
    "urllib", "http", "asyncio", "threading", "multiprocessing", "time", "logging", "signal",
    "select", "selectors", "ssl", "glob", "pickle", "shelve", "random",
}  # fmt: skip
FORBIDDEN_CALLS = {
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
    ("time", "time"), ("os", "environ"), ("os", "getenv"),
}  # fmt: skip
FORBIDDEN_NAMES = {"open", "print", "input"}
IO_MODULES = ("sqlalchemy", "grpc", "flask", "opentelemetry", "psycopg", "yaml", "click", "alembic")


def _core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert files, "abkit/core has no modules"
    return files


def test_core_imports_only_the_standard_library_and_numerics() -> None:
    problems = []
    for path in _core_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if name.startswith("abkit."):
                    ok = name.startswith("abkit.core") or name == "abkit.errors"
                elif top in ALLOWED_THIRD_PARTY:
                    ok = True
                else:
                    ok = top in sys.stdlib_module_names and top not in FORBIDDEN_STDLIB
                if not ok:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert problems == []


def test_core_reads_no_clock_environment_or_files() -> None:
    problems = []
    for path in _core_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in FORBIDDEN_CALLS
            ):
                problems.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}"
                )
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in FORBIDDEN_NAMES
            ):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}()")
    assert problems == []


def test_importing_the_core_loads_no_io_library() -> None:
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in _core_files()
    ]
    script = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {IO_MODULES!r})\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_pinned_and_sorted() -> None:
    assert abkit.__all__ == sorted(abkit.__all__)
    assert abkit.__all__ == [
        "AbkitError",
        "Arm",
        "Assignment",
        "AuthenticationError",
        "Catalog",
        "CompiledExperiment",
        "ConflictError",
        "Experiment",
        "ExperimentStatus",
        "Exposure",
        "Holdout",
        "LayerSegment",
        "NotFoundError",
        "PermissionDeniedError",
        "Reason",
        "StoreUnavailableError",
        "ValidationError",
        "__version__",
        "assign",
        "bucket",
    ]
    for name in abkit.__all__:
        assert hasattr(abkit, name)


def test_adapters_depend_on_services_not_the_other_way_round() -> None:
    # services.py sequences core and ports; it must not import an adapter.
    tree = ast.parse((ROOT / "abkit" / "services.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    adapters = (
        "abkit.store",
        "abkit.rpc",
        "abkit.web",
        "abkit.cli",
        "abkit.v1",
        "sqlalchemy",
        "grpc",
        "flask",
    )
    assert not [m for m in imported if m.startswith(adapters)]
