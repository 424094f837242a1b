"""The event service: MQTT-triggered and scheduled process runs, through the API.

- :mod:`services.events.routes`    routes.yml (routes, chains, schedules) and its templates
- :mod:`services.events.messages`  bucket notifications (S3/MinIO event format) and our own events
- :mod:`services.events.api_client` the OGC API - Processes client (async execution, idempotency keys)
- :mod:`services.events.mqtt`      the broker connection (paho-mqtt 2: QoS 1, persistent session, manual ack)
- :mod:`services.events.service`   the service: routing, acknowledgement, dead letters, chains, status
- :mod:`services.events.sweep`     incoming/ compared with the ingest ledger (lost notifications)
- :mod:`services.events.schedules` cron schedules with time zones, an injectable clock
- :mod:`services.events.broker`    the embedded broker (amqtt) of `opencdms up`
- :mod:`services.events.status`    the status page and what `opencdms events status` shows
- :mod:`services.events.cli`       ``opencdms events serve|status|run|notify``

The service holds no database credentials: every run, and every read of the ingest ledger, goes
through the API.  Importing this package imports neither paho nor amqtt.
"""
