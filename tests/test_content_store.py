"""The content store (in one process) and the verifying reader."""

from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgpipe.content
from imgpipe.content import (
    CHUNK_SIZE,
    ContentStore,
    VerifyingReader,
    digest_stream,
)
from imgpipe.content import locks as store_mod
from imgpipe.content.verify import open_verified
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import (
    AlreadyExists,
    Conflict,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceLimit,
    SizeMismatch,
)
from imgpipe.formats.mediatype import MediaType

PAYLOAD = b"hello, content store\n" * 1000
PAYLOAD_DIGEST = Digest.from_bytes(PAYLOAD)
OTHER = b"some other bytes"
OTHER_DIGEST = Digest.from_bytes(OTHER)
MISSING = Digest.from_bytes(b"never stored")


@pytest.fixture
def cs(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def put(cs: ContentStore, data: bytes, ref: str = "ref") -> Digest:
    d = Digest.from_bytes(data)
    with cs.writer(ref, expected=d, total=len(data)) as w:
        w.write(data)
        w.commit(len(data), d)
    return d


def ingest_entries(cs: ContentStore) -> list[str]:
    """What is left under ingest/, trash included (a clean store leaves nothing)."""
    d = cs.root / "ingest"
    return sorted(os.listdir(d)) if d.exists() else []


class NonSeekable(io.RawIOBase):
    """A stream that cannot seek and returns short reads, like a socket."""

    def __init__(self, data: bytes, *, max_read: int = 7000) -> None:
        self._buf = io.BytesIO(data)
        self._max = max_read

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        chunk = self._buf.read(min(len(b), self._max))
        b[: len(chunk)] = chunk
        return len(chunk)


# -- the public namespace -------------------------------------------------------------------


def test_public_names_are_pinned():
    assert sorted(imgpipe.content.__all__) == sorted(
        [
            "CHUNK_SIZE",
            "DEFAULT_LOCK_TIMEOUT",
            "MAX_REF_LENGTH",
            "ContentStore",
            "Info",
            "IngestStatus",
            "VerifyProblem",
            "VerifyingReader",
            "Writer",
            "digest_stream",
        ]
    )
    for name in imgpipe.content.__all__:
        assert hasattr(imgpipe.content, name)


def test_constructing_a_store_creates_nothing(tmp_path: Path):
    ContentStore(tmp_path / "content")
    assert not (tmp_path / "content").exists()


# -- write, commit, read, info, walk, delete -----------------------------------------------


def test_write_commit_read_info_walk_delete(cs: ContentStore):
    with cs.writer("r1", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        assert w.offset == 0
        for i in range(0, len(PAYLOAD), 1000):
            w.write(memoryview(PAYLOAD)[i : i + 1000])
        assert w.offset == len(PAYLOAD)
        assert w.digest() == PAYLOAD_DIGEST
        assert w.commit(len(PAYLOAD), PAYLOAD_DIGEST) == PAYLOAD_DIGEST
        assert w.committed_new
        assert w.closed

    blob = cs.root / "blobs" / "sha256" / PAYLOAD_DIGEST.encoded
    assert blob.read_bytes() == PAYLOAD
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert ingest_entries(cs) == []
    assert list(cs.ingests()) == []

    assert cs.exists(PAYLOAD_DIGEST)
    info = cs.info(PAYLOAD_DIGEST)
    assert (info.digest, info.size) == (PAYLOAD_DIGEST, len(PAYLOAD))
    with cs.open(PAYLOAD_DIGEST) as f:
        assert f.read() == PAYLOAD
    assert cs.read_bytes(PAYLOAD_DIGEST, limit=len(PAYLOAD)) == PAYLOAD

    other = put(cs, OTHER, ref="r2")
    assert sorted(i.digest for i in cs.walk()) == sorted([PAYLOAD_DIGEST, other])
    assert {i.digest: i.size for i in cs.walk()} == {
        PAYLOAD_DIGEST: len(PAYLOAD),
        other: len(OTHER),
    }

    cs.delete(PAYLOAD_DIGEST)
    assert not cs.exists(PAYLOAD_DIGEST)
    assert [i.digest for i in cs.walk()] == [other]


def test_empty_blob(cs: ContentStore):
    d = Digest.from_bytes(b"")
    assert cs.ingest("empty", io.BytesIO(b""), digest=d, size=0) is True
    assert cs.read_bytes(d, limit=0) == b""


def test_sha512_blob(cs: ContentStore):
    d = Digest.from_bytes(PAYLOAD, "sha512")
    assert cs.ingest("r", io.BytesIO(PAYLOAD), digest=d, size=len(PAYLOAD))
    assert (cs.root / "blobs" / "sha512" / d.encoded).is_file()
    assert [i.digest for i in cs.walk()] == [d]


def test_commit_with_other_algorithm_rehashes(cs: ContentStore):
    d512 = Digest.from_bytes(PAYLOAD, "sha512")
    with cs.writer("r") as w:  # no expected: hashes with sha256 while writing
        w.write(PAYLOAD)
        w.commit(len(PAYLOAD), d512)
    assert cs.exists(d512)


def test_walk_skips_strays(cs: ContentStore):
    put(cs, OTHER)
    blobs = cs.root / "blobs"
    (blobs / "sha256" / "not-a-digest").write_bytes(b"x")
    (blobs / "md5").mkdir()
    (blobs / "md5" / ("0" * 32)).write_bytes(b"x")
    os.symlink("/etc/passwd", blobs / "sha256" / MISSING.encoded)
    assert [i.digest for i in cs.walk()] == [OTHER_DIGEST]


def test_ingest_returns_true_then_false(cs: ContentStore):
    assert cs.ingest("a", io.BytesIO(PAYLOAD), digest=PAYLOAD_DIGEST, size=len(PAYLOAD)) is True
    # The stream is not even read when the blob exists.
    assert (
        cs.ingest("b", NotReadable(), digest=PAYLOAD_DIGEST, size=len(PAYLOAD))  # type: ignore[arg-type]
        is False
    )
    assert ingest_entries(cs) == []


class NotReadable(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        raise AssertionError("the stream was read")


def test_ingest_through_a_verifying_reader(cs: ContentStore):
    reader = VerifyingReader(NonSeekable(PAYLOAD), digest=PAYLOAD_DIGEST, size=len(PAYLOAD))  # type: ignore[arg-type]
    assert cs.ingest("r", reader, digest=PAYLOAD_DIGEST, size=len(PAYLOAD))
    assert reader.verified


def test_large_blob_crosses_chunks(cs: ContentStore):
    data = os.urandom(2 * CHUNK_SIZE + 12345)
    d = Digest.from_bytes(data)
    assert cs.ingest("big", NonSeekable(data, max_read=300_000), digest=d, size=len(data))  # type: ignore[arg-type]
    with cs.open(d) as f:
        assert digest_stream(f) == (d, len(data))


def test_commit_when_blob_already_exists_returns_normally(cs: ContentStore):
    # Two refs write the same blob; the second commit finds it there.
    w1 = cs.writer("one", total=len(PAYLOAD))
    w2 = cs.writer("two", total=len(PAYLOAD))
    w1.write(PAYLOAD)
    w2.write(PAYLOAD)
    w1.commit(len(PAYLOAD), PAYLOAD_DIGEST)
    assert w2.commit(len(PAYLOAD), PAYLOAD_DIGEST) == PAYLOAD_DIGEST
    assert w1.committed_new
    assert not w2.committed_new
    assert ingest_entries(cs) == []
    assert cs.read_bytes(PAYLOAD_DIGEST, limit=1 << 20) == PAYLOAD


def test_writer_for_existing_expected_raises_already_exists_and_creates_nothing(cs: ContentStore):
    put(cs, OTHER)
    with pytest.raises(AlreadyExists):
        cs.writer("fresh", expected=OTHER_DIGEST)
    assert ingest_entries(cs) == []
    # Without an expected digest there is nothing to compare with: a writer opens.
    with cs.writer("fresh") as w:
        assert w.offset == 0


# -- mismatches -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "digest", "error"),
    [
        (len(PAYLOAD), OTHER_DIGEST, DigestMismatch),
        (len(PAYLOAD) - 1, PAYLOAD_DIGEST, SizeMismatch),
        (len(PAYLOAD) + 1, PAYLOAD_DIGEST, SizeMismatch),
    ],
    ids=["digest", "size-short", "size-long"],
)
def test_commit_mismatch_leaves_no_blob_and_no_ingest(cs, size, digest, error):
    w = cs.writer("bad")
    w.write(PAYLOAD)
    with pytest.raises(error):
        w.commit(size, digest)
    assert w.closed
    assert list(cs.walk()) == []
    assert ingest_entries(cs) == []
    with pytest.raises(NotFound):
        cs.ingest_status("bad")
    # The lock was released: the ref can be written again at once.
    with cs.writer("bad", timeout=0) as again:
        assert again.offset == 0


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (PAYLOAD[:-1], SizeMismatch),
        (PAYLOAD + b"!", SizeMismatch),
        (PAYLOAD[:-1] + b"?", DigestMismatch),
    ],
    ids=["short", "long", "wrong-bytes"],
)
def test_ingest_mismatch_discards(cs, stream, error):
    with pytest.raises(error):
        cs.ingest("r", io.BytesIO(stream), digest=PAYLOAD_DIGEST, size=len(PAYLOAD))
    assert list(cs.walk()) == []
    assert ingest_entries(cs) == []


