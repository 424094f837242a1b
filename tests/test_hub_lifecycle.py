"""The hub dies and comes back: a hub killed (kill -9) or stopped (SIGTERM) behind `opencdms up`'s
back is started again by its supervisor; its services come back, and a user's running server
survives, the same process, reachable through the proxy as before."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PostgresServer, outside_pytest_tmp
from opencdms_kernel.db import migrate
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.roles import drop_roles
from opencdms_kernel.hub import hub_process_of_run, processes_of_run
from support.hub import RunningTestHub, hub_settings, started_hub

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def hub(embedded_server: PostgresServer) -> Iterator[RunningTestHub]:
    """A hub with the API and the worker as its services, over a database of its own with roles of
    its own (the services log in as its application role; a clone of the template would share the
    template's roles, whose passwords other tests may change)."""
    name = embedded_server.new_empty_database()
    home = outside_pytest_tmp("opencdms-test-hub-restart-")
    settings = hub_settings(home, database_url=embedded_server.url_of(name), services=("api", "worker"),
                            database_role_prefix=f"hubrestart_{secrets.token_hex(4)}")
    with Datastore.open(settings) as datastore:
        migrate.upgrade(datastore)
    try:
        with started_hub(home, database_url=embedded_server.url_of(name), settings=settings) as running:
            yield running
    finally:
        with Datastore.open(settings) as datastore:
            drop_roles(datastore)
        embedded_server.drop(name)
        shutil.rmtree(home, ignore_errors=True)


def _status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _server_pid(run_id: str, user: str) -> int | None:
    """The user's single-user server: the process of the run whose environment names the user
    and that is no kernel (a kernel inherits the variable too)."""
    for pid in processes_of_run(run_id):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if f"JUPYTERHUB_USER={user}".encode() in environ and b"ipykernel" not in command:
            return pid
    return None


def _service_pids(run_id: str, service: str) -> set[int]:
    return {pid for pid in processes_of_run(run_id)
            if f"JUPYTERHUB_SERVICE_NAME={service}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_hub_that_dies_comes_back_with_its_services_and_the_users_servers_survive(
        hub: RunningTestHub, how: signal.Signals) -> None:
    run_id = hub.server.run_id
    user = hub.create_user(f"restart-{how.name.lower()}", "scientist")
    status, _ = hub.api("POST", f"/users/{user.name}/server")
    assert status in (201, 202), status
    server_url = f"{hub.url}user/{user.name}/api/status"
    _wait(lambda: _status(server_url, user.token) == 200, 90, "the user's server answering")
    server = _server_pid(run_id, user.name)
    api_before = _service_pids(run_id, "api")
    old_hub = hub_process_of_run(run_id)
    assert server and api_before and old_hub

    os.kill(old_hub, how)

    new_hub = _wait(lambda: (pid := hub_process_of_run(run_id)) not in (None, old_hub) and pid, 120,
                    "a new hub process")
    _wait(lambda: _status(f"{hub.url}hub/health", user.token) == 200, 120, "the new hub answering")
    # The services came back: new processes, answering through the proxy.
    _wait(lambda: _status(f"{hub.url}services/api/collections?f=json", user.token) == 200, 120,
          "the API answering through the proxy again")
    api_after = _service_pids(run_id, "api")
    assert api_after and not api_after & api_before, "the API was not started anew (or an old one was left)"
    assert _service_pids(run_id, "worker"), "the worker service did not come back"
    # The user's server is the same process, still reachable through the (kept) proxy.
    assert _server_pid(run_id, user.name) == server
    assert _status(server_url, user.token) == 200
    _, model = hub.api("GET", f"/users/{user.name}")
    assert isinstance(model, dict) and model["servers"][""]["ready"]
    assert old_hub not in processes_of_run(run_id) and new_hub in processes_of_run(run_id)
