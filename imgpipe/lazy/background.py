"""Prefetch and convergence: a lazy mount ends as a full pull.

On a thread of the server, once it serves:

1. **Prefetch**: for each layer with a ``.prefetch.landmark``, the compressed bytes
   before it (the files the image's builder marked as needed first) in one request, into
   the cache; the layer is then ``prefetched``. Always done: it is what makes the first
   reads local.
2. **Background** (unless turned off): the rest of each layer, bottom first, one
   request of :data:`PIECE` bytes at a time, each after the reads being served have
   finished (reads come first). A complete layer is checked against its digest and
   committed into the content store as an ordinary blob (the writer checks the digest
   again); it is then ``complete``. A blob that does not verify is dropped from the cache
   and the layer's error says so: nothing corrupt is committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from imgpipe.content.store import ContentStore
from imgpipe.formats.errors import AlreadyExists, CorruptLayer, ImgpipeError
from imgpipe.formats.estargz import TOC

from .cache import CachingRanges, LayerCache
from .state import COMPLETE, PREFETCHED

__all__ = ["PIECE", "Convergence"]

#: One background request: small enough that a read waiting behind it on a slow link
#: waits little (0.5 s at 4 MB/s), large enough that loopback is not request-bound.
PIECE: Final = 2 << 20
_COPY: Final = 1 << 20


class Convergence:
    """The prefetch and background fetch of ``caches`` (by layer, bottom first).

    ``update(n, **fields)`` records layer ``n``'s state; ``wait_idle()`` returns when no
    read is being served; ``stopping()`` says the server is going away."""

    def __init__(
        self,
        caches: Sequence[LayerCache | None],
        tocs: Sequence[TOC],
        ranges: CachingRanges,
        content: ContentStore,
        *,
        update: Callable[..., None],
        wait_idle: Callable[[], None],
        stopping: Callable[[], bool],
        background: bool,
    ) -> None:
        self.caches = caches
        self.tocs = tocs
        self.ranges = ranges
        self.content = content
        self.update = update
        self.wait_idle = wait_idle
        self.stopping = stopping
        self.background = background

    def run(self) -> None:
        for n, cache in enumerate(self.caches):
            if cache is not None and not self.stopping():
                self._guard(n, self._prefetch, cache)
        if not self.background:
            return
        for n, cache in enumerate(self.caches):
            if cache is not None and not self.stopping():
                self._guard(n, self._converge, cache)

    def _guard(self, n: int, work: Callable[[int, LayerCache], None], cache: LayerCache) -> None:
        try:
            work(n, cache)
        except ImgpipeError as e:
            self.update(n, error=f"layer {n} ({cache.desc.digest}): {e}")
        except OSError as e:
            self.update(n, error=f"layer {n} ({cache.desc.digest}): the cache: {e}")

    def _fetch(self, cache: LayerCache, start: int, end: int) -> None:
        with self.ranges.open_range(cache.desc, start, end - start) as f:
            while f.read(_COPY):
                pass

    def _prefetch(self, n: int, cache: LayerCache) -> None:
        end = self.tocs[n].prefetch_end()
        if end <= 0:
            return
        if not cache.present(0, end):
            self._fetch(cache, 0, end)
        self.update(n, state=PREFETCHED)

    def _converge(self, n: int, cache: LayerCache) -> None:
        for start, end in cache.missing():
            at = start
            while at < end:
                if self.stopping():
                    return
                self.wait_idle()
                piece = min(PIECE, end - at)
                self._fetch(cache, at, at + piece)
                at += piece
                self.update(n)
        self._commit(n, cache)

    def _commit(self, n: int, cache: LayerCache) -> None:
        desc = cache.desc
        try:
            w = self.content.writer(
                f"lazy-{desc.digest.hex}", expected=desc.digest, total=desc.size
            )
        except AlreadyExists:  # committed meanwhile (another mount, a pull)
            self.update(n, state=COMPLETE, error="")
            return
        with w, open(cache.path, "rb") as f:
            if w.offset:
                w.truncate()  # a half-done copy of ours: start again
            while data := f.read(_COPY):
                w.write(data)
            if w.digest() != desc.digest:
                got = w.digest()
                w.discard()
                cache.reset()
                raise CorruptLayer(
                    f"the fetched blob hashes to {got}, not {desc.digest}: not committed, "
                    "its cache is dropped"
                )
            w.commit(desc.size, desc.digest)
        self.update(n, state=COMPLETE, error="")
