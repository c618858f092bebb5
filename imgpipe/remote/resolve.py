"""Resolving a reference and fetching documents (manifests, indexes) from a repository.

``resolve`` asks ``HEAD manifests/<ref>`` first (the registry's digest, type and size,
no body) and falls back to ``GET`` when the answer is not enough (or GETs at once when
the caller reads the root next); what it had to GET is kept on the repository so that
``open_document`` does not fetch it twice. Mirrors are
tried in order; a mirror that fails passes to the next endpoint.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    NotFound,
    ResourceLimit,
    Unsupported,
)
from imgpipe.formats.manifest import MAX_DOCUMENT_SIZE, SCHEMA1_MESSAGE, parse_document
from imgpipe.formats.mediatype import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    MediaType,
)

from .http import read_limited
from .missing import missing_manifest
from .responses import MAX_ERROR_BODY, error_code, error_for, parse_digest, strip_params

if TYPE_CHECKING:
    import urllib3

    from .client import Repository
    from .hosts import Endpoint

__all__ = ["MANIFEST_ACCEPT", "check_document_size", "open_document", "resolve"]

#: What we accept for manifests: every image kind we parse; ``*/*`` last so artifacts of
#: other types still resolve (containerd sends the same list). Schema 1 is deliberately
#: absent: distribution then converts nothing and serves what it stores.
MANIFEST_ACCEPT: Final = ", ".join(
    [str(OCI_INDEX), str(OCI_MANIFEST), str(DOCKER_MANIFEST_LIST), str(DOCKER_MANIFEST), "*/*"]
)
_GENERIC_TYPES: Final = frozenset(
    {"", "application/json", "text/plain", "application/octet-stream"}
)


def resolve(repo: Repository, *, fetch: bool = False) -> Descriptor:
    """The root descriptor of ``repo.ref`` (by tag or digest): HEAD, then GET if needed.

    ``fetch``: GET at once, for a caller that reads the root next (a pull): one round
    trip instead of two, as skopeo does; the body is kept for ``open_document``.
    The digest is the registry's ``Docker-Content-Digest`` for a tag, checked against
    the body when it had to be fetched; for a digest reference a different digest is
    DigestMismatch. Raises NotFound, Unauthorized, Unavailable, Unsupported (schema 1,
    not a manifest), ResourceLimit (over MAX_DOCUMENT_SIZE), DigestMismatch.
    """
    return repo.each_endpoint(
        lambda ep: _resolve_at(repo, ep, fetch=fetch), f"{repo.what()}: no endpoint"
    )


def _resolve_at(repo: Repository, ep: Endpoint, *, fetch: bool) -> Descriptor:
    ref = str(repo.ref.digest) if repo.ref.digest is not None else repo.ref.tag
    shown = repo.what("@" + ref if repo.ref.digest else ":" + ref)
    if fetch:
        return _get_root(repo, ep, ref, shown)
    headers = {"Accept": MANIFEST_ACCEPT}
    resp = repo.request("HEAD", f"manifests/{ref}", ep=ep, headers=headers)
    if resp.status == 200:
        read_limited(resp, 0)
        mt = strip_params(resp.headers.get("Content-Type", ""))
        _refuse_schema1(mt, shown)
        dg_text = resp.headers.get("Docker-Content-Digest", "")
        length = resp.headers.get("Content-Length", "")
        if dg_text and length.isdigit() and mt not in _GENERIC_TYPES:
            size = int(length)
            check_document_size(size, shown)
            digest = parse_digest(dg_text, shown)
            repo.check_named(digest, f"{shown}: the registry says the manifest is {digest}")
            return Descriptor(MediaType(mt), digest, size)
    elif resp.status == 404:
        raise _not_found(repo, ep, resp, ref, shown, head=True)
    elif resp.status not in (400, 403, 405):
        # HEAD 405 (some registries), 403 (to surface the GET's error body): try GET
        raise error_for(resp, shown)
    else:
        read_limited(resp, 0)
    return _get_root(repo, ep, ref, shown)


def _get_root(repo: Repository, ep: Endpoint, ref: str, shown: str) -> Descriptor:
    resp = repo.request("GET", f"manifests/{ref}", ep=ep, headers={"Accept": MANIFEST_ACCEPT})
    if resp.status == 404:
        raise _not_found(repo, ep, resp, ref, shown, head=False)
    if resp.status != 200:
        raise error_for(resp, shown)
    mt = strip_params(resp.headers.get("Content-Type", ""))
    _refuse_schema1(mt, shown)
    length = resp.headers.get("Content-Length", "")
    if length.isdigit():
        check_document_size(int(length), shown)
    raw = read_limited(resp, MAX_DOCUMENT_SIZE)
    check_document_size(len(raw), shown)
    algorithm = repo.ref.digest.algorithm if repo.ref.digest else "sha256"
    digest = Digest.from_bytes(raw, algorithm)
    repo.check_named(digest, f"{shown}: the registry served a manifest that hashes to {digest}")
    header = resp.headers.get("Docker-Content-Digest", "")
    if header and repo.ref.digest is None:
        claimed = parse_digest(header, shown)
        if claimed.algorithm == digest.algorithm and claimed != digest:
            raise DigestMismatch(
                f"{shown}: Docker-Content-Digest {claimed} but the body hashes to {digest}",
                expected=str(claimed),
                actual=str(digest),
            )
    try:
        doc = parse_document(raw, mt or None)
    except Unsupported as e:
        raise Unsupported(f"{shown}: {e}") from None
    repo.keep_document(digest, raw)
    return Descriptor(MediaType(str(doc.media_type or mt)), digest, len(raw))


def _not_found(
    repo: Repository,
    ep: Endpoint,
    resp: urllib3.BaseHTTPResponse,
    ref: str,
    shown: str,
    *,
    head: bool,
) -> NotFound:
    """A 404 for the root: at the registry itself, which of repository and tag is missing
    (:func:`~imgpipe.remote.missing.missing_manifest`); at a mirror, as it was (the next
    endpoint is asked anyway)."""
    if ep.is_mirror:
        return NotFound(str(error_for(resp, f"{shown}: not found")))
    body = read_limited(resp, MAX_ERROR_BODY)
    # a HEAD answer has no body: missing_manifest GETs one for the code
    code = None if head else error_code(body)
    return missing_manifest(repo, ep, ref, shown, code=code)


def _refuse_schema1(mt: str, shown: str) -> None:
    if MediaType(mt).is_schema1():
        raise Unsupported(f"{shown}: {SCHEMA1_MESSAGE}")


def check_document_size(size: int, shown: str) -> None:
    """ResourceLimit for a manifest over MAX_DOCUMENT_SIZE (before reading it)."""
    if size > MAX_DOCUMENT_SIZE:
        raise ResourceLimit(
            f"{shown}: the manifest is {size} bytes; documents over {MAX_DOCUMENT_SIZE} "
            "bytes are refused"
        )


def open_document(repo: Repository, desc: Descriptor) -> BinaryIO:
    """The bytes of a manifest or index (at most MAX_DOCUMENT_SIZE), unverified."""
    raw = repo.take_document(desc.digest)
    if raw is not None:
        return io.BytesIO(raw)
    shown = repo.what("@" + str(desc.digest))
    check_document_size(desc.size, shown)

    def fetch(ep: Endpoint) -> BinaryIO:
        resp = repo.request(
            "GET",
            f"manifests/{desc.digest}",
            ep=ep,
            headers={"Accept": f"{desc.media_type}, {MANIFEST_ACCEPT}"},
        )
        if resp.status != 200:
            raise error_for(resp, shown)
        return io.BytesIO(read_limited(resp, MAX_DOCUMENT_SIZE))

    return repo.each_endpoint(fetch, shown)
