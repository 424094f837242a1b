"""The embedded MQTT broker of ``opencdms up`` (amqtt), and where the service finds its broker.

amqtt is pure Python and starts in milliseconds, which suits the embedded default; it speaks MQTT
3.1.1 only (no shared subscriptions: run one event service against it) and, as configured here:

- binds ``127.0.0.1:<events_embedded_broker_port>`` only (amqtt's default is every interface);
- refuses anonymous clients: amqtt **drops the queued QoS 1 messages of anonymous sessions**
  while they are disconnected, and keeps them for a client that gives a user name
  (STACK_NOTES, "MQTT"), so the event service always sends one (``broker_username``, else its
  client id).  Without a password file anyone on this machine who sends a user name may
  connect: the broker is for one machine, production uses Mosquitto.

Sessions live in the broker's memory: a restart of the embedded broker loses queued messages
(the sweep of ``incoming/`` then finds the objects whose notification was lost).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import unquote, urlsplit

from opencdms_kernel.errors import ServiceError
from opencdms_kernel.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to log in to it."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """The broker as a URL without credentials (for messages and logs)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def broker_address(settings: Settings) -> BrokerAddress:
    """The broker of ``settings``: ``broker_url``, else the embedded broker on 127.0.0.1.

    Credentials come from ``broker_username``/``broker_password`` (or the URL's user part); with
    none, the event service's client id is sent as the user name (see the module's note).
    """
    password = settings.broker_password.get_secret_value() if settings.broker_password else None
    username = settings.broker_username
    if settings.broker_url is None:
        return BrokerAddress("127.0.0.1", settings.events_embedded_broker_port, False,
                             username or settings.events_client_id, password)
    parts = urlsplit(settings.broker_url)
    tls = parts.scheme == "mqtts"
    if parts.username and username is None:
        username = unquote(parts.username)
        if parts.password and password is None:
            password = unquote(parts.password)
    return BrokerAddress(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls,
                         username or settings.events_client_id, password)


class EmbeddedBrokerError(ServiceError):
    """The embedded broker could not start (its port taken, …)."""


class EmbeddedBroker:
    """amqtt running in a thread of its own (its own asyncio loop); a context manager."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        # amqtt leaves a client's failed handshake (e.g. an MQTT v5 probe) to the loop's handler,
        # which would print a traceback: it is a refused client, not a broker failure.
        self._loop.set_exception_handler(
            lambda loop, context: log.debug("embedded broker: %s", context.get("message"), exc_info=context.get("exception")))
        self._thread = threading.Thread(target=self._loop.run_forever, name="opencdms-broker", daemon=True)
        self._broker: object | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmbeddedBroker":
        """Start listening (EmbeddedBrokerError when the port is taken or amqtt fails)."""
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError as exc:
                raise EmbeddedBrokerError(
                    f"the embedded MQTT broker cannot listen on 127.0.0.1:{self.port} ({exc.strerror}); "
                    "set OPENCDMS_EVENTS_EMBEDDED_BROKER_PORT, or OPENCDMS_BROKER_URL for a running broker"
                ) from exc
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            future.result(timeout)
        except Exception as exc:  # noqa: BLE001 - reported as a service error with its cause chained
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise EmbeddedBrokerError(f"the embedded MQTT broker did not start: {exc}") from exc
        log.info("embedded MQTT broker on %s", self.url)
        return self

    async def _start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 0}},
            # No anonymous sessions: amqtt would drop their offline QoS 1 messages.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
        }
        broker = Broker(config, loop=self._loop)
        await broker.start()
        self._broker = broker

    def client_connected(self, client_id: str, timeout: float = 5.0) -> bool:
        """Whether the broker holds ``client_id``'s session as connected.

        amqtt sends a message for a session it still holds as connected straight to that
        connection, and a message sent to a connection that is closing is lost (it is not kept for
        the session's return): only after this turns False does the session collect messages."""
        async def state() -> bool:
            session, _ = self._broker._sessions.get(client_id, (None, None))  # type: ignore[attr-defined]
            return session is not None and session.transitions.state == "connected"

        if self._broker is None:
            return False
        return asyncio.run_coroutine_threadsafe(state(), self._loop).result(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Shut the broker down and end its thread."""
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)  # type: ignore[attr-defined]
            try:
                future.result(timeout)
            except Exception as exc:  # noqa: BLE001 - shutting down anyway; the cause is logged
                log.warning("the embedded broker did not shut down cleanly: %s", exc)
            self._broker = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> "EmbeddedBroker":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def start_embedded_broker(settings: Settings) -> EmbeddedBroker:
    """Start the embedded broker on ``127.0.0.1:<events_embedded_broker_port>``; stop it with ``stop()``
    (or use the result as a context manager).  For ``opencdms up`` when ``broker_url`` is empty."""
    return EmbeddedBroker(settings.events_embedded_broker_port).start()
