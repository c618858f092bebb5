"""Resolve: open the source a TransportRef names and find its root descriptor."""

from __future__ import annotations

from imgpipe.config import with_defaults
from imgpipe.events import Event, EventKind
from imgpipe.formats._record import FrozenValue
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidArgument
from imgpipe.formats.reference import TransportRef
from imgpipe.transports import ImageSource, TransportOptions, open_source

from .context import Context, Stage
from .names import normalize_name, suggested_name

__all__ = ["Resolve", "Resolved"]


class Resolved(FrozenValue):
    """A source, the root descriptor it names, and the local name to record it under.

    ``source`` is the open transport (closed when the run ends): the next stage reads
    the image from it (neither compared nor shown).
    """

    __slots__ = ("name", "ref", "root", "source")
    _uncompared = _unshown = frozenset({"source"})
    ref: TransportRef
    root: Descriptor
    name: str
    source: ImageSource | None

    def __init__(
        self,
        ref: TransportRef,
        root: Descriptor,
        name: str = "",
        source: ImageSource | None = None,
    ) -> None:
        self._set(ref=ref, root=root, name=name, source=source)


class Resolve(Stage[TransportRef, Resolved]):
    """Open the source a TransportRef names and find its root descriptor.

    ``name`` (normalised) is what Record will call the image; without it the name comes
    from the source (see :func:`suggested_name`).
    """

    name = "resolve"

    def __init__(
        self,
        *,
        name: str | None = None,
        require_name: bool = False,
        options: TransportOptions | None = None,
    ) -> None:
        self.image_name = normalize_name(name) if name else ""
        self.require_name = require_name
        self.options = options

    def run(self, item: TransportRef, ctx: Context) -> Resolved:
        source = ctx.resources.enter_context(open_source(item, options=with_defaults(self.options)))
        root = source.resolve()
        ctx.emit(Event(EventKind.RESOLVED, root.digest, root.media_type, root.size, str(item)))
        name = self.image_name or suggested_name(item, root)
        if self.require_name and not name:
            # before any blob moves, rather than after the whole image has
            raise InvalidArgument(f"{item} names no image: give a name (--name)")
        return Resolved(item, root, name, source)
