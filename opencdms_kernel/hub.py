"""Start and stop JupyterHub for `opencdms up` and the tests: the hub, its proxy, its services,
the users' servers, and nothing left behind.

The hub's configuration is ``jupyterhub_config.py`` (``services/hub/config.py``); this module
only runs it, as a separate process, so the kernel imports no web framework.  What it does:

- **the first administrator** (NativeAuthenticator): a record with a generated password is
  written into the hub's database before the hub starts, and the password is returned once, for
  the caller to print; later starts find the record and return no password;
- **one run, one marker**: every process of a run (hub, proxy, services, users' servers, their
  kernels) carries ``OPENCDMS_HUB_RUN=<id>`` in its environment.  JupyterHub starts each of them
  in a session of its own (so a signal to the hub's process group does not reach them), hence
  the marker: :func:`processes_of_run` finds them all, and stopping ends with a sweep of any
  that are left (there should be none; the count is returned for tests to check);
- **a hub that dies is started again** (:class:`HubSupervisor`): its orphaned services are ended
  first; users' servers and the proxy are kept, and the new hub takes them over;
- **stopping**: the users' servers through the hub's API (the hub keeps them across its own
  restarts: ``cleanup_servers`` is off), then the hub (SIGTERM: it stops its services), then the
  proxy (kept across hub restarts too), then the sweep.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping

from opencdms_kernel.errors import ServiceError
from opencdms_kernel.settings import PROJECT_FOLDER, Settings

log = logging.getLogger("opencdms.hub")

HUB_RUN_VARIABLE = "OPENCDMS_HUB_RUN"
CONTROL_TOKEN_VARIABLE = "OPENCDMS_HUB_CONTROL_TOKEN"
CONTROL_SERVICE = "opencdms-control"
CONFIG_FILE = PROJECT_FOLDER / "jupyterhub_config.py"
PROXY_FOLDER = PROJECT_FOLDER / "services" / "hub" / "proxy"


class HubError(ServiceError):
    """The hub did not start, or did not stop; the message says where its log is."""


def hub_folder(settings: Settings) -> Path:
    """The hub's state: its database, cookie secret, proxy token and pid files, users' homes."""
    return settings.var_dir / "hub"


def proxy_token_file(settings: Settings) -> Path:
    """The proxy's token (kept so that a restarted hub can take over the running proxy)."""
    return hub_folder(settings) / "proxy-token"


def proxy_pid_file(settings: Settings) -> Path:
    """Where JupyterHub records the proxy's pid."""
    return hub_folder(settings) / "proxy.pid"


def hub_log_file(settings: Settings) -> Path:
    """The hub's log (its services' and the users' servers' output too)."""
    return settings.var_dir / "logs" / "jupyterhub.log"


def proxy_command() -> list[str]:
    """configurable-http-proxy as ``make install`` put it into the repository (npm, not global)."""
    return [str(PROXY_FOLDER / "node_modules" / ".bin" / "configurable-http-proxy")]


def hub_database_url(settings: Settings) -> str:
    """The hub's own SQLite database (users, groups, roles, tokens, servers)."""
    return f"sqlite:///{hub_folder(settings) / 'jupyterhub.sqlite'}"


def ensure_first_admin(settings: Settings) -> str | None:
    """Create the first administrator's NativeAuthenticator record, authorised, with a
    generated password; returns the password, or None when the record exists (or another
    authenticator is configured: the identity provider has the administrators)."""
    if settings.hub_authenticator != "native":
        return None
    return native_user(settings, settings.hub_admin_user, replace=False)


