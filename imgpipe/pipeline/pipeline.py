"""Pipeline: stages run in order in one Context, under one lease when there is a store."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from imgpipe.errors import Interrupted, Kept
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

    ``run`` returns the last stage's output, and drops the lease. If a stage raises (or
    Ctrl-C comes), the run's transfers are cancelled and the lease is left to expire
    (:mod:`.leasing`): what the run committed, its partial downloads and its snapshots
    stay for the next attempt, which fetches only what is missing; nothing is named, and
    ``gc`` frees them once the lease expires. An interrupt is raised as
    :class:`~imgpipe.errors.Interrupted`, saying what was kept. A run without a store
    (registry to registry) takes no lease.
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
        self,
        item: Any,
        *,
        store: Store | None = None,
        observer: Observer | None = None,
        lease_expiry: float | None = None,
    ) -> Any:
        """Run the stages on ``item`` in a new Context of ``store``; the last output.

        ``lease_expiry``: seconds the run's lease outlives a failure (default
        :func:`imgpipe.config.lease_expiry`: ``$IMGPIPE_LEASE_EXPIRY``, config.toml, 24 h).
        Without a store nothing local is opened or leased (a conversion between
        registries runs as nobody, with no root).
        """
        ctx = Context(store, observer=observer)
        run_lease = None
        if store is not None:
            from imgpipe.config import lease_expiry as configured  # noqa: PLC0415 (start-up)

            from .leasing import RunLease  # noqa: PLC0415

            run_lease = RunLease.open(
                store,
                expires_in=lease_expiry if lease_expiry is not None else configured(),
                pipeline=",".join(self.names()),
                subject=_subject(item),
            )
            ctx.lease = run_lease.lease
        try:
            with ctx.resources:
                try:
                    out = self._stages(item, ctx)
                except BaseException:
                    # before the resources close: workers still reading stop first
                    ctx.cancel.set()
                    raise
        except KeyboardInterrupt as e:
            kept = run_lease.failed(ctx.created) if run_lease is not None else None
            if kept is None or kept.nothing:
                kept = Kept(sent=tuple(ctx.done))  # a push, a conversion between registries
            reason = str(e) if str(e) else "interrupted"
            raise Interrupted(reason, kept=kept) from None
        except BaseException:
            if run_lease is not None:
                run_lease.failed(ctx.created)
            raise
        if run_lease is not None:
            run_lease.succeeded()
        return out

    def run_in(self, item: Any, ctx: Context) -> Any:
        """Run the stages on ``item`` in ``ctx``, a running pipeline's (this pipeline is
        then one stage of that one): under its lease, into its ``created``, cancelled
        with it; the handles
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


def _subject(item: Any) -> str | None:
    """What a run was given, for its lease's label: a reference or a name as typed, a
    conversion's "source -> destination"; None when the item says nothing of the kind."""
    from imgpipe.formats.reference import TransportRef  # noqa: PLC0415 (start-up)

    if isinstance(item, TransportRef | str):
        return str(item)
    shown = getattr(item, "shown", None)  # a conversion's Request
    if isinstance(shown, tuple) and shown and all(isinstance(s, str) for s in shown):
        return " -> ".join(shown)
    return None
