"""Export: write an image's blobs, children first, and then its root, to a sink."""

from __future__ import annotations

from collections.abc import Mapping

from imgpipe.config import with_defaults
from imgpipe.events import Event, EventKind
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.reference import TransportRef
from imgpipe.image import ImagePlan
from imgpipe.transports import ConcurrentSink, ImageSink, TransportOptions, open_sink

from .context import Context, Stage
from .scheduler import ProgressReader, run_concurrently

__all__ = ["Export"]


class Export(Stage[ImagePlan, Descriptor]):
    """Write every blob of the plan, children first, and then its root, to a sink.

    Configs and layers go first; with a :class:`~imgpipe.transports.ConcurrentSink` (a
    registry) up to its ``max_concurrent`` at once, each offered to ``mount_blob`` with
    its content labels before it is uploaded. Then the manifests and indexes, one by
    one, children before parents, as registries require; then the root.
    """

    name = "export"

    def __init__(
        self, ref: TransportRef, *, image_name: str = "", options: TransportOptions | None = None
    ) -> None:
        self.ref = ref
        self.image_name = image_name
        self.options = options

    def run(self, item: ImagePlan, ctx: Context) -> Descriptor:
        sink: ImageSink = ctx.resources.enter_context(
            open_sink(self.ref, image_name=self.image_name, options=with_defaults(self.options))
        )
        labels: Mapping[Digest, Mapping[str, str]] = {}
        workers = 1
        if isinstance(sink, ConcurrentSink):
            # Labels are read here, on the calling thread: workers touch no database.
            labels = {d.digest: ctx.store.db.content_labels(d.digest) for d in item.blobs}
            workers = min(sink.max_concurrent, len(item.blobs))
        if workers > 1:
            run_concurrently(
                ctx.emit,
                item.blobs,
                workers,
                "push",
                lambda d: _export_blob(ctx, sink, d, labels.get(d.digest)),
                cancel=ctx.cancel,
            )
        else:
            for desc in item.blobs:
                _export_blob(ctx, sink, desc, labels.get(desc.digest))
        for desc in reversed(item.document_descriptors):
            _export_blob(ctx, sink, desc, None)
        sink.write_root(item.root)
        root = item.root
        ctx.emit(Event(EventKind.EXPORTED, root.digest, root.media_type, root.size, str(self.ref)))
        return root


def _export_blob(
    ctx: Context, sink: ImageSink, desc: Descriptor, labels: Mapping[str, str] | None
) -> None:
    """Write one blob to ``sink`` unless it has it (or mounts it), with events."""
    if sink.has_blob(desc):
        ctx.emit(
            Event(EventKind.BLOB_EXISTS, desc.digest, desc.media_type, desc.size, "already exists")
        )
        return
    if labels is not None and isinstance(sink, ConcurrentSink):
        origin = sink.mount_blob(desc, labels)
        if origin:
            detail = f"mounted from {origin}"
            ctx.emit(Event(EventKind.BLOB_EXISTS, desc.digest, desc.media_type, desc.size, detail))
            return
    ctx.emit(Event(EventKind.BLOB_START, desc.digest, desc.media_type, desc.size, "uploading"))
    with ctx.store.content.open(desc.digest) as f:
        sink.write_blob(desc, ProgressReader(f, ctx.emit, desc, "uploading", cancel=ctx.cancel))
    ctx.emit(Event(EventKind.BLOB_DONE, desc.digest, desc.media_type, desc.size, "done"))
