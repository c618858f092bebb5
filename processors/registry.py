"""Which processors turn one media type into another, and chains of them.

Lookup order, as containerd's (user-configured stream processors win over the built-in
compression handler):

1. **configured**: what the caller passes (``[[processors]]`` from the config file);
2. **entry points**: third-party Python processors in the ``imgpipe.processors``
   entry-point group, loaded once, on the first lookup that the configured ones do not
   answer (nothing is imported at ``import imgpipe`` time);
3. **built-ins**: decompress (gzip/zstd/plain, by the bytes' magic), ocicrypt decrypt;
   gzip and zstd compress, ocicrypt encrypt.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."imgpipe.processors"]
    my-codec = "my_package.processors:MyCodec"   # a Processor, or a no-argument factory

Decoding follows containerd's loop: from the layer's media type, take the first
processor that accepts the current type, move to its output type, until the OCI tar
type is reached. Encoding searches (breadth first, shortest) for a path from one type to
another through the encoders: ``tar -> tar+zstd -> tar+zstd+encrypted``.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidArgument
from imgpipe.formats.mediatype import OCI_LAYER, MediaType

from .base import Direction, NoProcessor, Processor, ProcessorParams
from .crypt import Decrypt, Encrypt
from .gzip import GzipCompress
from .sniff import Decompress
from .streams import PassThrough
from .zstd import ZstdCompress

__all__ = [
    "ENTRY_POINT_GROUP",
    "MAX_CHAIN_LENGTH",
    "ChainStream",
    "ProcessorRegistry",
    "builtin_processors",
    "open_chain",
]

#: The entry-point group third-party processors register under.
ENTRY_POINT_GROUP: Final = "imgpipe.processors"
#: The longest chain resolved. Real chains are 1-3 steps (decrypt, decompress); a longer
#: one means processors that feed each other in a loop.
MAX_CHAIN_LENGTH: Final = 8


def builtin_processors() -> list[Processor]:
    """The built-in processors, decoders and encoders, in lookup order."""
    return [Decrypt(), Decompress(), GzipCompress(), ZstdCompress(), Encrypt()]


def _group_may_be_declared(group: str) -> bool:
    """Whether an installed distribution may declare entry points in ``group``.

    A look at the files ``importlib.metadata`` would read (``entry_points.txt`` of every
    ``*.dist-info`` / ``*.egg-info`` in the ``sys.path`` directories; ~1.5 ms), so that
    it, and the ``email`` package it loads, are imported only when one names the group
    (~25-35 ms on a converting or unpacking verb otherwise). Errs towards True: a file
    that mentions the group anywhere, a ``sys.path`` entry that is not a directory (a
    zip), an egg, an unreadable file, or a meta-path finder of its own that can list
    distributions all send the caller to ``importlib.metadata``, which decides.
    """
    from importlib.machinery import PathFinder  # noqa: PLC0415 (loaded at start-up)

    for finder in sys.meta_path:
        if finder is not PathFinder and getattr(finder, "find_distributions", None):
            return True
    needle = group.encode()
    for entry in sys.path:
        if not isinstance(entry, str) or entry.lower().endswith(".egg"):
            return True  # bytes or a path object on sys.path, an egg: not ours to judge
        path = entry or "."
        try:
            names = os.listdir(path)
        except NotADirectoryError:
            return True  # a zip: importlib.metadata reads inside it
        except OSError:
            continue  # missing or unreadable: importlib.metadata skips it too
        for name in names:
            low = name.lower()
            if low.endswith(".egg"):
                return True
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(path, name, "entry_points.txt"), "rb") as f:
                    if needle in f.read():
                        return True
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                return True
    return False


def _load_entry_points() -> list[Processor]:
    if not _group_may_be_declared(ENTRY_POINT_GROUP):
        return []
    # importlib.metadata scans site-packages: paid only when a plugin may be there
    from importlib.metadata import entry_points  # noqa: PLC0415

    found: list[Processor] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            if isinstance(obj, type) or (not isinstance(obj, Processor) and callable(obj)):
                obj = obj()
        except Exception as e:
            raise InvalidArgument(
                f"processor entry point {ep.name} ({ep.value}) failed to load: {e}"
            ) from e
        if not isinstance(obj, Processor) or obj.direction not in ("decode", "encode"):
            raise InvalidArgument(
                f"processor entry point {ep.name} ({ep.value}) is not a Processor"
            )
        found.append(obj)
    return found


class ProcessorRegistry:
    """Processors by media type: configured first, then entry points, then built-ins.

    ``entry_points=False`` leaves third-party plugins out (tests, locked-down setups);
    ``builtins`` replaces the built-in list. Thread-safe for lookups after construction
    (the lazy entry-point load is idempotent).
    """

    def __init__(
        self,
        configured: Iterable[Processor] = (),
        *,
        entry_points: bool = True,
        builtins: Sequence[Processor] | None = None,
    ) -> None:
        self._configured = list(configured)
        self._use_entry_points = entry_points
        self._plugins: list[Processor] | None = None if entry_points else []
        self._builtins = list(builtins) if builtins is not None else builtin_processors()

    def _plugins_loaded(self) -> list[Processor]:
        if self._plugins is None:
            self._plugins = _load_entry_points()
        return self._plugins

    def processors(self, direction: Direction) -> list[Processor]:
        """Every processor of one direction, in lookup order (loads entry points)."""
        layers = (self._configured, self._plugins_loaded(), self._builtins)
        return [p for layer in layers for p in layer if p.direction == direction]

    def find(self, media_type: str, direction: Direction = "decode") -> Processor:
        """The first processor of ``direction`` that accepts ``media_type``.

        Raises NoProcessor naming the media type.
        """
        mt = MediaType(media_type)
        for p in self._configured:
            if p.direction == direction and p.accepts(mt):
                return p
        for p in (*self._plugins_loaded(), *self._builtins):
            if p.direction == direction and p.accepts(mt):
                return p
        raise NoProcessor(f"no processor to {direction} media type {mt}", media_type=mt)

    def decoder_chain(self, media_type: str) -> list[Processor]:
        """The decoders from ``media_type`` to the OCI tar type, in order.

        The OCI tar type itself gets the built-in decompressor (a pass-through unless
        the bytes are compressed after all). Raises NoProcessor for a type nothing
        accepts (naming it) or a chain that loops or grows past MAX_CHAIN_LENGTH.
        """
        current = MediaType(media_type)
        chain: list[Processor] = []
        seen: set[tuple[int, str]] = set()
        while not (chain and current.base == OCI_LAYER):
            if len(chain) >= MAX_CHAIN_LENGTH:
                raise NoProcessor(
                    f"decoding {media_type}: no tar after {MAX_CHAIN_LENGTH} processors",
                    media_type=media_type,
                )
            p = self.find(current, "decode")
            if (id(p), current.base) in seen:
                raise NoProcessor(
                    f"decoding {media_type}: processors loop at {current}", media_type=media_type
                )
            seen.add((id(p), current.base))
            chain.append(p)
            current = p.output_type(current)
        return chain

    def encoder_chain(self, from_type: str, to_type: str) -> list[Processor]:
        """The shortest chain of encoders from ``from_type`` to ``to_type``.

        An empty list when the types are equal. Raises NoProcessor when no chain of at
        most MAX_CHAIN_LENGTH encoders gets there.
        """
        start, goal = MediaType(from_type), MediaType(to_type).base
        if start.base == goal:
            return []
        encoders = self.processors("encode")
        queue: deque[tuple[MediaType, list[Processor]]] = deque([(start, [])])
        seen = {start.base}
        while queue:
            current, path = queue.popleft()
            if len(path) >= MAX_CHAIN_LENGTH:
                continue
            for p in encoders:
                if not p.accepts(current):
                    continue
                nxt = p.output_type(current)
                if nxt.base == goal:
                    return [*path, p]
                if nxt.base not in seen:
                    seen.add(nxt.base)
                    queue.append((nxt, [*path, p]))
        raise NoProcessor(f"no processors encode {from_type} as {to_type}", media_type=to_type)

    def open_decoded(
        self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams | None = None
    ) -> ChainStream:
        """``stream`` (the blob of ``desc``) decoded to the OCI tar. Owns ``stream``."""
        try:
            chain = self.decoder_chain(desc.media_type)
        except BaseException:
            stream.close()
            raise
        return open_chain(stream, desc, chain, params)

    def open_encoded(
        self,
        stream: BinaryIO,
        desc: Descriptor,
        to_type: str,
        params: ProcessorParams | None = None,
    ) -> ChainStream:
        """``stream`` (of ``desc.media_type``) encoded as ``to_type``. Owns ``stream``.

        After EOF, ``annotations()`` holds what the new descriptor needs (ocicrypt).
        """
        try:
            chain = self.encoder_chain(desc.media_type, to_type)
        except BaseException:
            stream.close()
            raise
        return open_chain(stream, desc, chain, params)


class ChainStream(PassThrough):
    """The end of a chain of processed streams; ``annotations()`` merges every step's.

    ``media_type`` is the type of the output. Closing it closes every step and the
    original stream.
    """

    def __init__(self, steps: Sequence[Any], media_type: MediaType) -> None:
        super().__init__(steps[-1])
        self._steps = list(steps)
        self.media_type = media_type

    def annotations(self) -> Mapping[str, str]:
        merged: dict[str, str] = {}
        for step in self._steps:
            get = getattr(step, "annotations", None)
            if get is not None:
                merged.update(get())
        return merged


def open_chain(
    stream: BinaryIO,
    desc: Descriptor,
    chain: Sequence[Processor],
    params: ProcessorParams | None = None,
) -> ChainStream:
    """Compose ``chain`` over ``stream``; each step sees ``desc`` with its input type.

    Owns ``stream``: on an error while opening a step, everything opened is closed.
    An empty chain passes the stream through.
    """
    params = params if params is not None else ProcessorParams()
    current: Any = stream
    mt = desc.media_type
    steps: list[Any] = [stream]
    try:
        for p in chain:
            step_desc = desc if mt == desc.media_type else desc.replace(media_type=mt)
            current = p.open(current, step_desc, params)
            steps.append(current)
            mt = p.output_type(mt)
    except BaseException:
        current.close()
        raise
    return ChainStream(steps[1:] or steps, mt)
