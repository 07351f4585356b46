"""The code's shape, as ``docs/architecture.md`` describes it, checked on every run.

Read from the source with `ast` (nothing is imported): which package may import which, no
import cycles, no in-function imports of the project's own modules (they hide the real
dependencies), no process-wide registries in module or class attributes, and no function of
``spawner/`` or ``operations/`` over 60 lines without a ``# Long:`` comment saying why.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "spawner",
    "operations",
    "authenticator",
    "hub_config",
    "localcloud",
    "benchmarks",
    "chaos",
)
MAX_FUNCTION_LINES = 60

#: What each package may import of the others (besides itself). ``spawner`` records into the
#: audit log and the metrics, which import nothing of it but its AWS client and the tunnel's
#: counters; everything may import ``spawner.naming``, which imports nothing of the project.
ALLOWED = {
    "spawner": {"hub_config", "operations.audit", "operations.metrics"},
    "operations": {"spawner", "hub_config"},
    "authenticator": {"operations.audit"},
    "hub_config": {"spawner.naming"},
    "localcloud": {"spawner", "hub_config"},
    "benchmarks": {"spawner", "operations", "hub_config", "localcloud", "tests"},
    "chaos": {"spawner", "operations", "hub_config", "localcloud", "tests"},
}
#: Modules that import nothing of the project but `spawner.naming` (which imports nothing),
#: so that anything may import them.
LEAVES = {"spawner.naming", "spawner.aws", "operations.audit"}
#: Module-level mutable values that are not registries, and why.
NOT_REGISTRIES = {
    # asyncio keeps only weak references to tasks: the documented way to keep a
    # fire-and-forget task alive is a set that holds it until it ends.
    ("spawner.ssm.datachannel", "_background"),
    # One small thread pool per process for the tunnel's blocking boto3 calls and its
    # signing, made when first needed (like spawner.aws.EXECUTOR): a resource, not a lookup.
    ("spawner.ssm.datachannel", "_shared_executor"),
    ("spawner.ssm.datachannel", "_signing_executor"),
    # The collectors of prometheus_client's default registry, which is process-wide by
    # design (JupyterHub's own metrics are there too): what a scrape of /hub/metrics reads.
    ("operations.metrics", "INSTANCE_COLLECTOR"),
    # SQLAlchemy tables: ``identities.update()`` builds a statement, it changes nothing.
    ("authenticator.identities", "identities"),
    ("operations.ssh_keys", "ssh_public_keys"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The project modules an import statement names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            is_package = MODULES[module].name == "__init__.py"
            parts = parts if is_package else parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            for alias in node.names
        ]
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            yield name


def _top_level_imports(module: str, *, typing_too: bool = False) -> set[str]:
    """What ``module`` imports when it is imported (with ``typing_too``, also what it
    imports for type checkers only, in ``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    for node in TREES[module].body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.update(_targets(module, node))
        elif isinstance(node, ast.Try) or (
            typing_too and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
        ):
            for inner in node.body:
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    found.update(_targets(module, inner))
    return found


def _package(module: str) -> str:
    return module.split(".")[0]


def _allowed(importer: str, imported: str) -> bool:
    if _package(importer) == _package(imported) or imported == "spawner.naming":
        return True
    return any(
        imported == rule or imported.startswith(rule + ".") for rule in ALLOWED[_package(importer)]
    )


def test_each_package_imports_only_what_it_may() -> None:
    wrong = sorted(
        f"{importer} imports {imported}"
        for importer in MODULES
        for imported in _top_level_imports(importer)
        if not _allowed(importer, imported)
    )
    assert wrong == []


def test_the_leaves_import_nothing_of_the_project() -> None:
    for leaf in LEAVES:
        assert _top_level_imports(leaf) <= {"spawner.naming"}, leaf


def test_there_is_no_import_cycle() -> None:
    """Not even through imports for type checkers: a module that needs another's type for
    a parameter describes what it uses (a `typing.Protocol`) instead."""
    graph = {module: _top_level_imports(module, typing_too=True) for module in MODULES}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(graph[module]):
            if seen.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, module, target]))
            if target not in seen:
                visit(target, [*path, module])
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [])


def test_no_function_imports_a_module_of_the_project() -> None:
    """Allowed only where a cycle with JupyterHub itself forces it, said in a comment
    (there is none today)."""
    found = []
    for module, tree in TREES.items():
        lines = MODULES[module].read_text(encoding="utf-8").splitlines()
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom) and list(_targets(module, node)):
                    if "cycle with JupyterHub" not in lines[node.lineno - 2]:
                        found.append(f"{module}:{node.lineno}")
    assert found == []


_MUTATORS = {"add", "append", "extend", "update", "setdefault", "insert", "discard", "remove"}


def _changed(node: ast.AST) -> ast.expr | None:
    """What ``node`` changes in place, if it does: ``X[k] = v`` or ``X.add(...)`` and kin."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
        return node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _MUTATORS
    ):
        return node.func.value
    return None


def _mutated_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Module globals a function changes at run time (``global X``, or ``X[k] = v`` and
    ``X.add(...)`` in a function that does not bind its own ``X``), and class attributes
    changed through the class (``cls.X[...]``, ``Name.X.add(...)``)."""
    globals_: set[str] = set()
    attributes: set[str] = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        local = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
        local |= {
            n.id
            for n in ast.walk(function)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        for node in ast.walk(function):
            if isinstance(node, ast.Global):
                globals_.update(node.names)
            target = _changed(node)
            if isinstance(target, ast.Name) and target.id not in local:
                globals_.add(target.id)
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                if target.value.id == "cls" or target.value.id[:1].isupper():
                    attributes.add(target.attr)
    return globals_, attributes


def test_no_process_wide_registry() -> None:
    """Module globals and class attributes that collect objects at run time made state leak
    between tests and hid who owns what (``Aws._shared``, ``InstancePoller._shared``, the
    spawner's caches); such state now lives in objects the hub configuration makes
    (`spawner.region.Regions`)."""
    found = []
    for module, tree in TREES.items():
        if _package(module) in ("localcloud", "benchmarks", "chaos"):
            continue  # processes of their own, not the hub
        globals_, attributes = _mutated_names(tree)
        scopes = [(tree.body, globals_)] + [
            (c.body, attributes) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
        ]
        for body, mutated in scopes:
            for node in body:
                if not isinstance(node, ast.Assign | ast.AnnAssign):
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    name = getattr(target, "id", "")
                    if name in mutated and (module, name) not in NOT_REGISTRIES:
                        found.append(f"{module}.{name}")
    assert found == []


@pytest.mark.parametrize("package", ["spawner", "operations"])
def test_long_functions_say_why(package: str) -> None:
    long = []
    for module, tree in TREES.items():
        if _package(module) != package:
            continue
        lines = MODULES[module].read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                body = lines[node.lineno - 1 : node.end_lineno]
                if length > MAX_FUNCTION_LINES and not any("# Long:" in b for b in body):
                    long.append(f"{module}.{node.name} ({length} lines)")
    assert long == []


def test_only_the_settings_read_the_environment() -> None:
    """``hub_config/settings.py`` reads every variable, checks it and hands values on
    (`HubSettings` for the hub, `OperatorSettings` for ``snh``); nothing else of the hub
    looks at ``os.environ`` (the stand-ins and benchmarks are processes of their own)."""
    readers = []
    for module, tree in TREES.items():
        if (
            _package(module) in ("localcloud", "benchmarks", "chaos")
            or module == "hub_config.settings"
        ):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                if isinstance(node.value, ast.Name) and node.value.id == "os":
                    readers.append(f"{module}:{node.lineno}")
    assert readers == []
