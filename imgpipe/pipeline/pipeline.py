"""Pipeline: stages run in order in one Context, under one lease when there is a store."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from imgpipe.events import Observer
from imgpipe.formats.errors import InvalidArgument, NotFound

from .context import Context, Stage

if TYPE_CHECKING:
    from imgpipe.formats.platform import Platform
    from imgpipe.formats.reference import TransportRef
    from imgpipe.store import Store
    from imgpipe.transports import TransportOptions

__all__ = ["Pipeline"]


class Pipeline:
    """Stages run in order in one Context, under one lease.

    ``run`` returns the last stage's output. If a stage raises, the lease is released and
    the blobs this run committed are removed again unless something else (an image,
    another lease) holds them, so a failed pull leaves the store as it was. A run
    without a store (registry to registry) takes no lease and has nothing to remove.
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
        from .fetch import FetchBlobs, FetchDocuments  # noqa: PLC0415 (start-up: on use)
        from .record import Record  # noqa: PLC0415
        from .resolve import Resolve  # noqa: PLC0415
        from .scheduler import DEFAULT_MAX_CONCURRENT  # noqa: PLC0415 (start-up: threads, logging)

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
        from .export import Export  # noqa: PLC0415 (start-up: on use)
        from .load import LoadImage  # noqa: PLC0415

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

    def run(
        self, item: Any, *, store: Store | None = None, observer: Observer | None = None
    ) -> Any:
        """Run the stages on ``item`` in a new Context of ``store``; the last output.

        Without a store nothing local is opened, leased or rolled back (a conversion
        between registries runs as nobody, with no root).
        """
        ctx = Context(store, observer=observer)
        lease = store.db.lease() if store is not None else contextlib.nullcontext()
        try:
            with ctx.resources, lease as held:
                ctx.lease = held
                return self._stages(item, ctx)
        except BaseException:
            # The lease is gone by now; what this run committed and nothing else holds
            # is removed, so a failed pull leaves the store as it was.
            if ctx.created and store is not None:
                from .scheduler import rollback  # noqa: PLC0415

                rollback(store, ctx.created)
            raise

    def run_in(self, item: Any, ctx: Context) -> Any:
        """Run the stages on ``item`` in ``ctx``, a running pipeline's (this pipeline is
        then one stage of that one): under its lease, into its ``created``; the handles
        these stages open are closed when they end, not when the outer run does."""
        outer = ctx.resources
        try:
            with contextlib.ExitStack() as ctx.resources:
                return self._stages(item, ctx)
        finally:
            ctx.resources = outer

    def _stages(self, item: Any, ctx: Context) -> Any:
        for stage in self.stages:
            item = stage.run(item, ctx)
        return item
