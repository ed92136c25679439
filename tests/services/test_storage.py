import uuid

import pytest

from services.storage import LocalDiskStore, ObjectNotFound, StorageError, open_store

from tests.factories import free_port


@pytest.fixture(params=["disk", "s3"])
def store(request, tmp_path):
    if request.param == "disk":
        return open_store((tmp_path / "objects").as_uri())
    endpoint = request.getfixturevalue("s3_server")
    return open_store(f"s3://testing:testing@{endpoint}/b-{uuid.uuid4().hex[:8]}")


def test_put_get_exists_delete(store):
    store.ping()
    store.put("images/a.jpg", b"\xff\xd8data", "image/jpeg")
    assert store.exists("images/a.jpg")
    assert store.get("images/a.jpg") == b"\xff\xd8data"
    store.delete("images/a.jpg")
    assert not store.exists("images/a.jpg")
    with pytest.raises(ObjectNotFound):
        store.get("images/a.jpg")


def test_keys_cannot_escape(store):
    for key in ("../x", "/abs", "a//b", "a/../../b", ""):
        with pytest.raises(ValueError):
            store.put(key, b"x", "text/plain")


def test_unreachable_s3_is_a_storage_error():
    store = open_store(f"s3://k:s@127.0.0.1:{free_port()}/bucket")
    with pytest.raises(StorageError):
        store.ping()
    with pytest.raises(StorageError):
        store.put("images/x.png", b"x", "image/png")


def test_disk_store_whose_folder_is_gone_fails_ping_and_put(tmp_path):
    store = LocalDiskStore(tmp_path / "o")
    (tmp_path / "o").rmdir()
    (tmp_path / "o").write_text("a file where the folder should be")
    with pytest.raises(StorageError):
        store.ping()
    with pytest.raises(StorageError):
        store.put("images/x.png", b"x", "image/png")
