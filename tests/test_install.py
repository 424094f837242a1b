"""`pip install .` (not editable) works: the catalog and the notebooks ship with the package."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]

PROBE = """
import opencdms_kernel, json
from opencdms_kernel.catalog import CATALOG_PATH, open_catalog
from opencdms_kernel.notebooks import open_registry
from opencdms_kernel.settings import Settings
settings = Settings()
catalog = open_catalog(settings)
print(json.dumps({
    "package": opencdms_kernel.__file__,
    "catalog": str(CATALOG_PATH),
    "entries": sorted(catalog.entries),
    "notebooks": sorted(info.name for info in open_registry(settings.notebook_folder).notebooks()),
}))
"""


@pytest.mark.slow
def test_a_non_editable_install_finds_its_catalog_and_notebooks(tmp_path: Path) -> None:
    # A venv of its own (pip install into this one, even with --prefix, would uninstall this
    # environment's editable install): the package alone, without its dependencies, which
    # come from this environment through PYTHONPATH.  The editable install of the source tree
    # is a path hook of this environment's site folder, not seen through PYTHONPATH, so only
    # the installed copy is importable.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(PROJECT)],
                   check=True, capture_output=True, text=True, timeout=600)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    env.update(PYTHONPATH=sysconfig.get_path("purelib"), OPENCDMS_HOME=str(tmp_path))
    result = subprocess.run([str(python), "-c", PROBE], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=True)
    import json

    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(site))
    assert found["catalog"] == str(venv / "share" / "opencdms" / "catalog" / "opencdms.yaml")
    assert {"stations", "observations_live", "observations_archive"} <= set(found["entries"])
    assert found["notebooks"] == sorted(path.stem for path in (PROJECT / "notebooks").glob("*.ipynb"))

    # A shipped notebook runs from the installed copy, on the embedded datastore it starts.  The
    # dependencies' data files (nbconvert's templates) are this environment's, as their code is.
    env["JUPYTER_PATH"] = str(Path(sysconfig.get_path("data")) / "share" / "jupyter")
    opencdms = str(venv / "bin" / "opencdms")
    subprocess.run([opencdms, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True,
                   timeout=300, check=True)
    run = subprocess.run([opencdms, "notebooks", "run", "archive_refresh"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "successful" in run.stdout
    assert len(list((tmp_path / "var" / "bucket" / "runs").glob("*/archive_refresh.html"))) == 1
