"""Garbage collection: mark everything reachable from the roots, sweep the rest.

The model is containerd's (``core/metadata/gc.go``), on our SQLite metadata.

Roots
    * images, unless their ``containerd.io/gc.expire`` label is in the past;
    * live leases (not yet expired) and everything they list: blobs, ingests, snapshots,
      images; a blob a lease lists also holds the ingests that are becoming it (a pull
      leases a blob before it downloads it, so its partial download is held). A lease
      labelled ``containerd.io/gc.flat`` holds only those objects: their labels are not
      followed (a flat snapshot still keeps its parents, which it cannot
      exist without; a flat image keeps its target blob only);
    * blobs and snapshots labelled ``containerd.io/gc.root``;
    * ingests that are still alive: locked by a writer, or touched within
      ``ingest_expiry`` (:data:`INGEST_EXPIRY`) -- unless the caller says they were
      abandoned (``imgpipe leases rm`` drops a lease and its partial downloads at once).

Edges
    * blob -> every ``containerd.io/gc.ref.content[.x|/x]`` label value (a digest), and
      ``containerd.io/gc.ref.snapshot.<snapshotter>[/x]`` -> that snapshot;
    * image -> its target blob, and its labels as for a blob;
    * snapshot -> its parent, and its labels as for a blob;
    * ingest -> the blob it is expected to become.

Lazy layer caches (``<root>/lazy/layers/<hex>/``, :class:`GCCaches`)
    A cache is kept while its layer's digest is marked (an image whose manifest names the
    layer, or a lease on it: a lazy pull leases its layers before it creates their
    caches, as a pull leases a blob before it downloads it) and not yet a committed blob,
    or while a process uses it (``locked``); otherwise it is removed with the blobs,
    under the same lock.

Sweep
    Unmarked blobs are unlinked from the content store and their label rows dropped
    (label rows of unmarked digests without a blob go too). Unmarked ingests are aborted;
    an ingest a writer holds is never removed. Unmarked snapshot records and expired,
    unreferenced image records are deleted; expired leases are deleted. (Removing the
    snapshot directories is the snapshotter's job, reported here via ``removed_snapshots``.)

Concurrency
    A pull (or any writer) adds its resources to a lease *before* it writes or checks a
    blob: ``lease_add`` first, then "does the blob exist?", then the download. Collection
    runs the mark, the metadata sweep and the unlinks of blob files inside ONE
    ``BEGIN IMMEDIATE`` transaction, holding the database's write lock throughout. A
    concurrent ``lease_add`` therefore waits until collection has finished, and then the
    blob is either already gone (the writer sees it missing and fetches it) or was marked
    (it stays). Without that order a writer could see a blob, collection could delete it,
    and the writer would then reference a blob that no longer exists. Two imgpipe
    processes may share a root: the lock is SQLite's, so it works across processes (WAL,
    with a busy timeout long enough for a collection). A writer that holds an ingest
    open is protected by the store's own lock (``locked``), whatever its lease says.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import Conflict, NotFound

from .db import MetadataDB
from .labels import (
    LABEL_GC_EXPIRE,
    LABEL_GC_FLAT,
    LABEL_GC_ROOT,
    content_refs,
    parse_expire,
    snapshot_refs,
)

__all__ = [
    "INGEST_EXPIRY",
    "BlobInfo",
    "CacheInfo",
    "GCCaches",
    "GCContent",
    "GCResult",
    "IngestInfo",
    "collect",
]

#: An ingest nobody leases and nobody writes is removed once it has not been touched for
#: this long (seconds): containerd's expiry for unleased ingests. Long enough to resume
#: an interrupted pull the next day, short enough that abandoned downloads do not pile up.
INGEST_EXPIRY: Final = 24 * 3600.0


class BlobInfo(Protocol):
    """What collection reads of a blob (the content store's ``Info``)."""

    @property
    def digest(self) -> Digest: ...

    @property
    def size(self) -> int: ...


class IngestInfo(Protocol):
    """What collection reads of an ingest (the content store's ``IngestStatus``)."""

    @property
    def ref(self) -> str: ...

    @property
    def offset(self) -> int: ...

    @property
    def expected(self) -> Digest | None: ...

    @property
    def updated_at(self) -> float: ...

    @property
    def locked(self) -> bool: ...


class GCContent(Protocol):
    """The part of the content store collection needs."""

    def walk(self) -> Iterator[BlobInfo]:
        """Every committed blob."""
        ...

    def delete(self, digest: Digest) -> None:
        """Unlink a blob; NotFound if it is not there."""
        ...

    def ingests(self) -> Iterator[IngestInfo]:
        """Every ingest in progress."""
        ...

    def abort(self, ref: str) -> None:
        """Remove an ingest; NotFound if gone, Conflict if a writer holds it."""
        ...


class CacheInfo(Protocol):
    """A lazy layer cache as collection sees it: its layer, its bytes on disk, whether
    a process (a FUSE server, a completion) holds it open."""

    @property
    def digest(self) -> Digest: ...

    @property
    def size(self) -> int: ...

    @property
    def locked(self) -> bool: ...


class GCCaches(Protocol):
    """The lazy layer caches (``<root>/lazy/layers/``)."""

    def walk(self) -> Iterator[CacheInfo]:
        """Every cache."""
        ...

    def delete(self, digest: Digest) -> None:
        """Remove the cache of ``digest``; NotFound if gone, Conflict if held open."""
        ...


@dataclass(frozen=True)
class GCResult:
    """What one collection removed (or, with ``dry_run``, would remove), each sorted.

    ``bytes_freed`` counts the removed blobs' sizes plus the bytes the removed ingests had
    written so far: the disk space given back. ``ingest_sizes`` gives those bytes per
    removed ingest, in the order of ``removed_ingests``.
    """

    removed_blobs: tuple[tuple[Digest, int], ...]
    removed_ingests: tuple[str, ...]
    removed_snapshots: tuple[tuple[str, str], ...]
    bytes_freed: int
    removed_images: tuple[str, ...] = ()
    removed_leases: tuple[str, ...] = ()
    ingest_sizes: tuple[int, ...] = ()
    #: lazy layer caches removed: (layer digest, bytes on disk)
    removed_caches: tuple[tuple[Digest, int], ...] = ()


# Graph nodes: ("content", digest), ("snapshot", "<snapshotter>/<key>"), ("image", name),
# ("ingest", ref); the same keys the lease table uses.
_Node = tuple[str, str]


class _Marker:
    """Tri-colour marking with containerd's flat nodes: a node reached only flat is kept
    but its labels are not followed; reached normally later, it is expanded in full."""

    def __init__(
        self,
        *,
        content_labels: Mapping[str, Mapping[str, str]],
        images: Mapping[str, tuple[str, Mapping[str, str]]],
        snapshots: Mapping[str, tuple[str, Mapping[str, str]]],
        ingests: Mapping[str, str | None],
    ) -> None:
        self._content_labels = content_labels
        self._images = images  # name -> (target digest, labels)
        self._snapshots = snapshots  # "sn/key" -> (parent "sn/key" or "", labels)
        self._ingests = ingests  # ref -> expected digest
        self.marked: set[_Node] = set()
        self._full: set[_Node] = set()
        self._flat: set[_Node] = set()
        self._stack: list[tuple[_Node, bool]] = []

    def visit(self, node: _Node, *, flat: bool = False) -> None:
        self.marked.add(node)
        if node in self._full:
            return
        seen = self._flat if flat else self._full
        if node in seen:
            return
        seen.add(node)
        self._stack.append((node, flat))

    def run(self) -> None:
        while self._stack:
            (kind, key), flat = self._stack.pop()
            for ref, ref_flat in self._edges(kind, key, flat):
                self.visit(ref, flat=ref_flat)

    def _edges(self, kind: str, key: str, flat: bool) -> Iterable[tuple[_Node, bool]]:
        labels: Mapping[str, str] = {}
        if kind == "content":
            labels = self._content_labels.get(key, {})
        elif kind == "image" and key in self._images:
            target, labels = self._images[key]
            yield ("content", target), flat
        elif kind == "snapshot" and key in self._snapshots:
            parent, labels = self._snapshots[key]
            if parent:
                yield ("snapshot", parent), flat
        elif kind == "ingest":
            expected = self._ingests.get(key)
            if expected:
                yield ("content", expected), False
        if flat:
            return
        for digest in content_refs(labels):
            yield ("content", str(digest)), False
        for snapshotter, snap_key in snapshot_refs(labels):
            yield ("snapshot", f"{snapshotter}/{snap_key}"), False


def _expired(labels: Mapping[str, str], now: float) -> bool:
    value = labels.get(LABEL_GC_EXPIRE)
    if value is None:
        return False
    when = parse_expire(value)
    # An unparsable time is ignored, as containerd does: the object simply does not expire.
    return when is not None and now > when


def collect(
    db: MetadataDB,
    content: GCContent,
    *,
    now: float | None = None,
    dry_run: bool = False,
    ingest_expiry: float = INGEST_EXPIRY,
    only: Collection[Digest] | None = None,
    abandoned: Collection[str] = (),
    caches: GCCaches | None = None,
) -> GCResult:
    """Mark from the roots and remove everything unmarked; see the module docstring.

    ``now`` (POSIX seconds, default the current time) decides which leases, images and
    ingests have expired. With ``dry_run`` nothing is changed and the result lists what a
    real run would remove. Holds the database's write lock for the whole run; raises
    Unavailable if that lock cannot be had.

    ``only`` narrows the sweep to those blobs (and their label rows): everything is marked
    as usual, but nothing else is removed, expired leases included. A failed pull uses it
    to take back what it committed without collecting anything it did not create.

    ``caches``: the lazy layer caches, removed when their layer is unmarked and no
    process holds them (not with ``only``).

    ``abandoned`` names ingest refs the age rule does not keep (those of a lease just
    removed): they go unless a live lease or a writer holds them.

    Blobs or ingests that vanish meanwhile (another
    collector) are skipped; an ingest a writer grabbed meanwhile (Conflict) is left alone.
    """
    now = time.time() if now is None else now
    only_set = None if only is None else frozenset(only)
    with db.transaction() as conn:
        images = db.list_images()
        snapshots = db.list_snapshots()
        content_labels = {str(d): labels for d, labels in db.labelled_content().items()}
        ingests = list(content.ingests())

        marker = _Marker(
            content_labels=content_labels,
            images={i.name: (str(i.target.digest), i.labels) for i in images},
            snapshots={
                f"{s.snapshotter}/{s.key}": (
                    f"{s.snapshotter}/{s.parent}" if s.parent else "",
                    s.labels,
                )
                for s in snapshots
            },
            ingests={i.ref: (str(i.expected) if i.expected else None) for i in ingests},
        )

        becoming: dict[str, list[str]] = {}  # digest -> refs of the ingests writing it
        for i in ingests:
            if i.expected is not None:
                becoming.setdefault(str(i.expected), []).append(i.ref)
        gone = frozenset(abandoned)

        expired_leases: list[str] = []
        for lease in db.leases():
            if (lease.expires_at is not None and now > lease.expires_at) or _expired(
                lease.labels, now
            ):
                expired_leases.append(lease.id)
                continue
            flat = LABEL_GC_FLAT in lease.labels
            for kind, key in db.lease_resources(lease.id):
                # Ingests have no labels, so "flat" changes nothing for them.
                marker.visit((kind, key), flat=flat and kind != "ingest")
                if kind == "content":
                    for ref in becoming.get(key, ()):
                        marker.visit(("ingest", ref))

        for image in images:
            if not _expired(image.labels, now):
                marker.visit(("image", image.name))
        for labelled, labels in content_labels.items():
            if LABEL_GC_ROOT in labels:
                marker.visit(("content", labelled))
        for snap in snapshots:
            if LABEL_GC_ROOT in snap.labels:
                marker.visit(("snapshot", f"{snap.snapshotter}/{snap.key}"))
        for ingest in ingests:
            fresh = now - ingest.updated_at <= ingest_expiry and ingest.ref not in gone
            if ingest.locked or fresh:
                marker.visit(("ingest", ingest.ref))
        marker.run()
        marked = marker.marked

        dead_blobs = sorted(
            (info.digest, info.size)
            for info in content.walk()
            if ("content", str(info.digest)) not in marked
            and (only_set is None or info.digest in only_set)
        )
        dead_ingests = sorted(
            (i for i in ingests if ("ingest", i.ref) not in marked and not i.locked),
            key=lambda i: i.ref,
        )
        dead_snapshots = [
            (s.snapshotter, s.key)
            for s in snapshots
            if ("snapshot", f"{s.snapshotter}/{s.key}") not in marked
        ]
        dead_images = [i.name for i in images if ("image", i.name) not in marked]
        committed = {str(info.digest) for info in content.walk()} if caches is not None else set()
        dead_caches = sorted(
            (c.digest, c.size)
            for c in (caches.walk() if caches is not None and only_set is None else ())
            if not c.locked
            and (("content", str(c.digest)) not in marked or str(c.digest) in committed)
        )
        dead_labels = [d for d in content_labels if ("content", d) not in marked]
        if only_set is not None:
            wanted = {str(d) for d in only_set}
            dead_ingests, dead_snapshots, dead_images, expired_leases = [], [], [], []
            dead_labels = [d for d in dead_labels if d in wanted]

        removed_blobs: list[tuple[Digest, int]] = []
        removed_ingests: list[str] = []
        ingest_sizes: list[int] = []
        removed_caches: list[tuple[Digest, int]] = []
        bytes_freed = 0
        if dry_run:
            removed_caches = list(dead_caches)
            bytes_freed += sum(size for _, size in dead_caches)
            removed_blobs = list(dead_blobs)
            removed_ingests = [i.ref for i in dead_ingests]
            ingest_sizes = [i.offset for i in dead_ingests]
            bytes_freed += sum(size for _, size in dead_blobs) + sum(i.offset for i in dead_ingests)
        else:
            # Metadata first, files second, all under the write lock: if an unlink fails
            # the transaction rolls back and the labels stay, which is harmless (they only
            # describe blobs); the reverse order could leave labels pointing nowhere.
            for lease_id in expired_leases:
                conn.execute("DELETE FROM lease_resources WHERE lease_id = ?", (lease_id,))
                conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            for labelled in dead_labels:
                conn.execute("DELETE FROM content_labels WHERE digest = ?", (labelled,))
            for sn, key in dead_snapshots:
                conn.execute("DELETE FROM snapshots WHERE snapshotter = ? AND key = ?", (sn, key))
            for name in dead_images:
                conn.execute("DELETE FROM images WHERE name = ?", (name,))
            for digest, size in dead_blobs:
                try:
                    content.delete(digest)
                except NotFound:
                    continue  # removed by someone else meanwhile: not ours to report
                removed_blobs.append((digest, size))
                bytes_freed += size
            for ingest in dead_ingests:
                try:
                    content.abort(ingest.ref)
                except (NotFound, Conflict):
                    # Gone already, or a writer resumed it since we listed it: it is in
                    # use, so it stays.
                    continue
                removed_ingests.append(ingest.ref)
                ingest_sizes.append(ingest.offset)
                bytes_freed += ingest.offset
            for digest, size in dead_caches:
                assert caches is not None
                try:
                    caches.delete(digest)
                except (NotFound, Conflict):
                    continue  # gone, or opened since we looked: in use, so it stays
                removed_caches.append((digest, size))
                bytes_freed += size

    return GCResult(
        removed_blobs=tuple(removed_blobs),
        removed_ingests=tuple(removed_ingests),
        removed_snapshots=tuple(dead_snapshots),
        bytes_freed=bytes_freed,
        removed_images=tuple(dead_images),
        removed_leases=tuple(sorted(expired_leases)),
        ingest_sizes=tuple(ingest_sizes),
        removed_caches=tuple(removed_caches),
    )