def native_user(settings: Settings, name: str, *, replace: bool) -> str | None:
    """Give ``name`` an authorised NativeAuthenticator record with a generated password and
    return the password; an existing record is kept (None) unless ``replace``."""
    import bcrypt
    from jupyterhub import orm
    from nativeauthenticator.orm import UserInfo  # registers users_info with the hub's tables

    folder = hub_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    # JupyterHub stamps a new database with alembic, which logs to the screen at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    session = orm.new_session_factory(hub_database_url(settings))()
    try:
        found = UserInfo.find(session, name)
        if found is not None and not replace:
            return None
        password = secrets.token_urlsafe(18)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        if found is None:
            session.add(UserInfo(username=name, is_authorized=True, password=hashed))
        else:
            found.password, found.is_authorized, found.login_email_sent = hashed, True, False
        session.commit()
        return password
    finally:
        session.close()
        session.get_bind().dispose()


def remove_native_user(settings: Settings, name: str) -> None:
    """Remove ``name``'s NativeAuthenticator record (nothing when there is none)."""
    from jupyterhub import orm
    from nativeauthenticator.orm import UserInfo

    session = orm.new_session_factory(hub_database_url(settings))()
    try:
        found = UserInfo.find(session, name)
        if found is not None:
            session.delete(found)
            session.commit()
    finally:
        session.close()
        session.get_bind().dispose()


