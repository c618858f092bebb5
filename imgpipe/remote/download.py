"""Blob downloads: a registry blob as a seekable stream that resumes after a drop.

The reader sends nothing until the first read; it never verifies (the caller reads it
through :func:`imgpipe.content.verify.open_verified`).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from urllib3.exceptions import HTTPError

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
    Unsupported,
)

from .http import is_retryable, redact_url
from .responses import error_for

if TYPE_CHECKING:
    import urllib3

    from .client import Repository

__all__ = ["MAX_RESUMES", "BlobReader"]

#: Reconnections in a row without a byte of progress before a blob download gives up
#: (containerd's httpReadSeeker allows 3); progress resets the count.
MAX_RESUMES: Final = 3


class BlobReader(io.RawIOBase):
    """A blob from a registry as a seekable stream that survives dropped connections.

    The GET is sent on the first read. ``seek(n)`` only moves the offset; the next read
    asks for ``Range: bytes=n-``. A connection that drops or stalls mid-blob is reopened
    at the current offset, at most :data:`MAX_RESUMES` times in a row without progress.
    A server that ignores Range (200 instead of 206) is read from the start and the
    first ``n`` bytes discarded. Descriptor ``urls`` are tried first, without
    credentials (CVE-2020-15157), then the registry. Bytes are not verified here.
    """

    def __init__(self, repo: Repository, desc: Descriptor) -> None:
        self._repo = repo
        self._desc = desc
        self._pos = 0
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._shown = repo.what("@" + str(desc.digest))
        self.reconnects = 0  # for tests and statistics

    def __repr__(self) -> str:
        return f"BlobReader({self._shown!r}, offset={self._pos})"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._desc.size + offset
        else:
            raise InvalidArgument(f"invalid whence {whence}")
        if pos < 0:
            raise InvalidArgument(f"negative seek position {pos}")
        if pos != self._pos:
            self._drop()
            self._pos = pos
        return self._pos

    def close(self) -> None:
        self._drop()
        super().close()

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()  # not back to the pool: its body is half read
            self._resp = None

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        raise Unsupported("BlobReader.readall: read blobs in chunks")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        failures = 0
        while True:
            if self._resp is None:
                if self._pos >= self._desc.size:
                    return b""  # nothing left to ask for (a Range here would be 416)
                self._resp = self._open()
            data, error = self._read_some(self._resp, size)
            if data:
                self._pos += len(data)
                if error is not None:
                    self._drop()  # the next read reconnects at the new offset
                return data
            if error is None:
                return b""  # end of the body
            self._drop()
            failures += 1
            if failures > MAX_RESUMES or not is_retryable(error=error):
                raise Unavailable(
                    f"{self._shown}: the connection dropped at byte {self._pos} and "
                    f"did not recover after {failures} attempts"
                ) from None
            self.reconnects += 1

    @staticmethod
    def _read_some(resp: urllib3.BaseHTTPResponse, size: int) -> tuple[bytes, BaseException | None]:
        """Up to ``size`` bytes, and the error that cut them short, if any.

        ``read1`` is used so that bytes received before a connection drops are kept (a
        plain ``read(size)`` loses them): a resume then starts exactly where the data
        stopped.
        """
        try:
            first = resp.read1(size)
        except (HTTPError, OSError) as e:
            return b"", e
        if len(first) == size or not first:
            return first, None
        buf = bytearray(first)
        error: BaseException | None = None
        while len(buf) < size:
            try:
                chunk = resp.read1(size - len(buf))
            except (HTTPError, OSError) as e:
                error = e
                break
            if not chunk:
                break
            buf += chunk
        return bytes(buf), error

    def _open(self) -> urllib3.BaseHTTPResponse:
        headers = {"Accept-Encoding": "identity"}
        if self._pos:
            headers["Range"] = f"bytes={self._pos}-"
        for url in self._desc.urls:
            if urlsplit(url).scheme not in ("http", "https"):
                continue
            try:
                # Foreign URLs get no registry credentials and no registry CA.
                resp = self._repo.client.http.send("GET", url, headers=headers)
                return self._accept(resp, redact_url(url))
            except (NotFound, Unavailable, Unauthorized, FailedPrecondition):
                continue  # a foreign URL that fails: the next one, then the registry
        return self._repo.each_endpoint(
            lambda ep: self._accept(
                self._repo.request("GET", f"blobs/{self._desc.digest}", ep=ep, headers=headers),
                self._shown,
            ),
            self._shown,
        )

    def _accept(self, resp: urllib3.BaseHTTPResponse, shown: str) -> urllib3.BaseHTTPResponse:
        if resp.status == 206:
            start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start.strip() != str(self._pos):
                resp.close()
                raise Unavailable(f"{shown}: asked for bytes from {self._pos}, got {start}")
            return resp
        if resp.status == 200:
            if self._pos:
                self._skip(resp, self._pos, shown)  # Range ignored: drop what we have
            return resp
        raise error_for(resp, shown)

    @staticmethod
    def _skip(resp: urllib3.BaseHTTPResponse, n: int, shown: str) -> None:
        while n:
            chunk = resp.read(min(n, 1 << 20))
            if not chunk:
                resp.close()
                raise Unavailable(f"{shown}: the body ended while skipping to the resume offset")
            n -= len(chunk)
