"""Pushing to a repository: blob existence, cross-repository mounts, uploads, manifests.

Every push goes to the registry itself (``repo.endpoints[-1]``): mirrors never take
pushes. An upload is a session: ``POST blobs/uploads/`` opens it (or a refused mount
did), ``PATCH`` sends bytes, ``PUT ?digest=`` closes it, and the registry checks digest
and size before the blob becomes visible. Upload URLs carry our token, so they are
followed only to the registry's own host.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, BinaryIO, Final
from urllib.parse import quote, urlencode, urljoin, urlsplit

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    SizeMismatch,
    Unavailable,
)
from imgpipe.processors.streams import PassThrough

from .http import read_limited
from .resolve import MANIFEST_ACCEPT
from .responses import MAX_ERROR_BODY, error_for, parse_digest

if TYPE_CHECKING:
    import urllib3

    from .client import Repository
    from .hosts import Endpoint

__all__ = [
    "CHUNK_THRESHOLD",
    "UPLOAD_ATTEMPTS",
    "UPLOAD_CHUNK_SIZE",
    "UPLOAD_READ_SIZE",
    "exists",
    "mount",
    "put_manifest",
    "upload_blob",
    "upload_stream",
]

#: Blobs up to this size are uploaded with one PUT; bigger ones in PATCH chunks, so a
#: registry (or proxy) with a request-size limit still takes them and progress is
#: acknowledged by the server along the way.
CHUNK_THRESHOLD: Final = 64 << 20
#: Bytes per PATCH of a chunked upload.
UPLOAD_CHUNK_SIZE: Final = 32 << 20
#: Read size for a streamed upload body (``upload_stream``): one chunked-encoding chunk
#: per read, large enough that per-chunk overhead is noise.
UPLOAD_READ_SIZE: Final = 1 << 20
#: Whole-upload attempts for one blob when the connection fails mid-upload (the stream
#: is rewound and a new upload session started: sessions cannot be resumed portably).
UPLOAD_ATTEMPTS: Final = 3
_OCTET: Final = {"Content-Type": "application/octet-stream"}
#: Seconds before the second and third PUT of a manifest the registry called
#: DIGEST_INVALID (see put_manifest).
_DIGEST_INVALID_RETRIES: Final = (0.2, 1.0)


class _Borrowed(PassThrough):
    """An upload body over the caller's stream: closing (or collecting) the body leaves
    that stream open, since the caller still owns it (a chunked upload reads one stream
    through a body per chunk, and a failed upload rewinds it for the next attempt)."""

    def close(self) -> None:
        super(PassThrough, self).close()


class _Limited(_Borrowed):
    """The next ``n`` bytes of a stream, as an upload body; SizeMismatch if it is short."""

    def __init__(self, stream: BinaryIO, n: int) -> None:
        super().__init__(stream)
        self._left = n

    def _seen(self, chunk: bytes | memoryview) -> None:
        self._left -= len(chunk)

    def _eof(self) -> None:
        if self._left > 0:
            raise SizeMismatch(f"upload source ended {self._left} bytes early")

    # the reads only stop at the limit; the hooks count and check
    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")[: max(self._left, 0)]
        return super().readinto(view) if view else 0

    def read(self, size: int | None = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        return super().read(want) if want > 0 else b""


class _Hashing(_Borrowed):
    """A stream as an upload body of unknown length: hashes and counts what is sent."""

    def __init__(self, stream: BinaryIO, algorithm: str) -> None:
        super().__init__(stream)
        self.digester = Digester(algorithm)
        self.size = 0
        self.eof = False

    def _seen(self, chunk: bytes | memoryview) -> None:
        self.digester.update(chunk)
        self.size += len(chunk)

    def _eof(self) -> None:
        self.eof = True

    def read(self, size: int | None = -1) -> bytes:
        # never "all of it": a streamed layer may be gigabytes
        return super().read(size if size is not None and size > 0 else UPLOAD_READ_SIZE)


def _push_endpoint(repo: Repository) -> Endpoint:
    return repo.endpoints[-1]  # the registry itself: mirrors never take pushes


def exists(repo: Repository, desc: Descriptor) -> bool:
    """Whether the registry has the blob (or, for documents, the manifest)."""
    kind = "manifests" if desc.media_type.is_index() or desc.media_type.is_manifest() else "blobs"
    resp = repo.request(
        "HEAD",
        f"{kind}/{desc.digest}",
        ep=_push_endpoint(repo),
        headers={"Accept": MANIFEST_ACCEPT} if kind == "manifests" else None,
    )
    read_limited(resp, 0)
    if resp.status == 200:
        return True
    if resp.status == 404:
        return False
    raise error_for(resp, repo.what("@" + str(desc.digest)))


def _upload_url(resp: urllib3.BaseHTTPResponse, base: str, shown: str) -> str:
    location = resp.headers.get("Location", "")
    read_limited(resp, MAX_ERROR_BODY)
    if not location:
        raise FailedPrecondition(f"{shown}: the registry gave no upload location")
    url = urljoin(base, location)
    if urlsplit(url).netloc != urlsplit(base).netloc:
        # Uploads carry our token: they go to the registry host only.
        raise FailedPrecondition(f"{shown}: the registry sent the upload to another host")
    return url


def _base(repo: Repository, ep: Endpoint) -> str:
    return f"{repo.client.schemes(ep)[0]}://{ep.host}/v2/{repo.name}/"


def _start_upload(repo: Repository, location: str | None, shown: str) -> str:
    """The session's URL: ``location`` (a refused mount opened it) or a new session."""
    if location is not None:
        return location
    ep = _push_endpoint(repo)
    resp = repo.request("POST", "blobs/uploads/", ep=ep)
    if resp.status != 202:
        raise error_for(resp, f"{shown}: starting an upload")
    return _upload_url(resp, _base(repo, ep), shown)


