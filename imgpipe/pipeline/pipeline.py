"""Pipeline: stages run in order in one Context, under one lease."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imgpipe.events import Observer
from imgpipe.formats.errors import InvalidArgument, NotFound
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef
from imgpipe.store import Store
from imgpipe.transports import TransportOptions

from .context import Context, Stage
from .export import Export
from .fetch import FetchBlobs, FetchDocuments
from .load import LoadImage
from .record import Record
from .resolve import Resolve
from .scheduler import DEFAULT_MAX_CONCURRENT, rollback

__all__ = ["Pipeline"]


class Pipeline:
    """Stages run in order in one Context, under one lease.

    ``run`` returns the last stage's output. If a stage raises, the lease is released and
    the blobs this run committed are removed again unless something else (an image,
    another lease) holds them, so a failed pull leaves the store as it was.
    """

    def __init__(self, stages: Sequence[Stage[Any, Any]]) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"stage names must be unique: {names}")
        self.stages: tuple[Stage[Any, Any], ...] = tuple(stages)

    @classmethod
    def pull(
        cls,
        *,
        name: str | None = None,
        platform: Platform | None = None,
        all_platforms: bool = False,
        options: TransportOptions | None = None,
    ) -> Pipeline:
        """The import/pull pipeline: resolve, fetch documents, fetch blobs, record.

        ``options`` says how to reach registries and how many blobs move at once.
        """
        concurrent = options.max_concurrent if options is not None else DEFAULT_MAX_CONCURRENT
        return cls(
            [
                Resolve(name=name, require_name=True, options=options),
                FetchDocuments(platform=platform, all_platforms=all_platforms),
                FetchBlobs(max_concurrent=concurrent),
                Record(),
            ]
        )

    @classmethod
    def export(
        cls, ref: TransportRef, *, image_name: str = "", options: TransportOptions | None = None
    ) -> Pipeline:
        """The export/push pipeline: load an image by name, write it to ``ref``."""
        return cls([LoadImage(), Export(ref, image_name=image_name, options=options)])

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def _index(self, name: str) -> int:
        try:
            return self.names().index(name)
        except ValueError:
            raise NotFound(f"no stage named {name!r} (have: {', '.join(self.names())})") from None

    def insert_after(self, name: str, stage: Stage[Any, Any]) -> Pipeline:
        """A new pipeline with ``stage`` right after the stage called ``name``."""
        i = self._index(name) + 1
        return Pipeline([*self.stages[:i], stage, *self.stages[i:]])

    def replace(self, name: str, stage: Stage[Any, Any]) -> Pipeline:
        """A new pipeline with ``stage`` in place of the stage called ``name``."""
        i = self._index(name)
        return Pipeline([*self.stages[:i], stage, *self.stages[i + 1 :]])

    def insert_before(self, name: str, stage: Stage[Any, Any]) -> Pipeline:
        """A new pipeline with ``stage`` right before the stage called ``name``."""
        i = self._index(name)
        return Pipeline([*self.stages[:i], stage, *self.stages[i:]])

    def run(self, item: Any, *, store: Store, observer: Observer | None = None) -> Any:
        """Run the stages on ``item`` in a new Context of ``store``; the last output."""
        ctx = Context(store, observer=observer)
        try:
            with ctx.resources, store.db.lease() as lease:
                ctx.lease = lease
                for stage in self.stages:
                    item = stage.run(item, ctx)
                return item
        except BaseException:
            # The lease is gone by now; what this run committed and nothing else holds
            # is removed, so a failed pull leaves the store as it was.
            if ctx.created:
                rollback(store, ctx.created)
            raise
