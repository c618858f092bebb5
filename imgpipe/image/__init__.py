"""The lazy image model: Image, Layer and Index over any blob reader.

go-containerregistry's ``v1`` is the model. An end (the store, a registry, a layout, an
archive) is a :class:`BlobReader`; :func:`load` makes an :class:`Image` or
:class:`Index` of a descriptor it names, reading only that document; everything else is
read when asked for, and always through :func:`open_verified`::

    img = load(store.content, record.target)      # or a transport source
    if isinstance(img, Index):
        img = select.pick(img.manifests(skip_missing=True), want, lambda i: i.platform())
    check_layer_keys(img.layers(), keys)
    with img.layers()[0].open_uncompressed(keys=keys) as tar: ...

Beside it: :func:`walk_image` (the one graph walk, to an eager :class:`ImagePlan`),
:mod:`imgpipe.image.select` (the one platform/manifest choice) and
:func:`check_layer_keys` (the one encrypted-layer authorisation).

The names are re-exported lazily (PEP 562): ``imgpipe run`` needs the model and the
choice, not the eager plan, the walk or the key check (start-up is part of every run).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from imgpipe.formats._lazy import lazy_exports

if TYPE_CHECKING:
    from . import select
    from .blobs import BlobReader, open_verified, read_document
    from .keys import check_layer_keys, layer_name
    from .lazy import MAX_INDEX_DEPTH, BlobImage, BlobIndex, BlobLayer, load, wrap
    from .model import Image, Index, Layer
    from .plan import ImagePlan
    from .ranged import RangedLayer
    from .tocfetch import Fetcher, LoadedTOC, RangeReader, SeekableRanges, load_toc, range_reader
    from .validate import check_config, check_plan_configs, read_config
    from .walk import walk_image

#: Public name -> the module of this package that defines it.
_WHERE = {
    **dict.fromkeys(("BlobReader", "open_verified", "read_document"), "blobs"),
    **dict.fromkeys(("check_layer_keys", "layer_name"), "keys"),
    **dict.fromkeys(
        ("MAX_INDEX_DEPTH", "BlobImage", "BlobIndex", "BlobLayer", "load", "wrap"), "lazy"
    ),
    **dict.fromkeys(("Image", "Index", "Layer"), "model"),
    "ImagePlan": "plan",
    **dict.fromkeys(("check_config", "check_plan_configs", "read_config"), "validate"),
    "RangedLayer": "ranged",
    **dict.fromkeys(
        ("Fetcher", "LoadedTOC", "RangeReader", "SeekableRanges", "load_toc", "range_reader"),
        "tocfetch",
    ),
    "walk_image": "walk",
}


_exports = lazy_exports(__name__, _WHERE)


def __getattr__(name: str) -> Any:
    if name == "select":  # the submodule itself, a namespace of choice functions
        return import_module(".select", __name__)
    return _exports(name)


__all__ = [
    "MAX_INDEX_DEPTH",
    "BlobImage",
    "BlobIndex",
    "BlobLayer",
    "BlobReader",
    "Fetcher",
    "Image",
    "ImagePlan",
    "Index",
    "Layer",
    "LoadedTOC",
    "RangeReader",
    "RangedLayer",
    "SeekableRanges",
    "check_config",
    "check_layer_keys",
    "check_plan_configs",
    "layer_name",
    "load",
    "load_toc",
    "open_verified",
    "range_reader",
    "read_config",
    "read_document",
    "select",
    "walk_image",
    "wrap",
]