def test_write_past_total_is_refused_and_writes_nothing(cs: ContentStore):
    with cs.writer("r", total=10) as w:
        w.write(b"12345678")
        with pytest.raises(SizeMismatch):
            w.write(b"abc")
        assert w.offset == 8
        assert w.digest() == Digest.from_bytes(b"12345678")
    assert cs.ingest_status("r").offset == 8


def test_ingest_keeps_the_ingest_when_the_stream_fails(cs: ContentStore):
    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = False

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            if self.sent:
                raise ConnectionResetError("peer went away")
            self.sent = True
            b[:100] = PAYLOAD[:100]
            return 100

    with pytest.raises(ConnectionResetError):
        cs.ingest("r", Failing(), digest=PAYLOAD_DIGEST, size=len(PAYLOAD))  # type: ignore[arg-type]
    status = cs.ingest_status("r")
    assert (status.offset, status.locked) == (100, False)
    assert cs.ingest("r", io.BytesIO(PAYLOAD), digest=PAYLOAD_DIGEST, size=len(PAYLOAD))


# -- resume ---------------------------------------------------------------------------------


def test_resume_after_clean_close(cs: ContentStore):
    n = 5000
    with cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        w.write(PAYLOAD[:n])
    status = cs.ingest_status("r")
    assert (status.ref, status.offset, status.total, status.expected, status.locked) == (
        "r",
        n,
        len(PAYLOAD),
        PAYLOAD_DIGEST,
        False,
    )
    assert status.started_at <= status.updated_at
    assert [s.ref for s in cs.ingests()] == ["r"]

    with cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        assert w.offset == n
        assert w.digest() == Digest.from_bytes(PAYLOAD[:n])
        w.write(PAYLOAD[n:])
        w.commit(len(PAYLOAD), PAYLOAD_DIGEST)
    assert cs.read_bytes(PAYLOAD_DIGEST, limit=1 << 20) == PAYLOAD


