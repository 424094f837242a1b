"""The command line as a person uses it: `opencdms up --smoke` and `opencdms ingest`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from conftest import outside_pytest_tmp


def opencdms(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    environment.update({"OPENCDMS_HOME": str(home), "COLUMNS": "200"}, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "opencdms_kernel.cli", *args],
        capture_output=True, text=True, env=environment, timeout=300, check=False,
    )


@pytest.fixture
def home() -> Iterator[Path]:
    """A project folder for `opencdms up`, outside pytest's tree (see conftest.outside_pytest_tmp)."""
    folder = outside_pytest_tmp("opencdms-test-home-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the sockets are held until all are chosen, so they differ)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_up_smoke_on_the_embedded_defaults(home: Path) -> None:
    tmp_path = home
    # Ports of its own: a demo running on this machine, or another test, may hold the defaults.
    hub, hub_api, proxy_api, api, events, broker = free_ports(6)
    ports = {"OPENCDMS_HUB_PORT": str(hub), "OPENCDMS_HUB_API_PORT": str(hub_api),
             "OPENCDMS_HUB_PROXY_API_PORT": str(proxy_api), "OPENCDMS_API_PORT": str(api),
             "OPENCDMS_EVENTS_STATUS_PORT": str(events), "OPENCDMS_EVENTS_EMBEDDED_BROKER_PORT": str(broker)}
    result = opencdms(tmp_path, "up", "--smoke", "--demo-stations", "3", "--demo-years", "2", env=ports)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "embedded PostgreSQL" in out
    assert "smoke check passed" in out
    for part in ("datastore", "bucket", "archive"):
        assert part in out
    assert "FAILED" not in out
    assert (tmp_path / "var" / "bucket" / "archive" / "observations").is_dir()
    # The demo's AWS files, delivered to incoming/, were ingested by the event service (a job each,
    # through the API, run by the worker service); then QC, archive and the network's report of
    # the last month ran as queued jobs.
    assert "3 AWS files delivered to incoming/aws/ for the event service" in out
    for notebook in ("qc_run", "archive_refresh", "monthly_report"):
        assert notebook in out
    report = tmp_path / "var" / "bucket" / "reports" / "monthly" / "network" / "1992-12.html"
    assert report.is_file() and "<img" in report.read_text()
    assert f"report     {report.as_uri()}" in out
    # Each run's folder holds its executed notebook and its page.  Besides the pipeline's runs,
    # the smoke check's and the schedules' first fires (archive, daily QC, monthly report) are
    # there; the event service's sweep found the AWS files in the ledger and ran none again.
    runs = {run: sorted(path.name for path in run.iterdir()) for run in (tmp_path / "var" / "bucket" / "runs").iterdir()}
    notebooks = Counter(Path(names[0]).stem for names in runs.values() if names)
    assert notebooks["ingest_file"] == 3 and notebooks["qc_run"] >= 1 and notebooks["monthly_report"] >= 1
    assert notebooks["archive_refresh"] >= 2  # the pipeline's and the smoke check's (through the API)
    finished = [names for names in runs.values() if any(name.endswith(".html") for name in names)]
    assert all(any(name.endswith(".ipynb") for name in names) for names in finished)
    assert re.search(rf"hub\s+│\s+ok\s+│\s+answering on http://127\.0\.0\.1:{hub}/", out)
    assert re.search(r"^admin\s+user admin, password \S+", out, re.MULTILINE)
    assert "a scientist's server started" in out
    assert "opencdms-smoke logged in over HTTP" in out
    assert re.search(r"archive_refresh ran through the API in [0-9.]+ s", out)
    assert "the event service's status answers at /services/events/" in out
    # Started again (running, as `make demo`), the data is kept and nothing is loaded twice; the
    # administrator's server is started; Ctrl-C stops everything: no process of ours is left.
    password = re.search(r"^admin\s+user admin, password (\S+)", out, re.MULTILINE).group(1)  # type: ignore[union-attr]
    again = _up_until_ctrl_c(tmp_path, ports, hub, password)
    assert not re.search(r"demo data: [0-9,]+ observations", again)
    assert re.search(r"the event service ingesting incoming/aws/ .* 3/3", again)  # already in the ledger
    deadline = time.monotonic() + 20  # a process may still be on its way out when `up` returns
    while (left := {pid: _command_line(pid) for pid in _our_processes(tmp_path)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == {}, "left running after Ctrl-C:\n" + "\n".join(f"{pid}: {command}" for pid, command in left.items())
    # The products a climate section asks for, from the archive that `up` exported.
    for command in (("product", "monthly", "1991"), ("product", "normals", "1991-2020"),
                    ("product", "indices", "1991"), ("product", "climat", "0-20000-0-60001", "1991-07")):
        made = opencdms(tmp_path, *command)
        assert made.returncode == 0, f"{command}: {made.stdout}{made.stderr}"
        assert "written to" in made.stdout, made.stdout


def _up_until_ctrl_c(home: Path, ports: dict[str, str], hub_port: int, admin_password: str) -> str:
    """`opencdms up` in a process group of its own, as a terminal runs it; once it runs, the
    administrator logs in over HTTP and starts their server; then Ctrl-C (SIGINT to the group).
    Returns what it printed."""
    from opencdms_kernel.hub import HubSession

    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    environment.update({"OPENCDMS_HOME": str(home), "COLUMNS": "200"}, **ports)
    process = subprocess.Popen([sys.executable, "-m", "opencdms_kernel.cli", "up"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=environment, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("press Ctrl-C" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        session = HubSession(f"http://127.0.0.1:{hub_port}/")
        session.login("admin", admin_password)
        session.get("hub/spawn")  # as the "Start My Server" button does
        while not any(b"JUPYTERHUB_USER=admin" in _environ(pid) for pid in _our_processes(home)):
            assert time.monotonic() < deadline, "the administrator's server did not start"
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        reader.join(timeout=10)
    assert process.returncode == 0, "".join(lines)
    return "".join(lines)


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def _our_processes(home: Path) -> list[int]:
    """Live processes of the installation in ``home``: its settings in their environment (the hub,
    the proxy, the services, the users' servers and kernels) or its folder on their command line
    (the embedded PostgreSQL)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (f"OPENCDMS_HOME={home}".encode() in _environ(int(entry.name)).split(b"\0")
                             or str(home).encode() in command):
            found.append(int(entry.name))
    return found


def test_bad_setting_stops_at_start_with_the_variable_named(tmp_path: Path) -> None:
    result = opencdms(tmp_path, "db", "current", env={"OPENCDMS_BUCKET_URL": "ftp://nowhere"})
    assert result.returncode == 2
    assert "OPENCDMS_BUCKET_URL" in result.stdout


def test_ingest_command_reports_rejects_and_fails_on_a_bad_file(tmp_path: Path, database_url: str) -> None:
    env = {"OPENCDMS_DATABASE_URL": database_url}
    stations = tmp_path / "stations.csv"
    stations.write_text("wigos_id,name,latitude,longitude\n0-20000-0-60001,Alpha,-1,36\n")
    assert opencdms(tmp_path, "stations", "import", str(stations), env=env).returncode == 0
    good = tmp_path / "good.csv"
    good.write_text("station,element,time,value\n0-20000-0-60001,TMAX,2020-01-01,25.1\n"
                    "0-20000-0-60001,TMAX,2020-01-02,hot\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = opencdms(tmp_path, "ingest", str(empty), str(good), env=env)
    assert result.returncode == 1
    assert "empty.csv: the file is empty" in result.stdout
    assert "line 3, column 'value': not a number ('hot')" in result.stdout
    assert "loaded" in result.stdout


def test_a_command_on_a_database_without_the_schema_says_what_to_run(home: Path) -> None:
    result = opencdms(home, "notebooks", "jobs")
    assert result.returncode == 1
    assert "run `opencdms db upgrade`" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_every_command_shows_its_help_and_exits_0(tmp_path: Path) -> None:
    """--help ends a command early (click raises its Exit): never reported as an error."""
    import typer.main
    from typer.testing import CliRunner

    from opencdms_kernel.cli import app

    root = typer.main.get_command(app)
    paths = [[name, *([sub] if sub else [])]
             for name, command in root.commands.items()  # type: ignore[attr-defined]
             for sub in [None, *getattr(command, "commands", {})]]
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"OPENCDMS_HOME": str(tmp_path)})
        assert result.exit_code == 0, (path, result.output)
        assert "unexpected error" not in result.output
