"""JupyterLab for the demo: one server on 127.0.0.1 over the project folder, started and stopped here.

JupyterHub replaces it in a later stage; until then `opencdms up` starts this server so that
the catalog and the notebooks can be opened in a browser.  It runs in its own process with the
installation's settings as ``OPENCDMS_*`` variables (as a recorded run's kernel gets them), so
every kernel it starts (the ``opencdms`` kernel spec) sees the same datastore and bucket.  Nothing it does reaches beyond
127.0.0.1: update checks and the news feed are switched off.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.notebooks.execution import kernel_environment
from opencdms_kernel.settings import Settings


@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab: its address, its token and its log file."""

    url: str
    token: str
    log: Path

    @property
    def login_url(self) -> str:
        """The URL to open in a browser (the token logs in)."""
        return f"{self.url}lab?token={self.token}"


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there on 127.0.0.1, else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]


@contextmanager
def jupyterlab(
    settings: Settings, *, database_url: str | None = None, port: int = 8888, start_timeout: float = 60.0
) -> Iterator[LabServer]:
    """Start JupyterLab on 127.0.0.1 over the project folder; stop it when the block ends.

    The project folder is the one holding ``notebooks/`` (and ``catalog/``), so a person finds
    the notebooks that run as processes and can open them in the ``opencdms`` kernel.

    ``database_url``: the running datastore's URL, so that kernels connect to the embedded
    PostgreSQL this process started instead of starting their own (as recorded runs do).

    Raises :class:`OpenCDMSError` (with the end of the server's log) when it does not answer
    within ``start_timeout`` seconds.
    """
    port = free_port(port)
    token = secrets.token_urlsafe(24)
    log = settings.var_dir / "logs" / "jupyterlab.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.root_dir={settings.notebook_folder.parent}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
        "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    # The token goes through the environment, not the command line (visible to `ps`).
    environment = kernel_environment(settings, database_url=database_url) | {"JUPYTER_TOKEN": token}
    url = f"http://127.0.0.1:{port}/"
    with log.open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=settings.home)
    try:
        _wait_until_answering(process, f"{url}api/status?token={token}", start_timeout, log)
        yield LabServer(url=url, token=token, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_answering(process: subprocess.Popen, status_url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OpenCDMSError(f"JupyterLab exited with code {process.returncode}; see {log}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(status_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise OpenCDMSError(f"JupyterLab did not answer within {timeout:.0f} s; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