def test_resume_keeps_recorded_values_when_none_given(cs: ContentStore):
    with cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        w.write(PAYLOAD[:10])
    with cs.writer("r") as w:
        assert (w.offset, w.total, w.expected) == (10, len(PAYLOAD), PAYLOAD_DIGEST)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total": len(PAYLOAD) + 1},
        {"expected": OTHER_DIGEST},
    ],
    ids=["total-differs", "expected-differs"],
)
def test_resume_restarts_when_recorded_values_disagree(cs, kwargs):
    with cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        w.write(PAYLOAD[:10])
    with cs.writer("r", **kwargs) as w:
        assert w.offset == 0
        assert w.digest() == Digest.from_bytes(b"")
    status = cs.ingest_status("r")
    assert status.offset == 0
    for key, value in kwargs.items():
        assert getattr(status, key) == value


def test_resume_restarts_when_complete_data_is_wrong(cs: ContentStore):
    bad = b"x" * len(PAYLOAD)
    with cs.writer("r", total=len(PAYLOAD)) as w:
        w.write(bad)
    with cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        assert w.offset == 0


def test_resume_restarts_when_metadata_is_damaged(cs: ContentStore):
    with cs.writer("r", total=len(PAYLOAD)) as w:
        w.write(PAYLOAD[:10])
    status_dir = next((cs.root / "ingest").iterdir())
    (status_dir / "total").write_text("not a number")
    with cs.writer("r", total=len(PAYLOAD)) as w:
        assert w.offset == 0


