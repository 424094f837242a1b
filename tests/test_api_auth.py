"""The API's access rules without a server: what needs which scope, tokens and cookies, the
refusals without a hub, the shape of a station feature.  The rules with a real hub and real
tokens are tests/test_api_processes.py's."""

from __future__ import annotations

import asyncio
import json

import pytest

from opencdms_kernel.settings import Settings
from services.api.auth import (
    API_SCOPES,
    SCOPE_EXECUTE,
    SCOPE_JOBS,
    SCOPE_READ,
    SCOPE_TRANSACTIONS,
    ApiAuth,
    AuthenticationRequired,
    HubIdentity,
    bearer_token,
    need_of,
    same_origin,
)
from services.api.context import ANONYMOUS
from services.api.errors import ApiParameterError
from services.api.providers.stations import station_fields

CLOSED = frozenset({"secret"})


@pytest.mark.parametrize(("method", "path", "content_type", "scope"), [
    ("GET", "/", "", None),
    ("GET", "/collections", "", None),
    ("GET", "/collections/stations/items", "", None),
    ("GET", "/collections/stations/items/0-20000-0-1", "", None),
    ("POST", "/collections/stations/items", "application/json", None),  # a CQL2 JSON search
    ("POST", "/collections/stations/items", "application/geo+json; charset=utf-8", SCOPE_TRANSACTIONS),
    ("PUT", "/collections/stations/items/0-20000-0-1", "application/geo+json", SCOPE_TRANSACTIONS),
    ("PATCH", "/collections/stations/items/0-20000-0-1", "", SCOPE_TRANSACTIONS),
    ("DELETE", "/collections/stations/items/0-20000-0-1", "", SCOPE_TRANSACTIONS),
    ("DELETE", "/collections/stations/items", "", SCOPE_TRANSACTIONS),
    ("OPTIONS", "/collections/stations/items", "", None),
    ("GET", "/processes", "", None),
    ("GET", "/processes/hello", "", None),
    ("POST", "/processes/hello/execution", "application/json", SCOPE_EXECUTE),
    ("POST", "//processes//hello//execution/", "application/json", SCOPE_EXECUTE),
    ("GET", "/jobs", "", SCOPE_JOBS),
    ("GET", "/jobs/abc/results", "", SCOPE_JOBS),
    ("GET", "/jobs/abc/files/runs/abc/x.html", "", SCOPE_JOBS),
    ("DELETE", "/jobs/abc", "", SCOPE_JOBS),
    ("GET", "//jobs", "", SCOPE_JOBS),
    ("GET", "/collections/secret", "", SCOPE_READ),
    ("GET", "/collections/secret/items", "", SCOPE_READ),
    ("GET", "/collections//secret/position", "", SCOPE_READ),
    ("POST", "/collections/secret/items", "application/json", SCOPE_READ),
    ("GET", "/collections/secretive/items", "", None),
])
def test_what_needs_which_scope(method: str, path: str, content_type: str, scope: str | None) -> None:
    need = need_of(method, path, content_type, CLOSED)
    assert (need.scope if need else None) == scope


def test_the_hub_defines_every_scope_the_api_checks() -> None:
    from services.hub.config import CUSTOM_SCOPES, ROLE_SCOPES

    assert set(API_SCOPES) <= set(CUSTOM_SCOPES)
    transactions = {role.value for role, scopes in ROLE_SCOPES.items() if SCOPE_TRANSACTIONS in scopes}
    assert transactions == {"admin"}  # Features Part 4: administrators only


@pytest.mark.parametrize(("header", "token"), [
    ("token abc", "abc"), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("TOKEN x.y", "x.y"),
    ("Basic abc", None), ("token ", None), ("", None), ("tokenabc", None),
])
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token({"authorization": header}) == token


@pytest.mark.parametrize(("headers", "same"), [
    ({"host": "hub:8000", "origin": "http://hub:8000"}, True),
    ({"host": "hub:8000", "referer": "http://hub:8000/services/api/jobs"}, True),
    ({"host": "hub:8000", "origin": "http://evil:8000"}, False),
    ({"host": "hub:8000", "origin": "null"}, False),
    ({"host": "hub:8000"}, False),
    ({"host": "", "origin": "http:///"}, False),
])
def test_same_origin(headers: dict[str, str], same: bool) -> None:
    assert same_origin(headers) is same


def _settings(**overrides: object) -> Settings:
    return Settings(api_prefix="/services/api", **overrides)  # type: ignore[arg-type]


def test_without_a_hub_open_reads_pass_and_the_rest_is_refused_saying_why() -> None:
    auth = ApiAuth.from_settings(_settings(api_closed_collections=["secret"]), environ={})
    assert auth.hub is None
    run = asyncio.run
    assert run(auth.authorize("GET", "/services/api/collections/stations/items", {})) is ANONYMOUS
    for method, path in (("POST", "/services/api/processes/x/execution"), ("GET", "/services/api/jobs"),
                         ("GET", "/services/api/collections/secret/items"),
                         ("DELETE", "/services/api/collections/stations/items/x")):
        with pytest.raises(AuthenticationRequired, match="without a hub"):
            run(auth.authorize(method, path, {"authorization": "token whatever"}))


