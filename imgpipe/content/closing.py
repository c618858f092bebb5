"""``Closing``: the one ``with``-block shape for objects that hold something to release.

The store, its ingest writers and the transports above it all hold a descriptor or a
lock and are used as ``with obj: ...``; leaving the block calls ``close()``. It lives in
content because content is the lowest package all of them import.
"""

from __future__ import annotations

from typing import Self

__all__ = ["Closing"]


class Closing:
    """A mixin: ``with`` returns the object itself and ``close()``s it on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