@pytest.mark.parametrize("seekable", [True, False], ids=["seekable", "non-seekable"])
def test_ingest_skips_what_is_already_stored(cs, seekable):
    n = 3000
    with cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        w.write(PAYLOAD[:n])
    # Poison the first n bytes of the source: if they were copied the digest would fail.
    source = b"\0" * n + PAYLOAD[n:]
    stream = io.BytesIO(source) if seekable else NonSeekable(source)
    assert cs.ingest("r", stream, digest=PAYLOAD_DIGEST, size=len(PAYLOAD))
    assert cs.read_bytes(PAYLOAD_DIGEST, limit=1 << 20) == PAYLOAD


def test_truncate(cs: ContentStore):
    with cs.writer("r") as w:
        w.write(b"garbage")
        w.truncate()
        assert (w.offset, w.digest()) == (0, Digest.from_bytes(b""))
        w.write(OTHER)
        w.commit(len(OTHER), OTHER_DIGEST)
    assert cs.read_bytes(OTHER_DIGEST, limit=100) == OTHER


def test_closed_writer_refuses_work(cs: ContentStore):
    w = cs.writer("r")
    w.close()
    w.close()  # idempotent
    for call in (lambda: w.write(b"x"), w.truncate, lambda: w.commit(0, OTHER_DIGEST)):
        with pytest.raises(FailedPrecondition):
            call()


def test_writer_discard(cs: ContentStore):
    w = cs.writer("r")
    w.write(b"abc")
    w.discard()
    assert ingest_entries(cs) == []


# -- locking in one process -----------------------------------------------------------------


def test_second_writer_of_a_ref_in_the_same_process_conflicts(cs: ContentStore):
    with cs.writer("r") as w:
        w.write(b"abc")
        assert cs.ingest_status("r").locked
        with pytest.raises(Conflict):
            cs.writer("r", timeout=0)
        # A different ref is independent.
        with cs.writer("other", timeout=0):
            pass
    assert not cs.ingest_status("r").locked
    with cs.writer("r", timeout=0) as w:
        assert w.offset == 3


def test_waiting_writer_gets_already_exists_after_the_holder_commits(cs, monkeypatch):
    waiting = threading.Event()
    real_sleep = store_mod._backoff_sleep

    def observed(seconds: float) -> None:
        waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(store_mod, "_backoff_sleep", observed)
    outcome: list[object] = []

    holder = cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD))
    holder.write(PAYLOAD[:100])

    def second() -> None:
        try:
            cs.writer("r", expected=PAYLOAD_DIGEST, total=len(PAYLOAD), timeout=120)
        except Exception as e:
            outcome.append(e)
        else:
            outcome.append("opened")

    t = threading.Thread(target=second)
    t.start()
    assert waiting.wait(120), "the second writer never had to wait"
    holder.write(PAYLOAD[100:])
    holder.commit(len(PAYLOAD), PAYLOAD_DIGEST)
    t.join(120)
    assert not t.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], AlreadyExists)
    assert ingest_entries(cs) == []  # the waiter cleaned the directory it recreated


