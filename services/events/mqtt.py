"""The event service's broker connection (paho-mqtt 2).

- **QoS 1, a fixed client id and a persistent session** (MQTT v5: ``clean_start=False`` and a
  session expiry; 3.1.1: ``clean_session=False``): the broker keeps what is published while the
  service is down and delivers it when it is back.
- **Manual acknowledgement** (``manual_ack=True``): a message is acknowledged with
  :meth:`MqttConnection.ack` only once its job has been accepted; an unacknowledged message is
  delivered again after a reconnect.  Each delivery remembers the connection it came on: after
  a reconnect the broker re-sends unacknowledged messages itself, so an acknowledgement meant
  for the old connection is dropped (its packet id may name another message by then).
- **Reconnect with backoff**: paho's own loop, from ``events_retry_backoff`` doubling up to
  ``events_retry_backoff_max``; every connection subscribes again (a broker that lost the
  session, e.g. after kill -9, has forgotten the subscriptions).
- **MQTT v5 where the broker speaks it, 3.1.1 otherwise**: a v5 CONNECT refused with
  "unsupported protocol version", or left unanswered for :data:`CONNACK_TIMEOUT` seconds on an
  open socket (amqtt does that when a user name is sent), switches to 3.1.1 for good.  With v5, replicas share the
  subscriptions (``$share/<events_share_group>/…``): each message goes to one of them.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from services.events.broker import BrokerAddress

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL = 132  # CONNACK reason (v5) / return code 1 (3.1.1), as paho reports both
MAX_SESSION_EXPIRY = 0xFFFFFFFE
CONNACK_TIMEOUT = 8.0


class Protocol(str, Enum):
    """Which MQTT version to speak."""

    AUTO = "auto"
    V5 = "5"
    V311 = "3.1.1"


@dataclass(frozen=True)
class Delivery:
    """One message the broker delivered, and the connection it came on."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    duplicate: bool = False


