"""The embedded broker delivers whole messages, and an unreadable one does not end the worker."""

import multiprocessing as mp
from queue import Empty

import pytest
from kombu import Connection

from services.broker import FilesystemTransport, make_celery
from services.config import Settings


def _options(folder) -> dict:
    return {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}


def _produce(folder, n: int, stock: bool = False) -> None:
    transport = None if stock else FilesystemTransport
    with Connection("filesystem://", transport=transport, transport_options=_options(folder)) as c:
        channel = c.channel()
        for i in range(n):
            # Large enough that serialising and writing it takes a good part of a second:
            # long enough for the reader to find a file written in place before it is whole.
            channel._put("analysis", {"i": i, "body": list(range(2_000_000))})


def _drain(folder, producer, n: int) -> tuple[list[int], int]:
    """Poll as a worker does while the producer writes; the stock reader raises on a bad file."""
    got, unreadable = [], 0
    with Connection("filesystem://", transport=FilesystemTransport, transport_options=_options(folder)) as c:
        channel = c.channel()
        read = super(type(channel), channel)._get
        producer.start()
        while len(got) + unreadable < n:
            try:
                got.append(read("analysis")["i"])
            except Empty:
                if not producer.is_alive() and not list(folder.glob("*.msg")):
                    break
            except ValueError:
                unreadable += 1
    producer.join()
    return got, unreadable


@pytest.mark.parametrize("stock", [True, False], ids=["kombu", "ours"])
def test_a_reader_polling_as_the_worker_does_never_gets_a_half_written_message(tmp_path, stock):
    """kombu's own writer is here to show that the test sees the fault it guards against."""
    producer = mp.get_context("spawn").Process(target=_produce, args=(tmp_path, 3, stock))
    got, unreadable = _drain(tmp_path, producer, 3)
    assert producer.exitcode == 0
    if stock:
        assert unreadable > 0, "kombu now writes whole files: FilesystemChannel._put can go"
    else:
        assert unreadable == 0 and sorted(got) == [0, 1, 2]


def test_an_unreadable_message_is_dropped_and_the_next_one_delivered(tmp_path):
    with Connection("filesystem://", transport=FilesystemTransport, transport_options=_options(tmp_path)) as c:
        channel = c.channel()
        (tmp_path / "0_broken.analysis.msg").write_bytes(b"")
        channel._put("analysis", {"ok": True})
        with pytest.raises(Empty):
            channel._get("analysis")
        assert channel._get("analysis") == {"ok": True}


def test_the_embedded_stack_uses_the_whole_message_transport(tmp_path):
    celery = make_celery(Settings.from_env({"DERMATRIAGE_DATA_DIR": str(tmp_path)}))
    with celery.connection_for_write() as conn:
        assert isinstance(conn.transport, FilesystemTransport)
    redis = make_celery(Settings.from_env({"DERMATRIAGE_DATA_DIR": str(tmp_path), "BROKER_URL": "redis://127.0.0.1:1/0"}))
    assert redis.conf.broker_transport is None
