"""What the conversion's stages hand each other: Convert = Resolve -> MapLayers -> Write.

::

    Resolve    Ends    -> Planned   read the source's documents, plan every blob
    MapLayers  Planned -> Mapped    each layer found, mounted, copied or converted
    Write      Mapped  -> ConvertReport   manifests and indexes, children first, then the tag

A stage needs of its context only the observer: :class:`Emits` (a pipeline's
:class:`~imgpipe.pipeline.Context` is one), so a conversion between registries runs
its stages without a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imgpipe.events import Event
from imgpipe.formats.descriptor import Descriptor

from .report import Action

if TYPE_CHECKING:  # the stages' modules import this one
    from .destinations import Destination
    from .layers import LayerPlan
    from .plan import BlobKey, Node
    from .sources import Source

__all__ = ["Emits", "Ends", "Mapped", "Planned", "Result"]


class Emits(Protocol):
    """What a conversion stage needs of its context: somewhere to send events."""

    def emit(self, event: Event) -> None: ...


@dataclass(frozen=True)
class Ends:
    """The opened source and destination, the source's root, both as the caller named
    them (for the report); ``started`` (monotonic) times the report."""

    source: Source
    dest: Destination
    root: Descriptor
    shown: tuple[str, str]
    started: float


@dataclass(frozen=True)
class Planned:
    """The source image's plan: the tree of documents, each blob's work once."""

    ends: Ends
    tree: Node
    tasks: tuple[tuple[BlobKey, LayerPlan], ...]


@dataclass
class Result:
    """What became of one blob: its new descriptor, how, how long; the DiffID when the
    layer was decoded (and checked)."""

    desc: Descriptor
    action: Action
    seconds: float
    diff_id: str = ""


@dataclass(frozen=True)
class Mapped:
    """Every blob is in the destination; ``results`` by blob key."""

    planned: Planned
    results: Mapping[BlobKey, Result]
