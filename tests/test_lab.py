"""JupyterLab as `opencdms up` starts it: on 127.0.0.1, token login, the notebooks and the kernel there."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.lab import jupyterlab
from opencdms_kernel.notebooks import ensure_kernel_spec, open_registry
from opencdms_kernel.settings import Settings


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks_and_the_opencdms_kernel(settings: Settings, datastore: Datastore) -> None:
    ensure_kernel_spec(settings.notebook_folder.parent)
    with jupyterlab(settings, database_url=datastore.url.render_as_string(hide_password=False)) as lab:
        assert lab.url.startswith("http://127.0.0.1:")
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no access
            _get(f"{lab.url}api/contents/notebooks")
        assert refused.value.code == 403
        specs = _get(f"{lab.url}api/kernelspecs?token={lab.token}")["kernelspecs"]
        assert specs["opencdms"]["spec"]["display_name"] == "OpenCDMS (Python 3)"
        listed = _get(f"{lab.url}api/contents/notebooks?token={lab.token}")["content"]
        names = {item["name"].removesuffix(".ipynb") for item in listed if item["type"] == "notebook"}
        assert names == {info.name for info in open_registry(settings.notebook_folder).notebooks()}
        assert len(names) == 8
    with pytest.raises(urllib.error.URLError):  # stopped with the block
        _get(f"{lab.url}api/status?token={lab.token}")
