"""List and read files of eStargz / zstd:chunked images by Range, without pulling them.

::

    listing = imgpipe.estargz_list("127.0.0.1:5000/app:esgz")          # every layer's TOC
    result = imgpipe.estargz_cat("127.0.0.1:5000/app:esgz", "/etc/os-release", sys.stdout.buffer)
    result.bytes_fetched, result.blob_size                              # what it cost

Both are ``Pipeline([Resolve, OpenRanged, <verb stage>])`` run with no store: Resolve
opens the source and finds the root; OpenRanged picks the manifest (this host's
platform, or ``platform``) and wraps each layer in a
:class:`~imgpipe.image.ranged.RangedLayer`; the verb stage reads the TOCs (ls) or one
file (cat). Nothing is written anywhere.

``cat`` without ``layer`` looks from the top layer down, as the rootfs would show the
file: the first layer that has the path serves it; a whiteout (``.wh.NAME``) or an opaque
directory (``.wh..wh..opq``) above hides what lies below. A layer that is not eStargz or
zstd:chunked cannot say whether it holds the path, so it stops the search (Unsupported,
naming it: pass ``layer``). A final symlink is followed (relative to its directory).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import (
    InvalidArgument,
    NotFound,
    Unsupported,
)
from imgpipe.formats.estargz import Entry, clean_name
from imgpipe.formats.platform import Platform
from imgpipe.formats.reference import TransportRef, parse_transport
from imgpipe.image import Image, Index, load, select
from imgpipe.image.ranged import RangedLayer
from imgpipe.image.tocfetch import layer_format, range_reader
from imgpipe.pipeline import Context, Pipeline, Resolve, Resolved, Stage
from imgpipe.remote.options import TransportOptions

__all__ = [
    "CatResult",
    "LayerListing",
    "Listing",
    "OpenRanged",
    "RangedImage",
    "estargz_cat",
    "estargz_list",
]

_WHITEOUT: Final = ".wh."
_OPAQUE: Final = ".wh..wh..opq"
#: Symlinks followed for one ``cat`` (Linux's MAXSYMLINKS).
_MAX_LINKS: Final = 40


@dataclass(frozen=True)
class RangedImage:
    """The image chosen from the source, and one RangedLayer per layer (bottom first)
    or None where the layer is of neither format (``why`` says so)."""

    ref: TransportRef
    image: Image
    layers: tuple[RangedLayer | None, ...]
    why: tuple[str, ...]

    def layer(self, n: int) -> RangedLayer:
        """Layer ``n`` (0 = bottom, -1 = top); InvalidArgument if out of range,
        Unsupported if it cannot be read by Range."""
        count = len(self.layers)
        if not -count <= n < count:
            raise InvalidArgument(f"{self.ref}: layer {n} out of range (it has {count} layers)")
        found = self.layers[n]
        if found is None:
            raise Unsupported(self.why[n])
        return found

    def fetched(self) -> int:
        return sum(layer.fetcher.bytes_fetched for layer in self.layers if layer is not None)

    def requests(self) -> int:
        return sum(layer.fetcher.requests for layer in self.layers if layer is not None)


class OpenRanged(Stage[Resolved, RangedImage]):
    """Choose the image (``platform`` or this host's) and wrap its layers for Range reads."""

    name = "open-ranged"

    def __init__(self, *, platform: Platform | None = None) -> None:
        self.platform = platform

    def run(self, item: Resolved, ctx: Context) -> RangedImage:
        assert item.source is not None  # Resolve always passes it on
        root = load(item.source, item.root)
        if isinstance(root, Index):
            chosen = select.pick(root.manifests(), self.platform, lambda i: i.platform())
            if chosen is None:
                want = self.platform or "this host's platform"
                raise NotFound(f"{item.ref}: no image for {want}")
            image: Image = chosen
        else:
            image = root
        ranges = range_reader(item.source)
        layers: list[RangedLayer | None] = []
        why: list[str] = []
        for n, layer in enumerate(image.layers()):
            name = f"layer {n} ({layer.descriptor.digest})"
            try:
                layer_format(layer.descriptor, what=name)
            except Unsupported as e:
                layers.append(None)
                why.append(str(e))
                continue
            layers.append(RangedLayer(layer, ranges, name=name))
            why.append("")
        return RangedImage(item.ref, image, tuple(layers), tuple(why))


# -- ls -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerListing:
    """One layer's TOC: its position, descriptor, format and entries (TOC order)."""

    index: int
    descriptor: Descriptor
    format: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Listing:
    """What ``estargz_list`` found, with the bytes it fetched (footers and TOCs)."""

    layers: tuple[LayerListing, ...]
    skipped: tuple[str, ...]  # layers of neither format, why
    bytes_fetched: int
    requests: int
    blob_size: int  # of the layers listed


class _List(Stage[RangedImage, Listing]):
    name = "list"

    def __init__(self, layer: int | None) -> None:
        self.layer = layer

    def run(self, item: RangedImage, ctx: Context) -> Listing:
        if self.layer is not None:
            n = self.layer % len(item.layers) if item.layers else self.layer
            picked = [(n, item.layer(self.layer))]
            skipped: list[str] = []
        else:
            picked = [(n, layer) for n, layer in enumerate(item.layers) if layer is not None]
            skipped = [w for w in item.why if w]
            if not picked:
                raise Unsupported(
                    f"{item.ref}: no layer is eStargz or zstd:chunked ({'; '.join(skipped)})"
                )
        out = tuple(
            LayerListing(n, layer.descriptor, layer.format, layer.toc().entries)
            for n, layer in picked
        )
        size = sum(layer.descriptor.size for _, layer in picked)
        return Listing(out, tuple(skipped), item.fetched(), item.requests(), size)


# -- cat ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatResult:
    """Which layer served the file, how big it is, and what reading it cost."""

    path: str
    layer: int
    descriptor: Descriptor
    size: int
    bytes_fetched: int
    requests: int
    blob_size: int  # of the layer that served it
    tocs_read: tuple[int, ...] = field(default=())  # layers whose TOC was fetched


def _hidden(layer: RangedLayer, name: str) -> bool:
    """Whether ``layer`` whites out ``name`` or makes a directory above it opaque."""
    parts = name.split("/")
    for i in range(len(parts)):
        parent = "/".join(parts[:i])
        base = parts[i]
        prefix = f"{parent}/" if parent else ""
        if layer.lookup(prefix + _WHITEOUT + base) is not None:
            return True
        if i and layer.lookup(prefix + _OPAQUE) is not None:
            return True  # an opaque directory: what lower layers hold under it is gone
    return False


class _Cat(Stage[RangedImage, CatResult]):
    name = "cat"

    def __init__(self, path: str, out: BinaryIO, layer: int | None) -> None:
        self.path = path
        self.out = out
        self.layer = layer

    def _candidates(self, item: RangedImage) -> Iterator[tuple[int, RangedLayer]]:
        if self.layer is not None:
            yield self.layer % max(len(item.layers), 1), item.layer(self.layer)
            return
        for n in range(len(item.layers) - 1, -1, -1):
            yield n, item.layer(n)

    def _find(self, item: RangedImage, name: str) -> tuple[int, RangedLayer, Entry, list[int]]:
        read: list[int] = []
        for _ in range(_MAX_LINKS + 1):
            found = None
            for n, layer in self._candidates(item):
                read.append(n)
                entry = layer.lookup(name)
                if entry is not None:
                    found = (n, layer, entry)
                    break
                if _hidden(layer, name):
                    break
            if found is None:
                raise NotFound(f"{item.ref}: no {self.path!r} in the image")
            n, layer, entry = found
            if entry.type != "symlink":
                return n, layer, entry, read
            name = _follow(name, entry.link_name)
        raise InvalidArgument(f"{item.ref}: {self.path!r}: more than {_MAX_LINKS} symlinks")

    def run(self, item: RangedImage, ctx: Context) -> CatResult:
        n, layer, entry, read = self._find(item, clean_name(self.path, what="path"))
        if entry.type == "dir":
            raise InvalidArgument(f"{item.ref}: {self.path!r} is a directory")
        with layer.open_file(entry.name) as f:
            while data := f.read(1 << 20):
                self.out.write(data)
        size = layer.toc().data_entry(entry).size
        return CatResult(
            self.path,
            n,
            layer.descriptor,
            size,
            item.fetched(),
            item.requests(),
            layer.descriptor.size,
            tuple(dict.fromkeys(read)),
        )


def _follow(name: str, target: str) -> str:
    """Where the symlink ``name`` -> ``target`` points, as a layer name."""
    base = "" if target.startswith("/") else name.rpartition("/")[0]
    parts: list[str] = [p for p in base.split("/") if p]
    for p in target.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()  # at the root, '..' stays at the root (as the kernel does)
            continue
        parts.append(p)
    return "/".join(parts)


# -- the verbs ----------------------------------------------------------------------------


def _run(
    source: str | TransportRef,
    last: Stage[RangedImage, Any],
    platform: str | Platform | None,
    options: TransportOptions | None,
) -> object:
    ref = source if isinstance(source, TransportRef) else parse_transport(source)
    plat = Platform.parse(platform) if isinstance(platform, str) else platform
    stages: list[Stage[Any, Any]] = [Resolve(options=options), OpenRanged(platform=plat), last]
    return Pipeline(stages).run(ref)


def estargz_list(
    source: str | TransportRef,
    *,
    layer: int | None = None,
    platform: str | Platform | None = None,
    options: TransportOptions | None = None,
) -> Listing:
    """The TOCs of an image's eStargz / zstd:chunked layers (``layer``: that one only;
    0 = bottom, -1 = top), fetched by Range and verified. Raises NotFound, Unsupported
    (no such layer in the image; RangeNotSupported for a registry that ignores Range),
    CorruptLayer (a bad footer or TOC), MalformedDocument (a hostile TOC), and the
    registry's errors."""
    result = _run(source, _List(layer), platform, options)
    assert isinstance(result, Listing)
    return result


def estargz_cat(
    source: str | TransportRef,
    path: str,
    out: BinaryIO,
    *,
    layer: int | None = None,
    platform: str | Platform | None = None,
    options: TransportOptions | None = None,
) -> CatResult:
    """Write the file ``path`` of the image to ``out``, fetching only the footers, TOCs
    and that file's chunks; every chunk is verified before it is written (CorruptLayer,
    naming the layer, otherwise: what was written before is verified data). NotFound,
    InvalidArgument (a directory), Unsupported as :func:`estargz_list`."""
    result = _run(source, _Cat(path, out, layer), platform, options)
    assert isinstance(result, CatResult)
    return result
