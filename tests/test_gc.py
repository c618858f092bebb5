"""Garbage collection over a real content store and a real metadata database."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgpipe.content import ContentStore
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import Unavailable
from imgpipe.formats.mediatype import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    MediaType,
)
from imgpipe.metadata import (
    INGEST_EXPIRY,
    LABEL_GC_EXPIRE,
    LABEL_GC_FLAT,
    LABEL_GC_ROOT,
    GCResult,
    MetadataDB,
    SnapshotRecord,
    collect,
    index_child_labels,
    manifest_child_labels,
)

FAR_FUTURE = time.time() + 100 * 365 * 24 * 3600.0


@pytest.fixture
def db(tmp_path: Path):
    with MetadataDB(tmp_path / "metadata.db") as d:
        yield d


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def put(store: ContentStore, data: bytes, media_type: MediaType) -> Descriptor:
    d = Descriptor(media_type, Digest.from_bytes(data), len(data))
    store.ingest(f"test-{d.digest.encoded}", io.BytesIO(data), digest=d.digest, size=d.size)
    return d


def blobs(store: ContentStore) -> set[Digest]:
    return {i.digest for i in store.walk()}


def ingest_refs(store: ContentStore) -> set[str]:
    return {i.ref for i in store.ingests()}


def leave_ingest(store: ContentStore, ref: str, data: bytes) -> None:
    """An interrupted download: bytes written, no commit."""
    with store.writer(ref) as w:
        w.write(data)


@dataclass
class Graph:
    index: Descriptor
    manifests: list[Descriptor]
    configs: list[Descriptor]
    layers: list[Descriptor]

    def all(self) -> set[Digest]:
        return {d.digest for d in [self.index, *self.manifests, *self.configs, *self.layers]}

    def size(self) -> int:
        unique = {d.digest: d.size for d in [self.index, *self.manifests, *self.configs]}
        unique.update((d.digest, d.size) for d in self.layers)
        return sum(unique.values())


def build_image(store: ContentStore, db: MetadataDB, tag: bytes) -> Graph:
    """index -> 2 manifests -> (config + layers); one layer shared by both manifests.
    Every blob is stored and labelled the way a pull labels it."""
    layers = [put(store, tag + b"layer-%d" % i + os.urandom(64), OCI_LAYER_GZIP) for i in range(3)]
    configs = [put(store, tag + b'{"architecture":"%d"}' % i, OCI_CONFIG) for i in range(2)]
    manifests = []
    plan = [(configs[0], [layers[0], layers[1]]), (configs[1], [layers[0], layers[2]])]
    for config, mine in plan:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in mine],
        }
        m = put(store, json.dumps(doc).encode(), OCI_MANIFEST)
        db.set_content_labels(m.digest, manifest_child_labels(config, mine))
        manifests.append(m)
    idoc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    index = put(store, json.dumps(idoc).encode(), OCI_INDEX)
    db.set_content_labels(index.digest, index_child_labels(manifests))
    return Graph(index, manifests, configs, layers)


def junk(store: ContentStore, n: int) -> dict[Digest, int]:
    out = {}
    for i in range(n):
        d = put(store, b"junk %d " % i + os.urandom(100 + i), OCI_LAYER_GZIP)
        out[d.digest] = d.size
    return out


def test_reachable_kept_unreachable_removed(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    db.put_image("example.com/app:1", g.index)
    garbage = junk(store, 3)
    labelled_junk = next(iter(garbage))
    db.set_content_labels(labelled_junk, {"note": "unreferenced"})

    result = collect(db, store)

    assert dict(result.removed_blobs) == garbage
    assert [d for d, _ in result.removed_blobs] == sorted(garbage)
    assert result.bytes_freed == sum(garbage.values())
    assert blobs(store) == g.all()
    assert db.content_labels(labelled_junk) == {}  # its label rows went with it
    assert db.content_labels(g.index.digest) == index_child_labels(g.manifests)
    # A second run finds nothing more.
    again = collect(db, store)
    assert again == GCResult((), (), (), 0)


def test_deleting_the_image_frees_its_whole_graph(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    other = build_image(store, db, b"b")
    db.put_image("example.com/app:1", g.index)
    db.put_image("example.com/other:1", other.index)
    assert collect(db, store).removed_blobs == ()

    db.delete_image("example.com/app:1")
    result = collect(db, store)

    assert {d for d, _ in result.removed_blobs} == g.all()
    assert result.bytes_freed == g.size()
    assert blobs(store) == other.all()
    assert all(db.content_labels(d) == {} for d in g.all())


def test_live_lease_protects_and_expired_lease_does_not(store: ContentStore, db: MetadataDB):
    (held,) = junk(store, 1)
    lease = db.create_lease(expires_in=3600)
    db.lease_add(lease, "content", str(held))

    assert collect(db, store).removed_blobs == ()
    assert held in blobs(store)

    later = time.time() + 2 * 3600
    result = collect(db, store, now=later)
    assert [d for d, _ in result.removed_blobs] == [held]
    assert result.removed_leases == (lease,)
    assert db.leases() == []


def test_lease_holds_what_leased_content_references(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    with db.lease() as lease:
        lease.add_content(g.index.digest)  # as a pull does, before writing the image record
        assert collect(db, store).removed_blobs == ()
        assert blobs(store) == g.all()
    # The lease is gone and no image names the graph.
    assert {d for d, _ in collect(db, store).removed_blobs} == g.all()


def test_flat_lease_holds_only_listed_objects(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    # Expired, so not a root of its own: only the lease keeps the record.
    db.put_image("flat-held", g.manifests[0], {LABEL_GC_EXPIRE: "2000-01-01T00:00:00Z"})
    with db.lease(labels={LABEL_GC_FLAT: "1"}) as lease:
        lease.add_content(g.index.digest)
        lease.add_image("flat-held")
        result = collect(db, store)
    # Kept: the index (listed) and manifest 0 (target of the listed image); their labels
    # are not followed, so the other manifest, the configs and the layers go.
    kept = {g.index.digest, g.manifests[0].digest}
    assert blobs(store) == kept
    assert {d for d, _ in result.removed_blobs} == g.all() - kept
    assert result.removed_images == ()
    assert [i.name for i in db.list_images()] == ["flat-held"]


def test_expired_image_is_collected_with_its_graph(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    tomorrow = time.time() + 24 * 3600
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tomorrow))
    db.put_image("temp", g.index, {LABEL_GC_EXPIRE: stamp})
    assert collect(db, store).removed_blobs == ()  # not yet expired: a root

    result = collect(db, store, now=tomorrow + 3600)
    assert result.removed_images == ("temp",)
    assert {d for d, _ in result.removed_blobs} == g.all()
    assert db.list_images() == []


def test_unparsable_expiry_never_expires(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    db.put_image("img", g.index, {LABEL_GC_EXPIRE: "next tuesday"})
    result = collect(db, store, now=FAR_FUTURE)
    assert result.removed_blobs == ()
    assert [i.name for i in db.list_images()] == ["img"]


def test_gc_root_label_keeps_a_blob_and_its_references(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    db.set_content_labels(g.manifests[1].digest, {LABEL_GC_ROOT: "2024-01-01T00:00:00Z"})
    result = collect(db, store)
    kept = {g.manifests[1].digest, g.configs[1].digest, g.layers[0].digest, g.layers[2].digest}
    assert blobs(store) == kept
    assert {d for d, _ in result.removed_blobs} == g.all() - kept


def test_ingests_leased_kept_unleased_old_removed(store: ContentStore, db: MetadataDB):
    leave_ingest(store, "leased", b"a" * 10)
    leave_ingest(store, "abandoned", b"b" * 25)
    lease = db.create_lease(expires_in=None)
    db.lease_add(lease, "ingest", "leased")

    # Young ingests are kept whether leased or not: a download may resume.
    assert collect(db, store).removed_ingests == ()
    assert ingest_refs(store) == {"leased", "abandoned"}

    result = collect(db, store, now=time.time() + 2 * INGEST_EXPIRY)
    assert result.removed_ingests == ("abandoned",)
    assert result.bytes_freed == 25
    assert ingest_refs(store) == {"leased"}


def test_old_ingest_removed_by_its_updatedat(store: ContentStore, db: MetadataDB):
    leave_ingest(store, "stale", b"x" * 7)
    leave_ingest(store, "fresh", b"y")
    # Set the stale ingest's clock back two days: its recorded times and its data's mtime.
    # The directory is named by the SHA-256 of the ref (the store's containerd layout).
    directory = store.root / "ingest" / hashlib.sha256(b"stale").hexdigest()
    old = time.time() - 2 * INGEST_EXPIRY
    for name in ("startedat", "updatedat"):
        (directory / name).write_text(f"{old:.9f}")
    os.utime(directory / "data", (old, old))
    stale = next(i for i in store.ingests() if i.ref == "stale")
    assert stale.updated_at == pytest.approx(old)

    result = collect(db, store)
    assert result.removed_ingests == ("stale",)
    assert result.bytes_freed == 7
    assert ingest_refs(store) == {"fresh"}


def test_locked_ingest_survives(store: ContentStore, db: MetadataDB):
    leave_ingest(store, "idle", b"i")
    with store.writer("busy") as w:
        w.write(b"partial")
        assert next(i for i in store.ingests() if i.ref == "busy").locked
        later = time.time() + 2 * INGEST_EXPIRY
        # Collection itself leaves it alone (not only the store's refusal to abort it).
        assert collect(db, store, now=later, dry_run=True).removed_ingests == ("idle",)
        result = collect(db, store, now=later)
        assert result.removed_ingests == ("idle",)
        assert ingest_refs(store) == {"busy"}
        w.write(b" and more")  # the writer goes on undisturbed
    assert ingest_refs(store) == {"busy"}


def test_live_ingest_keeps_its_expected_blob(store: ContentStore, db: MetadataDB):
    data = b"committed by someone else meanwhile"
    digest = Digest.from_bytes(data)
    with store.writer("dl", expected=digest, total=len(data)) as w:
        w.write(data[:5])
    store.ingest("other", io.BytesIO(data), digest=digest, size=len(data))
    assert ingest_refs(store) == {"dl"}

    # The live ingest references the blob it expects (containerd's ingest edge).
    assert collect(db, store).removed_blobs == ()
    assert digest in blobs(store)
    # Once the ingest has expired, both go.
    result = collect(db, store, now=time.time() + 2 * INGEST_EXPIRY)
    assert result.removed_blobs == ((digest, len(data)),)
    assert result.removed_ingests == ("dl",)
    assert result.bytes_freed == len(data) + 5


def test_snapshots_followed_from_config_label_and_parents(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    db.put_image("img", g.index)
    (extra,) = junk(store, 1)
    now = time.time()

    def snap(key: str, parent: str = "", kind: str = "committed", **labels: str):
        return SnapshotRecord("overlay", key, kind, parent, f"id-{key}", labels, now, now)

    records = [
        snap("l0"),
        snap("l1", "l0"),
        snap("l2", "l1"),
        snap("other"),
        snap("work", "l2", kind="active"),
        snap("f1"),
        # Held by a flat lease: its parent stays, the blob its label names does not.
        snap("f2", "f1", **{"containerd.io/gc.ref.content": str(extra)}),
        SnapshotRecord("native", "rooted", "committed", "", "n1", {LABEL_GC_ROOT: "x"}, now, now),
    ]
    for rec in records:
        db.put_snapshot(rec)
    db.set_content_labels(g.configs[0].digest, {"containerd.io/gc.ref.snapshot.overlay": "l2"})

    with db.lease(labels={LABEL_GC_FLAT: ""}) as lease:
        lease.add_snapshot("overlay", "f2")
        result = collect(db, store)
    assert result.removed_snapshots == (("overlay", "other"), ("overlay", "work"))
    assert {(s.snapshotter, s.key) for s in db.list_snapshots()} == {
        ("native", "rooted"),
        ("overlay", "f1"),
        ("overlay", "f2"),
        ("overlay", "l0"),
        ("overlay", "l1"),
        ("overlay", "l2"),
    }
    assert [d for d, _ in result.removed_blobs] == [extra]


def test_dry_run_removes_nothing_and_reports_the_same(store: ContentStore, db: MetadataDB):
    g = build_image(store, db, b"a")
    db.put_image("img", g.index)
    build_image(store, db, b"b")  # unreferenced graph
    junk(store, 2)
    leave_ingest(store, "abandoned", b"z" * 5)
    expired = db.create_lease(expires_in=1)
    now = time.time()
    db.put_snapshot(SnapshotRecord("overlay", "orphan", "committed", "", "o", {}, now, now))
    later = now + 2 * INGEST_EXPIRY

    before_blobs, before_ingests = blobs(store), ingest_refs(store)
    dry = collect(db, store, now=later, dry_run=True)
    assert blobs(store) == before_blobs
    assert ingest_refs(store) == before_ingests
    assert [lease.id for lease in db.leases()] == [expired]
    assert [s.key for s in db.list_snapshots()] == ["orphan"]

    real = collect(db, store, now=later)
    assert dry == real
    assert len(real.removed_blobs) == 8 + 2
    assert real.removed_ingests == ("abandoned",)
    assert real.removed_snapshots == (("overlay", "orphan"),)
    assert real.removed_leases == (expired,)
    assert blobs(store) == g.all()


def test_only_limits_the_sweep(store: ContentStore, db: MetadataDB):
    a, b = junk(store, 2)
    g = build_image(store, db, b"a")
    db.put_image("img", g.index)
    result = collect(db, store, only={a, g.layers[0].digest})
    assert [d for d, _ in result.removed_blobs] == [a]  # the layer is referenced: kept
    assert blobs(store) == g.all() | {b}


class ProbingContent:
    """The real store behind GC's protocol, trying a lease_add from another connection
    in the middle of the collection (between mark and sweep)."""

    def __init__(self, store: ContentStore, writer_db: MetadataDB, lease: str, key: str) -> None:
        self.store, self.writer_db, self.lease, self.key = store, writer_db, lease, key
        self.refused: list[BaseException] = []

    def walk(self):
        try:
            self.writer_db.lease_add(self.lease, "content", self.key)
        except Unavailable as e:
            self.refused.append(e)
        return self.store.walk()

    def delete(self, digest: Digest) -> None:
        self.store.delete(digest)

    def ingests(self):
        return self.store.ingests()

    def abort(self, ref: str) -> None:
        self.store.abort(ref)


def test_lease_add_waits_for_a_running_collection(tmp_path: Path, store: ContentStore):
    path = tmp_path / "metadata.db"
    (d,) = junk(store, 1)
    # busy_timeout=0: instead of waiting, the writer fails at once, which shows it
    # could not get in while the collection held the lock.
    with MetadataDB(path) as gc_db, MetadataDB(path, busy_timeout=0) as writer_db:
        lease = writer_db.create_lease()
        probe = ProbingContent(store, writer_db, lease, str(d))
        result = collect(gc_db, probe)
        assert len(probe.refused) == 1
        assert writer_db.lease_resources(lease) == []
        assert [x for x, _ in result.removed_blobs] == [d]
        # After the collection the same call goes through at once.
        writer_db.lease_add(lease, "content", str(d))
        assert writer_db.lease_resources(lease) == [("content", str(d))]
