"""What a pipeline run shares between its stages, and the shape of a stage."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Protocol, TypeVar

from imgpipe.events import Event, EventKind, Observer
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import FailedPrecondition
from imgpipe.metadata import Lease
from imgpipe.store import Store

__all__ = ["Context", "Root", "Stage", "opened_store"]

#: Where a verb opens a store of its own when it is given none (None: the default root).
Root = str | os.PathLike[str] | None


@contextlib.contextmanager
def opened_store(store: Store | None, root: Root) -> Iterator[Store]:
    """``store`` as it is (a script reuses one across calls), or the store at ``root``
    opened for the call and closed after it."""
    if store is not None:
        yield store
        return
    with Store(root) as s:
        yield s


def _ignore(_event: Event) -> None:
    pass


class Context:
    """What one pipeline run shares between its stages: the store (if the run has one),
    the observer, and the run's bookkeeping. Data flows between stages only as their
    typed outputs.

    ``resources`` closes transports and other handles when the run ends, whatever
    happened. ``lease`` protects every blob the run writes from a concurrent ``gc``.
    ``created`` lists the blobs this run committed (a failed run's lease keeps them for
    the next attempt, and says so). ``cancel`` is set on the first failure or Ctrl-C:
    transfers given it (ProgressReader, run_concurrently, Background) stop at their next
    read. A run without a store (a conversion between registries) has no lease; a stage
    that needs the store there gets FailedPrecondition.
    """

    def __init__(self, store: Store | None = None, *, observer: Observer | None = None) -> None:
        self._store = store
        self.observer: Observer = observer or _ignore
        self.resources = contextlib.ExitStack()
        self.lease: Lease | None = None
        self.created: list[Digest] = []
        self.cancel = threading.Event()
        #: (digest, size) of every BLOB_DONE emitted: what an interrupted push or
        #: conversion had finished writing to its destination
        self.done: list[tuple[Digest, int]] = []

    @property
    def store(self) -> Store:
        """The run's store; FailedPrecondition when the run has none."""
        if self._store is None:
            raise FailedPrecondition("this stage needs a store, and the pipeline runs without one")
        return self._store

    @property
    def has_store(self) -> bool:
        return self._store is not None

    def emit(self, event: Event) -> None:
        if event.kind == EventKind.BLOB_DONE and event.digest is not None:
            self.done.append((event.digest, event.size))  # list.append: thread-safe
        self.observer(event)

    def protect(self, digest: Digest) -> None:
        """Lease ``digest`` before it is written or relied on (see imgpipe.metadata.gc)."""
        if self.lease is not None:
            self.lease.add_content(digest)


In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)


class Stage(Protocol[In_contra, Out_co]):
    """One step of a pipeline: a name and ``run(item, ctx) -> item``.

    ``run`` may raise any ImgpipeError; the pipeline stops there, and what the run
    committed is released (and removed by the pipeline unless something else holds it).
    """

    name: str

    def run(self, item: In_contra, ctx: Context) -> Out_co: ...
