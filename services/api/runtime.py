"""What the API process shares between requests: settings, one datastore (engine + pool), the bucket.

pygeoapi builds a provider object for every request (``load_plugin``), so nothing expensive may
live on a provider: the first request opens the datastore here and every later one reuses its
engine and connection pool (one per process, never per request).  The settings are the
``OPENCDMS_*`` variables of the process (``opencdms api serve`` exports its own settings before
starting uvicorn), read at the first request, never at import.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.notebooks.registry import NotebookRegistry, open_registry
from opencdms_kernel.settings import Settings


@dataclass
class Runtime:
    """The process's settings and the resources opened from them."""

    settings: Settings

    @cached_property
    def datastore(self) -> Datastore:
        """The datastore, opened once (the embedded server starts here if no URL is set)."""
        return Datastore.open(self.settings)

    @cached_property
    def bucket(self) -> Bucket:
        """The file bucket."""
        return open_bucket(self.settings)

    @cached_property
    def registry(self) -> NotebookRegistry:
        """The notebook registry (shared per folder; re-reads a notebook only when it changes),
        looked up once: finding it resolves the folder's path, a few system calls per request."""
        return open_registry(self.settings.notebook_folder)

    def close(self) -> None:
        """Close the datastore if it was opened."""
        if "datastore" in self.__dict__:
            self.__dict__.pop("datastore").close()


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    """The process's runtime, made from the environment on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(Settings())
        current = _runtime
    # Opening the datastore outside the lock would let two first requests open two engines.
    with _lock:
        _ = current.datastore
    return current


def install_runtime(settings: Settings) -> Runtime:
    """Use ``settings`` for this process (tests and ``opencdms api serve`` in-process)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = Runtime(settings)
        return _runtime


def reset_runtime() -> None:
    """Close and forget the process's runtime."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
