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
    prefix = tmp_path / "prefix"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--prefix", str(prefix), str(PROJECT)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    # Only the installed copy is importable (this environment's own is an editable install
    # of the source tree): the installed package comes first on the path, and the source
    # tree is not the working folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    env.update(PYTHONPATH=str(site), OPENCDMS_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=True)
    import json

    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(site))
    assert found["catalog"] == str(prefix / "share" / "opencdms" / "catalog" / "opencdms.yaml")
    assert {"stations", "observations_live", "observations_archive"} <= set(found["entries"])
    assert found["notebooks"] == sorted(path.stem for path in (PROJECT / "notebooks").glob("*.ipynb"))