def test_with_a_hub_requests_without_identity_are_refused_before_asking_it() -> None:
    # A real HubOAuth whose hub is nowhere: nothing below may call it.
    auth = ApiAuth.from_settings(_settings(), environ={"JUPYTERHUB_API_TOKEN": "service-token",
                                                       "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api"})
    assert auth.hub is not None
    assert auth.hub.cookie_name == "service-api"
    run = asyncio.run
    assert run(auth.authorize("GET", "/services/api/collections", {})) is ANONYMOUS
    with pytest.raises(AuthenticationRequired, match="needs a JupyterHub token"):
        run(auth.authorize("POST", "/services/api/processes/x/execution", {}))
    # A signed cookie counts for a write only from this origin; from elsewhere it is ignored.
    cookie = f"service-api={auth.hub._sign('service-api', 'user-token')}"
    assert auth.hub.cookie_token({"cookie": cookie}) == "user-token"
    with pytest.raises(AuthenticationRequired):
        run(auth.authorize("POST", "/services/api/processes/x/execution",
                           {"cookie": cookie, "host": "hub", "origin": "http://evil"}))


class _Hub:
    """A stand-in for HubOAuth that counts the tokens it is asked about."""

    access_scopes = {"access:services!service=api"}

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def user_for_token(self, token: str, sync: bool = True) -> dict | None:
        self.asked.append(token)
        if token == "unknown":
            return None
        return {"name": token, "kind": "user", "scopes": ["access:services!service=api", SCOPE_EXECUTE]}


def test_the_hubs_answer_about_a_token_is_kept_for_the_cache_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.api.auth as auth_module

    now = [1000.0]
    monkeypatch.setattr(auth_module.time, "monotonic", lambda: now[0])
    hub_auth = _Hub()
    hub = HubIdentity(hub_auth, b"secret", "/services/api", cache_seconds=60)
    run = asyncio.run
    first = run(hub.caller("ana-token"))
    assert first is not None and first.name == "ana-token" and hub.has_scope(first, SCOPE_EXECUTE)
    assert hub.has_access(first) and not hub.has_scope(first, SCOPE_JOBS)
    for _ in range(50):  # a request per routed message: the hub is asked once
        assert run(hub.caller("ana-token")) == first
    assert run(hub.caller("unknown")) is None and run(hub.caller("unknown")) is None
    assert hub_auth.asked == ["ana-token", "unknown"]
    now[0] += 61  # past the cache time: asked again (a revoked token stops working)
    run(hub.caller("ana-token"))
    assert hub_auth.asked == ["ana-token", "unknown", "ana-token"]

    uncached = HubIdentity(hub_auth, b"secret", "/services/api", cache_seconds=0)  # HubOAuth's own cache only
    run(uncached.caller("ben-token"))
    run(uncached.caller("ben-token"))
    assert hub_auth.asked[-2:] == ["ben-token", "ben-token"]


@pytest.mark.parametrize("cookie", [
    "service-api=user-token",  # unsigned
    "service-api=2|1:0|10:1700000000|11:service-api|12:dXNlci10b2tlbg==|" + "0" * 64,  # a forged signature
    'service-api="unterminated',
    "service-api=" + "x" * 5000,
])
def test_forged_or_malformed_cookies_are_no_identity(cookie: str) -> None:
    hub = HubIdentity.from_environment(_settings(), {"JUPYTERHUB_API_TOKEN": "service-token"})
    assert hub is not None and hub.cookie_token({"cookie": cookie}) is None


def test_the_cookie_key_follows_the_service_token() -> None:
    one = HubIdentity.from_environment(_settings(), {"JUPYTERHUB_API_TOKEN": "token-one"})
    two = HubIdentity.from_environment(_settings(), {"JUPYTERHUB_API_TOKEN": "token-two"})
    assert one and two
    signed = one._sign("service-api", "user-token")
    assert two.cookie_token({"cookie": f"service-api={signed}"}) is None


# --------------------------------------------------------------------------- station features


def _feature(**properties: object) -> dict:
    return {"type": "Feature", "id": "0-20000-0-1", "geometry": {"type": "Point", "coordinates": [1.5, 2.5]},
            "properties": {"name": "A", **properties}}


def test_station_features() -> None:
    fields = station_fields(json.dumps(_feature(territory="T")).encode(), identifier=None, partial=False)
    assert fields == {"name": "A", "territory": "T", "wigos_id": "0-20000-0-1", "longitude": 1.5, "latitude": 2.5}
    with_height = {**_feature(), "geometry": {"type": "Point", "coordinates": [1, 2, 300]}}
    assert station_fields(with_height, identifier="0-20000-0-1", partial=False)["elevation"] == 300.0
    patch = station_fields({"type": "Feature", "properties": {"status": "x"}}, identifier="0-20000-0-1", partial=True)
    assert patch == {"status": "x"}


@pytest.mark.parametrize("body", [
    b"\xff\xfe not utf-8", b"[" * 200_000, b"{}", b'"a string"', b"null",
    json.dumps({**_feature(), "properties": ["x"]}).encode(),
    json.dumps(_feature(colour="red")).encode(),
    json.dumps({**_feature(), "geometry": {"type": "Point", "coordinates": [1]}}).encode(),
    json.dumps({**_feature(), "geometry": {"type": "Point", "coordinates": [True, 2]}}).encode(),
    json.dumps({**_feature(), "geometry": {"type": "Point", "coordinates": ["1", 2]}}).encode(),
    b'{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1e999, 2]}, "properties": {}}',
    json.dumps({**_feature(elevation=5), "geometry": {"type": "Point", "coordinates": [1, 2, 6]}}).encode(),
    json.dumps({**_feature(), "id": 7}).encode(),
    json.dumps({**_feature(wigos_id="0-20000-0-2")}).encode(),
    json.dumps({**_feature(), "geometry": None}).encode(),  # a new or replaced station needs a place
])
def test_bad_station_features_are_parameter_errors(body: bytes) -> None:
    with pytest.raises(ApiParameterError):
        station_fields(body, identifier=None, partial=False)
