"""The layout rules a newcomer relies on, checked on the source itself (no imports run but the
notebooks' own): private names stay in their module, the domain library does not lean on the
demo package, the reports have one entry point, and every notebook's imports resolve."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

import opencdms_kernel

PACKAGE = Path(opencdms_kernel.__file__).parent
PROJECT = PACKAGE.parent
NOTEBOOKS = sorted((PROJECT / "notebooks").glob("*.ipynb"))


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str | None, level: int, importer: Path, root: Path) -> str:
    """The absolute module name of a (possibly relative) ``from … import`` in ``importer``."""
    if not level:
        return module or ""
    package = _module_name(importer, root).split(".")
    if importer.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path, root: Path = PROJECT) -> list[str]:
    """Where ``path`` (a file under ``root``, the folder holding opencdms_kernel) takes a private
    name of another opencdms_kernel module: ``from m import _x``, ``import m._x``, or ``m._x`` on
    a module it imported."""
    where = path.relative_to(root)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> opencdms_kernel module (or a name taken from one)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node.module, node.level, path, root)
            if not source.startswith("opencdms_kernel"):
                continue
            for alias in node.names:
                if _is_private(alias.name) or any(_is_private(part) for part in source.split(".")):
                    found.append(f"{where}:{node.lineno}: from {source} import {alias.name}")
                modules[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("opencdms_kernel"):
                    continue
                if any(_is_private(part) for part in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
                modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add(_absolute(node.module, node.level, path, PROJECT))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_private_name_is_imported_across_modules() -> None:
    found = [line for path in sorted(PACKAGE.rglob("*.py")) for line in private_imports(path)]
    assert found == []


def test_the_private_import_check_sees_each_way_of_taking_a_private_name(tmp_path: Path) -> None:
    # The check above passing means nothing unless it can fail: every form it looks for, once.
    module = tmp_path / "opencdms_kernel" / "products" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from opencdms_kernel.demo.network import _make_station, DemoSpec\n"
        "from .model import _private\n"
        "from opencdms_kernel import archive\n"
        "import opencdms_kernel.qc.rules as rules\n"
        "import opencdms_kernel._hidden\n"
        "from opencdms_kernel.demo.network import station_network\n"
        "def f():\n"
        "    return archive._grace, rules._THRESHOLD_SCHEMA, station_network, DemoSpec\n",
        encoding="utf-8",
    )
    found = private_imports(module, tmp_path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "from opencdms_kernel.demo.network import _make_station",
        "from opencdms_kernel.products.model import _private",
        "import opencdms_kernel._hidden",
        "archive._grace",
        "rules._THRESHOLD_SCHEMA",
    ]


def test_the_domain_library_does_not_import_the_demo_package() -> None:
    # Demo and test-support code is not domain code: only the command line (which loads the
    # demo for `opencdms up` and `opencdms demo-data`) and the demo package itself use it.
    allowed = {PACKAGE / "cli.py"}
    users = [
        str(path.relative_to(PROJECT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed and PACKAGE / "demo" not in path.parents
        and any(name == "opencdms_kernel.demo" or name.startswith("opencdms_kernel.demo.")
                for name in imported_modules(path))
    ]
    assert users == []


def test_the_reports_package_has_one_entry_point() -> None:
    # Every public name of every reports module is importable from opencdms_kernel.reports,
    # which is how the notebooks import them.
    reports = importlib.import_module("opencdms_kernel.reports")
    public: dict[str, str] = {}
    for path in sorted((PACKAGE / "reports").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]  # an annotated constant, e.g. FLAGGED_STATUSES: tuple[…] = …
            else:
                continue
            for name in names:
                if not name.startswith("_"):
                    public[name] = path.stem
    assert sorted(reports.__all__) == sorted(public)
    for name, module in public.items():
        assert getattr(reports, name) is getattr(importlib.import_module(f"opencdms_kernel.reports.{module}"), name)


def _notebook_imports(notebook: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from opencdms_kernel… import name`` in a notebook's code cells."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    found = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        # IPython magics and shell lines are not Python; imports never sit on them.
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opencdms_kernel"):
                found += [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(alias.name, "") for alias in node.names if alias.name.startswith("opencdms_kernel")]
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_every_name_a_notebook_imports_exists(notebook: Path) -> None:
    imports = _notebook_imports(notebook)
    assert imports, f"{notebook.name} imports nothing from opencdms_kernel"
    missing = []
    for module, name in imports:
        loaded = importlib.import_module(module)
        if name and not hasattr(loaded, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert missing == []
