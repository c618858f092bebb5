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

The names are imported on first use (PEP 562): a verb that needs ``Pipeline`` and a
stage or two does not pay for every stage's transports at start-up.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgpipe.events import Event, EventKind, Observer
    from imgpipe.image import ImagePlan, walk_image

    from .context import (
        Context,
        Root,
        Stage,
        opened_store,
    )
    from .export import Export
    from .fetch import (
        BlobFetch,
        FetchBlobs,
        FetchDocuments,
        store_blob,
    )
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

#: name -> the module that defines it
_WHERE: dict[str, str] = {
    "Event": "imgpipe.events",
    "EventKind": "imgpipe.events",
    "Observer": "imgpipe.events",
    "ImagePlan": "imgpipe.image",
    "walk_image": "imgpipe.image",
    "Context": ".context",
    "Root": ".context",
    "Stage": ".context",
    "opened_store": ".context",
    "Export": ".export",
    "BlobFetch": ".fetch",
    "FetchBlobs": ".fetch",
    "FetchDocuments": ".fetch",
    "store_blob": ".fetch",
    "LoadImage": ".load",
    "normalize_name": ".names",
    "suggested_name": ".names",
    "Pipeline": ".pipeline",
    "Record": ".record",
    "Resolve": ".resolve",
    "Resolved": ".resolve",
    "DEFAULT_MAX_CONCURRENT": ".scheduler",
    "PROGRESS_INTERVAL": ".scheduler",
    "WAIT_SLICE": ".scheduler",
    "Background": ".scheduler",
    "Cancelled": ".scheduler",
    "ProgressReader": ".scheduler",
    "rollback": ".scheduler",
    "run_concurrently": ".scheduler",
}

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


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(where, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
