"""The lease one pipeline run holds, as containerd's clients hold theirs.

A run with a store writes under a lease that expires (``containerd.io/gc.expire``,
:func:`imgpipe.config.lease_expiry`, 24 h by default). When the run succeeds the lease
is deleted: the image record holds what matters from then on. When it fails or is
interrupted the lease is *kept* (and labelled :data:`LABEL_ENDED`): what the run
committed, its partial downloads and the snapshots it made stay until the lease
expires, so the next attempt fetches only what is missing; ``gc`` after the expiry (or
``imgpipe leases rm``) frees them. A lease that holds nothing the run made is deleted
either way. When a later run of the same pipeline on the same subject succeeds, it
deletes the leases those ended attempts left: their work is in the image now. Only
*ended* ones: the lease of a run still going is never touched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Final

from imgpipe.errors import Kept
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import NotFound
from imgpipe.metadata import Lease
from imgpipe.metadata.labels import LABEL_GC_EXPIRE
from imgpipe.store import Store

__all__ = ["LABEL_ENDED", "LABEL_PIPELINE", "LABEL_SUBJECT", "RunLease", "rfc3339"]

#: On a run's lease: the names of the pipeline's stages, so ``leases ls`` says what made it.
LABEL_PIPELINE: Final = "imgpipe.pipeline"
#: On a run's lease: what the run was given (a source reference, an image name).
LABEL_SUBJECT: Final = "imgpipe.subject"
#: On a kept lease: when its run failed or was interrupted (RFC 3339), so a later
#: successful run of the same thing knows no running process needs the lease.
LABEL_ENDED: Final = "imgpipe.ended"
#: A subject label longer than this is cut (labels are bounded; this is for people).
_MAX_SUBJECT: Final = 512


def rfc3339(when: float) -> str:
    """POSIX seconds as containerd writes ``gc.expire``: UTC, whole seconds."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunLease:
    """The lease of one run: :meth:`open` it, then :meth:`succeeded` or :meth:`failed`."""

    def __init__(
        self, store: Store, lease: Lease, expires_at: float, labels: Mapping[str, str]
    ) -> None:
        self._store = store
        self.lease = lease
        self.expires_at = expires_at
        self._labels = dict(labels)

    @classmethod
    def open(
        cls, store: Store, *, expires_in: float, pipeline: str, subject: str | None
    ) -> RunLease:
        """A new lease expiring ``expires_in`` seconds from now, labelled with the
        pipeline's stage names, the subject (if there is one) and containerd's
        ``gc.expire`` (so a containerd-minded reader sees the time)."""
        expires_at = time.time() + expires_in
        labels = {LABEL_PIPELINE: pipeline, LABEL_GC_EXPIRE: rfc3339(expires_at)}
        if subject:
            labels[LABEL_SUBJECT] = subject[:_MAX_SUBJECT]
        lease_id = store.db.create_lease(expires_in=expires_in, labels=labels)
        return cls(store, Lease(store.db, lease_id), expires_at, labels)

    def succeeded(self) -> None:
        """The run is done: drop the lease (what it made is held otherwise now), and the
        leases that ended attempts at the same thing left."""
        self._drop()
        if LABEL_SUBJECT not in self._labels:
            return  # nothing says which runs were "the same": touch no other lease
        same = (self._labels[LABEL_PIPELINE], self._labels[LABEL_SUBJECT])
        for rec in self._store.db.leases():
            labels = rec.labels
            if LABEL_ENDED not in labels:
                continue
            if (labels.get(LABEL_PIPELINE), labels.get(LABEL_SUBJECT)) == same:
                with contextlib.suppress(NotFound):  # another process got there first
                    self._store.db.delete_lease(rec.id)

    def failed(self, created: Collection[Digest]) -> Kept:
        """The run failed or was interrupted: keep the lease if it holds something the run
        made (``created`` blobs, partial downloads of its blobs, snapshots), else drop
        it. What was kept, for the message."""
        try:
            resources = self._store.db.lease_resources(self.lease.id)
        except NotFound:  # collected already: nothing is held
            return Kept()
        leased = {key for kind, key in resources if kind == "content"}
        ingests = {key for kind, key in resources if kind == "ingest"}
        snapshots = sum(1 for kind, _ in resources if kind == "snapshot")
        blobs = []
        for digest in dict.fromkeys(created):
            with contextlib.suppress(NotFound):
                blobs.append((digest, self._store.content.info(digest).size))
        partial = sorted(
            (i.ref, i.offset)
            for i in self._store.content.ingests()
            if i.offset > 0 and (i.ref in ingests or str(i.expected) in leased)
        )
        kept = Kept(
            blobs=tuple(blobs),
            partial=tuple(partial),
            snapshots=snapshots,
            lease=self.lease.id,
            expires_at=self.expires_at,
        )
        if kept.nothing:
            self._drop()
            return Kept()
        with contextlib.suppress(NotFound):
            self._store.db.set_lease_labels(self.lease.id, {LABEL_ENDED: rfc3339(time.time())})
        return kept

    def _drop(self) -> None:
        with contextlib.suppress(NotFound):  # collected already (expired)
            self._store.db.delete_lease(self.lease.id)
