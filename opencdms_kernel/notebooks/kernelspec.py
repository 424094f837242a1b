"""The ``opencdms`` Jupyter kernel: this environment's Python, told where the project is.

The spec lives in ``<sys.prefix>/share/jupyter/kernels/opencdms`` (the environment's own
Jupyter data folder, so JupyterLab, Voilà and papermill started from this environment find it
without a per-user install).  It runs ``<this python> -m ipykernel_launcher -f
{connection_file}`` with ``OPENCDMS_HOME`` set to the project folder, so ``Settings()`` in a
person's own session finds the installation's settings and catalog without set-up.

Recorded runs do not rely on the spec's ``env``: the runner gives the kernel the run's settings
as its environment, and those win (see :mod:`opencdms_kernel.notebooks.execution`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

KERNEL_NAME = "opencdms"
DISPLAY_NAME = "OpenCDMS (Python 3)"


def kernel_spec_dir(prefix: Path | None = None) -> Path:
    """Folder of the ``opencdms`` kernel spec under ``prefix`` (default: this environment)."""
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def kernel_spec_dict(home: Path) -> dict[str, Any]:
    """The ``kernel.json`` content: ipykernel's own spec for this Python, renamed, with the home."""
    from ipykernel.kernelspec import get_kernel_dict  # the protocol version and metadata it supports

    spec = get_kernel_dict()
    spec["argv"] = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec["display_name"] = DISPLAY_NAME
    spec["language"] = "python"
    spec["env"] = {"OPENCDMS_HOME": str(Path(home).resolve())}
    return spec


def install_kernel_spec(home: Path, *, prefix: Path | None = None) -> Path:
    """Install (or update) the ``opencdms`` kernel spec pointing at ``home``; returns its folder.

    Idempotent: an identical spec is left untouched (no write), a different one is replaced.
    """
    from ipykernel.kernelspec import RESOURCES

    target = kernel_spec_dir(prefix)
    wanted = kernel_spec_dict(home)
    if _read_spec(target) == wanted:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for logo in Path(RESOURCES).iterdir():
        if not (target / logo.name).exists():
            shutil.copyfile(logo, target / logo.name)
    # Write beside and rename, so a kernel starting meanwhile never reads half a file.
    partial = target / f"kernel.json.{os.getpid()}.partial"  # test workers may install at once
    partial.write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")
    partial.replace(target / "kernel.json")
    return target


def ensure_kernel_spec(home: Path) -> Path:
    """Make sure this environment has an ``opencdms`` kernel running this Python (cheap check).

    A spec that exists and runs this interpreter is kept as it is, whatever home it names (the
    person who installed it chose that; runs pass their own settings).  A missing spec, or one
    for another interpreter, is (re)installed with ``home``.
    """
    target = kernel_spec_dir()
    current = _read_spec(target)
    if current is not None and current.get("argv", [None])[0] == sys.executable:
        return target
    return install_kernel_spec(home)


def _read_spec(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "kernel.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a damaged spec is rewritten
