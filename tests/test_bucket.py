"""The file bucket (opencdms_kernel.bucket): the key check, whole-object writes, and keys that
must not lead out of a local-folder bucket through a symbolic link.

Each refusal is checked by what the bucket (and the folder around it) holds afterwards, not
only by the message.  The S3 tests run against moto's server on 127.0.0.1 (conftest.py).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from opencdms_kernel.bucket import Bucket, BucketKeyError, bucket_key_problem, open_bucket
from opencdms_kernel.catalog import CatalogParameterError, open_catalog
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.settings import Settings

SECRET = b"station,element,time,value\nSECRET,TMAX,2020-01-01,1\n"
CSV = b"station,element,time,value\n0-20000-0-60001,TMAX,2020-01-01,21.5\n"


def folder_settings(tmp_path: Path, root: Path | None = None) -> Settings:
    return Settings(home=tmp_path, bucket_url=f"file://{root or tmp_path / 'bucket'}")


@pytest.fixture
def bucket(tmp_path: Path) -> Bucket:
    """A local-folder bucket at tmp_path/bucket (no datastore needed)."""
    return open_bucket(folder_settings(tmp_path))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the bucket, holding a file nobody may reach through the bucket."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.csv").write_bytes(SECRET)
    return folder


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file (not folder, not link) under ``folder``, by relative path, with its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[path.relative_to(folder).as_posix()] = path.read_bytes()
    return found


def assert_refused(raised: pytest.ExceptionInfo[BucketKeyError], key: str, words: str) -> None:
    assert isinstance(raised.value, OpenCDMSError)
    assert raised.value.key == key
    assert str(raised.value).startswith(f"bucket key {key!r}: ")
    assert words in str(raised.value)


# --------------------------------------------------------------------------- the key check


@pytest.mark.parametrize("key", ["incoming/", "incoming/aws/", "reports/monthly/"])
def test_a_folder_is_not_an_object_key(key: str) -> None:
    for prefixes in ((), ("incoming/", "reports/")):
        problem = bucket_key_problem(key, prefixes)
        assert problem is not None and "is a folder, not an object" in problem, (key, prefixes)
    assert bucket_key_problem(key, folder=True) is None  # where a folder is meant, it is one
    assert bucket_key_problem(key.rstrip("/") + "/data.csv", ("incoming/", "reports/")) is None


def test_a_folder_must_end_with_a_slash_where_a_folder_is_meant() -> None:
    assert "must end with '/'" in (bucket_key_problem("incoming", folder=True) or "")
    assert "'..' segments" in (bucket_key_problem("incoming/../", folder=True) or "")


@pytest.mark.parametrize("key", ["incoming/", "incoming/aws/", "", "../x.csv", "/etc/passwd", "incoming//x.csv"])
def test_writing_or_reading_an_invalid_key_is_refused_and_writes_nothing(bucket: Bucket, key: str) -> None:
    root = Path(bucket.root)
    with pytest.raises(BucketKeyError) as raised:
        bucket.write_bytes(key, CSV)
    assert raised.value.key == key
    assert files_under(root) == {} and list(root.iterdir()) == []
    with pytest.raises(BucketKeyError):
        bucket.read_bytes(key)


# --------------------------------------------------------------------------- whole-object writes


def test_a_write_leaves_the_object_and_nothing_else(bucket: Bucket) -> None:
    bucket.write_bytes("incoming/aws/a.csv", CSV)
    bucket.write_bytes("incoming/aws/a.csv", SECRET)  # replaced whole
    assert files_under(Path(bucket.root)) == {"incoming/aws/a.csv": SECRET}


def test_a_failed_write_leaves_no_partial_object(bucket: Bucket) -> None:
    folder = Path(bucket.root) / "incoming" / "a.csv"
    folder.mkdir(parents=True)  # a folder where the object would go
    with pytest.raises(OSError):
        bucket.write_bytes("incoming/a.csv", CSV)
    assert files_under(Path(bucket.root)) == {}


# --------------------------------------------------------------------------- symbolic links


def test_a_folder_link_leading_outside_is_refused_for_reading_and_writing(
    bucket: Bucket, outside: Path, tmp_path: Path
) -> None:
    (Path(bucket.root) / "incoming").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BucketKeyError) as raised:
        bucket.write_bytes("incoming/new.csv", CSV)
    assert_refused(raised, "incoming/new.csv", "outside the bucket")
    with pytest.raises(BucketKeyError):
        bucket.write_bytes("incoming/aws/new.csv", CSV)  # not even a folder made out there
    assert files_under(outside) == {"secret.csv": SECRET} and sorted(p.name for p in outside.iterdir()) == ["secret.csv"]
    with pytest.raises(BucketKeyError) as raised:
        bucket.fs.cat_file(bucket.path("incoming/secret.csv"))  # how the kernel's readers ask for an object
    assert_refused(raised, "incoming/secret.csv", "outside the bucket")
    with pytest.raises(BucketKeyError):
        bucket.read_bytes("incoming/secret.csv")


def test_a_file_link_leading_outside_is_refused_for_reading_and_writing(bucket: Bucket, outside: Path) -> None:
    link = Path(bucket.root) / "incoming" / "x.csv"
    link.parent.mkdir()
    link.symlink_to(outside / "secret.csv")
    with pytest.raises(BucketKeyError) as raised:
        bucket.fs.cat_file(bucket.path("incoming/x.csv"))
    assert_refused(raised, "incoming/x.csv", "outside the bucket")
    with pytest.raises(BucketKeyError):
        bucket.read_bytes("incoming/x.csv")
    with pytest.raises(BucketKeyError):
        bucket.write_bytes("incoming/x.csv", CSV)
    assert files_under(outside) == {"secret.csv": SECRET}
    assert link.is_symlink() and os.readlink(link) == str(outside / "secret.csv")  # left as it was
    assert files_under(Path(bucket.root)) == {}


def test_a_dangling_link_leading_outside_is_not_written_through(bucket: Bucket, outside: Path) -> None:
    link = Path(bucket.root) / "incoming" / "new.csv"
    link.parent.mkdir()
    link.symlink_to(outside / "new.csv")  # does not exist yet: a write would create it out there
    with pytest.raises(BucketKeyError):
        bucket.write_bytes("incoming/new.csv", CSV)
    assert files_under(outside) == {"secret.csv": SECRET}


def test_a_link_planted_as_the_partial_file_does_not_redirect_a_write(bucket: Bucket, outside: Path) -> None:
    folder = Path(bucket.root) / "incoming"
    folder.mkdir()
    (folder / "x.csv.partial").symlink_to(outside / "planted.csv")
    (folder / "y.csv.partial").write_bytes(b"left by a crash")
    bucket.write_bytes("incoming/x.csv", CSV)
    bucket.write_bytes("incoming/y.csv", SECRET)
    assert files_under(outside) == {"secret.csv": SECRET}
    assert not (folder / "x.csv").is_symlink()
    assert files_under(Path(bucket.root)) == {"incoming/x.csv": CSV, "incoming/y.csv": SECRET}
    assert sorted(p.name for p in folder.iterdir()) == ["x.csv", "y.csv"]


def test_dot_dot_in_a_path_is_refused_for_a_local_folder(bucket: Bucket, outside: Path) -> None:
    with pytest.raises(BucketKeyError) as raised:
        bucket.path("../outside/secret.csv")
    assert_refused(raised, "../outside/secret.csv", "outside the bucket")


def test_the_places_that_read_by_path_are_refused_too(bucket: Bucket, outside: Path, tmp_path: Path) -> None:
    from opencdms_kernel.ingest import IngestRequest
    from opencdms_kernel.reports import read_text

    (Path(bucket.root) / "incoming").symlink_to(outside, target_is_directory=True)
    key = "incoming/secret.csv"
    with pytest.raises(BucketKeyError):
        IngestRequest.from_bucket(bucket, key)
    with pytest.raises(BucketKeyError):
        read_text(bucket, key)
    with pytest.raises(BucketKeyError):
        open_catalog(folder_settings(tmp_path)).incoming.read(key=key)


def test_links_that_stay_inside_the_bucket_are_followed(bucket: Bucket) -> None:
    root = Path(bucket.root)
    (root / "data" / "aws").mkdir(parents=True)
    (root / "data" / "2020.csv").write_bytes(CSV)
    (root / "incoming").mkdir()
    (root / "incoming" / "latest.csv").symlink_to("../data/2020.csv")
    (root / "incoming" / "aws").symlink_to(root / "data" / "aws", target_is_directory=True)
    assert bucket.fs.cat_file(bucket.path("incoming/latest.csv")) == CSV
    bucket.write_bytes("incoming/latest.csv", SECRET)  # written through the link, which stays
    assert (root / "incoming" / "latest.csv").is_symlink()
    bucket.write_bytes("incoming/aws/a.csv", CSV)
    assert files_under(root) == {"data/2020.csv": SECRET, "data/aws/a.csv": CSV}


def test_a_bucket_whose_root_is_a_link_works(tmp_path: Path) -> None:
    real = tmp_path / "real-bucket"
    real.mkdir()
    (tmp_path / "bucket-link").symlink_to(real, target_is_directory=True)
    linked = open_bucket(folder_settings(tmp_path, tmp_path / "bucket-link"))
    linked.write_bytes("incoming/a.csv", CSV)
    assert linked.fs.cat_file(linked.path("incoming/a.csv")) == CSV and files_under(real) == {"incoming/a.csv": CSV}
    assert linked.path("incoming/a.csv") == f"{tmp_path / 'bucket-link'}/incoming/a.csv"  # paths as before


# --------------------------------------------------------------------------- the catalog's incoming entry


@pytest.mark.parametrize("key", ["incoming/", "incoming/aws/"])
def test_the_catalog_refuses_a_folder_as_the_incoming_key(bucket: Bucket, tmp_path: Path, key: str) -> None:
    bucket.write_bytes(f"{key}daily.csv", CSV)  # the folder exists and holds a CSV
    with pytest.raises(CatalogParameterError) as raised:
        open_catalog(folder_settings(tmp_path)).incoming.read(key=key)
    assert raised.value.entry == "incoming" and raised.value.parameter == "key"
    assert "is a folder, not an object" in str(raised.value)


# --------------------------------------------------------------------------- other filesystems


def test_a_memory_bucket_checks_keys_and_has_no_links() -> None:
    memory = open_bucket(Settings(bucket_url=f"memory://opencdms-{uuid.uuid4().hex[:12]}"))
    memory.write_bytes("incoming/a.csv", CSV)
    assert memory.read_bytes("incoming/a.csv") == CSV
    assert memory.path("../a.csv") == f"{memory.root}/../a.csv"  # a plain name, as before
    with pytest.raises(BucketKeyError):
        memory.write_bytes("incoming/", CSV)
    assert [path.lstrip("/") for path in memory.fs.find(memory.root)] == [memory.path("incoming/a.csv").lstrip("/")]


@pytest.mark.s3
def test_an_s3_bucket_writes_and_reads_objects_and_refuses_folder_keys(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    name = f"opencdms-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    s3 = open_bucket(Settings(home=tmp_path, bucket_url=f"s3://{name}", s3_endpoint_url=s3_endpoint,
                              s3_access_key_id="testing", s3_secret_access_key="testing", s3_region="us-east-1"))
    assert s3.path("incoming/a.csv") == f"{name}/incoming/a.csv"
    s3.write_bytes("incoming/a.csv", CSV)
    assert s3.read_bytes("incoming/a.csv") == CSV
    with pytest.raises(BucketKeyError):
        s3.write_bytes("incoming/aws/", CSV)
    s3.fs.invalidate_cache()
    assert s3.fs.find(name) == [f"{name}/incoming/a.csv"]


def test_a_local_file_is_written_whole_under_its_key(tmp_path: Path) -> None:
    bucket = open_bucket(Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}"))
    source = tmp_path / "report.csv"
    source.write_bytes(b"line\n" * 300_000)
    bucket.write_file("rejects/1-abc/report.csv", source)
    assert bucket.read_bytes("rejects/1-abc/report.csv") == source.read_bytes()
    assert not list((tmp_path / "bucket" / "rejects" / "1-abc").glob("*.partial"))
    with pytest.raises(BucketKeyError):
        bucket.write_file("rejects/", source)
