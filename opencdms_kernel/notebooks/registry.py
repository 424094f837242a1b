"""Discovery of the notebooks in a folder: name, title, description, typed parameters.

A notebook ``notebooks/<name>.ipynb`` is registered under ``<name>`` (letters, digits, ``_``,
``-``; files starting with ``.`` or ``_`` are drafts and ignored).  Its title is the first
markdown heading, its description the first paragraph of markdown text, its parameters those of
the cell tagged ``parameters`` (see :mod:`opencdms_kernel.notebooks.parameters` for how they are
declared).  A notebook that cannot be read or declares a parameter wrongly is left out and its
problem kept in :meth:`NotebookRegistry.problems`, so one broken file hides no other.

Files are read again only when their modification time or size changes, so asking the registry
before every run costs one ``stat`` per notebook.
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import nbformat

from opencdms_kernel.notebooks.errors import NotebookDefinitionError, UnknownNotebookError
from opencdms_kernel.notebooks.parameters import ParameterSpec, parse_parameters, parse_text_request, validate_request
from opencdms_kernel.settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class NotebookInfo:
    """One registered notebook."""

    name: str
    path: Path
    title: str
    description: str
    parameters: tuple[ParameterSpec, ...]
    kernel_name: str | None
    notebook: nbformat.NotebookNode = field(repr=False, compare=False)

    def parameter_schema(self) -> dict[str, Any]:
        """The parameters as one JSON Schema object (every parameter has a default)."""
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.title,
            "description": self.description,
            "type": "object",
            "properties": {spec.name: spec.json_schema() for spec in self.parameters},
            "additionalProperties": False,
        }

    def validate(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The request's parameters checked and normalised, or NotebookParameterError."""
        return validate_request(self.name, self.parameters, parameters)

    def parameters_from_text(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """``(name, text)`` pairs typed by a person converted to checked values."""
        return parse_text_request(self.name, self.parameters, pairs)

    def imported_modules(self) -> set[str]:
        """The modules the notebook's code cells import by name (``import a.b``, ``from a.b
        import c``; relative imports and cells that are not plain Python are left out)."""
        found: set[str] = set()
        for cell in self.notebook.cells:
            if cell.cell_type != "code":
                continue
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                continue  # IPython magics or shell lines: not Python this can read
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module)
        return found


def default_notebook_folder(settings: Settings) -> Path:
    """Where the installation's notebooks are (``settings.notebook_folder``)."""
    return settings.notebook_folder


class NotebookRegistry:
    """The notebooks of one folder, re-read when a file changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[tuple[int, int], NotebookInfo | NotebookDefinitionError]] = {}

    def notebooks(self) -> list[NotebookInfo]:
        """The registered notebooks, by name."""
        return [entry for entry in self._refresh().values() if isinstance(entry, NotebookInfo)]

    def problems(self) -> dict[str, NotebookDefinitionError]:
        """Notebook files left out, by file name, with the reason."""
        return {name: entry for name, entry in self._refresh().items() if isinstance(entry, NotebookDefinitionError)}

    def get(self, name: str) -> NotebookInfo:
        """The notebook registered as ``name``, or UnknownNotebookError."""
        entry = self._refresh().get(name)
        if not isinstance(entry, NotebookInfo):
            raise UnknownNotebookError(str(name), [info.name for info in self.notebooks()])
        return entry

    def validate(self, name: str, parameters: Mapping[str, Any]) -> tuple[NotebookInfo, dict[str, Any]]:
        """The notebook and the request's checked parameters; raises NotebookRequestError."""
        info = self.get(name)
        return info, info.validate(parameters)

    def _refresh(self) -> dict[str, NotebookInfo | NotebookDefinitionError]:
        with self._lock:
            seen: dict[str, NotebookInfo | NotebookDefinitionError] = {}
            paths = sorted(self.folder.glob("*.ipynb")) if self.folder.is_dir() else []
            for path in paths:
                name = path.stem
                if name.startswith((".", "_")):
                    continue
                try:
                    status = path.stat()
                except FileNotFoundError:
                    continue  # removed while listing
                stamp = (status.st_mtime_ns, status.st_size)
                cached = self._entries.get(name)
                if cached is None or cached[0] != stamp:
                    cached = (stamp, _read(name, path))
                    self._entries[name] = cached
                seen[name] = cached[1]
            for gone in set(self._entries) - set(seen):
                del self._entries[gone]
            return seen


_registries: dict[Path, NotebookRegistry] = {}
_registries_lock = threading.Lock()


def open_registry(folder: Path) -> NotebookRegistry:
    """The registry of ``folder``, shared within this process (its cache survives between runs)."""
    key = Path(folder).resolve()
    with _registries_lock:
        registry = _registries.get(key)
        if registry is None:
            registry = _registries[key] = NotebookRegistry(key)
        return registry


def _read(name: str, path: Path) -> NotebookInfo | NotebookDefinitionError:
    """Read and describe one notebook file; a problem is returned, not raised."""
    import papermill

    if not _NAME.match(name):
        return NotebookDefinitionError(path.name, "a notebook name may hold letters, digits, '_' and '-' only")
    try:
        notebook = nbformat.read(path, as_version=4)
        inspected = papermill.inspect_notebook(str(path))
        parameters = parse_parameters(path.name, inspected)
    except NotebookDefinitionError as exc:
        return exc
    except (OSError, ValueError, KeyError, AttributeError, nbformat.ValidationError) as exc:
        # nbformat reports a broken file as ValueError (NotJSONError) or a missing key.
        return NotebookDefinitionError(path.name, f"cannot read the notebook: {type(exc).__name__}: {exc}")
    title, description = _title_and_description(notebook)
    kernelspec = notebook.metadata.get("kernelspec") or {}
    return NotebookInfo(
        name=name, path=path, title=title or name, description=description, parameters=parameters,
        kernel_name=kernelspec.get("name"), notebook=notebook,
    )


def _title_and_description(notebook: nbformat.NotebookNode) -> tuple[str, str]:
    """The first markdown heading and the first paragraph of markdown text."""
    title = description = ""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        for block in re.split(r"\n\s*\n", cell.source.strip()):
            lines = block.strip().splitlines()
            while lines and lines[0].lstrip().startswith("#"):
                if not title:
                    title = lines[0].strip().lstrip("#").strip()
                lines = lines[1:]
            text = " ".join(line.strip() for line in lines).strip()
            if text and not description:
                description = text
            if title and description:
                return title, description
    return title, description
