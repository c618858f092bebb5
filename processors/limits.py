"""Bounds on decompression, so that a decompression bomb is an error and not a full disk.

Every decoder that can expand its input (gzip, zstd, an external binary) wraps its
output in a :class:`BoundedReader`, which counts the bytes that came in (through a
:class:`CountingReader` on the input) and the bytes that go out, and raises
:class:`~imgpipe.formats.errors.ResourceLimit` as soon as either bound is crossed:

- ``max_decompressed_size``: the output of one processor may not exceed it;
- ``max_ratio``: output / input may not exceed it, once the output is past
  ``ratio_floor`` (small inputs expand by huge ratios legitimately: an empty tar is
  10 KiB of zeros that gzip turns into about 40 bytes).

The check runs after each chunk, so at most one chunk (1 MiB) past a bound is ever
produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from imgpipe.formats._record import FrozenValue
from imgpipe.formats.errors import InvalidArgument, ResourceLimit

from .streams import PassThrough, Readable

__all__ = [
    "MAX_DECOMPRESSED_SIZE",
    "MAX_RATIO",
    "RATIO_FLOOR",
    "BoundedReader",
    "CountingReader",
    "Limits",
]

#: The largest output one decoder may produce. Real layers top out in the tens of GB
#: (CUDA and ML images); 64 GiB leaves room for those and still stops a bomb long before
#: it fills a typical disk.
MAX_DECOMPRESSED_SIZE: Final = 64 << 30
#: The largest output/input ratio. Text-like tars compress 3-10:1; a tar with a large
#: all-zero file (sparse files written out, such as /var/log/lastlog) reaches a few
#: hundred. Deflate cannot exceed about 1032:1, so for gzip this catches only streams
#: that are nothing but zeros; zstd reaches 30000:1 and more, and that is where the ratio
#: bound matters.
MAX_RATIO: Final = 1000
#: The ratio is checked only once this much output was produced: below it no disk is
#: at risk, and tiny layers legitimately have ratios far beyond MAX_RATIO.
RATIO_FLOOR: Final = 1 << 30


class Limits(FrozenValue):
    """Decompression bounds; see the module docstring. Zero disables a bound. (A
    hand-written value class, not a dataclass: every unpack and conversion defines it.)"""

    __slots__ = ("max_decompressed_size", "max_ratio", "ratio_floor")
    max_decompressed_size: int
    max_ratio: int
    ratio_floor: int

    def __init__(
        self,
        max_decompressed_size: int = MAX_DECOMPRESSED_SIZE,
        max_ratio: int = MAX_RATIO,
        ratio_floor: int = RATIO_FLOOR,
    ) -> None:
        values = {
            "max_decompressed_size": max_decompressed_size,
            "max_ratio": max_ratio,
            "ratio_floor": ratio_floor,
        }
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"limits: {name} must be a non-negative integer")
        self._set(**values)

    def check(self, produced: int, consumed: int, *, what: str) -> None:
        """Raise ResourceLimit if ``produced`` output bytes from ``consumed`` input bytes
        cross a bound; ``what`` names the stream in the message."""
        if self.max_decompressed_size and produced > self.max_decompressed_size:
            raise ResourceLimit(
                f"{what}: decompressed size exceeds the limit of {self.max_decompressed_size} bytes"
            )
        if (
            self.max_ratio
            and produced > self.ratio_floor
            and produced > self.max_ratio * max(consumed, 1)
        ):
            raise ResourceLimit(
                f"{what}: decompression ratio exceeds {self.max_ratio}:1 "
                f"({produced} bytes from {consumed})"
            )


class CountingReader(PassThrough):
    """``raw`` unchanged, with ``count``: the bytes read through it so far. Closes ``raw``.

    ``count`` may be read from another thread (an external processor's feeder reads in
    one thread while the consumer checks bounds in another); reading an int is atomic.
    """

    def __init__(self, raw: Readable) -> None:
        super().__init__(raw)
        self.count = 0

    def _seen(self, chunk: bytes | memoryview) -> None:
        self.count += len(chunk)


class BoundedReader(PassThrough):
    """The output of a decoder, checked against ``limits`` after every read.

    ``counter`` is the CountingReader the decoder reads its input through. Closing this
    closes ``inner``; ``annotations()`` passes through. Raises ResourceLimit from
    ``read`` when a bound is crossed.
    """

    def __init__(
        self, inner: Readable, counter: CountingReader, limits: Limits, *, what: str
    ) -> None:
        super().__init__(inner)
        self._counter = counter
        self._limits = limits
        self._what = what
        self._produced = 0

    def _seen(self, chunk: bytes | memoryview) -> None:
        self._produced += len(chunk)
        self._limits.check(self._produced, self._counter.count, what=self._what)

    def readall(self) -> bytes:
        # a whole-stream read is bounded too: chunk by chunk, never one unbounded read
        return b"".join(iter(lambda: self.read(_CHUNK), b""))

    def annotations(self) -> Mapping[str, str]:
        inner_annotations = getattr(self._raw, "annotations", None)
        return dict(inner_annotations()) if inner_annotations else {}


_CHUNK: Final = 1 << 20
