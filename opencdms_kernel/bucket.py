"""The file bucket: a local folder or an S3 bucket, reached through one fsspec filesystem."""

from __future__ import annotations

import re
from dataclasses import dataclass

import fsspec
from fsspec import AbstractFileSystem

from opencdms_kernel.settings import Settings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bucket_key_problem(key: str, prefixes: tuple[str, ...] = ()) -> str | None:
    """Why ``key`` is not an acceptable bucket key (``None`` when it is)."""
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
    if prefixes and not key.startswith(prefixes):
        return f"{key!r} is not under an allowed prefix ({', '.join(prefixes)})"
    return None


@dataclass(frozen=True)
class Bucket:
    """Where objects live: ``fs`` is the filesystem, ``root`` the path of the bucket in it."""

    fs: AbstractFileSystem
    root: str
    protocol: str

    def path(self, key: str) -> str:
        """Filesystem path of the object ``key`` (a relative, '/'-separated name)."""
        return f"{self.root}/{key.lstrip('/')}" if key else self.root

    def url(self, key: str) -> str:
        """Full URL of ``key`` (``file:///…`` or ``s3://…``), as shown to people and DuckDB."""
        return f"{self.protocol}://{self.path(key)}"

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write an object whole: a reader never sees a partly written object."""
        target = self.path(key)
        if self.protocol == "file":
            # Local folder: write beside the target and rename, which is atomic on POSIX.
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            partial = f"{target}.partial"
            self.fs.pipe_file(partial, data)
            self.fs.mv(partial, target)
        else:
            self.fs.pipe_file(target, data)  # an S3 PUT is atomic by itself


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