class MqttConnection:
    """One client connection with a persistent session; thread-safe ``ack`` and ``publish``."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        subscriptions: list[str],
        on_delivery: Callable[[Delivery], None],
        *,
        protocol: Protocol = Protocol.AUTO,
        share_group: str | None = None,
        session_expiry: float = 7 * 86400,
        backoff: tuple[float, float] = (1.0, 60.0),
        keepalive: int = 30,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_delivery = on_delivery
        self.share_group = share_group
        self.session_expiry = min(int(session_expiry), MAX_SESSION_EXPIRY)
        self.backoff = (max(1, math.ceil(backoff[0])), max(1, math.ceil(backoff[1])))
        self.keepalive = keepalive
        self._wanted = protocol
        self._protocol = Protocol.V5 if protocol in (Protocol.AUTO, Protocol.V5) else Protocol.V311
        self._lock = threading.RLock()
        self._generation = 0
        self._client: Any = None
        self._stopping = False
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged this connection's subscriptions
        self.ever_connected = threading.Event()
        self._subscribe_mid: int | None = None
        self.last_error: str | None = None
        self.connections = 0
        self._socket_opened: float | None = None

    # ----------------------------------------------------------------- state

    @property
    def protocol(self) -> Protocol:
        """The MQTT version in use (or being tried)."""
        return self._protocol

    @property
    def shared(self) -> bool:
        """Whether subscriptions are shared between replicas (v5 with a share group)."""
        return self._protocol is Protocol.V5 and bool(self.share_group)

    def subscription_filters(self) -> list[str]:
        """The filters as subscribed: ``$share/<group>/<filter>`` when shared."""
        if self.shared:
            return [f"$share/{self.share_group}/{topic}" for topic in self.subscriptions]
        return list(self.subscriptions)

    # ----------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Connect in the background; paho's loop reconnects with backoff until :meth:`stop`."""
        with self._lock:
            self._stopping = False
            self._client = self._build()
            self._connect(self._client)
        if self._wanted is Protocol.AUTO and self._protocol is Protocol.V5:
            threading.Thread(target=self._watch_first_connack, name="mqtt-connack", daemon=True).start()

    def _watch_first_connack(self) -> None:
        """AUTO: a v5 CONNECT that an open socket never answers means a 3.1.1-only broker."""
        while not self._stopping and not self.ever_connected.is_set() and self._protocol is Protocol.V5:
            opened = self._socket_opened
            if opened is not None and time.monotonic() - opened > CONNACK_TIMEOUT:
                log.info("no answer to an MQTT v5 CONNECT in %.0f s", CONNACK_TIMEOUT)
                self._fall_back()
                return
            time.sleep(0.2)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect (the session and its unacknowledged messages stay with the broker)."""
        with self._lock:
            self._stopping = True
            client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            finally:
                client.loop_stop()
        self.connected.clear()
        self.subscribed.clear()

    def _build(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        v5 = self._protocol is Protocol.V5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False, manual_ack=True, reconnect_on_failure=True,
        )
        client.reconnect_delay_set(self.backoff[0], self.backoff[1])
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)  # keep every outgoing QoS 1 message until it is sent
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        return client

    def _connect(self, client: Any) -> None:
        properties = None
        kwargs: dict[str, Any] = {}
        if self._protocol is Protocol.V5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry
            kwargs = {"clean_start": False, "properties": properties}
        client.connect_async(self.address.host, self.address.port, self.keepalive, **kwargs)
        client.loop_start()

    def _fall_back(self) -> None:
        """The broker refused v5: start again with 3.1.1 (in a thread of its own, not paho's)."""
        with self._lock:
            if self._stopping or self._protocol is Protocol.V311:
                return
            old, self._protocol = self._client, Protocol.V311
            log.info("the broker at %s does not speak MQTT v5: using 3.1.1 (no shared subscriptions)",
                     self.address.url)
        if old is not None:
            old.disconnect()
            old.loop_stop()
        with self._lock:
            if self._stopping:
                return
            self._client = self._build()
            self._connect(self._client)

    # ----------------------------------------------------------------- paho callbacks

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._socket_opened = time.monotonic()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._socket_opened = None
        if reason.is_failure:
            code = reason.value if hasattr(reason, "value") else int(reason)
            self.last_error = f"the broker refused the connection: {reason}"
            if code == UNSUPPORTED_PROTOCOL and self._wanted is Protocol.AUTO and self._protocol is Protocol.V5:
                threading.Thread(target=self._fall_back, name="mqtt-fallback", daemon=True).start()
                return
            log.error("%s (%s)", self.last_error, self.address.url)
            return
        with self._lock:
            self._generation += 1
            self.connections += 1
        self.last_error = None
        session = getattr(flags, "session_present", None)
        log.info("connected to %s (MQTT %s, client id %s, session %s)", self.address.url, self._protocol.value,
                 self.client_id, "resumed" if session else "new")
        topics = self.subscription_filters()
        if topics:
            if self._protocol is Protocol.V5:
                from paho.mqtt.subscribeoptions import SubscribeOptions

                _, self._subscribe_mid = client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in topics])
            else:
                _, self._subscribe_mid = client.subscribe([(topic, 1) for topic in topics])
        else:
            self.subscribed.set()
        self.connected.set()
        self.ever_connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        refused = [reason for reason in reasons if getattr(reason, "is_failure", False)]
        for reason in refused:
            self.last_error = f"the broker refused a subscription: {reason}"
            log.error(self.last_error)
        if mid == self._subscribe_mid and not refused:
            self.subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            self.last_error = f"disconnected from the broker: {reason}"
            log.warning("%s; reconnecting", self.last_error)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.on_delivery(Delivery(topic=message.topic, payload=bytes(message.payload), mid=message.mid,
                                  qos=message.qos, generation=self._generation, duplicate=bool(message.dup)))

    # ----------------------------------------------------------------- use

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge a delivery, if it came on the current connection (else the broker re-sends it)."""
        if delivery.qos == 0:
            return True
        with self._lock:
            if self._client is None or delivery.generation != self._generation or not self.connected.is_set():
                return False
            self._client.ack(delivery.mid, delivery.qos)
            return True

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish (QoS 1 by default); while disconnected paho keeps the message and sends it later."""
        with self._lock:
            client = self._client
        if client is None:
            raise RuntimeError("publish on a stopped MQTT connection")
        client.publish(topic, payload, qos=qos)
