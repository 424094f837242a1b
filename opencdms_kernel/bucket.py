"""The file bucket: a local folder or an S3 bucket, reached through one fsspec filesystem."""

from __future__ import annotations

from dataclasses import dataclass

import fsspec
from fsspec import AbstractFileSystem

from opencdms_kernel.settings import Settings


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
