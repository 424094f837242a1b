"""The file bucket: a local folder or an S3 bucket, reached through one fsspec filesystem.

Keys are relative, '/'-separated names; :func:`bucket_key_problem` is the one check of a key
given from outside.  A key that ends with '/' names a folder, never an object.
:meth:`Bucket.read_bytes` and :meth:`Bucket.write_bytes` apply it to every key they are given,
so they never read or write a folder, an absolute name or a name with '..'.

A local folder may hold symbolic links (put there by an administrator, or by anyone who can
write into the folder).  :meth:`Bucket.path` resolves them and refuses a key whose real path
is outside the bucket's real root, so no reader or writer going through it can be led out of
the bucket; a link that stays inside is followed.  S3 and memory buckets have no links: their
paths are plain names, as before.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import fsspec
from fsspec import AbstractFileSystem

from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.settings import Settings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BucketKeyError(OpenCDMSError, ValueError):
    """A key cannot be used: it is not a valid object key, or it leads outside the bucket."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"bucket key {key!r}: {reason}")


def bucket_key_problem(key: str, prefixes: tuple[str, ...] = (), *, folder: bool = False) -> str | None:
    """Why ``key`` is not an acceptable bucket key (``None`` when it is).

    By default ``key`` must name an object, so a key ending in '/' (a folder, such as
    ``incoming/`` or ``incoming/aws/``) is refused; ``folder=True`` asks for a folder instead,
    which must end in '/' (a prefix, for instance).
    """
    if not key:
        return "a bucket key must not be empty"
    if _CONTROL.search(key) or "\\" in key:
        return f"{key!r} contains a control character or a backslash"
    if key.startswith("/") or "://" in key or re.match(r"^[A-Za-z]:", key):
        return f"{key!r} must be a key inside the bucket, not an absolute path or URL"
    segments = key.split("/")
    if any(segment in (".", "..") for segment in segments):
        return f"{key!r} must not contain '.' or '..' segments (it would leave its folder)"
    if any(segment == "" for segment in segments[:-1]):
        return f"{key!r} has an empty path segment"
    if folder and not key.endswith("/"):
        return f"{key!r} is not a folder: a folder key must end with '/'"
    if not folder and key.endswith("/"):
        # An S3 "folder" is only a shared prefix, and a local one cannot be read as a file:
        # where an object is expected, say so instead of failing later on a missing object.
        return f"{key!r} is a folder, not an object: give the key of a file in it"
    if prefixes and not key.startswith(prefixes):
        return f"{key!r} is not under an allowed prefix ({', '.join(prefixes)})"
    return None


def _checked_key(key: str) -> str:
    if problem := bucket_key_problem(key):
        raise BucketKeyError(key, problem)
    return key


@dataclass(frozen=True)
class Bucket:
    """Where objects live: ``fs`` is the filesystem, ``root`` the path of the bucket in it."""

    fs: AbstractFileSystem
    root: str
    protocol: str

    def path(self, key: str) -> str:
        """Filesystem path of the object ``key`` (a relative, '/'-separated name).

        For a local folder, BucketKeyError when the path leads outside the bucket (through a
        symbolic link or '..'); the path is returned as written, not resolved.
        """
        target = self._joined(key)
        if self.protocol == "file":
            self._real_path(key, target)
        return target

    def url(self, key: str) -> str:
        """Full URL of ``key`` (``file:///…`` or ``s3://…``), as shown to people and DuckDB."""
        return f"{self.protocol}://{self.path(key)}"

    def read_bytes(self, key: str) -> bytes:
        """The whole object ``key``; BucketKeyError for a key that names no object of the bucket."""
        return self.fs.cat_file(self.path(_checked_key(key)))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write an object whole: a reader never sees a partly written object.

        BucketKeyError for a key that names no object of the bucket (a folder, '..', a
        symbolic link leading outside it); nothing is written then.
        """
        self._write(key, lambda file: file.write(data), lambda target: self.fs.pipe_file(target, data))

    def write_file(self, key: str, source: Path) -> None:
        """Write the local file ``source`` as the object ``key``, streamed (any size), whole as
        :meth:`write_bytes` writes."""
        def copy(file: BinaryIO) -> None:
            with source.open("rb") as data:
                shutil.copyfileobj(data, file, 1 << 22)

        self._write(key, copy, lambda target: self.fs.put_file(str(source), target))

    def _write(self, key: str, fill: Callable[[BinaryIO], object], put: Callable[[str], object]) -> None:
        target = self._joined(_checked_key(key))
        if self.protocol != "file":
            put(target)  # an S3 PUT (or a multipart upload, completed at once) is atomic by itself
            return
        # Local folder: write beside the real target (a link inside the bucket is followed),
        # then rename, which is atomic on POSIX.  The partial file keeps the name
        # "<object>.partial" (the archive's clean-up recognises it after a crash) and is opened
        # without following a link, so a link planted under that name cannot redirect the bytes.
        real = self._real_path(key, target)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        partial = f"{real}.partial"
        if os.path.islink(partial):
            os.unlink(partial)  # never one of ours: removing the link leaves its target alone
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            with os.fdopen(handle, "wb") as file:
                fill(file)
            os.replace(partial, real)
        except BaseException:
            # Leave no partial object behind, then report the failure itself.
            if os.path.lexists(partial):
                os.unlink(partial)
            raise

    def _joined(self, key: str) -> str:
        return f"{self.root}/{key.lstrip('/')}" if key else self.root

    def _real_path(self, key: str, target: str) -> str:
        """``target`` with every link resolved; BucketKeyError when that is outside the bucket.

        A link that does not exist yet (or points to nothing) resolves to where it points, so
        a write cannot create a file outside the bucket through it either.  The check is made
        when the path is asked for: a link swapped in afterwards, by someone racing the reader
        with write access to the folder, is not caught (that would take ``openat`` with
        ``O_NOFOLLOW`` on every component).
        """
        root = os.path.realpath(self.root)
        real = os.path.realpath(target)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise BucketKeyError(key, "leads outside the bucket (through a symbolic link or '..' on its path)")
        return real


def open_bucket(settings: Settings) -> Bucket:
    """The bucket named by ``settings.bucket_url``; a local folder is created if missing."""
    protocol = settings.bucket_protocol
    options: dict[str, object] = {}
    if protocol == "s3":
        client_kwargs: dict[str, object] = {}
        if settings.s3_endpoint_url:
            options["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_region:
            client_kwargs["region_name"] = settings.s3_region
        if settings.s3_access_key_id:
            options["key"] = settings.s3_access_key_id
        if settings.s3_secret_access_key:
            options["secret"] = settings.s3_secret_access_key.get_secret_value()
        options["client_kwargs"] = client_kwargs
    fs = fsspec.filesystem(protocol, **options)
    root = settings.bucket_root
    if protocol == "file":
        fs.makedirs(root, exist_ok=True)
    return Bucket(fs=fs, root=root, protocol=protocol)
