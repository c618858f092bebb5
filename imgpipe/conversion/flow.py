"""What the conversion's stages hand each other: Convert = Resolve -> MapLayers -> Write.

::

    Resolve    Request -> Planned   open both ends, read the source's documents, plan every blob
    MapLayers  Planned -> Mapped    each layer found, mounted, copied or converted: Layer -> Layer
    Write      Mapped  -> ConvertReport   manifests and indexes, children first, then the tag

They run in a pipeline :class:`~imgpipe.pipeline.Context`; it has a store only when the
destination is the store (its lease protects what the conversion writes, and keeps
it for a retry until it expires if the run fails), so a conversion between registries
opens no store.
A user stage fits between MapLayers and Write: every blob is in the destination then,
nothing names the image yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.image import BlobLayer, Layer

from .locate import Location
from .report import Action

if TYPE_CHECKING:  # the stages' modules import this one
    from imgpipe.pipeline import Context
    from imgpipe.processors import ProcessorRegistry

    from .destinations import Destination
    from .layers import LayerPlan
    from .plan import BlobKey, Node
    from .sources import Source

__all__ = ["Ends", "Mapped", "MappedLayer", "Opener", "Planned", "Request", "Result"]


@dataclass(frozen=True)
class Request:
    """One conversion asked for: where from, where to, both as the caller named them
    (for the report); ``started`` (monotonic) times the report."""

    source: Location
    dest: Location
    shown: tuple[str, str]
    started: float


class Opener(Protocol):
    """What opens the ends (a :class:`~imgpipe.conversion.Converter`: its registry
    connections and store serve every call)."""

    def open_source(self, loc: Location, shown: str) -> Source: ...

    def open_dest(self, loc: Location, shown: str, ctx: Context) -> Destination: ...


@dataclass(frozen=True)
class Ends:
    """The opened source and destination, the source's root, and the request."""

    source: Source
    dest: Destination
    root: Descriptor
    request: Request

    @property
    def shown(self) -> tuple[str, str]:
        return self.request.shown


@dataclass(frozen=True)
class Planned:
    """The source image's plan: the tree of documents, each blob's work once."""

    ends: Ends
    tree: Node
    tasks: tuple[tuple[BlobKey, LayerPlan], ...]


class MappedLayer(BlobLayer):
    """A blob as MapLayers left it in the destination: a model Layer with the new
    descriptor. Its bytes are read back from ``reader`` (the source when they passed
    through unchanged, else the destination), verified, only if a later stage asks.

    ``diff_id()`` is the one the conversion computed, else the source layer's: only
    compression and encryption change the bytes without a new DiffID.
    """

    def __init__(
        self,
        reader: Source | Destination,
        desc: Descriptor,
        source: Layer,
        diff_id: Digest | None = None,
        registry: ProcessorRegistry | None = None,
    ) -> None:
        super().__init__(reader, desc, registry=registry)
        self.source = source
        self._diff_id = diff_id

    def diff_id(self) -> Digest:
        return self._diff_id if self._diff_id is not None else self.source.diff_id()


@dataclass
class Result:
    """What became of one blob: the Layer it is now, how, how long; the DiffID when the
    layer was decoded (and checked), and the source's tar DiffID when the layer's tar
    was rewritten (eStargz: then the two differ and the config gets the new one)."""

    layer: MappedLayer
    action: Action
    seconds: float
    diff_id: str = ""
    source_diff_id: str = ""

    @property
    def desc(self) -> Descriptor:
        return self.layer.descriptor


@dataclass(frozen=True)
class Mapped:
    """Every blob is in the destination; ``results`` by blob key."""

    planned: Planned
    results: Mapping[BlobKey, Result]
