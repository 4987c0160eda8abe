"""Storage: a local folder, and S3 against a real S3-compatible server process (moto)."""

from __future__ import annotations

import pytest

from shared.storage import LocalStorage, MissingObject, S3Storage, job_key, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3")


def test_put_get_delete(storage):
    key = job_key("abc", "snapshots/000010.png")
    assert not storage.exists(key)
    storage.put(key, b"\x89PNG data", "image/png")
    assert storage.exists(key)
    assert storage.get(key) == b"\x89PNG data"
    storage.put(key, b"replaced", "image/png")
    assert storage.get(key) == b"replaced"
    storage.delete(key)
    assert not storage.exists(key)
    with pytest.raises(MissingObject):
        storage.get(key)


def test_s3_keys_live_under_the_prefix(s3, s3_server):
    import boto3

    assert isinstance(s3, S3Storage)
    s3.put("jobs/x/output.png", b"png", "image/png")
    listed = boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket="impasto")
    assert [item["Key"] for item in listed["Contents"]] == ["some/prefix/jobs/x/output.png"]
    head = boto3.client("s3", endpoint_url=s3_server).head_object(Bucket="impasto", Key="some/prefix/jobs/x/output.png")
    assert head["ContentType"] == "image/png"


@pytest.mark.parametrize("key", ["../etc/passwd", "jobs/../../x", "/abs/path", "jobs/a b", "", "jobs//x"])
def test_keys_that_could_escape_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match="not a storage key"):
        LocalStorage(tmp_path).put(key, b"x", "image/png")


def test_local_writes_leave_no_partial_files(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("jobs/a/output.png", b"x" * 1000, "image/png")
    assert sorted(p.name for p in (tmp_path / "jobs" / "a").iterdir()) == ["output.png"]


def test_open_storage_refuses_other_schemes():
    with pytest.raises(ValueError, match="file:///PATH or s3://"):
        open_storage("ftp://host/x")


def test_local_delete_leaves_no_empty_folders(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("jobs/a/snapshots/000002.png", b"1", "image/png")
    storage.put("jobs/a/output.png", b"2", "image/png")
    storage.delete("jobs/a/snapshots/000002.png")
    assert not (tmp_path / "jobs/a/snapshots").exists() and (tmp_path / "jobs/a/output.png").exists()
    storage.delete("jobs/a/output.png")
    assert not (tmp_path / "jobs").exists() and tmp_path.exists()
    storage.put("jobs/a/output.png", b"3", "image/png")  # and the folders come back when needed
    assert storage.get("jobs/a/output.png") == b"3"
