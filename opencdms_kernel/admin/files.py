"""Configuration files an administrator edits as text (the event service's routes.yml): read
with a digest, saved only after the caller's validation passed, atomically, and only if nobody
saved the file in between.

The kernel does not know what the text means (routes.yml is the event service's format, and
the kernel imports no service): the caller passes the check, e.g. the event service's
``parse_routes``, whose error names the route and the field.  Saving writes a temporary file
beside the target, flushes it to disk and renames it over the target, so a reader sees the old
file or the new one, never a part.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from opencdms_kernel.admin.access import Administrator, require_admin
from opencdms_kernel.errors import ConflictError, NotFoundError, ParameterError

MAX_CONFIG_BYTES = 1_000_000


class ConfigFileChangedError(ConflictError):
    """The file changed since it was read: saving would silently undo someone's change."""


class ConfigFileNotFoundError(NotFoundError):
    """The configuration file does not exist (or is not a file)."""


@dataclass(frozen=True)
class ConfigText:
    """A configuration file's text and the SHA-256 of its bytes (what a save compares with)."""

    path: Path
    text: str
    digest: str


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_config_text(path: Path) -> ConfigText:
    """The file's text (UTF-8) and digest."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise ConfigFileNotFoundError(f"{path}: no such file") from exc
    return ConfigText(path, data.decode("utf-8"), _digest(data))


def save_config_text(admin: Administrator, path: Path, text: str, check: Callable[[str], object], *,
                     expected_digest: str | None) -> ConfigText:
    """Replace ``path`` with ``text`` once ``check(text)`` passed (its exception, naming what is
    wrong, is raised unchanged and nothing is written).  ``expected_digest``: the digest the
    editor read; when the file now differs, ConfigFileChangedError (None: no comparison)."""
    require_admin(admin)
    data = text.encode("utf-8")
    if len(data) > MAX_CONFIG_BYTES:
        raise ParameterError("text", f"{len(data)} bytes: a configuration file is at most {MAX_CONFIG_BYTES} bytes")
    check(text)
    if not path.parent.is_dir():
        raise ConfigFileNotFoundError(f"{path.parent}: no such folder")
    # Two saves of the same file queue on a lock of its folder (no lock file is left behind), so
    # the comparison and the rename are one step.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        current = read_config_text(path) if path.exists() else None
        if expected_digest is not None and (current is None or current.digest != expected_digest):
            raise ConfigFileChangedError(f"{path.name} changed since it was opened (someone saved it meanwhile): "
                                         "reload it, then make the change again")
        _replace_atomically(path, data, folder)
    finally:
        os.close(folder)
    return ConfigText(path, text, _digest(data))


def _replace_atomically(path: Path, data: bytes, folder: int) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder, flush it to disk, rename it over
    ``path`` (keeping its permissions), and flush the folder (``folder``, an open descriptor) so
    that the rename is durable."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    os.fsync(folder)