class HubSession:
    """A cookie-keeping HTTP client for the hub's HTML forms (login, sign-up, authorise), as a
    person's browser would use them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _xsrf(self) -> str:
        return next((cookie.value for cookie in self.jar if cookie.name == "_xsrf"), "")

    def get(self, path: str) -> str:
        """GET a page (redirects followed); its text."""
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode(errors="replace")

    def post(self, path: str, form: Mapping[str, str]) -> str:
        """POST a form (with the ``_xsrf`` its page sets); the answer's text, errors included."""
        self.get(path)
        data = urllib.parse.urlencode({**form, "_xsrf": self._xsrf()}).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=60) as response:
                return response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.read().decode(errors="replace")

    def login(self, name: str, password: str) -> None:
        """Log in (the session cookie), without following the redirect to a server's spawn;
        HubError when the hub answers with its form again (refused)."""
        self.get("hub/login")
        data = urllib.parse.urlencode({"username": name, "password": password, "_xsrf": self._xsrf()}).encode()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())
        try:
            with opener.open(self.base + "hub/login?next=%2Fhub%2Fhome", data=data, timeout=60) as response:
                page = response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            if exc.code != 302:
                raise
            return
        raise HubError(f"login of {name} refused: {page_text(page)[-200:]}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def page_text(html: str) -> str:
    """An HTML page's visible text, whitespace collapsed (for messages)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


@dataclass(frozen=True)
class HubServer:
    """A running hub: where people go, who administers it, and how to reach its API."""

    url: str
    admin_user: str
    admin_password: str | None  # only on the start that created the administrator
    log: Path
    run_id: str
    control_token: str = field(repr=False)

    @property
    def api_url(self) -> str:
        """The hub's REST API, through the proxy."""
        return f"{self.url}hub/api"

    def api(self, method: str, path: str, body: object | None = None, *, token: str | None = None,
            timeout: float = 30.0) -> tuple[int, object]:
        """One call of the hub's REST API (default: with the control service's token); (status, JSON)."""
        return _http(method, f"{self.api_url}{path}", token or self.control_token, body, timeout=timeout)


def hub_environment(settings: Settings, *, database_url: str | None, run_id: str, control_token: str,
                    base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The hub process's environment: ``base`` without ``OPENCDMS_*``, the settings, the
    running datastore's URL (so no process starts a second embedded server), the run marker and
    the control token."""
    environment = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("OPENCDMS_")}
    environment.update(settings.as_environment())
    if database_url:
        environment["OPENCDMS_DATABASE_URL"] = database_url
    environment[HUB_RUN_VARIABLE] = run_id
    environment[CONTROL_TOKEN_VARIABLE] = control_token
    return environment


def start_hub_process(settings: Settings, environment: Mapping[str, str], *,
                      config_file: Path = CONFIG_FILE) -> subprocess.Popen:
    """Start ``jupyterhub -f config_file`` in a session of its own (its log: :func:`hub_log_file`)."""
    if not Path(proxy_command()[0]).exists():
        raise HubError(f"configurable-http-proxy is not installed in {PROXY_FOLDER}: run `make install`")
    log = hub_log_file(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(config_file)]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(environment), cwd=hub_folder(settings), start_new_session=True)


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Wait for the hub to answer through its proxy (``/hub/health``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HubError(f"JupyterHub exited with code {process.returncode}; see {log}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}hub/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise HubError(f"JupyterHub did not answer within {timeout:.0f} s; see {log}:\n{_tail(log)}")


class HubSupervisor:
    """Keeps the hub running for :func:`running_hub`: a hub process that exits while it should be
    running (a crash, kill -9, the OOM killer) is started again.  A hub killed without its own
    shutdown leaves its services running, holding their ports: they are ended first (the hub
    starts them anew).  The users' servers and the proxy are kept: the new hub takes them over
    (``cleanup_servers`` and ``cleanup_proxy`` are off), so nobody's work is lost."""

    def __init__(self, settings: Settings, environment: Mapping[str, str], *, config_file: Path, url: str,
                 run_id: str, start_timeout: float, check_every: float = 1.0) -> None:
        self.settings = settings
        self.environment = dict(environment)
        self.config_file = config_file
        self.url = url
        self.run_id = run_id
        self.start_timeout = start_timeout
        self.check_every = check_every
        self.restarts = 0
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="opencdms-hub-supervisor", daemon=True)

    def start(self) -> subprocess.Popen:
        """Start the hub and wait until it answers (HubError if it does not); then watch it."""
        self._start_once()
        self._thread.start()
        assert self.process is not None
        return self.process

    def _start_once(self) -> None:
        with self._lock:
            self.process = start_hub_process(self.settings, self.environment, config_file=self.config_file)
        wait_until_ready(self.process, self.url, hub_log_file(self.settings), self.start_timeout)

    def _watch(self) -> None:
        attempt = 0
        while not self._stopping.wait(self.check_every):
            if self.process is None or self.process.poll() is None:
                continue
            attempt += 1
            log.warning("JupyterHub exited with code %s; starting it again (attempt %d); see %s",
                        self.process.returncode, attempt, hub_log_file(self.settings))
            ended = end_services_of_run(self.run_id)
            if ended:
                log.warning("ended %d service process(es) the exited hub left running", ended)
            try:
                self._start_once()
            except HubError as exc:
                log.error("JupyterHub did not start again: %s", exc)
                if self._stopping.wait(min(60.0, 2.0 ** attempt)):
                    return
                continue
            attempt = 0
            self.restarts += 1
            log.warning("JupyterHub is running again (restart %d)", self.restarts)

    def stop(self) -> subprocess.Popen | None:
        """Stop watching (the caller stops the hub); the current hub process."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.process


def end_services_of_run(run_id: str, timeout: float = 10.0) -> int:
    """End the hub services of the run still alive (their processes carry
    ``JUPYTERHUB_SERVICE_NAME``; users' servers and the proxy do not); returns how many."""
    pids = [pid for pid in processes_of_run(run_id)
            if any(entry.startswith(b"JUPYTERHUB_SERVICE_NAME=") for entry in _environ_of(pid).split(b"\0"))]
    return _end(pids, timeout)


def hub_process_of_run(run_id: str) -> int | None:
    """The pid of the run's JupyterHub process (None when it is not running)."""
    for pid in processes_of_run(run_id):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        # ``jupyterhub`` is a script: its process runs the interpreter with the script's path after it.
        if any(Path(part.decode(errors="replace")).name == "jupyterhub" for part in command[:2]):
            return pid
    return None


@contextmanager
def running_hub(
    settings: Settings, *, database_url: str | None = None, config_file: Path = CONFIG_FILE,
    start_timeout: float = 90.0, base_environment: Mapping[str, str] | None = None,
) -> Iterator[HubServer]:
    """Run JupyterHub (proxy, services) for the block, started again if it exits meanwhile
    (:class:`HubSupervisor`); stop everything it started after it.

    ``database_url``: the running datastore (superuser or CREATEROLE: the hub gives each user a
    login of their own); None: no database (users' servers get no credentials).
    """
    run_id = secrets.token_hex(8)
    control_token = secrets.token_hex(32)
    environment = hub_environment(settings, database_url=database_url, run_id=run_id,
                                  control_token=control_token, base=base_environment)
    url = f"http://{settings.hub_ip}:{settings.hub_port}/"
    hub_folder(settings).mkdir(parents=True, exist_ok=True)
    supervisor = HubSupervisor(settings, environment, config_file=config_file, url=url, run_id=run_id,
                               start_timeout=start_timeout)
    hub = HubServer(url=url, admin_user=settings.hub_admin_user, admin_password=None, log=hub_log_file(settings),
                    run_id=run_id, control_token=control_token)
    try:
        supervisor.start()
        # Only once the hub answers: a start that fails must not leave an administrator whose
        # password nobody saw.  (NativeAuthenticator reads its table at each login.)
        hub = replace(hub, admin_password=ensure_first_admin(settings))
        yield hub
    finally:
        process = supervisor.stop()
        stop_hub(settings, hub, process)


def stop_servers(hub: HubServer, timeout: float = 30.0) -> None:
    """Stop every user's server through the hub's API and wait until none is running."""
    status, users = hub.api("GET", "/users?state=active")
    if status != 200 or not isinstance(users, list):
        return  # the hub is not answering: the sweep takes the servers
    for user in users:
        hub.api("DELETE", f"/users/{user['name']}/server")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, users = hub.api("GET", "/users?state=active")
        if status != 200 or not users:
            return
        time.sleep(0.3)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_hub(settings: Settings, hub: HubServer, process: subprocess.Popen | None, timeout: float = 30.0) -> int:
    """Stop the users' servers, the hub (and so its services), the proxy, then any process of
    the run still there; returns how many the final sweep had to end (0 when all went well)."""
    if process is not None and process.poll() is None:
        stop_servers(hub)
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    _stop_proxy(settings)
    return sweep_run(hub.run_id)


def _stop_proxy(settings: Settings) -> None:
    pid_file = proxy_pid_file(settings)
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    if HUB_RUN_VARIABLE.encode() + b"=" in _environ_of(pid):  # the pid is still a proxy of ours
        _signal_group(pid, signal.SIGTERM)
        _wait_gone([pid], 10.0)
    pid_file.unlink(missing_ok=True)


def _environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return b""


def processes_of_run(run_id: str) -> list[int]:
    """The pids of every live process carrying this run's marker (Linux: read from /proc)."""
    marker = f"{HUB_RUN_VARIABLE}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if marker in _environ_of(int(entry.name)).split(b"\0"):
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue
            if state != "Z":  # a zombie is gone, only not yet reaped by its parent
                found.append(int(entry.name))
    return sorted(found)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in left if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]
    return left


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def sweep_run(run_id: str, timeout: float = 10.0) -> int:
    """End any process of the run still alive (SIGTERM, then SIGKILL); returns how many there were."""
    return _end(processes_of_run(run_id), timeout)


def _end(pids: list[int], timeout: float) -> int:
    """SIGTERM to each of ``pids``, SIGKILL to those left after ``timeout``; returns how many."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    killed = _wait_gone(pids, timeout)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_gone(killed, timeout)  # gone before the caller goes on (and, say, stops the datastore)
    return len(pids)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"



# The notebook the smoke check runs through the API: cheap, and it needs no particular data.
SMOKE_PROCESS = "archive_refresh"


def smoke_check(settings: Settings, hub: HubServer, user: str = "opencdms-smoke", timeout: float = 180.0) -> list[str]:
    """`opencdms up --smoke`: the hub answers and lists its services; a scientist logs in over
    HTTP, gets a server, and runs a notebook through the API (a worker runs it); the event
    service's status answers.  Returns one line per check; raises :class:`HubError` on a failure.
    The smoke user is removed afterwards."""
    lines = []
    status, services = hub.api("GET", "/services")
    if status != 200 or not isinstance(services, dict):
        raise HubError(f"the hub's API did not list its services ({status}); see {hub.log}")
    lines.append(f"hub services: {', '.join(sorted(services))}")
    password = native_user(settings, user, replace=True)
    hub.api("POST", f"/users/{user}")
    hub.api("POST", "/groups/scientist/users", {"users": [user]})
    try:
        if password is not None:
            HubSession(hub.url).login(user, password)
            lines.append(f"{user} logged in over HTTP")
        lines.append(_smoke_spawn(hub, user, timeout))
        status, answer = hub.api("POST", f"/users/{user}/tokens", {"note": "smoke check", "expires_in": 600})
        if status != 201 or not isinstance(answer, dict):
            raise HubError(f"no API token for the smoke user ({status}: {answer}); see {hub.log}")
        token = answer["token"]
        if "api" in services:
            lines.append(_smoke_process(hub, token, timeout))
        if "events" in services:
            status, _ = _http("GET", f"{hub.url}services/events/status.json", token)
            if status != 200:
                raise HubError(f"the event service's status did not answer through the hub ({status}); see {hub.log}")
            lines.append("the event service's status answers at /services/events/")
    finally:
        hub.api("DELETE", f"/users/{user}/server")
        hub.api("DELETE", f"/users/{user}")
        remove_native_user(settings, user)
    return lines


def _smoke_spawn(hub: HubServer, user: str, timeout: float) -> str:
    started = time.monotonic()
    status, answer = hub.api("POST", f"/users/{user}/server")
    if status not in (201, 202, 400):
        raise HubError(f"the smoke user's server did not start ({status}: {answer}); see {hub.log}")
    deadline = started + timeout
    while time.monotonic() < deadline:
        _, model = hub.api("GET", f"/users/{user}")
        if isinstance(model, dict) and model.get("servers", {}).get("", {}).get("ready"):
            return f"a scientist's server started in {time.monotonic() - started:.1f} s"
        time.sleep(0.3)
    raise HubError(f"the smoke user's server was not ready after {timeout:.0f} s; see {hub.log}")


def _smoke_process(hub: HubServer, token: str, timeout: float) -> str:
    """Run :data:`SMOKE_PROCESS` asynchronously through the API and follow its job to the end."""
    started = time.monotonic()
    api = f"{hub.url}services/api"
    status, answer = _http("POST", f"{api}/processes/{SMOKE_PROCESS}/execution", token,
                           {"inputs": {}}, headers={"Prefer": "respond-async"})
    if status != 201 or not isinstance(answer, dict) or "jobID" not in answer:
        raise HubError(f"the API did not accept {SMOKE_PROCESS} ({status}: {str(answer)[:300]})")
    job = answer["jobID"]
    deadline = started + timeout
    while time.monotonic() < deadline:
        status, document = _http("GET", f"{api}/jobs/{job}", token)
        state = document.get("status") if isinstance(document, dict) else None
        if state == "successful":
            return f"{SMOKE_PROCESS} ran through the API in {time.monotonic() - started:.1f} s (job {job})"
        if state in ("failed", "dismissed"):
            raise HubError(f"{SMOKE_PROCESS} through the API ended {state}: {document.get('message')}")
        time.sleep(0.5)
    raise HubError(f"{SMOKE_PROCESS} through the API did not finish within {timeout:.0f} s (job {job}); "
                   "is the worker service running?")


def _http(method: str, url: str, token: str, body: object | None = None, *,
          headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> tuple[int, object]:
    """One JSON request with a hub token; (status, decoded answer, or its text when not JSON)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"token {token}", "Content-Type": "application/json", "Accept": "application/json",
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode() or "null"
            return response.status, json.loads(text)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text
