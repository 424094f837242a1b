"""Debian's chromium driven by Playwright (never a downloaded browser), screenshots as artefacts,
and code run in a user's kernel through their server's API, for the hub's tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PROJECT = Path(__file__).resolve().parents[2]


def artifact_folder(test_name: str) -> Path:
    """Where a test's screenshots go: ``$OPENCDMS_TEST_ARTIFACTS`` (CI sets it) or
    ``var/test-artifacts/`` in the project, one folder per test."""
    root = Path(os.environ.get("OPENCDMS_TEST_ARTIFACTS") or PROJECT / "var" / "test-artifacts")
    folder = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browser() -> Iterator[object]:
    """A headless chromium for a test module (skip outside CI when it is missing; fail in CI)."""
    from conftest import service_missing

    if not CHROMIUM.exists():
        service_missing(f"{CHROMIUM} is missing (make install puts Debian's chromium there)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Shots:
    """Numbered screenshots of one test's pages."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.folder = artifact_folder(request.node.nodeid)
        self.count = 0

    def __call__(self, page: object, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        return path


def run_in_kernel(server_url: str, token: str, code: str, kernel: str = "opencdms", timeout: float = 90.0) -> str:
    """Run ``code`` in a new ``kernel`` of a user's server (REST + websocket, the user's own
    token) and return its stdout and error text; the kernel is shut down afterwards."""
    return asyncio.run(_run_in_kernel(server_url.rstrip("/"), token, code, kernel, timeout))


async def _run_in_kernel(base: str, token: str, code: str, kernel: str, timeout: float) -> str:
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}"}
    client = AsyncHTTPClient()
    answer = await client.fetch(HTTPRequest(f"{base}/api/kernels", method="POST", headers=headers,
                                            body=json.dumps({"name": kernel}), request_timeout=timeout))
    kernel_id = json.loads(answer.body)["id"]
    try:
        socket = await websocket_connect(HTTPRequest(
            f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels", headers=headers,
            request_timeout=timeout))
        message_id = uuid.uuid4().hex
        socket.write_message(json.dumps({
            "header": {"msg_id": message_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        output: list[str] = []
        while True:
            raw = await asyncio.wait_for(socket.read_message(), timeout)
            if raw is None:
                raise AssertionError("the kernel's websocket closed")
            message = json.loads(raw)
            if message.get("parent_header", {}).get("msg_id") != message_id:
                continue
            kind = message["header"]["msg_type"]
            if kind == "stream":
                output.append(message["content"]["text"])
            elif kind == "error":
                output.append(f"{message['content']['ename']}: {message['content']['evalue']}")
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                return "".join(output)
    finally:
        await client.fetch(HTTPRequest(f"{base}/api/kernels/{kernel_id}", method="DELETE", headers=headers),
                           raise_error=False)