def _finish_upload(
    repo: Repository, location: str, digest: Digest, *, body: object, length: int, shown: str
) -> None:
    """``PUT <location>?digest=``: the last bytes (or none), and the registry's check."""
    url = location + ("&" if "?" in location else "?") + urlencode({"digest": str(digest)})
    resp = repo.request(
        "PUT",
        "",
        ep=_push_endpoint(repo),
        url=url,
        headers={**_OCTET, "Content-Length": str(length)},
        body=body,
    )
    if resp.status not in (201, 204):
        raise error_for(resp, f"{shown}: finishing the upload")
    read_limited(resp, MAX_ERROR_BODY)


def mount(repo: Repository, desc: Descriptor, source_repo: str) -> str | None:
    """Ask the registry to mount ``desc`` from ``source_repo`` (same registry).

    Returns None when it mounted (201); otherwise the upload URL the registry opened
    instead (202), for :func:`upload_blob`'s ``location``.
    """
    ep = _push_endpoint(repo)
    shown = repo.what("@" + str(desc.digest))
    resp = repo.request(
        "POST",
        "blobs/uploads/",
        ep=ep,
        query={"mount": str(desc.digest), "from": source_repo},
        scopes=(*repo.scopes, f"repository:{source_repo}:pull"),
    )
    if resp.status == 201:
        read_limited(resp, MAX_ERROR_BODY)
        return None
    if resp.status == 202:
        return _upload_url(resp, _base(repo, ep), shown)
    raise error_for(resp, f"{shown}: mount from {source_repo}")


def upload_blob(
    repo: Repository,
    desc: Descriptor,
    stream: BinaryIO,
    *,
    location: str | None = None,
    chunk_threshold: int = CHUNK_THRESHOLD,
    chunk_size: int = UPLOAD_CHUNK_SIZE,
) -> None:
    """Upload ``desc``'s bytes from ``stream``: one PUT up to ``chunk_threshold``
    bytes, else PATCH chunks of ``chunk_size`` and a closing PUT.

    The registry checks digest and size before the blob becomes visible
    (DigestMismatch / SizeMismatch otherwise). If the connection fails mid-way and
    ``stream`` is seekable, the upload is restarted from the start in a new session,
    at most UPLOAD_ATTEMPTS times.
    """
    if chunk_size < 1:
        raise InvalidArgument(f"chunk_size must be positive, not {chunk_size}")
    shown = repo.what("@" + str(desc.digest))
    start = stream.tell() if stream.seekable() else 0
    for attempt in range(UPLOAD_ATTEMPTS):
        try:
            _upload_once(
                repo,
                desc,
                stream,
                location=location,
                chunk_threshold=chunk_threshold,
                chunk_size=chunk_size,
                shown=shown,
            )
            return
        except Unavailable:
            if attempt + 1 == UPLOAD_ATTEMPTS or not stream.seekable():
                raise
            stream.seek(start)
            location = None  # that session is in an unknown state


