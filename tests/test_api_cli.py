"""Commands the services add to ``opencdms`` through entry points (``opencdms.commands``): the
kernel loads them by name and imports no service itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterator

import pytest
import typer
from typer.testing import CliRunner

from opencdms_kernel import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def distribution(tmp_path: Path) -> Iterator[Path]:
    """A distribution installed on sys.path (its metadata only) with four contributed commands:
    one good, one whose module fails to import, one that is not a Typer app, one clashing with
    a kernel command."""
    info = tmp_path / "opencdms_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: opencdms-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[opencdms.commands]\n"
        "hello-plugin = opencdms_test_plugin:commands\n"
        "broken-plugin = opencdms_test_plugin_missing:commands\n"
        "wrong-plugin = opencdms_test_plugin:not_commands\n"
        "db = opencdms_test_plugin:commands\n"
    )
    (tmp_path / "opencdms_test_plugin.py").write_text(
        "import typer\n"
        "commands = typer.Typer(help='A contributed command.', no_args_is_help=True)\n"
        "@commands.command()\n"
        "def greet(name: str) -> None:\n"
        "    print(f'hello {name}')\n"
        "@commands.command()\n"
        "def other() -> None:\n"
        "    pass\n"
        "not_commands = 42\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("opencdms_test_plugin", None)


def _root() -> typer.Typer:
    root = typer.Typer(cls=cli._OpenCDMSGroup, no_args_is_help=True)
    root.add_typer(typer.Typer(help="kernel's own"), name="db")

    @root.command()
    def up() -> None:
        """A kernel command."""

    return root


def test_contributed_commands_are_added_by_name(distribution: Path) -> None:
    root = _root()
    added = cli.add_contributed_commands(root)
    assert {"hello-plugin", "broken-plugin", "wrong-plugin"} <= set(added) and "db" not in added
    runner = CliRunner()
    result = runner.invoke(root, ["hello-plugin", "greet", "world"])
    assert result.exit_code == 0 and "hello world" in result.output
    broken = runner.invoke(root, ["broken-plugin", "anything", "--at-all"])
    assert broken.exit_code == 1
    assert "opencdms_test_plugin_missing" in broken.output and "could not be loaded" in broken.output
    wrong = runner.invoke(root, ["wrong-plugin"])
    assert wrong.exit_code == 1 and "not a typer.Typer" in wrong.output
    # The kernel's own command keeps its name.
    assert "kernel's own" in runner.invoke(root, ["--help"]).output


def test_the_project_declares_the_services_commands() -> None:
    from importlib.metadata import entry_points

    declared = {entry.name: entry.value for entry in entry_points(group=cli.COMMANDS_ENTRY_POINTS)}
    assert declared.get("api") == "services.api.cli:api_app"
    result = CliRunner().invoke(cli.app, ["api", "--help"])
    assert result.exit_code == 0 and "config" in result.output and "serve" in result.output


def test_the_kernel_imports_no_service() -> None:
    offenders = []
    for path in (ROOT / "opencdms_kernel").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name == "services" or name.startswith(("services.", "apps."))]
    assert not offenders, offenders