def test_ingest_removed_between_open_and_lock_is_detected(cs, monkeypatch):
    """The lock file a waiter opened is replaced before it gets the lock: start over."""
    holder = cs.writer("r", total=len(PAYLOAD))
    holder.write(b"\0" * 1000)
    real_flock = store_mod._flock
    calls = 0

    def flock_after_abort(fd: int, operation: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            holder.discard()  # removes the directory whose lock file `fd` is
        real_flock(fd, operation)

    monkeypatch.setattr(store_mod, "_flock", flock_after_abort)
    with cs.writer("r", total=len(PAYLOAD), timeout=0) as w:
        assert calls == 2  # locked the old file, saw it replaced, locked the new one
        assert w.offset == 0
        w.write(PAYLOAD)
        w.commit(len(PAYLOAD), PAYLOAD_DIGEST)
    assert cs.read_bytes(PAYLOAD_DIGEST, limit=1 << 20) == PAYLOAD
    assert ingest_entries(cs) == []


def test_abort(cs: ContentStore):
    with cs.writer("r") as w:
        w.write(b"abc")
        with pytest.raises(Conflict):
            cs.abort("r")
    cs.abort("r")
    assert ingest_entries(cs) == []
    with pytest.raises(NotFound):
        cs.abort("r")


def test_ingests_lists_every_ingest(cs: ContentStore):
    with cs.writer("a", total=5) as w:
        w.write(b"12")
    held = cs.writer("b/with/slashes/../..")
    held.write(b"123")
    try:
        got = {s.ref: (s.offset, s.total, s.locked) for s in cs.ingests()}
        assert got == {"a": (2, 5, False), "b/with/slashes/../..": (3, None, True)}
    finally:
        held.close()


# -- integrity of the stored blobs ----------------------------------------------------------


def corrupt(cs: ContentStore, digest: Digest, at: int = 0) -> None:
    path = cs.root / "blobs" / digest.algorithm / digest.encoded
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_verify_finds_a_corrupted_blob(cs: ContentStore):
    put(cs, PAYLOAD, ref="a")
    put(cs, OTHER, ref="b")
    assert list(cs.verify()) == []
    corrupt(cs, PAYLOAD_DIGEST, at=len(PAYLOAD) // 2)
    problems = list(cs.verify())
    assert [p.digest for p in problems] == [PAYLOAD_DIGEST]
    assert problems[0].problem.startswith("content hashes to sha256:")


def test_read_bytes_verifies_and_limits(cs: ContentStore):
    put(cs, OTHER)
    with pytest.raises(ResourceLimit):
        cs.read_bytes(OTHER_DIGEST, limit=len(OTHER) - 1)
    corrupt(cs, OTHER_DIGEST)
    with pytest.raises(DigestMismatch):
        cs.read_bytes(OTHER_DIGEST, limit=len(OTHER))


@pytest.mark.parametrize(
    "call",
    [
        lambda cs: cs.info(MISSING),
        lambda cs: cs.open(MISSING),
        lambda cs: cs.read_bytes(MISSING, limit=10),
        lambda cs: cs.delete(MISSING),
        lambda cs: cs.ingest_status("nope"),
        lambda cs: cs.abort("nope"),
    ],
    ids=["info", "open", "read_bytes", "delete", "ingest_status", "abort"],
)
def test_missing_is_not_found(cs, call):
    put(cs, OTHER)  # so that the directories exist
    with pytest.raises(NotFound):
        call(cs)
    assert not cs.exists(MISSING)


def test_open_refuses_a_symlinked_blob(cs: ContentStore, tmp_path: Path):
    put(cs, OTHER)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not the blob")
    os.symlink(target, cs.root / "blobs" / "sha256" / MISSING.encoded)
    with pytest.raises(FailedPrecondition):
        cs.open(MISSING)
    with pytest.raises(FailedPrecondition):
        cs.info(MISSING)


@pytest.mark.parametrize(
    "call",
    [
        lambda cs: cs.writer(""),
        lambda cs: cs.writer("r", total=-1),
        lambda cs: cs.writer("r", timeout=-1),
        lambda cs: cs.writer("r", timeout=float("nan")),
        lambda cs: cs.writer("x" * 2000),
        lambda cs: cs.writer("r", expected="sha256:abc"),
        lambda cs: cs.info("sha256:" + "0" * 64),
    ],
    ids=[
        "empty-ref",
        "negative-total",
        "negative-timeout",
        "nan-timeout",
        "long-ref",
        "string-digest",
        "info-string",
    ],
)
def test_invalid_arguments(cs, call):
    with pytest.raises(InvalidArgument):
        call(cs)
    assert ingest_entries(cs) == []


# -- VerifyingReader --------------------------------------------------------------------------


def test_verifying_reader_passes_a_correct_stream():
    with VerifyingReader(io.BytesIO(PAYLOAD), digest=PAYLOAD_DIGEST, size=len(PAYLOAD)) as r:
        assert r.read(10) == PAYLOAD[:10]
        assert (r.offset, r.verified) == (10, False)
        assert r.read() == PAYLOAD[10:]
        assert r.verified
        assert r.read() == b""
        assert r.read(5) == b""


@pytest.mark.parametrize(
    ("source", "size", "error"),
    [
        (PAYLOAD[:-1], len(PAYLOAD), SizeMismatch),  # too short
        (PAYLOAD + b"x", len(PAYLOAD), SizeMismatch),  # too long
        (PAYLOAD[:-1] + b"x", len(PAYLOAD), DigestMismatch),  # wrong bytes
        (b"", len(PAYLOAD), SizeMismatch),  # empty
        (b"x", 0, SizeMismatch),  # declared empty, has a byte
    ],
    ids=["short", "long", "wrong-digest", "empty-source", "extra-on-empty"],
)
def test_verifying_reader_refuses_bad_streams(source, size, error):
    digest = PAYLOAD_DIGEST if size else Digest.from_bytes(b"")
    r = VerifyingReader(io.BytesIO(source), digest=digest, size=size)
    got = bytearray()
    with pytest.raises(error):
        while chunk := r.read(1000):
            got += chunk
    # Never more than the declared size, and never the whole of a bad blob.
    assert len(got) < max(size, 1)
    with pytest.raises(error):  # sticky
        r.read(1)


def test_verifying_reader_mismatch_carries_context():
    r = VerifyingReader(io.BytesIO(OTHER), digest=PAYLOAD_DIGEST, size=len(OTHER))
    with pytest.raises(DigestMismatch) as e:
        r.read()
    assert (e.value.expected, e.value.actual) == (str(PAYLOAD_DIGEST), str(OTHER_DIGEST))


def test_verifying_reader_stops_at_size_without_reading_much_further():
    source = io.BytesIO(PAYLOAD + b"y" * 10_000)
    r = VerifyingReader(source, digest=PAYLOAD_DIGEST, size=len(PAYLOAD))
    with pytest.raises(SizeMismatch):
        r.read()
    assert source.tell() == len(PAYLOAD) + 1  # one byte of probe, no more


def test_verifying_reader_closes_the_source():
    source = io.BytesIO(PAYLOAD)
    with VerifyingReader(source, digest=PAYLOAD_DIGEST, size=len(PAYLOAD)):
        pass
    assert source.closed


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5000),
    sizes=st.lists(st.integers(min_value=-1, max_value=700), min_size=1, max_size=50),
    use_readinto=st.booleans(),
    corrupt_at=st.one_of(st.none(), st.integers(min_value=0)),
    max_read=st.integers(min_value=1, max_value=600),
)
def test_verifying_reader_any_chunking(data, sizes, use_readinto, corrupt_at, max_read):
    source = bytearray(data)
    bad = corrupt_at is not None and len(data) > 0
    if bad:
        source[corrupt_at % len(data)] ^= 0x01
    r = VerifyingReader(
        NonSeekable(bytes(source), max_read=max_read),  # type: ignore[arg-type]
        digest=Digest.from_bytes(data),
        size=len(data),
    )
    out = bytearray()
    i = 0
    raised = None
    try:
        while True:
            n = sizes[i % len(sizes)]
            i += 1
            if n == 0:
                assert r.read(0) == b""
                n = 1
            if use_readinto and n >= 0:
                buf = bytearray(n)
                got = r.readinto(buf)
                chunk = bytes(buf[:got])
                if n > 0 and got == 0:
                    break
            else:
                chunk = r.read(n)
                if n != 0 and not chunk:
                    break
            # read(n) returns n bytes unless the end is reached.
            if n > 0:
                assert len(chunk) == n or len(out) + len(chunk) == len(data)
            out += chunk
            if i > 100_000:
                raise AssertionError("no progress")
    except DigestMismatch as e:
        raised = e
    if bad:
        assert raised is not None
        assert len(out) < len(data)
    else:
        assert raised is None
        assert bytes(out) == data
        assert r.verified


