"""The distribution-API v2 client: resolve, fetch and push against one repository.

::

    client = RegistryClient(TransportOptions())
    repo = client.repository(parse_reference("127.0.0.1:5000/app:1"))
    root = repo.resolve()                       # HEAD (then GET) manifests/<tag>
    with repo.open_blob(layer) as f: ...        # streamed, seekable, resumes by Range
    repo.upload_blob(desc, stream)              # monolithic PUT or chunked PATCH
    repo.put_manifest("1", raw, media_type)

Each request goes to the repository's endpoints in order (mirrors first for pulls, see
:mod:`imgpipe.remote.hosts`), with the scheme chosen by :func:`~imgpipe.remote.hosts.schemes_for`
(an https endpoint that turns out to speak plain HTTP falls back where that is allowed),
authorization from :class:`~imgpipe.remote.auth.Authorizer` (one retry on 401), and
transport retries from :class:`~imgpipe.remote.http.HttpClient`.

How registry answers become errors (one line naming registry and repository; never a
token or a signed URL):

=================================  =========================================
401, 403 / DENIED, UNAUTHORIZED    Unauthorized
404 / *_UNKNOWN                    NotFound
400 DIGEST_INVALID                 DigestMismatch
400 SIZE_INVALID                   SizeMismatch
413                                ResourceLimit
405 / UNSUPPORTED                  Unsupported
408, 429, 5xx after retries        Unavailable
no connection after retries        Unavailable
other 4xx                          FailedPrecondition
=================================  =========================================
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO, Final, cast
from urllib.parse import quote, urlencode, urljoin, urlsplit

from urllib3.exceptions import HTTPError

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest, Digester
from imgpipe.formats.errors import (
    DigestMismatch,
    FailedPrecondition,
    ImgpipeError,
    InvalidArgument,
    InvalidDigest,
    NotFound,
    ResourceLimit,
    SizeMismatch,
    Unauthorized,
    Unavailable,
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
from imgpipe.formats.reference import Reference

from .auth import Authorizer
from .credentials import Credentials
from .credentials import lookup as lookup_credentials
from .hosts import Endpoint, RegistryConfig, load_registry_config
from .http import HttpClient, NotTLS, is_retryable, read_limited, redact_url, speaks_tls
from .options import TransportOptions

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "CHUNK_THRESHOLD",
    "MANIFEST_ACCEPT",
    "MAX_RESUMES",
    "UPLOAD_CHUNK_SIZE",
    "UPLOAD_READ_SIZE",
    "BlobReader",
    "RegistryClient",
    "Repository",
]

#: What we accept for manifests: every image kind we parse; ``*/*`` last so artifacts of
#: other types still resolve (containerd sends the same list). Schema 1 is deliberately
#: absent: distribution then converts nothing and serves what it stores.
MANIFEST_ACCEPT: Final = ", ".join(
    [str(OCI_INDEX), str(OCI_MANIFEST), str(DOCKER_MANIFEST_LIST), str(DOCKER_MANIFEST), "*/*"]
)
#: Blobs up to this size are uploaded with one PUT; bigger ones in PATCH chunks, so a
#: registry (or proxy) with a request-size limit still takes them and progress is
#: acknowledged by the server along the way.
CHUNK_THRESHOLD: Final = 64 << 20
#: Bytes per PATCH of a chunked upload.
UPLOAD_CHUNK_SIZE: Final = 32 << 20
#: Read size for a streamed upload body (``upload_stream``): one chunked-encoding chunk
#: per read, large enough that per-chunk overhead is noise.
UPLOAD_READ_SIZE: Final = 1 << 20
#: Reconnections in a row without a byte of progress before a blob download gives up
#: (containerd's httpReadSeeker allows 3); progress resets the count.
MAX_RESUMES: Final = 3
#: Whole-upload attempts for one blob when the connection fails mid-upload (the stream
#: is rewound and a new upload session started: sessions cannot be resumed portably).
UPLOAD_ATTEMPTS: Final = 3
#: Registry error bodies are small JSON; we read at most this much of one.
_MAX_ERROR_BODY: Final = 64 << 10
_GENERIC_TYPES: Final = frozenset(
    {"", "application/json", "text/plain", "application/octet-stream"}
)


def _ocierrors(body: bytes) -> tuple[str, str]:
    """The first ``(code, message)`` of an OCI error body, or empty strings."""
    try:
        obj = json.loads(body)
        first = obj["errors"][0]
        code, msg = str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""
    return code[:64], " ".join(msg.split())[:200]


def _error_for(resp: urllib3.BaseHTTPResponse, what: str) -> ImgpipeError:
    """The error class for a failed answer, with a one-line message (reads the body)."""
    status = resp.status
    code, msg = _ocierrors(read_limited(resp, _MAX_ERROR_BODY))
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {msg}" if msg else "")
    text = f"{what}: {detail}"
    if status in (401, 403) or code in ("DENIED", "UNAUTHORIZED"):
        return Unauthorized(text)
    if status == 404 or code.endswith("_UNKNOWN") or code == "NAME_UNKNOWN":
        return NotFound(text)
    if code == "DIGEST_INVALID":
        return DigestMismatch(text)
    if code == "SIZE_INVALID":
        return SizeMismatch(text)
    if status == 413:
        return ResourceLimit(text)
    if status == 405 or code == "UNSUPPORTED":
        return Unsupported(text)
    if is_retryable(status=status) or status >= 500:
        return Unavailable(text)
    return FailedPrecondition(text)


def _strip_params(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class RegistryClient:
    """Talks to registries for one pull or push; thread-safe; close when done.

    ``credentials`` overrides the credential lookup (host -> Credentials or None); by
    default it is :func:`imgpipe.remote.credentials.lookup` with ``options.auth_file``.
    ``config`` overrides reading ``options.registry_config``.
    """

    def __init__(
        self,
        options: TransportOptions | None = None,
        *,
        config: RegistryConfig | None = None,
        credentials: object = None,
        http: HttpClient | None = None,
    ) -> None:
        self.options = options or TransportOptions()
        self.config = (
            config if config is not None else load_registry_config(self.options.registry_config)
        )
        self.http = http or HttpClient(user_agent=self.options.user_agent)
        lookup = credentials if callable(credentials) else self._lookup_credentials
        self.auth = Authorizer(self.http, lookup)
        self._schemes: dict[str, str] = {}  # host -> scheme that worked
        self._lock = threading.Lock()

    def _lookup_credentials(self, host: str) -> Credentials | None:
        return lookup_credentials(host, auth_file=self.options.auth_file)

    def __repr__(self) -> str:
        return f"RegistryClient(config={self.config.path or None!r})"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def repository(self, ref: Reference, *, push: bool = False) -> Repository:
        """The repository ``ref`` names; ``push`` asks for push scope and no mirrors."""
        endpoints = self.config.endpoints(
            ref.domain, push=push, plain_http=self.options.plain_http, tls_ca=self.options.tls_ca
        )
        return Repository(self, ref, endpoints, push=push)

    # -- scheme choice ---------------------------------------------------------------------

    def schemes(self, ep: Endpoint) -> tuple[str, ...]:
        with self._lock:
            known = self._schemes.get(ep.host)
        if known:
            return (known,)
        if ep.schemes == ("https", "http") and not speaks_tls(ep.host):
            # A plain-HTTP registry on loopback (or marked insecure): found by a bare
            # handshake, so the HTTPS attempt and its CA bundle (~30 ms a pull) are skipped.
            self.remember_scheme(ep.host, "http")
            return ("http",)
        return ep.schemes

    def remember_scheme(self, host: str, scheme: str) -> None:
        with self._lock:
            self._schemes[host] = scheme


class Repository:
    """One repository on one registry (through its endpoints). Thread-safe."""

    def __init__(
        self, client: RegistryClient, ref: Reference, endpoints: Sequence[Endpoint], *, push: bool
    ) -> None:
        self.client = client
        self.ref = ref
        self.name = ref.path
        self.endpoints = tuple(endpoints)
        self.push = push
        self.scopes: tuple[str, ...] = (
            f"repository:{ref.path}:pull,push" if push else f"repository:{ref.path}:pull",
        )
        self._documents: dict[Digest, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Repository({self.ref.name!r})"

    def what(self, suffix: str = "") -> str:
        """``host/repo[suffix]`` for messages."""
        return f"{self.ref.domain}/{self.name}{suffix}"

    # -- requests --------------------------------------------------------------------------

    def _url(self, scheme: str, ep: Endpoint, suffix: str, query: dict[str, str] | None) -> str:
        q = dict(query or {})
        if ep.namespace:
            q["ns"] = ep.namespace
        url = f"{scheme}://{ep.host}/v2/{self.name}/{suffix}"
        return url + ("?" + urlencode(q) if q else "")

    def request(
        self,
        method: str,
        suffix: str,
        *,
        ep: Endpoint,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: object = None,
        scopes: Sequence[str] | None = None,
        url: str | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """One request to ``/v2/<name>/<suffix>`` (or ``url``, same host) at ``ep``.

        Authorization is added and refreshed once on 401 (when the body can be re-sent).
        Returns the response whatever its status; raises Unavailable / NotTLS as
        HttpClient.send does, Unauthorized when authorization cannot be obtained.
        """
        scopes = tuple(scopes or self.scopes)
        schemes = self.client.schemes(ep) if url is None else (urlsplit(url).scheme,)
        for i, scheme in enumerate(schemes):
            target = url or self._url(scheme, ep, suffix, query)
            try:
                resp = self._authorized(
                    method, target, ep=ep, headers=headers or {}, body=body, scopes=scopes
                )
            except NotTLS:
                if i + 1 < len(schemes):
                    continue  # loopback/insecure host speaking plain HTTP: next scheme
                raise Unavailable(
                    f"{self.what()}: {ep.host} does not speak TLS; use --plain-http if it is "
                    "a plain-HTTP registry you trust"
                ) from None
            if url is None and len(schemes) > 1:
                self.client.remember_scheme(ep.host, scheme)
            return resp
        raise AssertionError("unreachable")

    def _authorized(
        self,
        method: str,
        url: str,
        *,
        ep: Endpoint,
        headers: dict[str, str],
        body: object,
        scopes: Sequence[str],
    ) -> urllib3.BaseHTTPResponse:
        auth = self.client.auth
        hdrs = dict(headers)
        value = auth.header(ep.host, scopes, ca=ep.ca)
        if value is not None:
            hdrs["Authorization"] = value
        resp = self.client.http.send(method, url, headers=hdrs, body=body, ca=ep.ca)
        if resp.status != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        read_limited(resp, _MAX_ERROR_BODY)
        if not challenge:
            raise Unauthorized(f"{self.what()}: HTTP 401 without an authentication challenge")
        if body is not None and not isinstance(body, bytes | bytearray):
            # The stream is spent; authorise now so the caller's retry carries a token.
            auth.challenge(ep.host, challenge, scopes, ca=ep.ca, what=self.what())
            raise Unauthorized(f"{self.what()}: {method} refused (HTTP 401)")
        hdrs["Authorization"] = auth.challenge(
            ep.host, challenge, scopes, ca=ep.ca, what=self.what()
        )
        resp = self.client.http.send(method, url, headers=hdrs, body=body, ca=ep.ca)
        if resp.status == 401:
            read_limited(resp, _MAX_ERROR_BODY)
            raise Unauthorized(
                f"{self.what()}: access refused with the credentials given (HTTP 401)"
            )
        return resp

    def _each_endpoint(self) -> Sequence[Endpoint]:
        return self.endpoints

    # -- resolve ---------------------------------------------------------------------------

    def resolve(self) -> Descriptor:
        """The root descriptor of ``ref`` (by tag or digest): HEAD, then GET if needed.

        The digest is the registry's ``Docker-Content-Digest`` for a tag, checked against
        the body when it had to be fetched; for a digest reference a different digest is
        DigestMismatch. Raises NotFound, Unauthorized, Unavailable, Unsupported (schema 1,
        not a manifest), ResourceLimit (over MAX_DOCUMENT_SIZE), DigestMismatch.
        """
        last: ImgpipeError | None = None
        for ep in self._each_endpoint():
            try:
                return self._resolve_at(ep)
            except (NotFound, Unavailable, Unauthorized) as e:
                if not ep.is_mirror:
                    raise
                last = e  # a mirror that fails: try the next endpoint
        raise last or NotFound(f"{self.what()}: no endpoint")

    def _reference_suffix(self) -> str:
        return str(self.ref.digest) if self.ref.digest is not None else self.ref.tag

    def _resolve_at(self, ep: Endpoint) -> Descriptor:
        ref = self._reference_suffix()
        shown = self.what("@" + ref if self.ref.digest else ":" + ref)
        headers = {"Accept": MANIFEST_ACCEPT}
        resp = self.request("HEAD", f"manifests/{ref}", ep=ep, headers=headers)
        if resp.status == 200:
            read_limited(resp, 0)
            mt = _strip_params(resp.headers.get("Content-Type", ""))
            self._refuse_schema1(mt, shown)
            dg_text = resp.headers.get("Docker-Content-Digest", "")
            length = resp.headers.get("Content-Length", "")
            if dg_text and length.isdigit() and mt not in _GENERIC_TYPES:
                size = int(length)
                self._check_size(size, shown)
                digest = self._parse_digest(dg_text, shown)
                if self.ref.digest is not None and digest != self.ref.digest:
                    raise DigestMismatch(
                        f"{shown}: the registry says the manifest is {digest}",
                        expected=str(self.ref.digest),
                        actual=str(digest),
                    )
                return Descriptor(MediaType(mt), digest, size)
        elif resp.status == 404:
            raise _error_for(resp, f"{shown}: not found")
        elif resp.status not in (400, 403, 405):
            # HEAD 405 (some registries), 403 (to surface the GET's error body): try GET
            raise _error_for(resp, shown)
        else:
            read_limited(resp, 0)
        return self._get_root(ep, ref, shown)

    def _get_root(self, ep: Endpoint, ref: str, shown: str) -> Descriptor:
        resp = self.request("GET", f"manifests/{ref}", ep=ep, headers={"Accept": MANIFEST_ACCEPT})
        if resp.status != 200:
            raise _error_for(resp, shown)
        mt = _strip_params(resp.headers.get("Content-Type", ""))
        self._refuse_schema1(mt, shown)
        length = resp.headers.get("Content-Length", "")
        if length.isdigit():
            self._check_size(int(length), shown)
        raw = read_limited(resp, MAX_DOCUMENT_SIZE)
        self._check_size(len(raw), shown)
        algorithm = self.ref.digest.algorithm if self.ref.digest else "sha256"
        digest = Digest.from_bytes(raw, algorithm)
        if self.ref.digest is not None and digest != self.ref.digest:
            raise DigestMismatch(
                f"{shown}: the registry served a manifest that hashes to {digest}",
                expected=str(self.ref.digest),
                actual=str(digest),
            )
        header = resp.headers.get("Docker-Content-Digest", "")
        if header and self.ref.digest is None:
            claimed = self._parse_digest(header, shown)
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
        with self._lock:
            self._documents[digest] = raw
        return Descriptor(MediaType(str(doc.media_type or mt)), digest, len(raw))

    @staticmethod
    def _refuse_schema1(mt: str, shown: str) -> None:
        if MediaType(mt).is_schema1():
            raise Unsupported(f"{shown}: {SCHEMA1_MESSAGE}")

    @staticmethod
    def _check_size(size: int, shown: str) -> None:
        if size > MAX_DOCUMENT_SIZE:
            raise ResourceLimit(
                f"{shown}: the manifest is {size} bytes; documents over {MAX_DOCUMENT_SIZE} "
                "bytes are refused"
            )

    @staticmethod
    def _parse_digest(text: str, shown: str) -> Digest:
        try:
            return Digest.parse(text.strip())
        except InvalidDigest:
            raise FailedPrecondition(f"{shown}: the registry sent a malformed digest") from None

    # -- fetch -----------------------------------------------------------------------------

    def open_document(self, desc: Descriptor) -> BinaryIO:
        """The bytes of a manifest or index (at most MAX_DOCUMENT_SIZE), unverified."""
        with self._lock:
            raw = self._documents.pop(desc.digest, None)
        if raw is not None:
            return io.BytesIO(raw)
        shown = self.what("@" + str(desc.digest))
        self._check_size(desc.size, shown)
        last: ImgpipeError | None = None
        for ep in self._each_endpoint():
            resp = None
            try:
                resp = self.request(
                    "GET",
                    f"manifests/{desc.digest}",
                    ep=ep,
                    headers={"Accept": f"{desc.media_type}, {MANIFEST_ACCEPT}"},
                )
                if resp.status != 200:
                    raise _error_for(resp, shown)
                return io.BytesIO(read_limited(resp, MAX_DOCUMENT_SIZE))
            except (NotFound, Unavailable, Unauthorized) as e:
                if not ep.is_mirror:
                    raise
                last = e
        raise last or NotFound(shown)

    def open_blob(self, desc: Descriptor) -> BlobReader:
        """A seekable stream of the blob's bytes (unverified; the caller verifies)."""
        return BlobReader(self, desc)

    # -- push ------------------------------------------------------------------------------

    def _push_endpoint(self) -> Endpoint:
        return self.endpoints[-1]  # the registry itself: mirrors never take pushes

    def exists(self, desc: Descriptor) -> bool:
        """Whether the registry has the blob (or, for documents, the manifest)."""
        kind = (
            "manifests" if desc.media_type.is_index() or desc.media_type.is_manifest() else "blobs"
        )
        resp = self.request(
            "HEAD",
            f"{kind}/{desc.digest}",
            ep=self._push_endpoint(),
            headers={"Accept": MANIFEST_ACCEPT} if kind == "manifests" else None,
        )
        read_limited(resp, 0)
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise _error_for(resp, self.what("@" + str(desc.digest)))

    def _upload_url(self, resp: urllib3.BaseHTTPResponse, base: str, shown: str) -> str:
        location = resp.headers.get("Location", "")
        read_limited(resp, _MAX_ERROR_BODY)
        if not location:
            raise FailedPrecondition(f"{shown}: the registry gave no upload location")
        url = urljoin(base, location)
        if urlsplit(url).netloc != urlsplit(base).netloc:
            # Uploads carry our token: they go to the registry host only.
            raise FailedPrecondition(f"{shown}: the registry sent the upload to another host")
        return url

    def _base(self, ep: Endpoint) -> str:
        return f"{self.client.schemes(ep)[0]}://{ep.host}/v2/{self.name}/"

    def mount(self, desc: Descriptor, source_repo: str) -> str | None:
        """Ask the registry to mount ``desc`` from ``source_repo`` (same registry).

        Returns None when it mounted (201); otherwise the upload URL the registry opened
        instead (202), for :meth:`upload_blob`'s ``location``.
        """
        ep = self._push_endpoint()
        shown = self.what("@" + str(desc.digest))
        resp = self.request(
            "POST",
            "blobs/uploads/",
            ep=ep,
            query={"mount": str(desc.digest), "from": source_repo},
            scopes=(*self.scopes, f"repository:{source_repo}:pull"),
        )
        if resp.status == 201:
            read_limited(resp, _MAX_ERROR_BODY)
            return None
        if resp.status == 202:
            return self._upload_url(resp, self._base(ep), shown)
        raise _error_for(resp, f"{shown}: mount from {source_repo}")

    def upload_blob(
        self,
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
        shown = self.what("@" + str(desc.digest))
        start = stream.tell() if stream.seekable() else 0
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                self._upload_once(
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

    def upload_stream(
        self, stream: BinaryIO, *, algorithm: str = "sha256", location: str | None = None
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
        ep = self._push_endpoint()
        shown = self.what(" (streamed upload)")
        if location is None:
            resp = self.request("POST", "blobs/uploads/", ep=ep)
            if resp.status != 202:
                raise _error_for(resp, f"{shown}: starting an upload")
            location = self._upload_url(resp, self._base(ep), shown)
        body = _Hashing(stream, algorithm)
        resp = self.request(
            "PATCH",
            "",
            ep=ep,
            url=location,
            headers={"Content-Type": "application/octet-stream"},
            body=body,  # no Content-Length: urllib3 sends it chunked
        )
        if resp.status != 202:
            raise _error_for(resp, f"{shown}: uploading")
        location = self._upload_url(resp, location, shown)
        if not body.eof:
            raise Unavailable(f"{shown}: the registry answered before the upload ended")
        digest, size = body.digester.digest(), body.size
        shown = self.what("@" + str(digest))
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": str(digest)})
        resp = self.request(
            "PUT",
            "",
            ep=ep,
            url=url,
            headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
            body=b"",
        )
        if resp.status not in (201, 204):
            raise _error_for(resp, f"{shown}: finishing the upload")
        read_limited(resp, _MAX_ERROR_BODY)
        return digest, size

    def _upload_once(
        self,
        desc: Descriptor,
        stream: BinaryIO,
        *,
        location: str | None,
        chunk_threshold: int,
        chunk_size: int,
        shown: str,
    ) -> None:
        ep = self._push_endpoint()
        if location is None:
            resp = self.request("POST", "blobs/uploads/", ep=ep)
            if resp.status != 202:
                raise _error_for(resp, f"{shown}: starting an upload")
            location = self._upload_url(resp, self._base(ep), shown)
        octet = {"Content-Type": "application/octet-stream"}
        if desc.size > chunk_threshold:
            offset = 0
            while offset < desc.size:
                n = min(chunk_size, desc.size - offset)
                resp = self.request(
                    "PATCH",
                    "",
                    ep=ep,
                    url=location,
                    headers={
                        **octet,
                        "Content-Length": str(n),
                        "Content-Range": f"{offset}-{offset + n - 1}",
                    },
                    body=_Limited(stream, n),
                )
                if resp.status != 202:
                    raise _error_for(resp, f"{shown}: uploading bytes {offset}-{offset + n - 1}")
                location = self._upload_url(resp, location, shown)
                offset += n
            body: object = b""
            length = 0
        else:
            body, length = _Limited(stream, desc.size), desc.size
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": str(desc.digest)})
        resp = self.request(
            "PUT",
            "",
            ep=ep,
            url=url,
            headers={**octet, "Content-Length": str(length)},
            body=body,
        )
        if resp.status not in (201, 204):
            raise _error_for(resp, f"{shown}: finishing the upload")
        read_limited(resp, _MAX_ERROR_BODY)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> Digest:
        """PUT a manifest or index under a tag or its digest; returns its digest.

        Raises DigestMismatch if the registry reports another digest for the bytes.
        """
        ep = self._push_endpoint()
        digest = Digest.from_bytes(raw)
        shown = self.what(("@" if ":" in reference else ":") + reference)
        resp = self.request(
            "PUT",
            f"manifests/{quote(reference, safe=':')}",
            ep=ep,
            headers={"Content-Type": media_type, "Content-Length": str(len(raw))},
            body=raw,
        )
        if resp.status not in (200, 201, 202):
            raise _error_for(resp, shown)
        claimed = resp.headers.get("Docker-Content-Digest", "")
        read_limited(resp, _MAX_ERROR_BODY)
        if claimed and self._parse_digest(claimed, shown) != digest:
            raise DigestMismatch(
                f"{shown}: the registry stored the manifest as {claimed.strip()}, not {digest}"
            )
        return digest


class _Limited(io.RawIOBase):
    """The next ``n`` bytes of a stream, as an upload body; SizeMismatch if it is short."""

    def __init__(self, stream: BinaryIO, n: int) -> None:
        self._stream = stream
        self._left = n

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(want)
        if not data:
            raise SizeMismatch(f"upload source ended {self._left} bytes early")
        self._left -= len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Hashing(io.RawIOBase):
    """A stream as an upload body of unknown length: hashes and counts what is sent."""

    def __init__(self, stream: BinaryIO, algorithm: str) -> None:
        self._stream = stream
        self.digester = Digester(algorithm)
        self.size = 0
        self.eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if size > 0 else UPLOAD_READ_SIZE)
        if data:
            self.digester.update(data)
            self.size += len(data)
        else:
            self.eof = True
        return bytes(data)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


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
        last: ImgpipeError | None = None
        for url in self._desc.urls:
            if urlsplit(url).scheme not in ("http", "https"):
                continue
            try:
                # Foreign URLs get no registry credentials and no registry CA.
                resp = self._repo.client.http.send("GET", url, headers=headers)
                return self._accept(resp, redact_url(url))
            except (NotFound, Unavailable, Unauthorized, FailedPrecondition) as e:
                last = e
        for ep in self._repo.endpoints:
            try:
                resp = self._repo.request(
                    "GET", f"blobs/{self._desc.digest}", ep=ep, headers=headers
                )
                return self._accept(resp, self._shown)
            except (NotFound, Unavailable, Unauthorized) as e:
                if not ep.is_mirror:
                    raise
                last = e
        raise last or NotFound(self._shown)

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
        raise _error_for(resp, shown)

    @staticmethod
    def _skip(resp: urllib3.BaseHTTPResponse, n: int, shown: str) -> None:
        while n:
            chunk = resp.read(min(n, 1 << 20))
            if not chunk:
                resp.close()
                raise Unavailable(f"{shown}: the body ended while skipping to the resume offset")
            n -= len(chunk)


def as_binary(stream: io.RawIOBase) -> BinaryIO:
    """Our raw streams, typed as the BinaryIO the transport protocols speak."""
    return cast(BinaryIO, stream)
