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


USE_CASES = ROOT / "abkit" / "services"
PACKAGE = ROOT / "abkit"
GENERATED = PACKAGE / "v1"


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _modules() -> dict[str, Path]:
    """Every module of the package (the generated stubs excluded), by dotted name."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if GENERATED not in p.parents}


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, not under TYPE_CHECKING
    (imports inside functions are deferred on purpose and cannot form an import cycle)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, known: set[str]) -> set[str]:
    """The modules an import statement loads: ``from p import m`` loads ``p.m`` when ``m`` is a
    module, else ``p`` (whose attribute it reads)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = node.module or ""
    if node.level:
        package = module.split(".")[: -node.level] if module in known else module.split(".")
        base = ".".join([*package, base] if base else package)
    names = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        names.add(candidate if candidate in known else base)
    return names


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for node in _top_level_imports(tree):
            edges |= {m for m in _imported(node, name, known) if m in known}
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_module_level_import_cycle_inside_the_package() -> None:
    graph = _import_graph()
    assert "abkit.services.decisions" in graph and graph["abkit.web.app"]  # the graph is real
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


ADAPTERS = (
    "abkit.store", "abkit.rpc", "abkit.web", "abkit.cli", "abkit.v1", "abkit.infra",
    "abkit.report", "abkit.tools", "abkit.runtime", "abkit.worker", "abkit.specfile",
    "abkit.config", "abkit.client", "sqlalchemy", "psycopg", "grpc", "flask", "werkzeug",
    "opentelemetry", "click", "yaml", "alembic",
)  # fmt: skip


def test_use_cases_depend_on_the_core_and_the_ports_only() -> None:
    """Every use-case module: adapters depend on the use cases, never the other way round."""
    modules = sorted(USE_CASES.glob("*.py"))
    assert len(modules) >= 7
    problems = []
    for path in modules:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(node, _module_name(path), set(_modules())):
                    if name.startswith(ADAPTERS):
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert problems == []


def test_only_the_web_adapter_imports_flask() -> None:
    problems = []
    for name, path in _modules().items():
        if name.startswith("abkit.web"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for imported in _imported(node, name, set()):
                    if imported.split(".")[0] in ("flask", "werkzeug", "jinja2", "gunicorn"):
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {imported}")
    # abkit.cli starts the web server (``abkit web``, ``abkit serve``) only through abkit.web,
    # imported inside those commands.
    assert problems == []


def _functions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        ((node.end_lineno or node.lineno) - node.lineno + 1, f"{_module_name(path)}.{node.name}")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_function_in_the_core_or_the_use_cases_is_over_60_lines() -> None:
    paths = [*CORE.rglob("*.py"), *USE_CASES.glob("*.py")]
    long = sorted(f for path in paths for f in _functions(path) if f[0] > 60)
    assert long == []


def test_every_package_ships_in_the_wheel() -> None:
    """pyproject lists packages explicitly: a new one missing there would not be installed."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    present = {_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")} | {
        "abkit.migrations",
        "abkit.migrations.versions",
    }
    assert present <= listed
