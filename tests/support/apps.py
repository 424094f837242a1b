"""The apps served standalone (``panel serve``, ``voila``) for the browser tests, and pages whose
every network request is recorded (none may leave 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from opencdms_kernel.settings import PROJECT_FOLDER, Settings

APPS = PROJECT_FOLDER / "apps"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@dataclass
class RunningApp:
    """An app server of a test: its URL, its process (a group of its own) and its log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM to the whole group (Panel ignores SIGINT under some parents), then SIGKILL."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log (for a failing test's message)."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def app_environment(settings: Settings, user: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an app server acting for ``user``: the test's settings only (nothing
    inherited from the caller's ``OPENCDMS_*``), Jupyter's data inside the test's home."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("OPENCDMS_", "JUPYTERHUB_"))}
    environment.update(settings.as_environment())
    environment["OPENCDMS_USER"] = user
    environment["JUPYTER_DATA_DIR"] = str(settings.home / "jupyter-data")
    environment["JUPYTER_RUNTIME_DIR"] = str(settings.home / "jupyter-runtime")
    environment.update(extra or {})
    return environment


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str], url: str, settings: Settings, user: str, log: Path,
           extra: dict[str, str] | None, timeout: float) -> RunningApp:
    handle = log.open("ab")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=PROJECT_FOLDER,
                               env=app_environment(settings, user, extra), start_new_session=True)
    app = RunningApp(url, process, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{command[2:4]} exited with {process.returncode}:\n{app.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                if answer.status == 200:
                    return app
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            app.stop()
            raise AssertionError(f"{url} did not answer within {timeout} s:\n{app.log_tail()}")
        time.sleep(0.25)


def serve_panel(app: str, settings: Settings, user: str, log: Path, *, extra: dict[str, str] | None = None,
                timeout: float = 90.0) -> RunningApp:
    """``panel serve apps/<app>.py`` on a free 127.0.0.1 port, acting for ``user``; returns once
    the page answers."""
    port = _free_port()
    command = [sys.executable, "-m", "panel", "serve", str(APPS / f"{app}.py"), "--address", "127.0.0.1",
               "--port", str(port), "--allow-websocket-origin", f"127.0.0.1:{port}", "--num-procs", "1"]
    return _start(command, f"http://127.0.0.1:{port}/{app}", settings, user, log, extra, timeout)


def serve_voila(notebook: str, settings: Settings, user: str, log: Path, *, extra: dict[str, str] | None = None,
                timeout: float = 90.0) -> RunningApp:
    """``voila apps/<notebook>.ipynb`` on a free 127.0.0.1 port, acting for ``user``."""
    port = _free_port()
    command = [sys.executable, "-m", "voila", str(APPS / f"{notebook}.ipynb"), "--no-browser",
               f"--port={port}", "--Voila.ip=127.0.0.1"]
    return _start(command, f"http://127.0.0.1:{port}/", settings, user, log, extra, timeout)


@dataclass
class RecordedRequests:
    """Every URL a page asked for (attach with :func:`record_requests`)."""

    urls: list[str] = field(default_factory=list)

    def leaving(self) -> list[str]:
        """The requests that went anywhere but 127.0.0.1 (data: and blob: URLs are local)."""
        return [url for url in self.urls
                if urlsplit(url).scheme in ("http", "https", "ws", "wss")
                and urlsplit(url).hostname not in LOCAL_HOSTS]


def record_requests(page: object) -> RecordedRequests:
    """Record every request ``page`` makes from now on (websockets included)."""
    recorded = RecordedRequests()
    page.on("request", lambda request: recorded.urls.append(request.url))  # type: ignore[attr-defined]
    page.on("websocket", lambda socket: recorded.urls.append(socket.url))  # type: ignore[attr-defined]
    return recorded
