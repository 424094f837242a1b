"""The event service's errors, in the kernel's error model.

Two families matter to the service's loop: a :class:`PoisonMessageError` can never succeed
(bad JSON, a missing field, no route, parameters the API refuses): the message goes to the dead
letters and is acknowledged; a :class:`TransientError` may succeed later (API, bucket or broker
away): the message is retried with backoff and not acknowledged meanwhile.
"""

from __future__ import annotations

from opencdms_kernel.errors import ConflictError, OpenCDMSError, ServiceError


class RoutesError(OpenCDMSError):
    """routes.yml is invalid; names the file, the route or schedule, and the field at fault."""

    def __init__(self, file: str, where: str | None, field: str | None, reason: str) -> None:
        self.file = file
        self.where = where
        self.field = field
        self.reason = reason
        parts = [file]
        if where:
            parts.append(where)
        if field:
            parts.append(f"field '{field}'")
        super().__init__(f"{': '.join(parts)}: {reason}")


class PoisonMessageError(OpenCDMSError):
    """A message that no retry can route: it becomes a dead letter; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class TemplateError(PoisonMessageError):
    """A parameter template names a value the event does not have."""


class RequestRefusedError(PoisonMessageError):
    """The API refused the request for good (400, 404, 409, 413…): its status and message."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(f"the API refused the request ({status}): {reason}")


class IdempotencyConflictError(RequestRefusedError, ConflictError):
    """The idempotency key already names another request (routes.yml changed for a known object)."""


class TransientError(ServiceError):
    """A failure that may go away (API, bucket or broker unreachable, 5xx): retry, never acknowledge."""


class ApiUnavailableError(TransientError):
    """The API did not answer, or answered 5xx / 401 / 403 / 429."""