def _upload_once(
    repo: Repository,
    desc: Descriptor,
    stream: BinaryIO,
    *,
    location: str | None,
    chunk_threshold: int,
    chunk_size: int,
    shown: str,
) -> None:
    location = _start_upload(repo, location, shown)
    if desc.size <= chunk_threshold:
        _finish_upload(
            repo,
            location,
            desc.digest,
            body=_Limited(stream, desc.size),
            length=desc.size,
            shown=shown,
        )
        return
    offset = 0
    while offset < desc.size:
        n = min(chunk_size, desc.size - offset)
        resp = repo.request(
            "PATCH",
            "",
            ep=_push_endpoint(repo),
            url=location,
            headers={
                **_OCTET,
                "Content-Length": str(n),
                "Content-Range": f"{offset}-{offset + n - 1}",
            },
            body=_Limited(stream, n),
        )
        if resp.status != 202:
            raise error_for(resp, f"{shown}: uploading bytes {offset}-{offset + n - 1}")
        location = _upload_url(resp, location, shown)
        offset += n
    _finish_upload(repo, location, desc.digest, body=b"", length=0, shown=shown)


def upload_stream(
    repo: Repository, stream: BinaryIO, *, algorithm: str = "sha256", location: str | None = None
) -> tuple[Digest, int]:
    """Upload a blob whose digest and size are known only once it has been read.

    The distribution API allows it: open a session, send the bytes in one PATCH
    (chunked transfer encoding, hashed on the way), then close the session with
    ``PUT ?digest=`` naming the digest that came out. Nothing is spooled; the caller
    learns ``(digest, size)`` before the blob becomes visible, and the registry
    checks the digest itself. ``location`` reuses a session a refused mount opened.

    Not retried: the stream cannot be replayed (the caller re-runs its producer).
    Raises Unavailable (connection, 5xx), Unauthorized, DigestMismatch (the registry
    disagrees with the digest), and what reading ``stream`` raises.
    """
    shown = repo.what(" (streamed upload)")
    location = _start_upload(repo, location, shown)
    body = _Hashing(stream, algorithm)
    resp = repo.request(
        "PATCH",
        "",
        ep=_push_endpoint(repo),
        url=location,
        headers=_OCTET,
        body=body,  # no Content-Length: urllib3 sends it chunked
    )
    if resp.status != 202:
        raise error_for(resp, f"{shown}: uploading")
    location = _upload_url(resp, location, shown)
    if not body.eof:
        raise Unavailable(f"{shown}: the registry answered before the upload ended")
    digest, size = body.digester.digest(), body.size
    _finish_upload(repo, location, digest, body=b"", length=0, shown=repo.what("@" + str(digest)))
    return digest, size


def put_manifest(repo: Repository, reference: str, raw: bytes, media_type: str) -> Digest:
    """PUT a manifest or index under a tag or its digest; returns its digest.

    Raises DigestMismatch if the registry reports another digest for the bytes.
    """
    digest = Digest.from_bytes(raw)
    shown = repo.what(("@" if ":" in reference else ":") + reference)
    for delay in (*_DIGEST_INVALID_RETRIES, None):
        resp = repo.request(
            "PUT",
            f"manifests/{quote(reference, safe=':')}",
            ep=_push_endpoint(repo),
            headers={"Content-Type": media_type, "Content-Length": str(len(raw))},
            body=raw,
        )
        if resp.status in (200, 201, 202):
            break
        err = error_for(resp, shown)
        ours = ":" not in reference or reference == str(digest)
        if not isinstance(err, DigestMismatch) or not ours or delay is None:
            raise err
        # The bytes hash to the digest we name, so DIGEST_INVALID is the registry's race:
        # distribution's filesystem driver rewrites a blob's link file in place (truncate,
        # write) when another push in the repository commits the same blob, and the
        # manifest's check of its references reads it empty ("invalid checksum digest
        # format"). Concurrent conversions into one repository meet it; a retry passes.
        time.sleep(delay)
    claimed = resp.headers.get("Docker-Content-Digest", "")
    read_limited(resp, MAX_ERROR_BODY)
    if claimed and parse_digest(claimed, shown) != digest:
        raise DigestMismatch(
            f"{shown}: the registry stored the manifest as {claimed.strip()}, not {digest}"
        )
    return digest
