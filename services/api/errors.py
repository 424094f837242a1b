"""The kernel's error model mapped to OGC API exceptions, in one place.

Every error a person should see is an :class:`~opencdms_kernel.errors.OpenCDMSError` carrying
its HTTP status, its OGC exception code and a safe message.  pygeoapi answers a provider's
``ProviderGenericError`` and a process's ``ProcessorExecuteError`` with exactly those three
things, so our plugins convert at their boundary (:func:`provider_errors`,
:func:`processor_errors`) and pygeoapi writes the exception body.  What reaches the ASGI layer
unconverted is unexpected: :func:`exception_body` answers 500 without internals and the cause is
logged with its traceback.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

from opencdms_kernel.errors import (
    INVALID_PARAMETER_VALUE,
    NO_APPLICABLE_CODE,
    OpenCDMSError,
    ParameterError,
    ServiceError,
)

log = logging.getLogger(__name__)


class ApiParameterError(ParameterError):
    """A query parameter of an API request is invalid (400, InvalidParameterValue)."""


class BodyTooLargeError(OpenCDMSError):
    """A request body larger than ``api_max_body_bytes``."""

    http_status = 413
    ogc_code = INVALID_PARAMETER_VALUE


class DatastoreUnavailableError(ServiceError):
    """The datastore did not answer (503)."""


def _generic(exc: OpenCDMSError, base: type) -> Exception:
    converted = base(user_msg=str(exc))
    # Instance attributes: pygeoapi reads err.http_status_code / err.ogc_exception_code.
    converted.http_status_code = exc.http_status
    converted.ogc_exception_code = exc.ogc_code
    return converted


def provider_error(exc: OpenCDMSError) -> Exception:
    """The pygeoapi provider error pygeoapi answers with ``exc``'s status, code and message."""
    from pygeoapi.provider.base import ProviderGenericError

    return _generic(exc, ProviderGenericError)


def processor_error(exc: OpenCDMSError) -> Exception:
    """The pygeoapi process error pygeoapi answers with ``exc``'s status, code and message."""
    from pygeoapi.process.base import ProcessorExecuteError

    return _generic(exc, ProcessorExecuteError)


def _kernel_error(exc: BaseException) -> OpenCDMSError | None:
    """The kernel error ``exc`` is or stands for; None when it is unexpected."""
    if isinstance(exc, OpenCDMSError):
        return exc
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        log.error("datastore unavailable: %s", exc)
        return DatastoreUnavailableError("the datastore is not available; try again later")
    return None


@contextmanager
def provider_errors() -> Iterator[None]:
    """Inside a provider method: kernel errors leave as pygeoapi provider errors."""
    try:
        yield
    except (OpenCDMSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise provider_error(_kernel_error(exc)) from exc  # type: ignore[arg-type]


@contextmanager
def processor_errors() -> Iterator[None]:
    """Inside the process manager: kernel errors leave as pygeoapi process errors."""
    try:
        yield
    except (OpenCDMSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise processor_error(_kernel_error(exc)) from exc  # type: ignore[arg-type]


def exception_body(exc: BaseException) -> tuple[int, bytes]:
    """HTTP status and OGC exception body (JSON) for an error that reached the ASGI layer."""
    kernel = _kernel_error(exc)
    if kernel is None:
        log.error("unexpected error answering a request", exc_info=exc)
        return 500, ogc_exception(NO_APPLICABLE_CODE, "internal error; it has been logged")
    return kernel.http_status, ogc_exception(kernel.ogc_code, str(kernel))


def ogc_exception(code: str, description: str) -> bytes:
    """An OGC API exception document (the shape pygeoapi answers with)."""
    return json.dumps({"type": code, "code": code, "description": description}).encode()