def test_digest_stream():
    assert digest_stream(io.BytesIO(PAYLOAD), chunk_size=77) == (PAYLOAD_DIGEST, len(PAYLOAD))
    assert digest_stream(NonSeekable(PAYLOAD), algorithm="sha512") == (  # type: ignore[arg-type]
        Digest.from_bytes(PAYLOAD, "sha512"),
        len(PAYLOAD),
    )


# -- open_verified and ingest_blob ---------------------------------------------------------


class Source:
    """A BlobReader over bytes by digest, counting how often a blob was opened."""

    def __init__(self, blobs: dict[Digest, bytes], *, seekable: bool = True) -> None:
        self.blobs = blobs
        self.seekable = seekable
        self.opened = 0

    def open_blob(self, desc: Descriptor) -> io.RawIOBase:
        self.opened += 1
        data = self.blobs[desc.digest]
        return io.BytesIO(data) if self.seekable else NonSeekable(data)


def desc_of(data: bytes, digest: Digest | None = None) -> Descriptor:
    return Descriptor(
        media_type=MediaType("application/octet-stream"),
        digest=digest or Digest.from_bytes(data),
        size=len(data),
    )


def test_the_store_is_a_blob_reader(cs: ContentStore):
    d = put(cs, PAYLOAD)
    with open_verified(cs, desc_of(PAYLOAD)) as r:
        assert r.read() == PAYLOAD
        assert r.verified
    # A blob changed on disk is caught by the verified read.
    path = cs.root / "blobs" / "sha256" / d.encoded
    os.chmod(path, 0o644)
    path.write_bytes(PAYLOAD[:-1] + b"?")
    with open_verified(cs, desc_of(PAYLOAD)) as r, pytest.raises(DigestMismatch):
        r.read()


