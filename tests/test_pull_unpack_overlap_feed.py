"""The content side of ``pull --unpack``'s overlap: a Writer publishing into an
IngestFeed, and a reader following it (imgpipe.content.feed), on a real store's files.

What is pinned: the reader gets every byte the writer wrote, in order, through its own
descriptor (also after the rename into blobs/); EOF only after the commit verified the
blob; a resumed ingest's bytes at once; a writer that lets go unverified (digest
mismatch, closed for a resume, cut back) hands out nothing more and its readers raise
the producer's error; no writer at all falls back to the stored blob.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from pathlib import Path

import pytest

from imgpipe.content import ContentStore
from imgpipe.content.feed import IngestFeed, IngestFollower
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import DigestMismatch, FailedPrecondition
from imgpipe.formats.mediatype import MediaType

CHUNK = 64 << 10
DATA = bytes(range(256)) * (5 * CHUNK // 256) + b"tail"  # 5 chunks and a bit
DIGEST = Digest.parse("sha256:" + hashlib.sha256(DATA).hexdigest())
DESC = Descriptor(MediaType("application/vnd.oci.image.layer.v1.tar"), DIGEST, len(DATA))
REF = f"import-{DIGEST}"
#: Bound on every wait for the reader thread (nothing here waits for a clock).
DEADLINE = 30.0


@pytest.fixture
def content(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def read_all(feed: IngestFeed, pos: int = 0) -> bytes:
    """What the feed holds from ``pos`` on, read without blocking (the caller knows it
    is there)."""
    out = bytearray()
    buf = memoryview(bytearray(CHUNK))
    while pos < len(DATA):
        n = feed.read_into(pos, buf)
        assert n, n
        out += buf[:n]
        pos += n
    return bytes(out)


def test_a_reader_follows_the_writer_and_ends_only_after_the_commit(
    content: ContentStore,
) -> None:
    feed = IngestFeed()
    got: queue.Queue[bytes | int | BaseException] = queue.Queue()
    committing = threading.Event()
    eof_before_commit: list[bool] = []

    def reader() -> None:
        pos, buf = 0, memoryview(bytearray(CHUNK))
        try:
            while True:
                n = feed.read_into(pos, buf)
                if n == 0:
                    eof_before_commit.append(not committing.is_set())
                    got.put(0)
                    return
                assert n is not None
                got.put(bytes(buf[:n]))
                pos += n
        except BaseException as e:
            got.put(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    w = content.writer(REF, expected=DIGEST, total=len(DATA), feed=feed)
    received = b""
    for i in range(0, len(DATA), CHUNK):
        w.write(DATA[i : i + CHUNK])
        # the reader has it before the next write: it reads what is written, no more
        while len(received) < min(i + CHUNK, len(DATA)):
            item = got.get(timeout=DEADLINE)
            assert isinstance(item, bytes), item
            received += item
    assert received == DATA
    assert feed.early == len(DATA)  # all of it handed out before the commit
    committing.set()
    w.commit(len(DATA), DIGEST)
    assert got.get(timeout=DEADLINE) == 0
    t.join(DEADLINE)
    assert eof_before_commit == [False]
    assert content.exists(DIGEST)
    feed.close()


def test_a_reader_behind_the_rename_reads_the_same_file(content: ContentStore) -> None:
    feed = IngestFeed()
    w = content.writer(REF, expected=DIGEST, total=len(DATA), feed=feed)
    w.write(DATA)
    w.commit(len(DATA), DIGEST)  # renamed into blobs/ before the reader read a byte
    assert read_all(feed) == DATA
    assert feed.read_into(len(DATA), memoryview(bytearray(1))) == 0
    assert feed.early == 0  # verified before it was read
    feed.close()


def test_a_resumed_ingest_is_readable_at_once(content: ContentStore) -> None:
    half = len(DATA) // 2
    with content.writer(REF, expected=DIGEST, total=len(DATA)) as first:
        first.write(DATA[:half])  # then closed: kept for a resume
    feed = IngestFeed()
    w = content.writer(REF, expected=DIGEST, total=len(DATA), feed=feed)
    assert w.offset == half
    buf = memoryview(bytearray(len(DATA)))
    n = feed.read_into(0, buf)  # no write yet: the bytes already there
    assert n == half and bytes(buf[:n]) == DATA[:half]
    w.write(DATA[half:])
    assert read_all(feed, half) == DATA[half:]
    w.commit(len(DATA), DIGEST)
    assert feed.read_into(len(DATA), buf) == 0
    feed.close()


def test_a_digest_mismatch_is_raised_and_never_a_clean_end(content: ContentStore) -> None:
    bad = Digest.parse("sha256:" + hashlib.sha256(b"other").hexdigest())
    feed = IngestFeed()
    w = content.writer(REF, expected=bad, total=len(DATA), feed=feed)
    w.write(DATA)
    assert read_all(feed) == DATA  # handed out, unverified
    with pytest.raises(DigestMismatch) as failed:
        w.commit(len(DATA), bad)
    # the writer let go unverified: a read now waits for the producer's outcome
    feed.end(failed.value)
    with pytest.raises(DigestMismatch):
        feed.read_into(len(DATA), memoryview(bytearray(1)))
    with pytest.raises(DigestMismatch):
        feed.read_into(0, memoryview(bytearray(1)))  # nothing more is handed out
    feed.close()


def test_a_writer_closed_for_a_resume_raises_the_producers_error(
    content: ContentStore,
) -> None:
    feed = IngestFeed()
    w = content.writer(REF, expected=DIGEST, total=len(DATA), feed=feed)
    w.write(DATA[:CHUNK])
    w.close()  # a dropped download: the ingest stays for a resume
    t, outcome = _read_on_a_thread(feed, CHUNK)
    feed.end(ConnectionError("the registry hung up"))
    t.join(DEADLINE)
    assert [type(e) for e in outcome] == [ConnectionError]
    feed.close()


def test_a_cut_back_ingest_stops_the_reader(content: ContentStore) -> None:
    feed = IngestFeed()
    w = content.writer(REF, expected=DIGEST, total=len(DATA), feed=feed)
    w.write(DATA[:CHUNK])
    assert feed.read_into(0, memoryview(bytearray(CHUNK))) == CHUNK
    w.truncate()  # the bytes the reader had are gone
    w.write(DATA)
    feed.end(None)  # even a producer that then claims success is not believed
    with pytest.raises(FailedPrecondition):
        feed.read_into(CHUNK, memoryview(bytearray(CHUNK)))
    w.close()
    feed.close()


def test_no_writer_and_a_stored_blob_reads_the_store(content: ContentStore) -> None:
    content.ingest_blob(_Bytes(DATA), DESC)  # stored by someone else, no feed
    feed = IngestFeed()
    feed.end(None)
    assert feed.read_into(0, memoryview(bytearray(1))) is None
    follower = IngestFollower(feed, lambda: content.open_blob(DESC))
    with io.BufferedReader(follower) as f:  # type: ignore[arg-type]
        assert f.read() == DATA
    assert feed.closed


def test_stop_wakes_a_waiting_reader_and_every_later_one(content: ContentStore) -> None:
    feed = IngestFeed()
    w = content.writer(REF, expected=DIGEST, total=len(DATA), feed=feed)
    t, outcome = _read_on_a_thread(feed, 0)  # nothing written: it waits
    feed.stop(KeyError("called off"))
    t.join(DEADLINE)
    assert [type(e) for e in outcome] == [KeyError]
    w.write(DATA)
    with pytest.raises(KeyError):
        feed.read_into(0, memoryview(bytearray(1)))
    w.close()
    feed.close()


def test_only_the_first_writer_binds(content: ContentStore) -> None:
    feed = IngestFeed()
    w = content.writer(REF, expected=DIGEST, total=len(DATA), feed=feed)
    other = content.writer("another-ref", total=3, feed=feed)  # bound already: ignored
    other.write(b"abc")
    w.write(DATA[:10])
    assert feed.read_into(0, memoryview(bytearray(CHUNK))) == 10
    other.close()
    w.close()
    feed.close()


def _read_on_a_thread(feed: IngestFeed, pos: int) -> tuple[threading.Thread, list[BaseException]]:
    """A one-byte read of ``feed`` at ``pos`` on its own thread: (the thread, the
    exception it raised once joined, if any)."""
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            feed.read_into(pos, memoryview(bytearray(1)))
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return t, outcome


class _Bytes:
    """A BlobReader over bytes in memory (the test's source)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def open_blob(self, desc: Descriptor) -> io.BytesIO:
        return io.BytesIO(self._data)
