"""The distribution-API v2 client: resolve, fetch and push against one repository.

::

    client = RegistryClient(TransportOptions())
    repo = client.repository(parse_reference("127.0.0.1:5000/app:1"))
    root = repo.resolve()                       # HEAD (then GET) manifests/<tag>
    with repo.open_blob(layer) as f: ...        # streamed, seekable, resumes by Range
    repo.upload_blob(desc, stream)              # monolithic PUT or chunked PATCH
    repo.put_manifest("1", raw, media_type)

This module holds the client and a repository's authorised requests; the jobs done with
them live beside it: :mod:`.resolve` (references, documents), :mod:`.download` (blobs),
:mod:`.push` (mounts, uploads, manifests), :mod:`.responses` (answers -> errors).

Each request goes to the repository's endpoints in order (mirrors first for pulls, see
:mod:`imgpipe.remote.hosts`), with the scheme chosen by :func:`~imgpipe.remote.hosts.schemes_for`
(an https endpoint that turns out to speak plain HTTP falls back where that is allowed),
authorization from :class:`~imgpipe.remote.auth.Authorizer` (one retry on 401), and
transport retries from :class:`~imgpipe.remote.http.HttpClient`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO, TypeVar, cast
from urllib.parse import urlencode, urlsplit

from imgpipe.content.closing import Closing
from imgpipe.formats.errors import (
    DigestMismatch,
    ImgpipeError,
    NotFound,
    Unauthorized,
    Unavailable,
)

from . import push as _push
from . import resolve as _resolve
from .download import MAX_RESUMES, BlobReader
from .hosts import Endpoint, RegistryConfig, has_port, load_registry_config
from .http import HttpClient, NotTLS, connect_failed, read_limited, speaks_tls
from .options import TransportOptions
from .push import CHUNK_THRESHOLD, UPLOAD_CHUNK_SIZE, UPLOAD_READ_SIZE
from .resolve import MANIFEST_ACCEPT
from .responses import MAX_ERROR_BODY

if TYPE_CHECKING:
    import io

    import urllib3

    from imgpipe.formats.descriptor import Descriptor
    from imgpipe.formats.digest import Digest
    from imgpipe.formats.reference import Reference

    from .auth import Authorizer
    from .credentials import Credentials

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

_T = TypeVar("_T")


class RegistryClient(Closing):
    """Talks to registries for one pull or push; thread-safe; close when done.

    ``credentials`` overrides the credential lookup (host -> Credentials or None); by
    default it is :func:`imgpipe.remote.credentials.lookup` with ``options.auth_file``.
    ``config`` is the registry configuration; without it, the file
    ``options.registry_config`` names is read (none: no mirrors, CAs or insecure hosts).

    The :attr:`auth` machinery (token flow, credential files and helpers) is made on
    first use: a registry that never answers 401 costs none of it, not even its import.
    """

    def __init__(
        self,
        options: TransportOptions | None = None,
        *,
        config: RegistryConfig | None = None,
        credentials: Callable[[str], Credentials | None] | None = None,
        http: HttpClient | None = None,
    ) -> None:
        self.options = options or TransportOptions()
        if config is None:
            path = self.options.registry_config
            config = load_registry_config(path) if path is not None else RegistryConfig()
        self.config = config
        self.http = http or HttpClient(user_agent=self.options.user_agent)
        self._credentials = credentials or self._lookup_credentials
        self._auth: Authorizer | None = None
        self._schemes: dict[str, str] = {}  # host -> scheme that worked
        self._lock = threading.Lock()

    @property
    def auth(self) -> Authorizer:
        """The client's :class:`~imgpipe.remote.auth.Authorizer` (made on first use)."""
        with self._lock:
            if self._auth is None:
                from .auth import Authorizer  # noqa: PLC0415 (only once a registry asks)

                self._auth = Authorizer(self.http, self._credentials)
            return self._auth

    def auth_header(self, host: str, scopes: Sequence[str], *, ca: str | None) -> str | None:
        """The ``Authorization`` value for a request to ``host``, None while no registry
        has asked for one (see :meth:`Authorizer.header`)."""
        with self._lock:
            auth = self._auth
        return None if auth is None else auth.header(host, scopes, ca=ca)

    def _lookup_credentials(self, host: str) -> Credentials | None:
        from .credentials import lookup  # noqa: PLC0415 (Docker config, helpers: on a 401)

        return lookup(host, auth_file=self.options.auth_file)

    def __repr__(self) -> str:
        return f"RegistryClient(config={self.config.path or None!r})"

    def close(self) -> None:
        self.http.close()

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

    def check_named(self, digest: Digest, message: str) -> None:
        """For a reference by digest, ``digest`` must be that one: DigestMismatch with
        ``message`` otherwise (a tag alone names no digest: nothing to check)."""
        if self.ref.digest is not None and digest != self.ref.digest:
            raise DigestMismatch(message, expected=str(self.ref.digest), actual=str(digest))

    def keep_document(self, digest: Digest, raw: bytes) -> None:
        """Remember a document ``resolve`` had to GET, for the ``open_document`` after."""
        with self._lock:
            self._documents[digest] = raw

    def take_document(self, digest: Digest) -> bytes | None:
        with self._lock:
            return self._documents.pop(digest, None)

    # -- requests --------------------------------------------------------------------------

    def each_endpoint(self, attempt: Callable[[Endpoint], _T], shown: str) -> _T:
        """``attempt`` at each endpoint in order until one answers. A mirror that fails
        (not found, unreachable, refused) passes to the next; the registry's own failure
        is raised."""
        last: ImgpipeError | None = None
        for ep in self.endpoints:
            try:
                return attempt(ep)
            except (NotFound, Unavailable, Unauthorized) as e:
                if not ep.is_mirror:
                    raise
                last = e
        raise last or NotFound(shown)

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
        refused: list[str] = []  # the attempts that could not connect, for the message
        for i, scheme in enumerate(schemes):
            target = url or self._url(scheme, ep, suffix, query)
            try:
                resp = self._authorized(
                    method,
                    target,
                    ep=ep,
                    headers=headers or {},
                    body=body,
                    scopes=scopes,
                    # the same host:port just refused every retry: one more try says
                    # whether HTTP fares better, without repeating the backoff
                    once=bool(refused) and has_port(ep.host),
                )
            except NotTLS:
                if i + 1 < len(schemes):
                    continue  # loopback/insecure host speaking plain HTTP: next scheme
                raise Unavailable(
                    f"{self.what()}: {ep.host} does not speak TLS; use --plain-http if it is "
                    "a plain-HTTP registry you trust"
                ) from None
            except Unavailable as e:
                # Nothing answered the HTTPS attempt of a host allowed plain HTTP (docker
                # tries HTTP then too: without a port the two are 443 and 80). A TLS
                # failure is never retried in clear text: only a failed connect is.
                if not connect_failed(e):
                    raise
                refused.append(str(e))
                if i + 1 < len(schemes):
                    continue
                raise Unavailable("; ".join(refused)) from e
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
        once: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        hdrs = dict(headers)
        value = self.client.auth_header(ep.host, scopes, ca=ep.ca)
        if value is not None:
            hdrs["Authorization"] = value
        resp = self.client.http.send(method, url, headers=hdrs, body=body, ca=ep.ca, once=once)
        if resp.status != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        read_limited(resp, MAX_ERROR_BODY)
        if not challenge:
            raise Unauthorized(f"{self.what()}: HTTP 401 without an authentication challenge")
        auth = self.client.auth
        if body is not None and not isinstance(body, bytes | bytearray):
            # The stream is spent; authorise now so the caller's retry carries a token.
            auth.challenge(ep.host, challenge, scopes, ca=ep.ca, what=self.what())
            raise Unauthorized(f"{self.what()}: {method} refused (HTTP 401)")
        hdrs["Authorization"] = auth.challenge(
            ep.host, challenge, scopes, ca=ep.ca, what=self.what()
        )
        resp = self.client.http.send(method, url, headers=hdrs, body=body, ca=ep.ca)
        if resp.status == 401:
            read_limited(resp, MAX_ERROR_BODY)
            raise Unauthorized(
                f"{self.what()}: access refused with the credentials given (HTTP 401)"
            )
        return resp

    # -- the jobs: each in its module, with its contract and errors documented there ------

    resolve = _resolve.resolve
    open_document = _resolve.open_document
    exists = _push.exists
    mount = _push.mount
    upload_blob = _push.upload_blob
    upload_stream = _push.upload_stream
    put_manifest = _push.put_manifest

    def open_blob(self, desc: Descriptor) -> BlobReader:
        """A seekable stream of the blob's bytes (unverified; the caller verifies)."""
        return BlobReader(self, desc)


def as_binary(stream: io.RawIOBase) -> BinaryIO:
    """Our raw streams, typed as the BinaryIO the transport protocols speak."""
    return cast(BinaryIO, stream)