@pytest.mark.parametrize("seekable", [True, False], ids=["seekable", "non-seekable"])
def test_ingest_blob_resumes_hashing_each_byte_once(cs, seekable):
    n = 3000
    with cs.writer(f"import-{PAYLOAD_DIGEST}", expected=PAYLOAD_DIGEST, total=len(PAYLOAD)) as w:
        w.write(PAYLOAD[:n])
    # Poisoned first n bytes: if they were copied or re-verified from the source, it fails.
    source = Source({PAYLOAD_DIGEST: b"\0" * n + PAYLOAD[n:]}, seekable=seekable)
    assert cs.ingest_blob(source, desc_of(PAYLOAD)) is True
    assert cs.read_bytes(PAYLOAD_DIGEST, limit=1 << 20) == PAYLOAD
    assert ingest_entries(cs) == []
    assert cs.ingest_blob(source, desc_of(PAYLOAD)) is False
    assert source.opened == 1  # not opened when the blob exists


@pytest.mark.parametrize(
    ("data", "error"),
    [(PAYLOAD[:-1], SizeMismatch), (PAYLOAD + b"!", SizeMismatch), (OTHER, SizeMismatch)],
    ids=["short", "long", "other"],
)
def test_ingest_blob_mismatch_keeps_nothing(cs, data, error):
    with pytest.raises(error):
        cs.ingest_blob(Source({PAYLOAD_DIGEST: data}), desc_of(PAYLOAD))
    bad = PAYLOAD[:-1] + b"?"
    with pytest.raises(DigestMismatch):
        cs.ingest_blob(Source({PAYLOAD_DIGEST: bad}), desc_of(PAYLOAD))
    assert list(cs.walk()) == []
    assert ingest_entries(cs) == []


def test_verifying_reader_resumes_from_a_digester():
    d = Digester()
    d.update(PAYLOAD[:100])
    r = VerifyingReader(io.BytesIO(PAYLOAD[100:]), digest=PAYLOAD_DIGEST, size=len(PAYLOAD),
                        offset=100, digester=d)  # fmt: skip
    buf = bytearray(len(PAYLOAD))
    assert r.readinto(buf) == len(PAYLOAD) - 100
    assert r.verified and d.digest() == PAYLOAD_DIGEST
    with pytest.raises(InvalidArgument):
        VerifyingReader(io.BytesIO(), digest=PAYLOAD_DIGEST, size=10, offset=5)
    with pytest.raises(InvalidArgument):
        VerifyingReader(io.BytesIO(), digest=PAYLOAD_DIGEST, size=10, offset=11, digester=d)
