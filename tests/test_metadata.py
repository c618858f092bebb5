"""The metadata database: images, content labels, leases, snapshots, concurrency."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import imgpipe.metadata as md
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from imgpipe.formats.mediatype import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    MediaType,
)
from imgpipe.metadata import (
    DEFAULT_LEASE_EXPIRY,
    LABEL_GC_EXPIRE,
    SCHEMA_VERSION,
    MetadataDB,
    SnapshotRecord,
    index_child_labels,
    manifest_child_labels,
    validate_labels,
)
from imgpipe.metadata.labels import content_refs, parse_expire, snapshot_refs
from imgpipe.snapshots import SnapshotRecords

REPO = Path(__file__).resolve().parent.parent


def desc(data: bytes, media_type: MediaType = OCI_MANIFEST) -> Descriptor:
    return Descriptor(media_type, Digest.from_bytes(data), len(data))


@pytest.fixture
def db(tmp_path: Path):
    with MetadataDB(tmp_path / "metadata.db") as d:
        yield d


def test_public_names_are_pinned():
    assert sorted(md.__all__) == sorted(
        [
            "DEFAULT_BUSY_TIMEOUT",
            "DEFAULT_LEASE_EXPIRY",
            "INGEST_EXPIRY",
            "LABEL_DISTRIBUTION_SOURCE",
            "LABEL_GC_EXPIRE",
            "LABEL_GC_FLAT",
            "LABEL_GC_REF_CONTENT",
            "LABEL_GC_REF_SNAPSHOT",
            "LABEL_GC_ROOT",
            "LABEL_UNCOMPRESSED",
            "LEASE_KINDS",
            "MAX_LABEL_SIZE",
            "SCHEMA_VERSION",
            "SNAPSHOT_KINDS",
            "GCContent",
            "GCResult",
            "ImageRecord",
            "Lease",
            "LeaseRecord",
            "MetadataDB",
            "SnapshotRecord",
            "collect",
            "index_child_labels",
            "manifest_child_labels",
            "validate_labels",
        ]
    )
    for name in md.__all__:
        assert hasattr(md, name), name


def test_label_vocabulary_is_containerds():
    assert md.LABEL_GC_ROOT == "containerd.io/gc.root"
    assert md.LABEL_GC_REF_CONTENT == "containerd.io/gc.ref.content"
    assert md.LABEL_GC_REF_SNAPSHOT == "containerd.io/gc.ref.snapshot"
    assert md.LABEL_GC_EXPIRE == "containerd.io/gc.expire"
    assert md.LABEL_GC_FLAT == "containerd.io/gc.flat"
    assert md.LABEL_UNCOMPRESSED == "containerd.io/uncompressed"
    assert md.LABEL_DISTRIBUTION_SOURCE == "containerd.io/distribution.source"


# -- schema -------------------------------------------------------------------------


def test_new_database_is_wal_with_current_schema(tmp_path: Path):
    path = tmp_path / "sub" / "metadata.db"
    MetadataDB(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "metadata.db"
    MetadataDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(Unsupported):
        MetadataDB(path)


def test_data_survives_reopen(tmp_path: Path):
    path = tmp_path / "metadata.db"
    target = desc(b"manifest")
    with MetadataDB(path) as d:
        d.put_image("a", target, {"k": "v"})
        d.set_content_labels(target.digest, {"x": "y"})
    with MetadataDB(path) as d:
        assert d.get_image("a").target == target
        assert d.get_image("a").labels == {"k": "v"}
        assert d.content_labels(target.digest) == {"x": "y"}


def test_closed_database_refuses_use(tmp_path: Path):
    d = MetadataDB(tmp_path / "metadata.db")
    d.close()
    d.close()  # idempotent
    with pytest.raises(FailedPrecondition):
        d.list_images()


# -- images -------------------------------------------------------------------------


def test_image_crud(db: MetadataDB):
    t1 = desc(b"one", OCI_INDEX)
    t2 = desc(b"two")
    rec = db.put_image("docker.io/library/b:1", t1, {"org": "x"})
    assert rec.name == "docker.io/library/b:1"
    assert rec.target == t1
    assert rec.labels == {"org": "x"}
    assert rec.created_at == rec.updated_at
    assert db.get_image("docker.io/library/b:1") == rec

    db.put_image("docker.io/library/a:1", t2)
    assert [i.name for i in db.list_images()] == ["docker.io/library/a:1", "docker.io/library/b:1"]

    updated = db.put_image("docker.io/library/b:1", t2)
    assert updated.target == t2
    assert updated.created_at == rec.created_at  # kept on update
    assert updated.updated_at >= rec.updated_at
    assert updated.labels == {"org": "x"}  # None keeps the labels
    assert db.get_image("docker.io/library/b:1") == updated

    replaced = db.put_image("docker.io/library/b:1", t2, {})
    assert replaced.labels == {}
    assert db.get_image("docker.io/library/b:1").labels == {}

    db.delete_image("docker.io/library/b:1")
    with pytest.raises(NotFound):
        db.get_image("docker.io/library/b:1")
    with pytest.raises(NotFound):
        db.delete_image("docker.io/library/b:1")
    assert [i.name for i in db.list_images()] == ["docker.io/library/a:1"]


def test_image_target_round_trips_every_descriptor_field(db: MetadataDB):
    data = b'{"x":1}'
    target = Descriptor(
        OCI_MANIFEST,
        Digest.from_bytes(data),
        len(data),
        urls=("https://example.com/blob",),
        annotations={"org.opencontainers.image.ref.name": "1"},
        artifact_type="application/vnd.example",
        data=data,
    )
    db.put_image("img", target)
    assert db.get_image("img").target == target


@pytest.mark.parametrize(
    ("name", "labels"),
    [("", None), ("img", {"": "v"}), ("img", {"k": "v" * 4096})],
)
def test_put_image_rejects_bad_input(db: MetadataDB, name, labels):
    with pytest.raises(InvalidArgument):
        db.put_image(name, desc(b"x"), labels)
    assert db.list_images() == []


def test_get_image_missing(db: MetadataDB):
    with pytest.raises(NotFound):
        db.get_image("nope")
    with pytest.raises(LookupError):  # NotFound is a LookupError for callers
        db.get_image("nope")


# -- content labels -----------------------------------------------------------------


def test_content_labels_merge_and_delete(db: MetadataDB):
    d = Digest.from_bytes(b"blob")
    other = Digest.from_bytes(b"other")
    assert db.content_labels(d) == {}
    db.set_content_labels(d, {"a": "1", "b": "2"})
    db.set_content_labels(other, {"a": "other"})
    db.set_content_labels(d, {"b": "20", "c": "3"})
    assert db.content_labels(d) == {"a": "1", "b": "20", "c": "3"}
    db.set_content_labels(d, {"a": None, "zzz": None})  # deleting a missing key is fine
    assert db.content_labels(d) == {"b": "20", "c": "3"}
    assert db.content_labels(other) == {"a": "other"}
    assert db.labelled_content() == {d: {"b": "20", "c": "3"}, other: {"a": "other"}}
    db.delete_content_labels(d)
    assert db.content_labels(d) == {}


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("k", "v" * 4095, True),  # exactly 4096 bytes
        ("k", "v" * 4096, False),  # 4097 bytes
        ("kk", "é" * 2047, True),  # 2 + 4094 bytes: counted in UTF-8 bytes
        ("kk", "é" * 2048, False),  # 2 + 4096 bytes although only 2050 characters
        ("k" * 4096, "", True),
        ("", "v", False),  # an empty key names nothing
    ],
)
def test_label_size_limit(db: MetadataDB, key, value, ok):
    d = Digest.from_bytes(b"blob")
    db.set_content_labels(d, {"before": "x"})
    if ok:
        validate_labels({key: value})
        db.set_content_labels(d, {key: value})
        assert db.content_labels(d)[key] == value
    else:
        with pytest.raises(InvalidArgument):
            validate_labels({key: value})
        with pytest.raises(InvalidArgument):
            db.set_content_labels(d, {"fine": "1", key: value})
        assert db.content_labels(d) == {"before": "x"}  # nothing of the call applied


def test_content_labels_reject_invalid_digest(db: MetadataDB):
    with pytest.raises(InvalidArgument):
        db.set_content_labels("sha256:nothex", {"a": "b"})  # type: ignore[arg-type]


# -- leases -------------------------------------------------------------------------


def test_lease_create_list_delete(db: MetadataDB):
    before = time.time()
    lid = db.create_lease(labels={"purpose": "pull"})
    forever = db.create_lease(expires_in=None)
    assert lid != forever
    recs = {r.id: r for r in db.leases()}
    assert set(recs) == {lid, forever}
    assert recs[lid].labels == {"purpose": "pull"}
    assert recs[lid].expires_at is not None
    assert recs[lid].expires_at == pytest.approx(recs[lid].created_at + DEFAULT_LEASE_EXPIRY)
    assert recs[lid].created_at >= before
    assert recs[forever].expires_at is None

    db.delete_lease(lid)
    assert [r.id for r in db.leases()] == [forever]
    with pytest.raises(NotFound):
        db.delete_lease(lid)


def test_lease_resources_add_and_remove(db: MetadataDB):
    lid = db.create_lease()
    d = Digest.from_bytes(b"x")
    db.lease_add(lid, "content", str(d))
    db.lease_add(lid, "content", str(d))  # idempotent
    db.lease_add(lid, "ingest", "fetch-1")
    db.lease_add(lid, "snapshot", "overlay/sha256:abc/x")
    db.lease_add(lid, "image", "docker.io/library/a:1")
    assert db.lease_resources(lid) == [
        ("content", str(d)),
        ("image", "docker.io/library/a:1"),
        ("ingest", "fetch-1"),
        ("snapshot", "overlay/sha256:abc/x"),
    ]
    db.lease_remove(lid, "ingest", "fetch-1")
    assert ("ingest", "fetch-1") not in db.lease_resources(lid)
    db.delete_lease(lid)
    with pytest.raises(NotFound):
        db.lease_resources(lid)


@pytest.mark.parametrize(
    ("kind", "key", "error"),
    [
        ("blob", "x", InvalidArgument),
        ("content", "sha256:zz", InvalidArgument),
        ("snapshot", "no-snapshotter", InvalidArgument),
        ("snapshot", "overlay/", InvalidArgument),
        ("ingest", "", InvalidArgument),
    ],
)
def test_lease_add_rejects_bad_resources(db: MetadataDB, kind, key, error):
    lid = db.create_lease()
    with pytest.raises(error):
        db.lease_add(lid, kind, key)
    assert db.lease_resources(lid) == []


def test_lease_add_unknown_lease(db: MetadataDB):
    with pytest.raises(NotFound):
        db.lease_add("no-such-lease", "ingest", "ref")


@pytest.mark.parametrize("expires_in", [0, -1.0, float("inf"), float("nan")])
def test_lease_expiry_must_be_positive(db: MetadataDB, expires_in):
    with pytest.raises(InvalidArgument):
        db.create_lease(expires_in=expires_in)
    assert db.leases() == []


def test_lease_expire_label_shortens_expiry(db: MetadataDB):
    lid = db.create_lease(labels={LABEL_GC_EXPIRE: "2001-02-03T04:05:06Z"})
    (rec,) = db.leases()
    assert rec.id == lid
    assert rec.expires_at == parse_expire("2001-02-03T04:05:06Z")


def test_lease_with_explicit_id(db: MetadataDB):
    assert db.create_lease(lease_id="mine") == "mine"
    with pytest.raises(AlreadyExists):
        db.create_lease(lease_id="mine")


def test_lease_context_manager_deletes_even_on_error(db: MetadataDB):
    d = Digest.from_bytes(b"x")
    with db.lease() as lease:
        lease.add_content(d)
        lease.add_ingest("ref")
        lease.add_snapshot("overlay", "k")
        lease.add_image("img")
        assert [r.id for r in db.leases()] == [lease.id]
        assert len(db.lease_resources(lease.id)) == 4
    assert db.leases() == []

    with pytest.raises(RuntimeError), db.lease() as lease:
        lease.add_content(d)
        raise RuntimeError("boom")
    assert db.leases() == []

    # Deleted meanwhile (a collection removed it as expired): leaving is still fine.
    with db.lease() as lease:
        db.delete_lease(lease.id)
    assert db.leases() == []


def test_lease_add_snapshot_rejects_slash_in_snapshotter(db: MetadataDB):
    with db.lease() as lease, pytest.raises(InvalidArgument):
        lease.add_snapshot("over/lay", "k")


# -- snapshots ----------------------------------------------------------------------


def snap(key: str, parent: str = "", kind: str = "committed", sn: str = "overlay"):
    return SnapshotRecord(sn, key, kind, parent, f"id-{key}", {"l": key}, 1.0, 2.0)


def test_snapshot_crud(db: MetadataDB):
    db.put_snapshot(snap("b", parent="a"))
    db.put_snapshot(snap("a"))
    db.put_snapshot(snap("x", kind="active", sn="btrfs"))
    assert db.get_snapshot("overlay", "b") == snap("b", parent="a")
    assert [s.key for s in db.list_snapshots()] == ["x", "a", "b"]  # btrfs < overlay
    assert [s.key for s in db.list_snapshots("overlay")] == ["a", "b"]
    db.put_snapshot(snap("b", parent="a", kind="view"))
    assert db.get_snapshot("overlay", "b").kind == "view"
    db.delete_snapshot("overlay", "b")
    with pytest.raises(NotFound):
        db.get_snapshot("overlay", "b")
    with pytest.raises(NotFound):
        db.delete_snapshot("overlay", "b")


def test_snapshot_children_and_highest_id_are_per_snapshotter(db: MetadataDB) -> None:
    records: SnapshotRecords = db
    assert records.highest_snapshot_id("overlay") == 0
    assert records.snapshot_children("overlay", "a") == []
    for key, parent, sn, backend in [
        ("a", "", "overlay", "9"),
        ("c", "a", "overlay", "10"),
        ("b", "a", "overlay", "2"),
        ("d", "c", "overlay", "x7"),  # not all digits: never an id to count from
        ("e", "a", "btrfs", "40"),  # another snapshotter's
    ]:
        records.save_snapshot(sn, key, kind="active", parent=parent, backend_id=backend, labels={})
    assert records.snapshot_children("overlay", "a") == ["b", "c"]  # sorted by key
    assert records.snapshot_children("overlay", "c") == ["d"]
    assert records.snapshot_children("overlay", "b") == []
    assert records.highest_snapshot_id("overlay") == 10
    assert records.highest_snapshot_id("btrfs") == 40


@pytest.mark.parametrize(
    ("sn", "key", "kind"),
    [("overlay", "k", "mounted"), ("", "k", "active"), ("overlay", "", "view")],
)
def test_snapshot_record_validates(sn, key, kind):
    with pytest.raises(InvalidArgument):
        SnapshotRecord(sn, key, kind, "", "", {}, 0.0, 0.0)


def test_metadata_db_is_the_snapshotters_record_store(db: MetadataDB) -> None:
    # The snapshotters depend on the SnapshotRecords protocol only; the typed assignment
    # holds MetadataDB to it under mypy, the calls to its behaviour here.
    records: SnapshotRecords = db
    first = records.save_snapshot(
        "native", "k", kind="active", parent="", backend_id="1", labels={"a": "b"}
    )
    assert records.get_snapshot("native", "k") == first
    assert first.created_at == first.updated_at
    again = records.save_snapshot(
        "native", "k", kind="active", parent="", backend_id="1", labels={"a": "c"}
    )
    assert again.created_at == first.created_at  # kept on update
    assert again.updated_at >= first.updated_at
    assert [r.labels for r in records.list_snapshots("native")] == [{"a": "c"}]
    with pytest.raises(InvalidArgument):
        records.save_snapshot(
            "native", "k", kind="active", parent="", backend_id="1", labels={"": "x"}
        )
    with pytest.raises(InvalidArgument):
        records.save_snapshot("native", "k", kind="mounted", parent="", backend_id="1", labels={})
    assert records.get_snapshot("native", "k") == again  # nothing written
    with records.transaction():
        records.delete_snapshot("native", "k")
    assert records.list_snapshots("native") == []


# -- transactions and concurrency ---------------------------------------------------


def test_transaction_rolls_back_on_error(db: MetadataDB):
    with pytest.raises(RuntimeError), db.transaction():
        db.put_image("a", desc(b"a"))
        db.set_content_labels(Digest.from_bytes(b"a"), {"k": "v"})
        raise RuntimeError("boom")
    assert db.list_images() == []
    assert db.labelled_content() == {}


def test_nested_transaction_rolls_back_only_inner(db: MetadataDB):
    with db.transaction():
        db.put_image("outer", desc(b"o"))
        with pytest.raises(NotFound):
            db.delete_image("missing")  # inner savepoint rolled back, outer goes on
        with pytest.raises(RuntimeError), db.transaction():
            db.put_image("inner", desc(b"i"))
            raise RuntimeError("boom")
    assert [i.name for i in db.list_images()] == ["outer"]


def _increment(db: MetadataDB) -> None:
    with db.transaction():
        rec = db.get_image("counter")
        db.put_image("counter", rec.target, {"n": str(int(rec.labels["n"]) + 1)})


def test_threads_lose_no_update(db: MetadataDB):
    db.put_image("counter", desc(b"c"), {"n": "0"})
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(50):
                _increment(db)
        except BaseException as e:  # reported below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.get_image("counter").labels["n"] == "200"


WORKER = textwrap.dedent(
    """
    import sys
    from imgpipe.formats.descriptor import Descriptor
    from imgpipe.formats.digest import Digest
    from imgpipe.metadata import MetadataDB

    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", Digest.from_bytes(b"t"), 1)
    with MetadataDB(path) as db:
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        for i in range(n):
            db.put_image(f"{tag}/{i}", target, {"writer": tag})
            with db.transaction():
                rec = db.get_image("counter")
                db.put_image("counter", rec.target, {"n": str(int(rec.labels["n"]) + 1)})
    print("done", flush=True)
    """
)


def test_two_processes_lose_no_update(tmp_path: Path):
    path = tmp_path / "metadata.db"
    n = 150
    with MetadataDB(path) as d:
        d.put_image("counter", desc(b"c"), {"n": "0"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), tag, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for tag in ("p1", "p2")
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            assert out.strip() == "done"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with MetadataDB(path) as d:
        assert d.get_image("counter").labels["n"] == str(2 * n)
        names = {i.name for i in d.list_images()}
        assert names == {"counter"} | {f"{t}/{i}" for t in ("p1", "p2") for i in range(n)}


# -- label helpers ------------------------------------------------------------------


def test_index_and_manifest_child_labels():
    m = [desc(b"m0"), desc(b"m1")]
    assert index_child_labels(m) == {
        "containerd.io/gc.ref.content.m.0": str(m[0].digest),
        "containerd.io/gc.ref.content.m.1": str(m[1].digest),
    }
    config = desc(b"cfg", OCI_CONFIG)
    layers = [desc(b"l0", OCI_LAYER_GZIP), desc(b"l1", OCI_LAYER_GZIP)]
    assert manifest_child_labels(config, layers) == {
        "containerd.io/gc.ref.content.config": str(config.digest),
        "containerd.io/gc.ref.content.l.0": str(layers[0].digest),
        "containerd.io/gc.ref.content.l.1": str(layers[1].digest),
    }


D = str(Digest.from_bytes(b"d"))


@pytest.mark.parametrize(
    ("key", "value", "followed"),
    [
        ("containerd.io/gc.ref.content", D, True),
        ("containerd.io/gc.ref.content.m.0", D, True),
        ("containerd.io/gc.ref.content/x", D, True),
        ("containerd.io/gc.ref.contentx", D, False),
        ("containerd.io/gc.ref.content.l.0", "sha256:bad", False),
        ("containerd.io/gc.ref.snapshot.overlay", D, False),
        ("containerd.io/gc.root", D, False),
    ],
)
def test_content_refs(key, value, followed):
    assert list(content_refs({key: value})) == ([Digest.parse(D)] if followed else [])


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("containerd.io/gc.ref.snapshot.overlay", [("overlay", "k")]),
        ("containerd.io/gc.ref.snapshot.overlay/extra", [("overlay", "k")]),
        ("containerd.io/gc.ref.snapshot.", []),
        ("containerd.io/gc.ref.snapshot", []),
        ("containerd.io/gc.ref.content", []),
    ],
)
def test_snapshot_refs(key, expected):
    assert list(snapshot_refs({key: "k"})) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:10Z", 10.0),
        ("1970-01-01T01:00:10+01:00", 10.0),
        ("1970-01-01T00:00:10.5Z", 10.5),
        ("1970-01-01T00:00:10.123456789Z", pytest.approx(10.123456)),
        ("1970-01-01 00:00:10Z", None),
        ("1970-01-01T00:00:10", None),  # no zone: refused, not guessed
        ("tomorrow", None),
        ("", None),
    ],
)
def test_parse_expire(text, expected):
    assert parse_expire(text) == expected


def test_set_lease_labels_merges_and_keeps_the_expiry(db: MetadataDB) -> None:
    lease_id = db.create_lease(expires_in=60, labels={"a": "1"})
    (before,) = db.leases()
    db.set_lease_labels(lease_id, {"b": "2", "a": "3"})
    (after,) = db.leases()
    assert after.labels == {"a": "3", "b": "2"}
    assert after.expires_at == before.expires_at
    with pytest.raises(NotFound):
        db.set_lease_labels("nope", {"a": "1"})
