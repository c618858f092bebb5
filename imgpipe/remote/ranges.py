"""Part of a registry blob by HTTP Range, or a clear refusal: never the whole blob.

:class:`~imgpipe.remote.download.BlobReader` resumes with Range and, when a server
ignores it, reads from the start and drops what it has: right for a download, wrong for a
lazy reader that wants 200 bytes of a 2 GB layer. :func:`open_range` asks for exactly
``[offset, offset + length)`` and accepts only a 206 whose ``Content-Range`` says those
bytes; a 200 is closed unread and reported as RangeNotSupported, so the caller decides
(a lazy pull falls back to a full pull and says so).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from urllib3.exceptions import HTTPError

from imgpipe.formats.errors import (
    InvalidArgument,
    RangeNotSupported,
    SizeMismatch,
    Unavailable,
)

from .responses import error_for

if TYPE_CHECKING:
    import urllib3

    from imgpipe.formats.descriptor import Descriptor

    from .client import Repository
    from .hosts import Endpoint

__all__ = ["RangeStream", "open_range"]


class RangeStream(io.RawIOBase):
    """The body of one 206 answer: exactly ``length`` bytes, then end of stream.

    A body that ends early is Unavailable (the connection dropped); reading never goes
    past ``length`` whatever the server sends.
    """

    def __init__(self, resp: urllib3.BaseHTTPResponse, length: int, shown: str) -> None:
        self._resp = resp
        self._left = length
        self._shown = shown

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        want = min(len(b), self._left)
        try:
            data = self._resp.read1(want)
        except (HTTPError, OSError) as e:
            raise Unavailable(f"{self._shown}: the connection dropped: {e}") from None
        if not data:
            raise Unavailable(f"{self._shown}: the answer ended {self._left} bytes early")
        n = len(data)
        b[:n] = data
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            if self._left:
                self._resp.close()  # half read: not back to the pool
            else:
                self._resp.release_conn()
        super().close()


def _content_range(value: str) -> tuple[int, int, int | None] | None:
    """``bytes a-b/total`` -> (a, b, total or None for ``*``); None if it does not parse."""
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last), int(total) if total.isdigit() else None


def open_range(repo: Repository, desc: Descriptor, offset: int, length: int) -> RangeStream:
    """Bytes ``[offset, offset + length)`` of the blob ``desc`` names, unverified.

    RangeNotSupported when the registry answers with the whole blob (200) or with another
    range than the one asked for; SizeMismatch when it says the blob has another size
    than ``desc`` (or cannot serve the range, 416); the registry's own errors as
    :func:`error_for` words them (NotFound, Unauthorized, Unavailable...). Descriptor
    ``urls`` are not used: a lazy read asks the registry that holds the manifest.
    """
    if offset < 0 or length <= 0 or offset + length > desc.size:
        raise InvalidArgument(
            f"range {offset}+{length} is not inside blob {desc.digest} ({desc.size} bytes)"
        )
    shown = repo.what("@" + str(desc.digest))
    last = offset + length - 1
    headers = {"Accept-Encoding": "identity", "Range": f"bytes={offset}-{last}"}

    def attempt(ep: Endpoint) -> RangeStream:
        resp = repo.request("GET", f"blobs/{desc.digest}", ep=ep, headers=headers)
        if resp.status == 200:
            resp.close()  # unread: the whole blob is what we must not download
            raise RangeNotSupported(
                f"{shown}: the registry ignores HTTP Range (it answered 200 with the whole "
                f"blob, {desc.size} bytes); nothing was downloaded"
            )
        if resp.status == 416:
            resp.close()
            raise SizeMismatch(
                f"{shown}: the registry cannot serve bytes {offset}-{last} (HTTP 416): its "
                f"blob is shorter than the {desc.size} bytes the manifest says",
                expected=desc.size,
            )
        if resp.status != 206:
            raise error_for(resp, shown)
        got = _content_range(resp.headers.get("Content-Range", ""))
        if got is not None and got[2] is not None and got[2] != desc.size:
            resp.close()
            raise SizeMismatch(
                f"{shown}: the registry says the blob is {got[2]} bytes, not {desc.size}",
                expected=desc.size,
                actual=got[2],
            )
        if got is None or got[:2] != (offset, last):
            resp.close()
            raise RangeNotSupported(
                f"{shown}: asked for bytes {offset}-{last}, the registry answered "
                f"{resp.headers.get('Content-Range', 'no Content-Range')!r}"
            )
        return RangeStream(resp, length, shown)

    return repo.each_endpoint(attempt, shown)
