"""Stages and pipelines: the Python API everything else is built from.

A *stage* is a small object with one job: ``run(item, ctx)`` takes the previous stage's
output and returns its own. A :class:`Pipeline` runs stages in order inside one
:class:`Context`, which carries the store, the lease that protects what the run writes
from a concurrent ``gc``, the open transports, and the observer that receives progress
events. Library code never prints: it emits :class:`Event` values to the observer.

The built-in stages for moving images::

    Resolve         TransportRef -> Resolved      open the source, find the root descriptor
    FetchDocuments  Resolved     -> ImagePlan     fetch + verify index/manifests, pick platforms
    FetchBlobs      ImagePlan    -> ImagePlan     fetch + verify configs and layers not yet stored
    Record          ImagePlan    -> ImageRecord   name the image in the metadata database
    LoadImage       str          -> ImagePlan     an image already in the store, by name
    Export          ImagePlan    -> Descriptor    write every blob, then the root, to a sink

``imgpipe.pull`` is ``Pipeline([Resolve(), FetchDocuments(), FetchBlobs(), Record(name)])``.
A user stage goes anywhere its input type fits; for example a size check between
FetchDocuments and FetchBlobs refuses an image before a single layer is downloaded::

    class MaxSize:
        name = "max-size"
        def run(self, plan: ImagePlan, ctx: Context) -> ImagePlan:
            if plan.total_size() > LIMIT:
                raise imgpipe.ResourceLimit(f"image is {plan.total_size()} bytes")
            return plan

    Pipeline.pull(name="x").insert_after("fetch-documents", MaxSize()).run(ref, store=s)

``run(item, store=None)`` runs with no store at all: no lease, nothing to roll back, a
stage asking for ``ctx.store`` gets FailedPrecondition (a conversion between registries
runs so, as nobody). ``run_in(item, ctx)`` runs a pipeline as one stage of another.

The names are imported on first use (PEP 562): a verb that needs ``Pipeline`` and a
stage or two does not pay for every stage's transports at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgpipe.formats._lazy import lazy_exports

if TYPE_CHECKING:
    from imgpipe.events import Event, EventKind, Observer
    from imgpipe.image import ImagePlan, walk_image

    from .context import Context, Root, Stage, opened_store
    from .export import Export
    from .fetch import BlobFetch, FetchBlobs, FetchDocuments, store_blob
    from .load import LoadImage
    from .names import normalize_name, suggested_name
    from .pipeline import Pipeline
    from .record import Record
    from .resolve import Resolve, Resolved
    from .scheduler import (
        DEFAULT_MAX_CONCURRENT,
        PROGRESS_INTERVAL,
        WAIT_SLICE,
        Background,
        Cancelled,
        ProgressReader,
        rollback,
        run_concurrently,
    )

#: the module that defines each name
_MODULES: dict[str, tuple[str, ...]] = {
    "imgpipe.events": ("Event", "EventKind", "Observer"),
    "imgpipe.image": ("ImagePlan", "walk_image"),
    ".context": ("Context", "Root", "Stage", "opened_store"),
    ".export": ("Export",),
    ".fetch": ("BlobFetch", "FetchBlobs", "FetchDocuments", "store_blob"),
    ".load": ("LoadImage",),
    ".names": ("normalize_name", "suggested_name"),
    ".pipeline": ("Pipeline",),
    ".record": ("Record",),
    ".resolve": ("Resolve", "Resolved"),
    ".scheduler": (
        "DEFAULT_MAX_CONCURRENT",
        "PROGRESS_INTERVAL",
        "WAIT_SLICE",
        "Background",
        "Cancelled",
        "ProgressReader",
        "rollback",
        "run_concurrently",
    ),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "PROGRESS_INTERVAL",
    "WAIT_SLICE",
    "Background",
    "BlobFetch",
    "Cancelled",
    "Context",
    "Event",
    "EventKind",
    "Export",
    "FetchBlobs",
    "FetchDocuments",
    "ImagePlan",
    "LoadImage",
    "Observer",
    "Pipeline",
    "ProgressReader",
    "Record",
    "Resolve",
    "Resolved",
    "Root",
    "Stage",
    "normalize_name",
    "opened_store",
    "rollback",
    "run_concurrently",
    "store_blob",
    "suggested_name",
    "walk_image",
]


__getattr__ = lazy_exports(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)
