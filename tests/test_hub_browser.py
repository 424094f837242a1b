"""The hub in a real browser (Debian's chromium through Playwright): sign-up, approval, login,
wrong password, lockout, logout; role-based landing and refusals; JupyterLab; and the database
refusing a clerk's raw SQL, run in the clerk's own server.  Screenshots: var/test-artifacts/
(or $OPENCDMS_TEST_ARTIFACTS)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PostgresServer, outside_pytest_tmp
from support.browser import Shots, run_in_kernel
from support.apps import record_requests
from support.hub import RunningTestHub, started_hub

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def hub_database(embedded_server: PostgresServer) -> Iterator[str]:
    """A migrated database of its own on the embedded server (superuser over its socket)."""
    name = embedded_server.new_database()
    yield embedded_server.url_of(name)
    embedded_server.drop(name)


@pytest.fixture(scope="module")
def hub(hub_database: str) -> Iterator[RunningTestHub]:
    home = outside_pytest_tmp("opencdms-test-hub-")
    with started_hub(home, database_url=hub_database) as running:
        yield running



def log_in(page: object, hub: RunningTestHub, name: str, password: str) -> None:
    page.goto(f"{hub.url}hub/login")  # type: ignore[attr-defined]
    page.fill("#username_input", name)  # type: ignore[attr-defined]
    page.fill("#password_input", password)  # type: ignore[attr-defined]
    with page.expect_navigation():  # type: ignore[attr-defined]
        page.click("#login_submit")  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]


def in_thread(function, *args):  # type: ignore[no-untyped-def]
    """Run ``function`` in a thread of its own (its own asyncio loop, apart from Playwright's)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = function(*args)
        except BaseException as exc:  # re-raised below, in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(180)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


def test_sign_up_admin_approval_login_and_logout(hub: RunningTestHub, page: object, chromium: object, shots: Shots) -> None:
    password = "Tmax-and-Tmin-2024"
    page.goto(f"{hub.url}hub/signup")
    shots(page, "signup-form")
    page.fill("#username_input", "nina")
    page.fill("#password_input", password)
    page.fill("#password_confirmation_input", password)
    with page.expect_navigation():
        page.click("#signup_submit")
    assert "has been sent to the admin" in page.content()
    shots(page, "signup-sent")

    log_in(page, hub, "nina", password)  # not yet authorised
    assert "has not been authorized by an administrator yet" in page.content()
    shots(page, "login-before-approval")

    admin_context = chromium.new_context()
    admin = admin_context.new_page()
    log_in(admin, hub, hub.server.admin_user, hub.admin_password)
    admin.goto(f"{hub.url}hub/authorize")
    shots(admin, "admin-authorization-area")
    with admin.expect_navigation():
        admin.click("a[href$='authorize/nina']")
    assert "nina" in admin.content()
    shots(admin, "admin-authorized-nina")
    admin_context.close()

    hub.api("POST", "/users/nina")
    hub.set_role("nina", "scientist")
    log_in(page, hub, "nina", password)
    page.wait_for_url("**/user/nina/lab**", timeout=90_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=90_000)
    shots(page, "nina-jupyterlab")

    page.goto(f"{hub.url}hub/logout")
    page.wait_for_url("**/hub/login**")
    shots(page, "logged-out")
    page.goto(f"{hub.url}hub/home")
    assert "/hub/login" in page.url  # the session is gone


def test_a_user_without_a_role_gets_no_server(hub: RunningTestHub, page: object, shots: Shots) -> None:
    user = hub.create_native_user("norole", None)
    log_in(page, hub, user.name, user.password)
    page.wait_for_load_state()
    shots(page, "no-role")
    assert "has no role yet" in page.content()


def test_a_wrong_password_is_refused_and_repeated_failures_lock_the_account(
    hub: RunningTestHub, page: object, shots: Shots
) -> None:
    user = hub.create_native_user("walter", "scientist")
    log_in(page, hub, user.name, "not-" + user.password)
    assert "Invalid username or password" in page.content()
    assert "/hub/login" in page.url
    shots(page, "wrong-password")
    for _ in range(3):  # FAILED_LOGINS_ALLOWED failures in a row
        log_in(page, hub, user.name, "still-wrong-password")
    log_in(page, hub, user.name, user.password)  # the right password, now too late
    assert "Invalid username or password" in page.content()
    assert "/hub/login" in page.url
    shots(page, "locked-out")


def _status(url: str, token: str | None = None, method: str = "GET", body: bytes | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=body,
                                     headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_clerk_lands_in_data_entry_and_is_refused_elsewhere(hub: RunningTestHub, page: object, shots: Shots) -> None:
    clerk = hub.create_native_user("carla", "clerk")
    other = hub.create_user("sam", "scientist")
    recorded = record_requests(page)
    log_in(page, hub, clerk.name, clerk.password)
    # The clerk's server opens the data-entry app (Voilà behind the server's proxy), acting for her.
    page.wait_for_url(f"**/user/carla{hub.settings.hub_clerk_url}**", timeout=90_000)
    page.get_by_text("Keying as").wait_for(timeout=90_000)
    assert "carla" in page.get_by_text("Keying as").inner_text()
    shots(page, "clerk-landing")
    # The administration app, in her own server (panel serve behind the proxy), refuses her.
    page.goto(f"{hub.url}user/carla/opencdms-apps/admin")
    page.get_by_text("is not an administrator").wait_for(timeout=90_000)
    shots(page, "clerk-admin-app-refused")
    assert recorded.leaving() == []
    # Behind the proxy, not around it: Voilà's own port answers nobody without the proxy's token,
    # and Panel listens on a socket in a folder only the server's user may enter.
    [voila], [panel] = (_app_processes(hub, marker) for marker in APP_MARKERS)
    port = next(argument.split("=", 1)[1] for argument in voila if argument.startswith("--port="))
    with pytest.raises(urllib.error.HTTPError) as refused:  # sent to Voilà's token form instead
        urllib.request.build_opener(_NoRedirect).open(f"http://127.0.0.1:{port}/", timeout=30)
    assert refused.value.code == 302 and "/login?" in refused.value.headers["Location"]
    socket_path = Path(next(argument.split("=", 1)[1] for argument in panel if argument.startswith("--unix-socket=")))
    assert socket_path.is_socket() and socket_path.parent.stat().st_mode & 0o077 == 0

    response = page.goto(f"{hub.url}hub/admin")
    assert response.status == 403
    shots(page, "clerk-hub-admin-refused")
    response = page.goto(f"{hub.url}hub/authorize")
    assert response.status == 403
    response = page.goto(f"{hub.url}user/{other.name}/lab")
    page.wait_for_load_state()
    assert response.status == 403 or "not allowed" in page.content().lower() or "/user/carla/" not in page.url
    assert f"/user/{other.name}/lab" not in page.url or response.status >= 400
    shots(page, "clerk-other-server-refused")
    # Through the hub's API too: the clerk's token may not read another user or start their
    # server (JupyterHub answers 404 for a user one may not see, so as not to confirm the name).
    assert _status(f"{hub.server.api_url}/users/{other.name}", clerk.token) in (403, 404)
    assert _status(f"{hub.server.api_url}/users/{other.name}/server", clerk.token, "POST", b"") in (403, 404)
    assert hub.api("GET", f"/users/{other.name}")[1]["servers"] == {}  # type: ignore[index]
    # Her server stopped: its app processes go with it.
    assert hub.api("DELETE", f"/users/{clerk.name}/server")[0] in (202, 204)
    deadline = time.monotonic() + 60
    while any(_app_processes(hub, marker) for marker in APP_MARKERS):
        assert time.monotonic() < deadline, "app processes outlived their server"
        time.sleep(0.2)


# The data-entry Voilà and the Panel apps' process, as their command lines show them.
APP_MARKERS = ("data_entry.ipynb", "--unix-socket=")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _app_processes(hub: RunningTestHub, marker: str) -> list[list[str]]:
    """The command lines of this hub's app processes (apps/proxy.py) that hold ``marker``."""
    home = f"OPENCDMS_HOME={hub.settings.home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            arguments = (proc / "cmdline").read_bytes().decode().split("\0")
            if marker in " ".join(arguments) and home in (proc / "environ").read_bytes().split(b"\0"):
                found.append(arguments)
        except (OSError, UnicodeDecodeError):
            continue  # gone meanwhile, or not ours
    return found


def test_raw_sql_in_a_clerks_server_is_refused_by_the_database(hub: RunningTestHub) -> None:
    clerk = hub.create_user("cleo", "clerk")
    hub.wait_for_server(clerk.name)
    code = """
import os
import sqlalchemy as sa
url = os.environ["OPENCDMS_DATABASE_URL"]
print("LOGIN", sa.engine.make_url(url).username)
engine = sa.create_engine(url)
for statement in ["UPDATE observation SET value = value + 1", "SELECT count(*) FROM observation",
                  "SELECT count(*) FROM station"]:
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement))
        print("DONE", statement)
    except sa.exc.DBAPIError as error:
        print("REFUSED", statement, error.orig.sqlstate)
print("HUB USER", os.environ.get("OPENCDMS_USER"), "ROLE", os.environ.get("OPENCDMS_HUB_ROLE"))
"""
    output = in_thread(run_in_kernel, f"{hub.url}user/{clerk.name}", clerk.token, code)
    assert "REFUSED UPDATE observation SET value = value + 1 42501" in output, output
    assert "REFUSED SELECT count(*) FROM observation 42501" in output, output
    assert "DONE SELECT count(*) FROM station" in output, output
    assert "HUB USER cleo ROLE clerk" in output, output
    assert "LOGIN opencdms_" in output and "postgres" not in output.split("LOGIN", 1)[1].splitlines()[0]
    # The password reached the server through its environment only: not the hub's log or database.
    password = hub.api("GET", f"/users/{clerk.name}")  # (nothing secret in the model either)
    assert "OPENCDMS_DATABASE_URL" not in str(password)
    log_text = Path(hub.server.log).read_text(errors="replace")
    assert "OPENCDMS_DATABASE_URL" not in log_text


def test_a_scientist_opens_jupyterlab_and_reads_the_catalog_in_the_opencdms_kernel(
    hub: RunningTestHub, page: object, shots: Shots
) -> None:
    scientist = hub.create_native_user("ada", "scientist")
    log_in(page, hub, scientist.name, scientist.password)
    page.wait_for_url("**/user/ada/lab**", timeout=90_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=90_000)
    page.wait_for_timeout(1500)  # the launcher's icons
    shots(page, "scientist-jupyterlab")
    code = """
import os
from opencdms_kernel.settings import Settings
from opencdms_kernel.catalog import open_catalog
catalog = open_catalog(Settings())
print("ENTRIES", sorted(catalog)[:50])
print("USER", Settings().user)
"""
    output = in_thread(run_in_kernel, f"{hub.url}user/{scientist.name}", scientist.token, code)
    assert "ENTRIES" in output and "Error" not in output, output
    assert "USER ada" in output, output
