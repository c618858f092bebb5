"""The lease one pipeline run holds, as containerd's clients hold theirs.

A run with a store writes under a lease that expires (``containerd.io/gc.expire``,
:func:`imgpipe.config.lease_expiry`, 24 h by default). When the run succeeds the lease
is deleted: the image record holds what matters from then on. When it fails or is
interrupted the lease is *kept*: what the run committed, its partial downloads and the
snapshots it made stay until the lease expires, so the next attempt fetches only what
is missing; ``gc`` after the expiry (or ``imgpipe leases rm``) frees them. A lease that
holds nothing the run made is deleted either way.
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

__all__ = ["LABEL_PIPELINE", "LABEL_SUBJECT", "RunLease", "rfc3339"]

#: On a run's lease: the names of the pipeline's stages, so ``leases ls`` says what made it.
LABEL_PIPELINE: Final = "imgpipe.pipeline"
#: On a run's lease: what the run was given (a source reference, an image name).
LABEL_SUBJECT: Final = "imgpipe.subject"
#: A subject label longer than this is cut (labels are bounded; this is for people).
_MAX_SUBJECT: Final = 512


def rfc3339(when: float) -> str:
    """POSIX seconds as containerd writes ``gc.expire``: UTC, whole seconds."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunLease:
    """The lease of one run: :meth:`open` it, then :meth:`succeeded` or :meth:`failed`."""

    def __init__(self, store: Store, lease: Lease, expires_at: float) -> None:
        self._store = store
        self.lease = lease
        self.expires_at = expires_at

    @classmethod
    def open(cls, store: Store, *, expires_in: float, labels: Mapping[str, str]) -> RunLease:
        """A new lease expiring ``expires_in`` seconds from now, labelled with ``labels``
        and containerd's ``gc.expire`` (so a containerd-minded reader sees the time)."""
        expires_at = time.time() + expires_in
        all_labels = {**labels, LABEL_GC_EXPIRE: rfc3339(expires_at)}
        if len(all_labels.get(LABEL_SUBJECT, "")) > _MAX_SUBJECT:
            all_labels[LABEL_SUBJECT] = all_labels[LABEL_SUBJECT][:_MAX_SUBJECT]
        lease_id = store.db.create_lease(expires_in=expires_in, labels=all_labels)
        return cls(store, Lease(store.db, lease_id), expires_at)

    def succeeded(self) -> None:
        """The run is done: drop the lease (what it made is held otherwise now)."""
        self._drop()

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
        return kept

    def _drop(self) -> None:
        with contextlib.suppress(NotFound):  # collected already (expired)
            self._store.db.delete_lease(self.lease.id)
